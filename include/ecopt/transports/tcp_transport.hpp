#pragma once
// tcp_transport: a Transport over TCP sockets, one process (or thread) per
// rank, a full mesh of connections (one socket per pair of ranks).
//
// Rendezvous (detail/tcp_rendezvous.hpp): from rank 0's address "host:port"
// (every rank listens on its own ephemeral port and tells rank 0, which sends
// everyone the table) or from an explicit host list, given in tcp_options or
// by the environment (tcp_options::from_environment, scripts/ecopt-launch).
// Every connection is authenticated by a mutual challenge-response over the
// job token (HMAC-SHA-256, detail/tcp_auth.hpp) before world size and rank
// are compared; wrong handshakes are refused with a reason.
//
// Frames (detail/tcp_wire.hpp): a 32-byte header with magic, version, kind,
// sender, tag, length and CRC-32C checksums of header and payload. Every
// field is checked, the length against max_message_bytes; memory for a body
// grows as its bytes arrive, never ahead of them.
//
// Threads: one io thread per transport runs every socket (Boost.Asio).
//  * send() never waits for the receiver or the network, and the caller may
//    reuse its data at once (the same contract as thread_transport). When
//    the peer's link has nothing queued, send() writes the frame itself with
//    one non-blocking gathered sendmsg straight from the caller's data (no
//    copy, no hand-over to the io thread); whatever the socket does not take
//    at once -- and every frame while others wait -- is copied into a pooled
//    buffer and queued. The io thread writes each link's queue with
//    scatter/gather writes (header + payload, up to 8 frames per system call).
//  * The io thread reads every link whenever it is readable, into pooled
//    buffers, and queues each checked message in the link's inbox; recv()
//    takes it with a buffer swap, handing its old buffer back to the pool.
//    So a peer's sends never block on this rank's progress (unbounded
//    buffering, like thread_transport), ring collectives keep both
//    directions of a link busy, and after warm-up neither side allocates.
//  * A recv that finds nothing queued reads the awaited link itself (the
//    link's reader passes between the io thread and the caller; whoever
//    holds it runs the same frame state machine), so a message that arrives
//    while the caller waits costs no hand-off between threads; recv_into
//    then reads the payload straight into the caller's memory, which the
//    collectives use to land chunks in place.
//
// Failures: every recv has a deadline (timeout). A closed socket is noticed
// at once; a peer that failed (its transport was destroyed by an exception:
// it sends `abort`), crashed (connection closed without `goodbye`) or broke
// the protocol makes every pending and later recv and send of this rank
// throw transport_error naming that peer, as in thread_transport; a stalled
// peer is caught by the deadline. A peer that closed normally fails only the
// recvs that wait for it. Closing waits (at most timeout) until queued
// frames are written and every peer has closed too, so no frame is lost.
//
// POSIX only (the io thread is woken through a pipe, which keeps send free of
// allocations). Use one tcp_transport from one thread at a time.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"
#include "ecopt/transports/detail/launcher_environment.hpp"
#include "ecopt/transports/detail/tcp_rendezvous.hpp"
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

namespace detail {

/// A FIFO on a growable circular buffer: pushes reuse slots, so a steady
/// stream of messages does not allocate (std::deque would, per block).
template <class T>
class ring_fifo {
 public:
  explicit ring_fifo(std::size_t capacity = 16) : slots_(capacity) {}
  [[nodiscard]] bool empty() const noexcept { return count_ == 0; }
  [[nodiscard]] std::size_t size() const noexcept { return count_; }
  T& front() noexcept { return slots_[head_]; }
  void pop() noexcept {
    head_ = (head_ + 1) % slots_.size();
    --count_;
  }
  void push(T&& value) {
    if (count_ == slots_.size()) {
      std::vector<T> bigger(2 * slots_.size());
      for (std::size_t i = 0; i < count_; ++i) {
        bigger[i] = std::move(slots_[(head_ + i) % slots_.size()]);
      }
      slots_.swap(bigger);
      head_ = 0;
    }
    slots_[(head_ + count_) % slots_.size()] = std::move(value);
    ++count_;
  }

 private:
  std::vector<T> slots_;
  std::size_t head_ = 0;
  std::size_t count_ = 0;
};

/// Takes the pooled buffer that fits `size` best: the smallest large enough,
/// preferring one whose size() already covers it (resizing it down and up
/// again would zero-fill the difference: a pass over memory per message when
/// sizes alternate, as in recursive halving); else the largest, which then
/// grows. An empty vector if the pool is empty.
inline std::vector<std::byte> take_pooled(std::vector<std::vector<std::byte>>& pool,
                                          std::size_t size) {
  if (pool.empty()) return {};
  std::size_t best = pool.size();
  std::size_t largest = 0;
  // Order of preference: (size() covers it, then capacity) smallest first.
  auto better = [size](const std::vector<std::byte>& a, const std::vector<std::byte>& b) {
    const bool a_filled = a.size() >= size;
    const bool b_filled = b.size() >= size;
    if (a_filled != b_filled) return a_filled;
    return a.capacity() < b.capacity();
  };
  for (std::size_t i = 0; i < pool.size(); ++i) {
    const std::size_t cap = pool[i].capacity();
    if (cap >= size && (best == pool.size() || better(pool[i], pool[best]))) best = i;
    if (cap > pool[largest].capacity()) largest = i;
  }
  const std::size_t pick = best < pool.size() ? best : largest;
  std::vector<std::byte> out = std::move(pool[pick]);
  pool[pick] = std::move(pool.back());
  pool.pop_back();
  return out;  // not cleared: resizing to a message of the same size then writes nothing
}

/// Bytes still to move, without Asio's default cap of 64 KiB per system call.
struct transfer_rest {
  std::size_t total;
  std::size_t operator()(const boost::system::error_code& ec, std::size_t done) const noexcept {
    return ec ? 0 : total - done;
  }
};

/// A buffer sequence over part of an array (Asio copies this, not the array).
struct const_buffer_range {
  using value_type = boost::asio::const_buffer;
  using const_iterator = const boost::asio::const_buffer*;
  const_iterator first;
  const_iterator last;
  [[nodiscard]] const_iterator begin() const noexcept { return first; }
  [[nodiscard]] const_iterator end() const noexcept { return last; }
};

}  // namespace detail

/// One rank's endpoint of a TCP world. Construction performs the rendezvous
/// (blocking up to connect_timeout); destruction says goodbye to every peer.
class tcp_transport {
  using tcp = boost::asio::ip::tcp;
  using error_code = boost::system::error_code;

