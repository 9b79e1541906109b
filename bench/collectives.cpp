// Collective benchmark: allreduce (sum) and allgather of 2^10..2^24 floats over
// ecopt's transports, beside Open MPI's own MPI_Allreduce / MPI_Allgather in the
// same binary and run. Start it under mpirun with the world size to measure:
//
//   mpirun -np 4 --mca btl self,tcp   build/release/bench/collectives --transports=mpi,tcp
//   mpirun -np 4 --mca btl self,vader build/release/bench/collectives --transports=mpi,threads
//
// (scripts/bench-collectives.sh runs both for 2 and 4 ranks.) Rows:
//  * mpi: MPI_Allreduce / MPI_Allgather on MPI_COMM_WORLD (the btl decides
//    TCP or shared memory);
//  * tcp: tcp_transport over 127.0.0.1, one per process (rank 0's port is
//    shared through MPI); tcp-unchecked: the same without payload checksums;
//  * threads: thread_transport; rank 0's process runs all P ranks as threads,
//    the other processes sleep meanwhile.
// Figures: time per operation (the slowest rank's, best of the repetitions;
// the rows of one MPI job run their repetitions interleaved), bus bandwidth as
// nccl-tests define it: allreduce 2(P-1)/P * bytes / time, allgather
// (P-1)/P * (P * block bytes) / time, so that one number compares algorithms
// and world sizes, and the CPU time per operation of all ranks together (user
// + system; Open MPI's includes its busy polling). With more ranks than cores
// every row is bound by CPU time. Rank 0 prints a Markdown table.
// (<mpi.h> comes through mpi_transport.hpp, which leaves out the C++ bindings.)

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "ecopt/collectives/allgather.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/barrier.hpp"
#include "ecopt/collectives/broadcast.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/transports/mpi_transport.hpp"
#include "ecopt/transports/tcp_transport.hpp"
#include "ecopt/transports/thread_transport.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

struct settings {
  int min_log2 = 10;
  int max_log2 = 24;
  int log2_step = 2;
  double seconds = 0.3;  ///< time budget per (row, size)
  int repetitions = 3;
  bool mpi = true, tcp = true, tcp_unchecked = false, threads = true;
  bool allreduce = true, allgather = true;
};

[[noreturn]] void usage(const char* error) {
  std::fprintf(
      stderr,
      "collectives: %s\n"
      "usage: mpirun -np P collectives [--min=LOG2] [--max=LOG2] [--step=LOG2]\n"
      "       [--seconds=S] [--repetitions=N] [--transports=mpi,tcp,tcp-unchecked,threads]\n"
      "       [--ops=allreduce,allgather]\n",
      error);
  MPI_Abort(MPI_COMM_WORLD, 2);
  std::exit(2);
}

bool has(std::string_view list, std::string_view item) {
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t end = std::min(list.find(',', start), list.size());
    if (list.substr(start, end - start) == item) return true;
    start = end + 1;
  }
  return false;
}

settings parse(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&](std::string_view key) -> const char* {
      return arg.substr(0, key.size()) == key ? argv[i] + key.size() : nullptr;
    };
    auto integer = [&](const char* text, int lo, int hi) {
      char* end = nullptr;
      const long v = std::strtol(text, &end, 10);
      if (end == text || *end != '\0' || v < lo || v > hi) usage(argv[i]);
      return static_cast<int>(v);
    };
    if (const char* v = value("--min="))
      s.min_log2 = integer(v, 0, 28);
    else if (const char* v = value("--max="))
      s.max_log2 = integer(v, 0, 28);
    else if (const char* v = value("--step="))
      s.log2_step = integer(v, 1, 28);
    else if (const char* v = value("--repetitions="))
      s.repetitions = integer(v, 1, 1000);
    else if (const char* v = value("--seconds=")) {
      s.seconds = std::atof(v);
      if (!(s.seconds > 0)) usage(argv[i]);
    } else if (const char* v = value("--transports=")) {
      s.mpi = has(v, "mpi");
      s.tcp = has(v, "tcp");
      s.tcp_unchecked = has(v, "tcp-unchecked");
      s.threads = has(v, "threads");
    } else if (const char* v = value("--ops=")) {
      s.allreduce = has(v, "allreduce");
      s.allgather = has(v, "allgather");
    } else {
      usage(argv[i]);
    }
  }
  if (s.min_log2 > s.max_log2) usage("--min is above --max");
  return s;
}

/// The slowest rank's value.
double max_over_ranks(double v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return v;
}

/// Waits for the other ranks without spinning (Open MPI's blocking calls
/// busy-poll, which would take the cores from rank 0's threads).
void sleeping_barrier() {
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  int done = 0;
  while (!done) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

/// CPU time (user + system) this process (or, with RUSAGE_THREAD, this thread) has used.
double cpu_seconds(int who = RUSAGE_SELF) {
  rusage u{};
  getrusage(who, &u);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * t.tv_usec; };
  return seconds(u.ru_utime) + seconds(u.ru_stime);
}

struct timing {
  double seconds;      ///< the slowest rank's time per operation, best repetition
  double cpu_seconds;  ///< CPU time per operation, summed over all ranks, all repetitions
};

