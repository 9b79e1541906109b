#pragma once
// Which rank of how many this process is, and where rank 0 listens, as the
// launcher that started it says in the environment:
//   ecopt-launch   ECOPT_RANK, ECOPT_WORLD_SIZE (and ECOPT_ADDR)
//   torchrun       RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   Slurm (srun)   SLURM_PROCID, SLURM_NTASKS; rank 0 on the first node of
//                  SLURM_JOB_NODELIST (or SLURM_NODELIST), port ECOPT_PORT or 29500
//   Open MPI       OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE
//   MPICH / Hydra  PMI_RANK, PMI_SIZE
// The first of these found wins. ECOPT_ADDR, when set, overrides the address any
// of them gives; under Open MPI and PMI, which name no address, it is required
// for a world of more than one rank. A launcher that says several ranks never
// gives a world of one: what is missing is named instead.
#include <cstddef>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "ecopt/error.hpp"

namespace ecopt::detail {

struct launcher_world {
  std::string launcher;                ///< who said it ("ECOPT_*", "torchrun", "Slurm", ...)
  std::string rank_text, world_text;   ///< the values as given
  std::string rank_name, world_name;   ///< the variables they came from
  std::optional<std::string> address;  ///< rank 0's host:port when the launcher names one
  /// Whether a world of several ranks needs an address from somewhere: not for
  /// ECOPT_* alone, where rank 0 may pick its port (ecopt-launch passes it on).
  bool needs_address = true;
};

inline const char* environment_value(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

/// The first host of a Slurm node list: "node[01-04,07],gpu2" -> "node01".
inline std::string first_slurm_host(std::string_view list) {
  std::size_t depth = 0;
  std::size_t end = list.size();
  for (std::size_t i = 0; i < list.size(); ++i) {
    if (list[i] == '[') ++depth;
    if (list[i] == ']' && depth > 0) --depth;
    if (list[i] == ',' && depth == 0) {
      end = i;
      break;
    }
  }
  const std::string_view first = list.substr(0, end);
  const std::size_t open = first.find('[');
  if (open == std::string_view::npos) return std::string(first);
  const std::size_t close = first.find(']', open);
  if (close == std::string_view::npos) {
    throw invalid_argument("SLURM_JOB_NODELIST='" + std::string(list) + "' has a '[' without ']'");
  }
  const std::string_view ranges = first.substr(open + 1, close - open - 1);
  const std::size_t stop = ranges.find_first_of(",-");
  return std::string(first.substr(0, open)) + std::string(ranges.substr(0, stop)) +
         std::string(first.substr(close + 1));
}

/// The launcher's word on rank, size and address; nullopt when no launcher said anything.
inline std::optional<launcher_world> find_launcher_world() {
  auto pair = [](const char* who, const char* rank,
                 const char* world) -> std::optional<launcher_world> {
    const char* r = environment_value(rank);
    const char* w = environment_value(world);
    if (r == nullptr && w == nullptr) return std::nullopt;
    if (r == nullptr || w == nullptr) {
      throw invalid_argument(std::string(r ? rank : world) + " is set but " + (r ? world : rank) +
                             " is not (" + who + ")");
    }
    return launcher_world{who, r, w, rank, world, std::nullopt, true};
  };
  if (auto ecopt = pair("ECOPT_*", "ECOPT_RANK", "ECOPT_WORLD_SIZE")) {
    ecopt->needs_address = false;
    return ecopt;
  }
  if (auto torch = pair("torchrun", "RANK", "WORLD_SIZE")) {
    const char* host = environment_value("MASTER_ADDR");
    const char* port = environment_value("MASTER_PORT");
    if ((host == nullptr) != (port == nullptr)) {
      throw invalid_argument(std::string(host ? "MASTER_ADDR" : "MASTER_PORT") + " is set but " +
                             (host ? "MASTER_PORT" : "MASTER_ADDR") + " is not (torchrun)");
    }
    if (host != nullptr) torch->address = std::string(host) + ":" + port;
    return torch;
  }
  if (auto slurm = pair("Slurm", "SLURM_PROCID", "SLURM_NTASKS")) {
    const char* nodes = environment_value("SLURM_JOB_NODELIST");
    if (nodes == nullptr) nodes = environment_value("SLURM_NODELIST");
    const char* port = environment_value("ECOPT_PORT");
    if (nodes != nullptr) slurm->address = first_slurm_host(nodes) + ":" + (port ? port : "29500");
    return slurm;
  }
  if (auto ompi = pair("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")) return ompi;
  if (auto pmi = pair("PMI", "PMI_RANK", "PMI_SIZE")) return pmi;
  return std::nullopt;
}

}  // namespace ecopt::detail