 public:
  explicit tcp_transport(const tcp_options& options)
      : rank_(options.rank),
        world_(options.world_size),
        timeout_(options.timeout),
        max_message_(options.max_message_bytes),
        max_queued_(options.max_queued_bytes),
        payload_checksum_(options.payload_checksum) {
    options.validate();
    if (world_ == 1) return;  // no peers: nothing to connect
    namespace wire = detail::tcp_wire;
    const bool directory_mode = options.hosts.empty();
    const wire::peer_address own =
        !directory_mode ? wire::parse_host_port(options.hosts[static_cast<std::size_t>(rank_)],
                                                "tcp_options: hosts")
        : rank_ == 0    ? wire::parse_host_port(options.address, "tcp_options: address")
                        : wire::peer_address{options.listen_host, 0};

    tcp::acceptor acceptor(io_);
    listen(acceptor, own);
    if (rank_ == 0) announce_port(options);

    detail::tcp_rendezvous_config cfg;
    cfg.rank = rank_;
    cfg.world = world_;
    cfg.token = options.job_token;
    cfg.directory_mode = directory_mode;
    if (directory_mode) {
      cfg.table.push_back(wire::parse_host_port(options.address, "tcp_options: address"));
      error_code ec;
      const auto a = boost::asio::ip::make_address(options.listen_host, ec);
      cfg.advertised_host = (!ec && a.is_unspecified()) ? std::string() : options.listen_host;
    } else {
      for (const std::string& h : options.hosts) {
        cfg.table.push_back(wire::parse_host_port(h, "tcp_options: hosts"));
      }
    }
    cfg.listen_port = listen_port_;
    cfg.budget = options.connect_timeout;
    cfg.handshake_timeout = options.handshake_timeout;
    cfg.max_pending = options.max_pending_handshakes;
    cfg.deadline = std::chrono::steady_clock::now() + options.connect_timeout;
    auto sockets = detail::tcp_rendezvous(io_, acceptor, std::move(cfg)).run();

    links_.resize(static_cast<std::size_t>(world_));
    for (int j = 0; j < world_; ++j) {
      if (j != rank_) {
        links_[static_cast<std::size_t>(j)] =
            std::make_unique<link>(std::move(*sockets[static_cast<std::size_t>(j)]));
      }
    }
    send_spare_.reserve(4 * static_cast<std::size_t>(world_) + 16);
    recv_spare_.reserve(4 * static_cast<std::size_t>(world_) + 16);

    int fds[2];
    if (::pipe(fds) != 0) {
      throw transport_error(
          "rank " + std::to_string(rank_) +
          ": cannot create the io thread's wake-up pipe: " + std::strerror(errno));
    }
    wake_write_fd_ = fds[1];
    ::fcntl(fds[1], F_SETFL, ::fcntl(fds[1], F_GETFL) | O_NONBLOCK);
    ::fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    ::fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    wake_reader_.emplace(io_, fds[0]);
    if (::pipe(fds) != 0) {
      throw transport_error("rank " + std::to_string(rank_) +
                            ": cannot create the caller's wake-up pipe: " + std::strerror(errno));
    }
    notify_read_fd_ = fds[0];
    notify_write_fd_ = fds[1];
    for (const int fd : fds) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    }

