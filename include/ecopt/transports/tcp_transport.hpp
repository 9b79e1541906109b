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
//    So a peer's sends never block on this rank's progress (up to
//    max_queued_bytes per link; then back-pressure), ring collectives keep
//    both directions of a link busy, and after warm-up neither side allocates.
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
// The parts, each a header of detail/: tcp_options.hpp (the options),
// tcp_links.hpp (what the parts share: the links, pools, failure), then
// tcp_send_queue.hpp (writing), tcp_frame_reader.hpp (reading), each built
// on the one before; tcp_rendezvous.hpp and tcp_auth.hpp (connecting);
// tcp_wire.hpp (the format). This file: construction, send/recv, closing.
//
// POSIX only (the io thread is woken through a pipe, which keeps send free of
// allocations). Use one tcp_transport from one thread at a time.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"
#include "ecopt/transports/detail/tcp_frame_reader.hpp"
#include "ecopt/transports/detail/tcp_options.hpp"
#include "ecopt/transports/detail/tcp_rendezvous.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"

namespace ecopt {

/// One rank's endpoint of a TCP world. Construction performs the rendezvous
/// (blocking up to connect_timeout); destruction says goodbye to every peer.
class tcp_transport : private detail::tcp_frame_reader {
 public:
  explicit tcp_transport(const tcp_options& options) : detail::tcp_frame_reader(options) {
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
      if (l.state == link_state::failed) throw transport_error(head + l.closed_reason);
      throw transport_error(head + "rank " + std::to_string(to) + " has closed its transport");
    }
    send_data(to, tag, data);
    bytes_sent_ += data.size();
    wire_bytes_sent_ += detail::tcp_wire::header_size + data.size();
  }

  /// True once `peer`'s link is no longer open: it failed (with
  /// tolerate_lost_peers, only that link) or the peer closed its transport
  /// (PeerLossTransport).
  [[nodiscard]] bool peer_lost(int peer) const {
    check_peer(peer, "peer_lost of");
    return !links_[static_cast<std::size_t>(peer)]->usable.load(std::memory_order_acquire);
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
};

static_assert(Transport<tcp_transport>);
static_assert(RecvAnyTransport<tcp_transport>);
static_assert(InPlaceRecvTransport<tcp_transport>);
static_assert(PeerLossTransport<tcp_transport>);

}  // namespace ecopt