/// One row measured in this MPI job: an operation every rank runs in lockstep.
struct contender {
  std::string name;
  std::function<void()> op;
  int iterations = 0;
  double best = 1e300;  ///< the slowest rank's time per operation, best repetition
  double cpu = 0;       ///< CPU seconds of all ranks over all repetitions
};

/// Times the contenders of one (operation, size) with their repetitions
/// interleaved (A B C A B C ...), so that a slow spell of a shared machine
/// falls on every row alike rather than on one. Each contender first runs
/// once (warm-up: buffers, connections), then is calibrated: its count
/// doubles until a run lasts a twentieth of a repetition (one operation alone
/// is too noisy a guess); every rank takes the slowest rank's time, so all
/// agree. A repetition's figure is the slowest rank's mean time per operation.
std::vector<timing> time_interleaved(const settings& s, std::vector<contender>& rows) {
  const double repetition_seconds = s.seconds / s.repetitions;
  for (contender& c : rows) {
    c.op();
    double per_op = 0;
    for (int count = 1;; count *= 2) {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto start = clock_type::now();
      for (int i = 0; i < count; ++i) c.op();
      const double t =
          max_over_ranks(std::chrono::duration<double>(clock_type::now() - start).count());
      per_op = t / count;
      if (t >= repetition_seconds / 20 || count >= 4096) break;
    }
    c.iterations =
        static_cast<int>(std::clamp(repetition_seconds / std::max(per_op, 1e-7), 1.0, 100000.0));
  }
  for (int r = 0; r < s.repetitions; ++r) {
    for (contender& c : rows) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double cpu_start = cpu_seconds();
      const auto start = clock_type::now();
      for (int i = 0; i < c.iterations; ++i) c.op();
      const double mine = std::chrono::duration<double>(clock_type::now() - start).count();
      c.cpu += cpu_seconds() - cpu_start;
      c.best = std::min(c.best, max_over_ranks(mine) / c.iterations);
    }
  }
  std::vector<timing> out;
  for (contender& c : rows) {
    MPI_Allreduce(MPI_IN_PLACE, &c.cpu, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    out.push_back({c.best, c.cpu / (static_cast<double>(c.iterations) * s.repetitions)});
  }
  return out;
}

/// The same, for P thread ranks inside this process, all in one world (a world
/// per repetition would time its first-touch page faults): warm-up, then
/// rank 0's calibration shared by broadcast, then the repetitions; each
/// repetition counts its slowest rank.
template <class Op>
timing time_per_op_threads(const settings& s, int world, Op&& op) {
  const auto times = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    ecopt::collective_workspace ws;
    auto state = op.make_state(t);
    for (int i = 0; i < 3; ++i) op(t, ws, state);  // warm-up: buffers, page faults
    ecopt::barrier(t, ws);
    auto start = clock_type::now();
    op(t, ws, state);
    const double once = std::chrono::duration<double>(clock_type::now() - start).count();
    int iterations =
        static_cast<int>(std::clamp(s.seconds / s.repetitions / std::max(once, 1e-7), 1.0, 1e5));
    ecopt::broadcast(t, std::span<int>(&iterations, 1), 0, ws);
    std::vector<double> per_repetition;
    double cpu = 0;
    for (int r = 0; r < s.repetitions; ++r) {
      ecopt::barrier(t, ws);
      const double cpu_start = cpu_seconds(RUSAGE_THREAD);
      start = clock_type::now();
      for (int i = 0; i < iterations; ++i) op(t, ws, state);
      per_repetition.push_back(std::chrono::duration<double>(clock_type::now() - start).count() /
                               iterations);
      cpu += cpu_seconds(RUSAGE_THREAD) - cpu_start;
    }
    return std::pair{per_repetition, cpu / (static_cast<double>(iterations) * s.repetitions)};
  });
  double best = 1e300;
  for (int r = 0; r < s.repetitions; ++r) {
    double slowest = 0;
    for (const auto& [rank_times, rank_cpu] : times) {
      slowest = std::max(slowest, rank_times[static_cast<std::size_t>(r)]);
    }
    best = std::min(best, slowest);
  }
  double cpu = 0;
  for (const auto& [rank_times, rank_cpu] : times) cpu += rank_cpu;
  return {best, cpu};
}

struct row {
  std::string transport, op;
  int world;
  std::size_t floats;
  double seconds;      ///< time per operation
  double cpu_seconds;  ///< CPU time per operation, all ranks together
};

double bus_bandwidth(const row& r) {
  const double p = r.world;
  const double bytes = 4.0 * static_cast<double>(r.floats);
  // allreduce: each rank's vector; allgather: the whole gathered vector.
  const double factor = r.op == "allreduce" ? 2 * (p - 1) / p : (p - 1) / p;
  return factor * bytes / r.seconds;
}

}  // namespace