    for (int j = 0; j < world_; ++j) {
      if (j != rank_) serve_reads(j);
    }
    wait_for_wake();
    work_.emplace(io_.get_executor());
    io_thread_ = std::thread([this] { run_io(); });
  }

  tcp_transport(const tcp_transport&) = delete;
  tcp_transport& operator=(const tcp_transport&) = delete;

  ~tcp_transport() {
    if (io_thread_.joinable()) close(std::uncaught_exceptions() > uncaught_at_start_);
    for (const int fd : {wake_write_fd_, notify_read_fd_, notify_write_fd_}) {
      if (fd >= 0) ::close(fd);
    }
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return world_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  /// Payload bytes this rank has sent (as thread_transport counts them).
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return bytes_sent_; }
  /// Bytes of the data frames this rank has sent: payloads plus 32-byte headers.
  [[nodiscard]] std::uint64_t wire_bytes_sent() const noexcept { return wire_bytes_sent_; }
  /// The port this rank listened on during the rendezvous (0 in a world of one).
  [[nodiscard]] std::uint16_t listen_port() const noexcept { return listen_port_; }

  /// Queues a copy of `data` for `to` and returns; never waits for the
  /// receiver. Throws transport_error once a peer failed or `to` has closed.
  void send(int to, message_tag tag, std::span<const std::byte> data) {
    check_peer(to, "send to");
    if (data.size() > max_message_) {
      throw invalid_argument("rank " + std::to_string(rank_) + ": a message of " +
                             std::to_string(data.size()) + " bytes to rank " + std::to_string(to) +
                             " exceeds max_message_bytes = " + std::to_string(max_message_));
    }
    link& l = *links_[static_cast<std::size_t>(to)];
    if (failed_.load(std::memory_order_acquire) || !l.usable.load(std::memory_order_acquire)) {
      std::lock_guard lock(inbox_mutex_);
      const std::string head = "rank " + std::to_string(rank_) + ": cannot send to rank " +
                               std::to_string(to) + " (tag " + detail::tag_text(tag) + "): ";
      if (failed_.load(std::memory_order_relaxed)) throw transport_error(head + failure_);
      throw transport_error(head + "rank " + std::to_string(to) + " has closed its transport");
    }
    send_data(to, tag, data);
    bytes_sent_ += data.size();
    wire_bytes_sent_ += detail::tcp_wire::header_size + data.size();
  }

  /// Replaces `into` with the next message from `from`, which must carry
  /// `tag`. Throws transport_error on a tag mismatch, when `from` has closed
  /// without sending, when any peer failed, or when timeout() passes.
  void recv(int from, message_tag tag, std::vector<std::byte>& into) {
    check_peer(from, "recv from");
    (void)receive(from, tag, &into);
  }

  /// Receives the next message from `from` (which must carry `tag`) into
  /// `into` when it has exactly into.size() bytes -- read from the socket
  /// straight into place when it arrives while this call waits -- and
  /// returns its size. A message of another size is left queued (nothing is
  /// written) and its size returned, for the caller to report. Throws like
  /// recv.
  std::size_t recv_into(int from, message_tag tag, std::span<std::byte> into) {
    check_peer(from, "recv from");
    return receive(from, tag, nullptr, &into).second;
  }

  /// Replaces `into` with the earliest-arrived message carrying `tag` from
  /// any rank and returns its sender. Only each rank's next message is a
  /// candidate (per-pair FIFO order holds); messages with other tags stay
  /// queued. Throws transport_error like recv, or once every peer has closed.
  int recv_any(message_tag tag, std::vector<std::byte>& into) {
    if (world_ == 1) {
      throw invalid_argument("rank 0: recv_any in a world of one rank has no peer to receive from");
    }
    return receive(-1, tag, &into).first;
  }

 private:
  using frame_kind = detail::tcp_wire::frame_kind;
  static constexpr std::size_t max_batch = 8;    // frames per gathered write
  static constexpr std::size_t min_buffers = 8;  // first growth of a buffer pool
  // Largest read of a message body: the piece is checksummed right after it
  // arrives, while it is in the core's cache.
  static constexpr std::size_t body_piece = std::size_t{256} << 10;
  // Spare send buffers made in advance get at most this much capacity (they
  // grow on first use beyond it), so one huge message does not reserve many.
  static constexpr std::size_t spare_reserve_cap = std::size_t{4} << 20;

  enum class link_state : std::uint8_t { open, closed, failed };

  // Who reads a link's socket. The io thread reads every link it can; a
  // caller waiting for a message from one peer reads that link itself (no
  // hand-off through the io thread, and recv_into lands the payload in its
  // final place). `parked`: a caller owns it and the io thread, having found
  // it taken, stopped watching; the caller then hands it back.
  enum class reader_state : std::uint8_t { free, owned, owned_io_parked };
  enum class pump_result : std::uint8_t { would_block, delivered, stopped, paused };

  struct outgoing {
    detail::tcp_wire::header_bytes header{};
    std::size_t header_skip = 0;     ///< header bytes written already (by send_data)
    std::vector<std::byte> payload;  ///< what remains of the payload to write
  };

  struct message {
    message_tag tag = 0;
    std::uint64_t sequence = 0;  // arrival order, for recv_any
    std::vector<std::byte> data;
  };

  struct link {
    explicit link(tcp::socket s) : socket(std::move(s)), descriptor(socket.native_handle()) {}
    tcp::socket socket;  // io thread only
    // For send_data's direct writes, under send_mutex_; close_socket sets
    // descriptor_closed first, so the number is never used once closed.
    int descriptor;
    bool descriptor_closed = false;
    // Send side, guarded by send_mutex_ (inflight: io thread while writing).
    detail::ring_fifo<outgoing> queue;
    std::array<outgoing, max_batch> inflight{};
    std::size_t inflight_count = 0;
    std::array<boost::asio::const_buffer, 2 * max_batch> write_buffers{};
    bool writing = false;
    bool write_dead = false;  // a write failed: the queue is dropped
    // Receive side: whoever owns the reader (see reader_state) -- the io
    // thread, or a caller waiting for a message from this peer.
    std::atomic<reader_state> reader{reader_state::free};
    detail::tcp_wire::header_bytes header_in{};
    std::size_t header_done = 0;  // bytes of header_in read so far
    detail::tcp_wire::frame_header frame{};
    std::vector<std::byte> body;
    std::size_t body_done = 0;   // bytes of the body read so far
    std::uint32_t body_crc = 0;  // CRC-32C register over them
    bool read_stopped = false;   // after a goodbye or a failure: nothing more is read
    // A caller's recv_into: the next data frame with target_tag and exactly
    // target.size() bytes is read straight into target (set only while that
    // caller owns the reader).
    std::span<std::byte> target{};
    message_tag target_tag = 0;
    bool body_in_target = false;
    bool target_filled = false;
    // io thread only: an async_wait for readability is pending.
    bool watching = false;
    // Requests to the io thread (handled when woken): read the link again (a
    // caller handed it back), close the socket (a reader found it broken).
    std::atomic<bool> serve_requested{false};
    std::atomic<bool> close_requested{false};
    // Inbox, guarded by inbox_mutex_ (paused is read by the reader without it).
    detail::ring_fifo<message> messages;
    std::uint64_t queued_bytes = 0;   // of the messages
    std::atomic<bool> paused{false};  // queued_bytes reached max_queued_: reading stops
    link_state state = link_state::open;
    std::string closed_reason;  // why the link failed
    // For send(): false once the link is closed or failed.
    std::atomic<bool> usable{true};
  };

  // --- construction -----------------------------------------------------------

  void listen(tcp::acceptor& acceptor, const detail::tcp_wire::peer_address& at) {
    const std::string where = detail::tcp_wire::format_host_port(at.host, at.port);
    try {
      tcp::resolver resolver(io_);
      const auto endpoints =
          resolver.resolve(at.host, std::to_string(at.port),
                           tcp::resolver::passive | tcp::resolver::numeric_service);
      const tcp::endpoint endpoint = endpoints.begin()->endpoint();
      acceptor.open(endpoint.protocol());
      acceptor.set_option(tcp::acceptor::reuse_address(true));
      acceptor.bind(endpoint);
      acceptor.listen();
      listen_port_ = acceptor.local_endpoint().port();
    } catch (const boost::system::system_error& e) {
      throw transport_error("rank " + std::to_string(rank_) + ": cannot listen on " + where + ": " +
                            e.code().message());
    }
  }

  void announce_port(const tcp_options& options) {
    if (!options.port_file.empty()) {
      // Written to a temporary name and renamed, so a reader never sees half a number.
      const std::string tmp = options.port_file + ".tmp";
      std::FILE* f = std::fopen(tmp.c_str(), "w");
      bool ok = f != nullptr;
      if (ok) {
        ok = std::fprintf(f, "%u\n", static_cast<unsigned>(listen_port_)) > 0;
        ok = std::fclose(f) == 0 && ok;
      }
      if (!ok || std::rename(tmp.c_str(), options.port_file.c_str()) != 0) {
        throw transport_error("rank 0: cannot write the port file '" + options.port_file +
                              "': " + std::strerror(errno));
      }
    }
    if (options.on_listening) options.on_listening(listen_port_);
  }

  // --- user side --------------------------------------------------------------

  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= world_) {
      throw invalid_argument("rank " + std::to_string(rank_) + ": " + what + " rank " +
                             std::to_string(peer) + " is out of range (world size " +
                             std::to_string(world_) + ")");
    }
    if (peer == rank_) {
      throw invalid_argument("rank " + std::to_string(rank_) + ": " + what +
                             " itself is not allowed");
    }
  }

  /// Sends a data frame: written straight from `data` while the link is
  /// idle, the rest (or all of it) queued for the io thread.
  void send_data(int to, message_tag tag, std::span<const std::byte> data) {
    link& l = *links_[static_cast<std::size_t>(to)];
    const detail::tcp_wire::header_bytes header = detail::tcp_wire::make_header(
        frame_kind::data, static_cast<std::uint32_t>(rank_), tag, data, payload_checksum_);
    std::size_t written = 0;
    {
      std::lock_guard lock(send_mutex_);
      // Frames queued or being written go first; a dead link drops frames.
      if (l.writing || !l.queue.empty() || l.write_dead || l.descriptor_closed) {
        written = 0;
      } else {
        written = write_now(l.descriptor, header, data);
        if (written == header.size() + data.size()) return;
      }
    }
    // The socket's buffer is full (or the link busy): queue what is left. No
    // other thread queues data frames, so nothing can get in between.
    if (written < header.size()) {
      enqueue(to, frame_kind::data, tag, data, &header, written);
    } else {
      enqueue(to, frame_kind::data, tag, data.subspan(written - header.size()), &header,
              header.size());
    }
  }

  /// Writes header + data with non-blocking gathered sends until the socket
  /// takes no more; returns the bytes written. Errors stop it quietly: the
  /// io thread's write of the rest meets them and fails the link as usual.
  static std::size_t write_now(int descriptor, const detail::tcp_wire::header_bytes& header,
                               std::span<const std::byte> data) noexcept {
    const std::size_t total = header.size() + data.size();
    std::size_t done = 0;
    while (done < total) {
      iovec parts[2];
      int count = 0;
      if (done < header.size()) {
        parts[count++] = {const_cast<std::byte*>(header.data()) + done, header.size() - done};
        if (!data.empty()) parts[count++] = {const_cast<std::byte*>(data.data()), data.size()};
      } else {
        const std::size_t offset = done - header.size();
        parts[count++] = {const_cast<std::byte*>(data.data()) + offset, data.size() - offset};
      }
      msghdr message{};
      message.msg_iov = parts;
      message.msg_iovlen = static_cast<decltype(message.msg_iovlen)>(count);
      const ssize_t n = ::sendmsg(descriptor, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        break;  // EAGAIN: the socket buffer is full; an error: see above
      }
    }
    return done;
  }

  /// Copies `data` into a pooled buffer, frames it and queues it for `to`.
  /// With `header` given, `data` is what remains of that frame's payload after
  /// header_skip bytes of the header (and, when all of it, part of the
  /// payload) were written by send_data.
  void enqueue(int to, frame_kind kind, message_tag tag, std::span<const std::byte> data,
               const detail::tcp_wire::header_bytes* header = nullptr,
               std::size_t header_skip = 0) {
    link& l = *links_[static_cast<std::size_t>(to)];
    outgoing frame;
    std::size_t extra = 0;
    if (!data.empty()) {
      std::lock_guard lock(send_mutex_);
      if (!send_spare_.empty()) {
        frame.payload = detail::take_pooled(send_spare_, data.size());
      } else {
        // Every buffer is queued or being written. How many that is depends
        // on the io thread's timing, so make several at once (at least
        // min_buffers, then doubling, as thread_transport does): a later,
        // slightly higher peak still finds a spare, and memory stays within
        // twice the peak.
        const std::size_t target = std::max(2 * send_buffers_ + 1, min_buffers);
        extra = target - send_buffers_ - 1;
        send_buffers_ = target;
      }
    }
    // Allocate and copy outside the lock: the io thread recycles buffers meanwhile.
    std::vector<std::vector<std::byte>> extras(extra);
    for (auto& e : extras) e.reserve(std::min(data.size(), spare_reserve_cap));
    frame.payload.assign(data.begin(), data.end());  // within capacity after warm-up
    if (header != nullptr) {
      frame.header = *header;
      frame.header_skip = header_skip;
    } else {
      frame.header = detail::tcp_wire::make_header(kind, static_cast<std::uint32_t>(rank_), tag,
                                                   frame.payload);
    }
    {
      std::lock_guard lock(send_mutex_);
      if (extra > 0) {
        if (send_spare_.capacity() < send_buffers_) send_spare_.reserve(2 * send_buffers_);
        for (auto& e : extras) send_spare_.push_back(std::move(e));
      }
      if (l.write_dead) {
        recycle_send_buffer(std::move(frame.payload));
        return;
      }
      l.queue.push(std::move(frame));
    }
    wake();
  }

  /// Wakes the io thread to look at the send queues; one byte in the pipe
  /// stands for any number of sends until the io thread has looked.
  void wake() noexcept {
    if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) {
      const char byte = 1;
      [[maybe_unused]] const auto written = ::write(wake_write_fd_, &byte, 1);
    }
  }

  /// recv, recv_any (from = -1) and recv_into. The message goes to `into`
  /// (a buffer swap), or with `target` given, is copied there when it has
  /// target->size() bytes -- read straight from the socket into it when the
  /// caller is the one reading -- and left queued otherwise. Returns the
  /// sender and the message's size.
  std::pair<int, std::size_t> receive(int from, message_tag tag, std::vector<std::byte>* into,
                                      std::span<std::byte>* target = nullptr) {
    enum class outcome { received, wrong_tag, world_failed, peer_closed, timed_out };
    outcome result = outcome::received;
    int source = from;
    std::size_t size = 0;
    message_tag actual_tag = tag;
    std::string failure;
    {
      std::unique_lock lock(inbox_mutex_);
      const auto deadline = std::chrono::steady_clock::now() + timeout_;
      bool timed_out = false;
      for (;;) {
        message* m = nullptr;
        if (from >= 0) {
          link& l = *links_[static_cast<std::size_t>(from)];
          if (!l.messages.empty()) m = &l.messages.front();
        } else {
          std::tie(m, source) = earliest_with_tag(tag);
        }
        if (m != nullptr) {
          actual_tag = m->tag;
          size = m->data.size();
          if (actual_tag != tag) {
            result = outcome::wrong_tag;
          } else if (target != nullptr) {
            if (size == target->size()) {
              if (size > 0) std::memcpy(target->data(), m->data.data(), size);
              if (m->data.capacity() > 0 && recv_spare_.size() < recv_spare_.capacity()) {
                recv_spare_.push_back(std::move(m->data));
              }
              taken(source, size);
            }
          } else {
            into->swap(m->data);
            taken(source, size);
            // Recycle the caller's old buffer. The pool has room for every
            // buffer the io thread made; a buffer the caller brought in
            // beyond that is freed here rather than grow the pool.
            if (m->data.capacity() > 0 && recv_spare_.size() < recv_spare_.capacity()) {
              recv_spare_.push_back(std::move(m->data));
            }
          }
          break;
        }
        // The awaited peer's own failure is the most precise report; else
        // the first failure in the world, as thread_transport reports it.
        if (from >= 0 && links_[static_cast<std::size_t>(from)]->state == link_state::failed) {
          result = outcome::world_failed;
          failure = links_[static_cast<std::size_t>(from)]->closed_reason;
          break;
        }
        if (failed_.load(std::memory_order_relaxed)) {
          result = outcome::world_failed;
          failure = failure_;
          break;
        }
        if (peers_closed(from)) {
          result = outcome::peer_closed;
          break;
        }
        if (timed_out) {
          result = outcome::timed_out;
          break;
        }
        if (from < 0) {
          // recv_any: the io thread reads every link.
          timed_out = inbox_cv_.wait_until(lock, deadline) == std::cv_status::timeout;
          continue;
        }
        // Read the awaited link here rather than wait for the io thread to
        // read it and wake this thread.
        lock.unlock();
        const bool filled =
            read_link(from, deadline, target != nullptr ? *target : std::span<std::byte>{}, tag);
        lock.lock();
        if (filled) {
          size = target->size();
          break;
        }
        timed_out = std::chrono::steady_clock::now() >= deadline;
      }
    }
    if (result == outcome::received) return {source, size};
    const std::string me = "rank " + std::to_string(rank_) + ": ";
    const std::string peer = from >= 0 ? "rank " + std::to_string(from) : "any rank";
    const std::string wanted = "a message from " + peer + " (tag " + detail::tag_text(tag) + ")";
    switch (result) {
      case outcome::wrong_tag:
        throw transport_error(me + "protocol mismatch: expected tag " + detail::tag_text(tag) +
                              " from rank " + std::to_string(source) +
                              " but its next message has tag " + detail::tag_text(actual_tag));
      case outcome::world_failed:
        throw transport_error(me + failure + " (while waiting for " + wanted + ")");
      case outcome::peer_closed:
        throw transport_error(me + (from >= 0 ? peer + " has" : "every other rank has") +
                              " closed its transport without sending " + wanted);
      case outcome::timed_out:
      default:
        throw transport_error(me + "timed out after " + std::to_string(timeout_.count()) +
                              " ms waiting for " + wanted);
    }
  }

  /// Under inbox_mutex_: the head of link j's inbox, of `size` bytes, was
  /// taken; a paused link reads again once half its queue has gone.
  void taken(int j, std::size_t size) {
    link& l = *links_[static_cast<std::size_t>(j)];
    l.messages.pop();
    l.queued_bytes -= size;
    if (l.paused.load(std::memory_order_relaxed) && l.queued_bytes < max_queued_ / 2 + 1) {
      l.paused.store(false, std::memory_order_release);
      l.serve_requested.store(true, std::memory_order_release);
      wake();
    }
  }

  /// Under inbox_mutex_: the earliest-arrived FIFO head carrying `tag`.
  std::pair<message*, int> earliest_with_tag(message_tag tag) {
    std::pair<message*, int> best{nullptr, -1};
    for (int j = 0; j < world_; ++j) {
      if (j == rank_) continue;
      link& l = *links_[static_cast<std::size_t>(j)];
      if (l.messages.empty()) continue;
      message& m = l.messages.front();
      if (m.tag != tag) continue;
      if (best.first == nullptr || m.sequence < best.first->sequence) best = {&m, j};
    }
    return best;
  }

  /// Under inbox_mutex_: has `from` (or, for -1, every peer) closed?
  [[nodiscard]] bool peers_closed(int from) const {
    if (from >= 0) return links_[static_cast<std::size_t>(from)]->state != link_state::open;
    for (int j = 0; j < world_; ++j) {
      if (j != rank_ && links_[static_cast<std::size_t>(j)]->state == link_state::open)
        return false;
    }
    return true;
  }

  void recycle_send_buffer(std::vector<std::byte>&& buffer) {
    if (buffer.capacity() > 0) send_spare_.push_back(std::move(buffer));
  }

  /// Says goodbye (or abort, while an exception propagates), lets the queued
  /// frames go out, waits for the peers to close, and stops the io thread.
  void close(bool failing) noexcept {
    try {
      std::string reason = "its transport was destroyed while an exception was propagating";
      std::vector<bool> tell(static_cast<std::size_t>(world_), false);
      {
        std::lock_guard lock(inbox_mutex_);
        // Nobody takes messages now: drop them, and read paused links again,
        // so that the peers' goodbyes are seen.
        closing_ = true;
        for (int j = 0; j < world_; ++j) {
          if (j == rank_) continue;
          link& l = *links_[static_cast<std::size_t>(j)];
          while (!l.messages.empty()) l.messages.pop();
          l.queued_bytes = 0;
          if (l.paused.exchange(false, std::memory_order_acq_rel)) {
            l.serve_requested.store(true, std::memory_order_release);
            wake();
          }
        }
        // Pass on the failure this rank saw, if any: peers then learn the root cause.
        if (failing && failed_.load(std::memory_order_relaxed))
          reason += "; it had seen: " + failure_;
        reason.resize(std::min(reason.size(), detail::tcp_wire::max_reason_length));
        // Peers that said goodbye first still read until ours comes: tell them too.
        for (int j = 0; j < world_; ++j) {
          tell[static_cast<std::size_t>(j)] =
              j != rank_ && links_[static_cast<std::size_t>(j)]->state != link_state::failed;
        }
      }
      for (int j = 0; j < world_; ++j) {
        if (!tell[static_cast<std::size_t>(j)]) continue;
        if (failing) {
          enqueue(j, frame_kind::abort, 0, std::as_bytes(std::span(reason.data(), reason.size())));
        } else {
          enqueue(j, frame_kind::goodbye, 0, {});
        }
      }
      const auto deadline = std::chrono::steady_clock::now() + timeout_;
      {
        std::unique_lock lock(send_mutex_);
        flush_cv_.wait_until(lock, deadline, [&] {
          for (int j = 0; j < world_; ++j) {
            if (j == rank_) continue;
            const link& l = *links_[static_cast<std::size_t>(j)];
            if (!l.write_dead && (l.writing || !l.queue.empty())) return false;
          }
          return true;
        });
      }
      {
        std::unique_lock lock(inbox_mutex_);
        inbox_cv_.wait_until(lock, deadline, [&] { return peers_closed(-1); });
      }
    } catch (...) {
      // Closing goes on regardless: the sockets close below.
    }
    io_.stop();
    io_thread_.join();
  }

  // --- io thread --------------------------------------------------------------

  void run_io() noexcept {
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        fail_all(std::string("internal error in the io thread: ") + e.what());
      } catch (...) {
        fail_all("internal error in the io thread");
      }
    }
  }

  void wait_for_wake() {
    wake_reader_->async_read_some(boost::asio::buffer(wake_buffer_),
                                  [this](const error_code& ec, std::size_t) {
                                    if (ec) return;
                                    // Reset before looking, so a send that comes
                                    // after the look writes to the pipe again.
                                    wake_pending_.store(false, std::memory_order_release);
                                    for (int j = 0; j < world_; ++j) {
                                      if (j == rank_) continue;
                                      start_write(j);
                                      link& l = *links_[static_cast<std::size_t>(j)];
                                      const bool serve = l.serve_requested.exchange(false);
                                      if (serve || (l.close_requested.load() && l.socket.is_open()))
                                        serve_reads(j);
                                    }
                                    wait_for_wake();
                                  });
  }

  void start_write(int j) {
    link& l = *links_[static_cast<std::size_t>(j)];
    std::size_t total = 0;
    std::size_t buffers = 0;
    {
      std::lock_guard lock(send_mutex_);
      if (l.writing || l.write_dead || l.queue.empty()) return;
      std::size_t n = 0;
      while (n < max_batch && !l.queue.empty()) {
        l.inflight[n++] = std::move(l.queue.front());
        l.queue.pop();
      }
      l.inflight_count = n;
      l.writing = true;
      for (std::size_t i = 0; i < n; ++i) {
        const outgoing& f = l.inflight[i];
        if (f.header_skip < f.header.size()) {
          l.write_buffers[buffers++] = boost::asio::buffer(f.header) + f.header_skip;
        }
        if (!f.payload.empty()) l.write_buffers[buffers++] = boost::asio::buffer(f.payload);
        total += f.header.size() - f.header_skip + f.payload.size();
      }
    }
    boost::asio::async_write(
        l.socket,
        detail::const_buffer_range{l.write_buffers.data(), l.write_buffers.data() + buffers},
        detail::transfer_rest{total},
        [this, j](const error_code& ec, std::size_t) { on_written(j, ec); });
  }

  void on_written(int j, const error_code& ec) {
    link& l = *links_[static_cast<std::size_t>(j)];
    {
      std::lock_guard lock(send_mutex_);
      for (std::size_t i = 0; i < l.inflight_count; ++i) {
        recycle_send_buffer(std::move(l.inflight[i].payload));
      }
      l.inflight_count = 0;
      l.writing = false;
      if (ec) {
        l.write_dead = true;
        while (!l.queue.empty()) {
          recycle_send_buffer(std::move(l.queue.front().payload));
          l.queue.pop();
        }
      }
    }
    flush_cv_.notify_all();
    if (ec) {
      on_write_error(j, ec);
      return;
    }
    start_write(j);
  }

  // --- reading ----------------------------------------------------------------
  //
  // One state machine per link (pump) reads frames with non-blocking recv
  // calls, run by whoever owns the link's reader: the io thread whenever the
  // socket is readable, or a caller waiting for that peer (read_link). The
  // io thread's waits are edge-triggered (Asio's epoll reactor), so it always
  // reads until the socket is empty before it waits: bytes that came while a
  // caller owned the link are then never left unannounced.

  /// Takes the reader for the io thread; false (and parked) if a caller has it.
  static bool acquire_reader_io(link& l) noexcept {
    for (;;) {
      reader_state expected = reader_state::free;
      if (l.reader.compare_exchange_strong(expected, reader_state::owned,
                                           std::memory_order_acquire)) {
        return true;
      }
      if (expected == reader_state::owned_io_parked) return false;
      // A caller owns it: park (it hands the link back when done), unless it
      // was handed back just now -- then try again.
      if (l.reader.compare_exchange_strong(expected, reader_state::owned_io_parked,
                                           std::memory_order_acq_rel)) {
        return false;
      }
    }
  }

  /// Takes the reader for the caller; the io thread holds it only while it
  /// reads what has arrived. False if it is still taken at the deadline.
  static bool acquire_reader_caller(link& l,
                                    std::chrono::steady_clock::time_point deadline) noexcept {
    for (;;) {
      reader_state expected = reader_state::free;
      if (l.reader.compare_exchange_strong(expected, reader_state::owned,
                                           std::memory_order_acquire)) {
        return true;
      }
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::yield();
    }
  }

  /// The caller hands the reader back; if the io thread parked meanwhile, it
  /// is asked to read (and watch) the link again.
  void release_reader_caller(int j) noexcept {
    link& l = *links_[static_cast<std::size_t>(j)];
    if (l.reader.exchange(reader_state::free, std::memory_order_acq_rel) ==
        reader_state::owned_io_parked) {
      l.serve_requested.store(true, std::memory_order_release);
      wake();
    }
  }

  /// The caller reads link `from` itself until a message is delivered (to
  /// its inbox, or into `target`: then it returns true), the link or the
  /// world changes state, or the deadline passes; the caller's loop in
  /// receive() then looks.
  bool read_link(int from, std::chrono::steady_clock::time_point deadline,
                 std::span<std::byte> target, message_tag target_tag) {
    link& l = *links_[static_cast<std::size_t>(from)];
    if (!acquire_reader_caller(l, deadline)) return false;
    // Whatever happens below, the target is detached and the reader handed
    // back (pump and detach_target do not throw; this is for what they call).
    struct hand_back {
      tcp_transport& self;
      int from;
      ~hand_back() {
        self.detach_target(from);
        self.release_reader_caller(from);
      }
    } guard{*this, from};
    bool filled = false;
    bool look_first = false;
    {
      // The io thread may have delivered (or failed the link) just before.
      std::lock_guard lock(inbox_mutex_);
      look_first = !l.messages.empty() || l.state != link_state::open;
    }
    if (!look_first && !l.read_stopped) {
      l.target = target;
      l.target_tag = target_tag;
      l.target_filled = false;
      for (;;) {
        // Reset before reading and looking, so a failure after the look
        // writes to the pipe again.
        if (notify_pending_.exchange(false, std::memory_order_acq_rel)) drain_notify();
        if (pump(from, true) != pump_result::would_block) break;
        if (failed_.load(std::memory_order_acquire)) break;
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        pollfd watched[2] = {{l.descriptor, POLLIN, 0}, {notify_read_fd_, POLLIN, 0}};
        const int wait_ms = static_cast<int>(std::min<long long>(left.count(), 1 << 30));
        if (::poll(watched, 2, wait_ms) == 0) break;  // (EINTR: read and look again)
      }
      filled = l.target_filled;
      l.target_filled = false;
    }
    return filled;
  }

  /// Before the caller hands the reader back: a body being read into its
  /// target moves to a pooled buffer (the rest arrives there), so nobody
  /// writes the caller's memory once it has returned.
  void detach_target(int j) noexcept {
    link& l = *links_[static_cast<std::size_t>(j)];
    if (l.body_in_target) {
      l.body_in_target = false;
      try {
        std::vector<std::byte> body;
        {
          std::lock_guard lock(inbox_mutex_);
          body = detail::take_pooled(recv_spare_, l.target.size());
        }
        body.resize(std::max(l.body_done, std::min(l.target.size(), body.capacity())));
        std::memcpy(body.data(), l.target.data(), l.body_done);
        l.body = std::move(body);
      } catch (const std::exception& e) {
        reading_broke(j, e.what());
      }
    }
    l.target = {};
  }

  /// Reading link j threw (out of memory, say): the frame is lost, so the
  /// link fails naming the peer -- never an exception out of the reader, which
  /// would leave the link's reader taken.
  void reading_broke(int j, const char* what) noexcept {
    link& l = *links_[static_cast<std::size_t>(j)];
    l.read_stopped = true;
    try {
      fail_and_close(j, "cannot take a frame from rank " + std::to_string(j) + ": " + what);
    } catch (...) {
      // No memory even for the message: fail with a short one (no allocation).
      {
        std::lock_guard lock(inbox_mutex_);
        if (l.state == link_state::open) {
          l.state = link_state::failed;
          l.closed_reason = "out of memory";
          l.usable.store(false, std::memory_order_release);
          if (!failed_.load(std::memory_order_relaxed)) {
            failure_ = "out of memory";
            failed_.store(true, std::memory_order_release);
          }
        }
      }
      inbox_cv_.notify_all();
      notify_caller();
      l.close_requested.store(true, std::memory_order_release);
      wake();
    }
  }

  void drain_notify() noexcept {
    char bytes[64];
    while (::read(notify_read_fd_, bytes, sizeof bytes) > 0) {
    }
  }

  /// io thread: reads what link j has, then waits for more; closes the
  /// socket when a reader asked for it.
  void serve_reads(int j) {
    link& l = *links_[static_cast<std::size_t>(j)];
    if (!l.socket.is_open() || !acquire_reader_io(l)) return;
    if (l.close_requested.load(std::memory_order_acquire)) {
      close_socket(j);  // under the reader, so no caller reads the descriptor meanwhile
      l.read_stopped = true;
      l.reader.store(reader_state::free, std::memory_order_release);
      return;
    }
    const pump_result r = pump(j, false);
    l.reader.store(reader_state::free, std::memory_order_release);
    // Paused: recv asks for the link to be served again (taken()).
    if (r == pump_result::stopped || r == pump_result::paused || l.watching) return;
    l.watching = true;
    l.socket.async_wait(tcp::socket::wait_read, [this, j](const error_code& ec) {
      links_[static_cast<std::size_t>(j)]->watching = false;
      if (ec == boost::asio::error::operation_aborted) return;  // the socket closed
      serve_reads(j);                                           // an error shows in the read
    });
  }

  /// Reads frames from link j until its socket is empty (the io thread) or a
  /// message was delivered (a caller: it returns to take it). Owner only.
  pump_result pump(int j, bool for_caller) noexcept {
    try {
      return pump_frames(j, for_caller);
    } catch (const std::exception& e) {
      reading_broke(j, e.what());
    } catch (...) {
      reading_broke(j, "unknown exception");
    }
    return pump_result::stopped;
  }

  pump_result pump_frames(int j, bool for_caller) {
    namespace wire = detail::tcp_wire;
    link& l = *links_[static_cast<std::size_t>(j)];
    bool delivered = false;
    while (!l.read_stopped) {
      // Between frames: a full inbox stops reading (back-pressure).
      if (l.header_done == 0 && l.paused.load(std::memory_order_acquire)) {
        return delivered ? pump_result::delivered : pump_result::paused;
      }
      std::byte* into = nullptr;
      std::size_t want = 0;
      const bool in_header = l.header_done < l.header_in.size();
      if (in_header) {
        into = l.header_in.data() + l.header_done;
        want = l.header_in.size() - l.header_done;
      } else {
        want = std::min(static_cast<std::size_t>(l.frame.length) - l.body_done, body_piece);
        if (!l.body_in_target) {
          if (l.body_done == l.body.size()) grow_body(l);
          want = std::min(want, l.body.size() - l.body_done);
        }
        into = (l.body_in_target ? l.target.data() : l.body.data()) + l.body_done;
      }
      const ssize_t n = ::recv(l.descriptor, into, want, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          return delivered ? pump_result::delivered : pump_result::would_block;
        }
        read_failed(j, "connection to rank " + std::to_string(j) +
                           " lost while reading from it: " + std::strerror(errno));
        break;
      }
      if (n == 0) {
        read_failed(j, "rank " + std::to_string(j) +
                           " closed the connection without a goodbye (it exited, crashed or was "
                           "killed)");
        break;
      }
      const auto got = static_cast<std::size_t>(n);
      if (in_header) {
        l.header_done += got;
        if (l.header_done < l.header_in.size() || !begin_frame(j)) continue;
      } else {
        if (wire::payload_checked(l.frame)) {
          l.body_crc = detail::crc32c_update(l.body_crc, std::span<const std::byte>(into, got));
        }
        l.body_done += got;
      }
      if (l.body_done == l.frame.length && finish_frame(j)) {
        delivered = true;
        if (for_caller) return pump_result::delivered;
      }
    }
    return pump_result::stopped;
  }

  /// A complete header: checks it and prepares the body's destination.
  /// False when the link stops here (goodbye, protocol error).
  bool begin_frame(int j) {
    link& l = *links_[static_cast<std::size_t>(j)];
    try {
      l.frame = detail::tcp_wire::parse_header(l.header_in, max_message_);
    } catch (const transport_error& e) {
      protocol_failed(j, e.what());
      return false;
    }
    const detail::tcp_wire::frame_header& h = l.frame;
    if (h.sender != static_cast<std::uint32_t>(j)) {
      protocol_failed(j, "a frame on its connection names sender rank " + std::to_string(h.sender));
      return false;
    }
    switch (h.kind) {
      case frame_kind::data:
        break;
      case frame_kind::goodbye:
        if (h.length != 0) {
          protocol_failed(j,
                          "goodbye frame with a payload of " + std::to_string(h.length) + " bytes");
          return false;
        }
        l.read_stopped = true;  // nothing follows a goodbye
        mark_closed(j);
        return false;
      case frame_kind::abort:
      case frame_kind::reject:  // (the rendezvous refused this rank after all: a rank claimed
                                // twice)
        if (h.length > detail::tcp_wire::max_reason_length) {
          protocol_failed(j, std::string(detail::tcp_wire::kind_name(h.kind)) + " frame length " +
                                 std::to_string(h.length) + " bytes exceeds the maximum of " +
                                 std::to_string(detail::tcp_wire::max_reason_length));
          return false;
        }
        break;
      default:
        protocol_failed(j, std::string("unexpected ") + detail::tcp_wire::kind_name(h.kind) +
                               " frame after the handshake");
        return false;
    }
    const auto length = static_cast<std::size_t>(h.length);
    l.body_done = 0;
    l.body_crc = 0xFFFFFFFFu;
    l.body_in_target = h.kind == frame_kind::data && !l.target_filled &&
                       l.target.data() != nullptr && h.tag == l.target_tag &&
                       length == l.target.size();
    if (l.body_in_target) return true;
    if (length > 0) {
      std::lock_guard lock(inbox_mutex_);
      if (!recv_spare_.empty()) {
        l.body = detail::take_pooled(recv_spare_, length);
      } else if (recv_spare_.capacity() < ++recv_buffers_ + min_buffers) {
        // A new buffer (made below): keep room in the pool for all of them,
        // so that recv's push never reallocates.
        recv_spare_.reserve(2 * recv_buffers_ + min_buffers);
      }
    }
    // Memory follows the bytes that arrive, not the length a header declares
    // (a forged header must not cost a gigabyte): a buffer that holds the
    // whole body already is used as it is -- the steady state, with pooled
    // buffers -- else it starts at what it has and grows as the body arrives
    // (grow_body). resize zero-fills only bytes beyond the buffer's previous
    // size: none when sizes repeat.
    l.body.resize(std::min(length, std::max(l.body.capacity(), body_piece)));
    return true;
  }

  /// The body filled its buffer and more is due: doubles it (at most to the
  /// frame's length), so a body costs at most twice the bytes that arrived.
  static void grow_body(link& l) {
    const auto length = static_cast<std::size_t>(l.frame.length);
    l.body.resize(std::min(length, std::max(2 * l.body.size(), body_piece)));
  }

  /// A complete body: checks it and delivers it (into the caller's target or
  /// the inbox). True when a message was delivered.
  bool finish_frame(int j) {
    link& l = *links_[static_cast<std::size_t>(j)];
    l.header_done = 0;
    const std::size_t length = l.body_done;
    try {
      detail::tcp_wire::check_payload_crc(l.frame, length, ~l.body_crc);
    } catch (const transport_error& e) {
      protocol_failed(j, e.what());
      return false;
    }
    if (l.frame.kind == frame_kind::abort || l.frame.kind == frame_kind::reject) {
      const std::string_view reason(reinterpret_cast<const char*>(l.body.data()), length);
      read_failed(j,
                  "peer rank " + std::to_string(j) +
                      (l.frame.kind == frame_kind::abort ? " failed: "
                                                         : " refused this rank at the end of the "
                                                           "rendezvous: ") +
                      detail::tcp_wire::printable(reason));
      return false;
    }
    if (l.body_in_target) {
      l.body_in_target = false;
      l.target_filled = true;
      return true;
    }
    {
      std::lock_guard lock(inbox_mutex_);
      if (closing_) {
        // Nobody will take it: the link is read only for the peer's goodbye.
        if (l.body.capacity() > 0 && recv_spare_.size() < recv_spare_.capacity()) {
          recv_spare_.push_back(std::move(l.body));
        }
        l.body = {};
        return false;
      }
      l.queued_bytes += length;
      l.messages.push(message{l.frame.tag, arrivals_++, std::move(l.body)});
      if (l.queued_bytes >= max_queued_) l.paused.store(true, std::memory_order_release);
    }
    inbox_cv_.notify_all();
    return true;
  }

  /// The reader found link j broken: fails it, stops reading, and asks the
  /// io thread to close the socket.
  void read_failed(int j, const std::string& what) {
    links_[static_cast<std::size_t>(j)]->read_stopped = true;
    fail_and_close(j, what);
  }

  void protocol_failed(int j, const std::string& what) {
    // The stream can no longer be trusted: the socket is closed too.
    read_failed(j, "rank " + std::to_string(j) + " broke the frame protocol: " + what);
  }

  void on_write_error(int j, const error_code& ec) {
    if (ec == boost::asio::error::operation_aborted) return;  // this side closed it
    fail_and_close(j, "connection to rank " + std::to_string(j) +
                          " lost while writing to it: " + ec.message());
  }

  /// Fails link j and asks the io thread to close its socket (it does so
  /// while holding the link's reader).
  void fail_and_close(int j, const std::string& what) {
    fail_link(j, what);
    links_[static_cast<std::size_t>(j)]->close_requested.store(true, std::memory_order_release);
    wake();
  }

  void close_socket(int j) {
    error_code ignored;
    link& l = *links_[static_cast<std::size_t>(j)];
    {
      std::lock_guard lock(send_mutex_);  // not while send_data writes to it
      l.descriptor_closed = true;
    }
    l.socket.shutdown(tcp::socket::shutdown_both, ignored);
    l.socket.close(ignored);
  }

  /// Wakes a caller polling a link (read_link) to look at the world's state.
  void notify_caller() noexcept {
    if (!notify_pending_.exchange(true, std::memory_order_acq_rel)) {
      const char byte = 1;
      [[maybe_unused]] const auto written = ::write(notify_write_fd_, &byte, 1);
    }
  }

  /// Marks link j failed and the world as failed (the first failure is the
  /// one reported). Returns false if the link was no longer open.
  bool fail_link(int j, const std::string& what) {
    link& l = *links_[static_cast<std::size_t>(j)];
    {
      std::lock_guard lock(inbox_mutex_);
      if (l.state != link_state::open) return false;
      l.state = link_state::failed;
      l.closed_reason = what;
      l.usable.store(false, std::memory_order_release);
      if (!failed_.load(std::memory_order_relaxed)) {
        failure_ = what;
        failed_.store(true, std::memory_order_release);
      }
    }
    inbox_cv_.notify_all();
    notify_caller();
    return true;
  }

  void mark_closed(int j) {
    link& l = *links_[static_cast<std::size_t>(j)];
    {
      std::lock_guard lock(inbox_mutex_);
      if (l.state != link_state::open) return;
      l.state = link_state::closed;
      l.usable.store(false, std::memory_order_release);
    }
    inbox_cv_.notify_all();
  }

  void fail_all(const std::string& what) noexcept {
    try {
      for (int j = 0; j < world_; ++j) {
        if (j != rank_) fail_link(j, what);
      }
    } catch (...) {
    }
  }

  int rank_;
  int world_;
  std::chrono::milliseconds timeout_;
  std::uint64_t max_message_;
  std::uint64_t max_queued_;
  bool payload_checksum_;
  std::uint64_t bytes_sent_ = 0;
  std::uint64_t wire_bytes_sent_ = 0;
  std::uint16_t listen_port_ = 0;
  int uncaught_at_start_ = std::uncaught_exceptions();

  // Declared before everything that holds sockets, so it is destroyed last.
  boost::asio::io_context io_{1};
  std::vector<std::unique_ptr<link>> links_;  // by rank; null for this rank
  std::optional<boost::asio::posix::stream_descriptor> wake_reader_;
  int wake_write_fd_ = -1;
  std::atomic<bool> wake_pending_{false};
  std::array<char, 64> wake_buffer_{};
  // Wakes a caller that reads a link itself (poll) when another link fails.
  int notify_read_fd_ = -1;
  int notify_write_fd_ = -1;
  std::atomic<bool> notify_pending_{false};

  std::mutex send_mutex_;  // send queues, send pool, writing flags
  std::condition_variable flush_cv_;
  std::vector<std::vector<std::byte>> send_spare_;
  std::size_t send_buffers_ = 0;  // send buffers made so far

  std::mutex inbox_mutex_;  // inboxes, receive pool, link states, failure
  std::condition_variable inbox_cv_;
  std::vector<std::vector<std::byte>> recv_spare_;
  std::size_t recv_buffers_ = 0;  // receive buffers made by the io thread so far
  std::uint64_t arrivals_ = 0;
  std::atomic<bool> failed_{false};
  std::string failure_;
  bool closing_ = false;  // close() began: arriving messages are dropped

  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::thread io_thread_;
};

static_assert(Transport<tcp_transport>);
static_assert(RecvAnyTransport<tcp_transport>);
static_assert(InPlaceRecvTransport<tcp_transport>);

}  // namespace ecopt
