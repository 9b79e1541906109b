#pragma once
// tcp_options: how a tcp_transport finds its peers, how long it waits, and
// how much it accepts from them; from_environment() reads them as
// scripts/ecopt-launch and other launchers set them.
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transports/detail/launcher_environment.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"

namespace ecopt {

/// How a tcp_transport finds its peers and how long it waits.
struct tcp_options {
  int rank = 0;
  int world_size = 1;
  /// Rank 0's address, "host:port": rank 0 listens there, the others connect
  /// to it. Port 0 lets rank 0 pick a free port; it reports it through
  /// on_listening, port_file and listen_port().
  std::string address = "127.0.0.1:0";
  /// Instead of `address`: every rank's "host:port", indexed by rank (fixed
  /// ports). Rank r listens on hosts[r] and connects to ranks 0..r-1.
  std::vector<std::string> hosts{};
  /// Where ranks other than 0 listen (port chosen by the system) when
  /// `address` is used. "0.0.0.0" listens everywhere and is advertised as the
  /// address rank 0 sees.
  std::string listen_host = "127.0.0.1";
  /// The job's shared secret: every connection proves it (HMAC-SHA-256 over
  /// fresh nonces from both sides), so only processes that hold it can join
  /// or claim a rank. Empty proves nothing: set a random one across machines
  /// (scripts/ecopt-launch makes one per job).
  std::string job_token{};
  std::chrono::milliseconds timeout{60'000};          ///< longest wait of one recv (and of closing)
  std::chrono::milliseconds connect_timeout{60'000};  ///< longest rendezvous
  /// A connection to this rank must complete its handshake within this, or
  /// is closed (so a silent or slow stranger holds nothing for long).
  std::chrono::milliseconds handshake_timeout{5'000};
  /// Connections to this rank waiting for their handshake at once; a new one
  /// beyond this pushes out the oldest. (At least the ranks that connect to
  /// this one; each costs a file descriptor.)
  std::size_t max_pending_handshakes = 64;
  /// Frames longer than this are refused from their header; send() refuses
  /// larger messages too. The collectives send whole vectors (a broadcast or
  /// an allgather's contribution; allreduce sends chunks of one), so this is
  /// the largest vector a job communicates: 256 MiB, 32 Mi doubles -- raise
  /// it for larger models. Memory for a frame grows as its bytes arrive, so
  /// the limit is not allocated in advance.
  std::uint64_t max_message_bytes = std::uint64_t{1} << 28;
  /// Bytes of received messages one link holds for recv before this rank
  /// stops reading that peer (back-pressure: its further frames wait in TCP's
  /// buffers and in the sender's queue, and its sends go on at once); reading
  /// resumes when recv has taken half of them. Only a link's oldest message
  /// can be received (per-pair FIFO order), so a pause never withholds one
  /// that recv could take, and a flood of messages nobody takes costs at most
  /// this plus one message: the first recv from that peer then reports the
  /// unexpected tag. A paused link notices its peer's goodbye, abort or crash
  /// only once recv has taken enough.
  std::uint64_t max_queued_bytes = std::uint64_t{64} << 20;
  /// Data frames carry a CRC-32C of their payload, checked by the receiver.
  /// Turning it off saves two passes over every message (the sender's and
  /// the receiver's), a third of the CPU time per byte when the cores are
  /// busy; frames say whether they carry one, so ranks may differ here.
  /// Headers are always checksummed. (Environment: ECOPT_PAYLOAD_CHECKSUM=0.)
  bool payload_checksum = true;
  /// A lost peer (its process died, its connection broke, it aborted) fails
  /// only its own link: receives from it, sends to it and collectives with
  /// it fail naming it, while recv_any goes on with the others and
  /// peer_lost(rank) says it is gone -- what a parameter server needs to go
  /// on without a dead worker (parameter_server.hpp). Off, the first lost
  /// peer fails the whole world at once, which is what synchronous training
  /// wants. (Environment: ECOPT_TOLERATE_LOST_PEERS=1.)
  bool tolerate_lost_peers = false;
  /// Rank 0 (world_size > 1): called with the bound port once it listens,
  /// before it waits for the others (e.g. to share a port-0 address in tests).
  std::function<void(std::uint16_t)> on_listening{};
  /// Rank 0 (world_size > 1): if set, the bound port is written to this file
  /// (atomically, via a temporary file and rename) once it listens.
  std::string port_file{};

  /// Throws invalid_argument naming the first bad field.
  void validate() const {
    auto bad = [](const std::string& what) { return invalid_argument("tcp_options: " + what); };
    if (world_size < 1) {
      throw bad("world_size must be at least 1, got " + std::to_string(world_size));
    }
    if (rank < 0 || rank >= world_size) {
      throw bad("rank " + std::to_string(rank) +
                " is outside [0, world_size = " + std::to_string(world_size) + ")");
    }
    if (timeout.count() <= 0) {
      throw bad("timeout must be positive, got " + std::to_string(timeout.count()) + " ms");
    }
    if (connect_timeout.count() <= 0) {
      throw bad("connect_timeout must be positive, got " + std::to_string(connect_timeout.count()) +
                " ms");
    }
    if (handshake_timeout.count() <= 0) {
      throw bad("handshake_timeout must be positive, got " +
                std::to_string(handshake_timeout.count()) + " ms");
    }
    if (max_pending_handshakes == 0) throw bad("max_pending_handshakes must be at least 1, got 0");
    if (max_message_bytes == 0 || max_message_bytes > (std::uint64_t{1} << 48)) {
      throw bad("max_message_bytes must be in [1, 2^48], got " + std::to_string(max_message_bytes));
    }
    if (max_queued_bytes == 0) throw bad("max_queued_bytes must be at least 1, got 0");
    if (!hosts.empty()) {
      if (hosts.size() != static_cast<std::size_t>(world_size)) {
        throw bad("hosts lists " + std::to_string(hosts.size()) + " addresses for world_size " +
                  std::to_string(world_size));
      }
      for (std::size_t i = 0; i < hosts.size(); ++i) {
        const auto a = detail::tcp_wire::parse_host_port(
            hosts[i], "tcp_options: hosts[" + std::to_string(i) + "]");
        if (a.port == 0) {
          throw bad("hosts[" + std::to_string(i) + "] = '" + hosts[i] +
                    "' has port 0; a host list needs fixed ports");
        }
      }
    } else {
      (void)detail::tcp_wire::parse_host_port(address, "tcp_options: address");
    }
    if (listen_host.empty() || listen_host.size() > detail::tcp_wire::max_host_length) {
      throw bad("listen_host must be a host name or address, got '" + listen_host + "'");
    }
  }

  /// Options from the environment (as set by scripts/ecopt-launch, or by
  /// torchrun, Slurm, Open MPI or PMI: detail/launcher_environment.hpp):
  ///   ECOPT_RANK, ECOPT_WORLD_SIZE  both or neither (neither and no other
  ///                       launcher's variables: a world of one)
  ///   ECOPT_ADDR          rank 0's host:port, or a comma-separated host list
  ///                       (overrides MASTER_ADDR:MASTER_PORT and Slurm's first node)
  ///   ECOPT_PORT          the port on Slurm's first node (default 29500)
  ///   ECOPT_LISTEN_HOST   listen_host;  ECOPT_JOB_TOKEN  job_token
  ///   ECOPT_TIMEOUT_MS, ECOPT_CONNECT_TIMEOUT_MS, ECOPT_MAX_MESSAGE_BYTES,
  ///   ECOPT_MAX_QUEUED_BYTES
  ///   ECOPT_PORT_FILE     port_file (rank 0)
  /// Throws invalid_argument naming the variable when one is malformed.
  [[nodiscard]] static tcp_options from_environment() {
    tcp_options o;
    const auto launched = detail::find_launcher_world();
    if (launched) {
      o.rank = static_cast<int>(
          env_integer(launched->rank_name.c_str(), launched->rank_text.c_str(), 0, 1 << 24));
      o.world_size = static_cast<int>(
          env_integer(launched->world_name.c_str(), launched->world_text.c_str(), 1, 1 << 24));
      if (launched->address) o.address = *launched->address;
    }
    const char* addr = std::getenv("ECOPT_ADDR");
    const bool have_addr = addr != nullptr && *addr != '\0';
    if (launched && launched->needs_address && !have_addr && !launched->address &&
        o.world_size > 1) {
      throw invalid_argument("started by " + launched->launcher + " as rank " +
                             std::to_string(o.rank) + " of " + std::to_string(o.world_size) +
                             ", which names no address for rank 0: set ECOPT_ADDR=host:port");
    }
    if (have_addr) {
      const std::string_view text(addr);
      if (text.find(',') != std::string_view::npos) {
        std::size_t start = 0;
        for (;;) {
          const std::size_t comma = text.find(',', start);
          o.hosts.emplace_back(text.substr(start, comma - start));
          if (comma == std::string_view::npos) break;
          start = comma + 1;
        }
      } else {
        o.address = text;
      }
    }
    if (const char* v = std::getenv("ECOPT_LISTEN_HOST"); v != nullptr && *v != '\0') {
      o.listen_host = v;
    }
    if (const char* v = std::getenv("ECOPT_JOB_TOKEN"); v != nullptr) o.job_token = v;
    if (const char* v = std::getenv("ECOPT_PAYLOAD_CHECKSUM"); v != nullptr && *v != '\0') {
      o.payload_checksum = env_integer("ECOPT_PAYLOAD_CHECKSUM", v, 0, 1) != 0;
    }
    if (const char* v = std::getenv("ECOPT_TOLERATE_LOST_PEERS"); v != nullptr && *v != '\0') {
      o.tolerate_lost_peers = env_integer("ECOPT_TOLERATE_LOST_PEERS", v, 0, 1) != 0;
    }
    if (const char* v = std::getenv("ECOPT_TIMEOUT_MS"); v != nullptr) {
      o.timeout = std::chrono::milliseconds(env_integer("ECOPT_TIMEOUT_MS", v, 1, 1ll << 40));
    }
    if (const char* v = std::getenv("ECOPT_CONNECT_TIMEOUT_MS"); v != nullptr) {
      o.connect_timeout =
          std::chrono::milliseconds(env_integer("ECOPT_CONNECT_TIMEOUT_MS", v, 1, 1ll << 40));
    }
    if (const char* v = std::getenv("ECOPT_MAX_MESSAGE_BYTES"); v != nullptr) {
      o.max_message_bytes =
          static_cast<std::uint64_t>(env_integer("ECOPT_MAX_MESSAGE_BYTES", v, 1, 1ll << 48));
    }
    if (const char* v = std::getenv("ECOPT_MAX_QUEUED_BYTES"); v != nullptr) {
      o.max_queued_bytes =
          static_cast<std::uint64_t>(env_integer("ECOPT_MAX_QUEUED_BYTES", v, 1, 1ll << 48));
    }
    if (const char* v = std::getenv("ECOPT_PORT_FILE"); v != nullptr) o.port_file = v;
    try {
      o.validate();
    } catch (const invalid_argument& e) {
      throw invalid_argument(std::string(e.what()) + " (from the ECOPT_* environment)");
    }
    return o;
  }

 private:
  static long long env_integer(const char* name, const char* text, long long lo, long long hi) {
    const std::string_view s(text);
    long long v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < lo || v > hi) {
      throw invalid_argument(std::string(name) + "='" + std::string(s) +
                             "' is not an integer in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "]");
    }
    return v;
  }
};

}  // namespace ecopt