int main(int argc, char** argv) {
  ecopt::mpi_session session(&argc, &argv);
  const settings s = parse(argc, argv);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);

  std::vector<row> rows;
  std::vector<std::string> ops;
  if (s.allreduce) ops.emplace_back("allreduce");
  if (s.allgather) ops.emplace_back("allgather");

  // One tcp_transport per process, connected through rank 0's port (shared by
  // MPI); "tcp-unchecked" is a second one without payload checksums.
  auto connect_tcp = [&](bool payload_checksum) {
    ecopt::tcp_options options{.rank = rank, .world_size = world};
    options.job_token = "bench-collectives";
    options.payload_checksum = payload_checksum;
    if (rank == 0) {
      options.on_listening = [](std::uint16_t port) {
        int p = port;
        MPI_Bcast(&p, 1, MPI_INT, 0, MPI_COMM_WORLD);
      };
    } else {
      int port = 0;
      MPI_Bcast(&port, 1, MPI_INT, 0, MPI_COMM_WORLD);
      options.address = "127.0.0.1:" + std::to_string(port);
    }
    return std::make_unique<ecopt::tcp_transport>(options);
  };
  std::unique_ptr<ecopt::tcp_transport> tcp, tcp_unchecked;
  if (s.tcp && world > 1) tcp = connect_tcp(true);
  if (s.tcp_unchecked && world > 1) tcp_unchecked = connect_tcp(false);

  for (int lg = s.min_log2; lg <= s.max_log2; lg += s.log2_step) {
    const std::size_t n = std::size_t{1} << lg;
    for (const std::string& op : ops) {
      const bool reduce = op == "allreduce";
      const std::size_t block = reduce ? n : n / static_cast<std::size_t>(world);
      if (block == 0) continue;
      std::vector<float> data(reduce ? n : block * static_cast<std::size_t>(world), 1.0f);
      std::vector<float> mine(block, 1.0f);

      std::vector<contender> contenders;
      if (s.mpi) {
        contenders.push_back({"Open MPI", [&] {
                                if (reduce) {
                                  MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(n),
                                                MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
                                } else {
                                  MPI_Allgather(mine.data(), static_cast<int>(block), MPI_FLOAT,
                                                data.data(), static_cast<int>(block), MPI_FLOAT,
                                                MPI_COMM_WORLD);
                                }
                              }});
      }
      ecopt::collective_workspace ws;
      for (auto* transport : {tcp.get(), tcp_unchecked.get()}) {
        if (transport == nullptr) continue;
        contenders.push_back(
            {transport == tcp.get() ? "ecopt tcp_transport" : "ecopt tcp_transport, no payload CRC",
             [&, transport] {
               if (reduce) {
                 ecopt::allreduce_sum(*transport, std::span<float>(data), ws);
               } else {
                 ecopt::allgather(*transport, std::span<const float>(mine), std::span<float>(data),
                                  ws);
               }
             }});
      }
      const std::vector<timing> times = time_interleaved(s, contenders);
      for (std::size_t i = 0; i < contenders.size(); ++i) {
        rows.push_back({contenders[i].name, op, world, n, times[i].seconds, times[i].cpu_seconds});
      }
      if (s.threads && world > 1) {
        timing t{0, 0};
        if (rank == 0) {
          struct thread_op {
            bool reduce;
            std::size_t n, block;
            struct buffers {
              std::vector<float> data, mine;
            };
            buffers make_state(ecopt::thread_transport& tr) const {
              return {std::vector<float>(reduce ? n : block * static_cast<std::size_t>(tr.size()),
                                         1.0f),
                      std::vector<float>(block, 1.0f)};
            }
            void operator()(ecopt::thread_transport& tr, ecopt::collective_workspace& ws,
                            buffers& b) const {
              if (reduce) {
                ecopt::allreduce_sum(tr, std::span<float>(b.data), ws);
              } else {
                ecopt::allgather(tr, std::span<const float>(b.mine), std::span<float>(b.data), ws);
              }
            }
          };
          t = time_per_op_threads(s, world, thread_op{reduce, n, block});
        }
        sleeping_barrier();
        MPI_Bcast(&t, 2, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        rows.push_back({"ecopt thread_transport", op, world, n, t.seconds, t.cpu_seconds});
      }
    }
  }

  if (rank == 0) {
    std::printf(
        "| transport | op | P | floats | time per op | bus bandwidth | vs Open MPI | CPU per op "
        "|\n");
    std::printf("|---|---|--:|--:|--:|--:|--:|--:|\n");
    for (const row& r : rows) {
      double reference = 0;
      for (const row& m : rows) {
        if (m.transport == "Open MPI" && m.op == r.op && m.floats == r.floats) {
          reference = bus_bandwidth(m);
        }
      }
      const double us = r.seconds * 1e6;
      std::printf(
          "| %s | %s | %d | 2^%d | %.1f us | %.3f GB/s | %s | %.1f us |\n", r.transport.c_str(),
          r.op.c_str(), r.world, static_cast<int>(std::log2(static_cast<double>(r.floats))), us,
          bus_bandwidth(r) / 1e9,
          reference > 0 ? (std::to_string(bus_bandwidth(r) / reference).substr(0, 4) + "x").c_str()
                        : "",
          r.cpu_seconds * 1e6);
    }
  }
  tcp.reset();
  tcp_unchecked.reset();
  return 0;
}
