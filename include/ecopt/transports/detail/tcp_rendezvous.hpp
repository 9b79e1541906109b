#pragma once
// The rendezvous of tcp_transport: how ranks find each other and open one
// socket per pair (a full mesh).
//
// Directory mode (a rank-0 address): every rank listens on its own port
// (rank 0 on the given address), connects to rank 0 and sends `hello` (world
// size, rank, job token hash, its listening address). Rank 0 checks each
// hello and, once every rank has joined, sends everyone the `directory` of
// listening addresses; its hello sockets become its links. Then each rank r
// connects to ranks 1..r-1 with `peer_hello` and accepts the connections of
// ranks r+1..n-1, answering `peer_ack`.
// Host-list mode: the directory is given up front; rank r connects to ranks
// 0..r-1 and accepts ranks r+1..n-1.
//
// A connection whose handshake is wrong (bad frame, other world size, other
// job token, rank out of range or already connected) is answered with a
// `reject` frame naming the reason and closed; the rendezvous goes on (a
// stray connection must not break a job) and lists the refusals if it later
// times out. A rank that is refused fails at once with that reason.
//
// Everything runs as asynchronous operations on the transport's io_context,
// driven by the constructing thread until done or the deadline; connections
// are handled concurrently, so a silent or slow connection holds up no other.
// Each incoming connection must complete its handshake within
// handshake_timeout, and at most max_pending of them wait at once (a new one
// pushes out the oldest), so strangers cannot hold the ranks out. Running out
// of file descriptors ends the rendezvous at once, reported as such.
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <boost/asio/buffer.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"

namespace ecopt::detail {

struct tcp_rendezvous_config {
  int rank = 0;
  int world = 1;
  std::uint64_t token = 0;
  bool directory_mode = true;
  /// Host-list mode: every rank's address. Directory mode: [0] is rank 0's
  /// address; the rest comes from rank 0's directory.
  std::vector<tcp_wire::peer_address> table;
  std::string advertised_host;  ///< directory mode: own listening host ("" = as rank 0 sees it)
  std::uint16_t listen_port = 0;
  std::chrono::steady_clock::time_point deadline;
  std::chrono::milliseconds budget{0};  ///< the connect timeout, for messages
  /// An incoming connection's time to complete its handshake.
  std::chrono::milliseconds handshake_timeout{5'000};
  /// Incoming connections waiting for their handshake at once (at least the
  /// ranks that connect to this one).
  std::size_t max_pending = 64;
};

class tcp_rendezvous {
 public:
  using tcp = boost::asio::ip::tcp;
  using error_code = boost::system::error_code;

  tcp_rendezvous(boost::asio::io_context& io, tcp::acceptor& acceptor, tcp_rendezvous_config cfg)
      : io_(io), acceptor_(acceptor), cfg_(std::move(cfg)), accept_timer_(io) {
    const auto n = static_cast<std::size_t>(cfg_.world);
    links_.resize(n);
    reserved_.assign(n, false);
    last_error_.assign(n, std::string());
    cfg_.table.resize(n);
  }

  tcp_rendezvous(const tcp_rendezvous&) = delete;
  tcp_rendezvous& operator=(const tcp_rendezvous&) = delete;

  /// Connects this rank to every other one. Returns the sockets by rank (the
  /// own entry is null), each with no operation pending. Throws
  /// transport_error when refused or when the deadline passes.
  std::vector<std::unique_ptr<tcp::socket>> run() {
    if (expects_incoming()) accept_next();
    if (cfg_.directory_mode) {
      if (cfg_.rank != 0) connect_to(0, tcp_wire::frame_kind::hello);
    } else {
      for (int j = 0; j < cfg_.rank; ++j) connect_to(j, tcp_wire::frame_kind::peer_hello);
    }
    while (!done() && fatal_.empty() && std::chrono::steady_clock::now() < cfg_.deadline) {
      if (io_.run_one_until(cfg_.deadline) == 0 && io_.stopped())
        break;  // nothing left to wait for
    }
    const bool ok = done() && fatal_.empty();
    finish(ok);
    if (!fatal_.empty()) throw transport_error(prefix() + fatal_ + refusal_summary());
    if (!ok) throw transport_error(prefix() + timeout_summary() + refusal_summary());
    return std::move(links_);
  }

 private:
  struct connection {
    explicit connection(boost::asio::io_context& io) : socket(io), timer(io) {}
    tcp::socket socket;
    boost::asio::steady_timer timer;  // connect retries; incoming: the handshake deadline
    tcp::resolver::results_type endpoints;
    tcp_wire::header_bytes header_in{};
    std::vector<std::byte> payload_in;
    tcp_wire::header_bytes header_out{};
    std::vector<std::byte> payload_out;
    std::string where;        // the remote address, for messages
    std::string remote_host;  // incoming: the peer's address as seen here
    int peer = -1;            // outgoing: the rank connected to
    bool outgoing = false;
  };
  using conn_ptr = std::shared_ptr<connection>;

  static constexpr std::chrono::milliseconds retry_interval{25};
  // Refusals kept for the timeout message (the count goes on beyond).
  static constexpr std::size_t kept_refusals = 16;

  [[nodiscard]] bool rank0_directory() const noexcept {
    return cfg_.directory_mode && cfg_.rank == 0;
  }
  [[nodiscard]] bool expects_incoming() const noexcept { return cfg_.rank < cfg_.world - 1; }

  [[nodiscard]] bool done() const noexcept {
    if (pending_writes_ != 0) return false;
    if (rank0_directory()) return directory_sent_;
    return linked_ == cfg_.world - 1;
  }

  [[nodiscard]] std::string prefix() const {
    return "rank " + std::to_string(cfg_.rank) + ": tcp rendezvous failed: ";
  }

  conn_ptr new_connection() {
    auto c = std::make_shared<connection>(io_);
    connections_.push_back(c);
    return c;
  }

  /// Stops everything still in flight and runs the cancelled handlers, so
  /// that none of them is left in the io_context for the data phase.
  void finish(bool ok) {
    finished_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    accept_timer_.cancel();
    for (auto& c : connections_) {
      c->timer.cancel();
      if (c->socket.is_open()) c->socket.close(ignored);
    }
    for (auto& c : pending_) {
      c->timer.cancel();
      if (c->socket.is_open()) c->socket.close(ignored);
    }
    if (!ok) {
      for (auto& l : links_) {
        if (l) l->close(ignored);
      }
    }
    io_.restart();
    io_.run();
    io_.restart();
    connections_.clear();
    pending_.clear();
  }

  // --- incoming ----------------------------------------------------------------

  void accept_next() {
    auto c = std::make_shared<connection>(io_);
    acceptor_.async_accept(c->socket, [this, c](const error_code& ec) {
      if (finished_) return;
      if (ec) {
        if (out_of_descriptors(ec)) {
          fatal_ = descriptors_exhausted("accepting a connection", ec);
          return;
        }
        // E.g. a connection reset before it was accepted: try again shortly.
        accept_timer_.expires_after(retry_interval);
        accept_timer_.async_wait([this](const error_code& e) {
          if (!finished_ && !e) accept_next();
        });
        return;
      }
      error_code e;
      const tcp::endpoint remote = c->socket.remote_endpoint(e);
      if (!e) {
        c->remote_host = remote.address().to_string();
        c->where = tcp_wire::format_host_port(c->remote_host, remote.port());
      } else {
        c->where = "an unknown address";
      }
      c->socket.set_option(tcp::no_delay(true), e);
      if (pending_.size() >= max_pending()) {
        // Make room: the oldest has had the longest to finish its handshake.
        const conn_ptr oldest = pending_.front();
        drop(oldest, "dropped unauthenticated, the oldest of " + std::to_string(pending_.size()) +
                         " connections waiting for their handshake");
      }
      pending_.push_back(c);
      c->timer.expires_after(cfg_.handshake_timeout);
      c->timer.async_wait([this, c](const error_code& te) {
        if (finished_ || te) return;
        drop(c, "no complete handshake within " + std::to_string(cfg_.handshake_timeout.count()) +
                    " ms");
      });
      read_frame(c, tcp_wire::max_hello_bytes,
                 [this, c](const tcp_wire::frame_header& h) { on_incoming(c, h); });
      accept_next();
    });
  }

  [[nodiscard]] std::size_t max_pending() const noexcept {
    return std::max(cfg_.max_pending, static_cast<std::size_t>(cfg_.world - 1 - cfg_.rank));
  }

  /// An incoming connection leaves the waiting list (its handshake completed
  /// or failed); false if it had left already.
  bool settle(const conn_ptr& c) {
    const auto it = std::find(pending_.begin(), pending_.end(), c);
    if (it == pending_.end()) return false;
    pending_.erase(it);
    c->timer.cancel();
    return true;
  }

  /// Closes an incoming connection that is still waiting for its handshake.
  void drop(const conn_ptr& c, const std::string& why) {
    if (!settle(c)) return;
    note_refusal("connection from " + c->where + " " + why);
    error_code ignored;
    c->socket.close(ignored);
  }

  void note_refusal(std::string text) {
    if (refusals_.size() < kept_refusals) refusals_.push_back(std::move(text));
    ++refusal_count_;
  }

  static bool out_of_descriptors(const error_code& ec) noexcept {
    return ec == boost::asio::error::no_descriptors ||
           ec == boost::system::errc::too_many_files_open_in_system;
  }

  /// EMFILE / ENFILE: retrying would not help and the timeout would blame a
  /// missing rank, so the rendezvous ends saying what ran out.
  [[nodiscard]] std::string descriptors_exhausted(const std::string& during,
                                                  const error_code& ec) const {
    rlimit limit{};
    std::string allowed = "unknown";
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
      allowed = limit.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(limit.rlim_cur);
    }
    return "out of file descriptors while " + during + " (" + ec.message() +
           "; this process may open " + allowed +
           ", see ulimit -n): a rank needs about world size + " + std::to_string(max_pending()) +
           " (pending handshakes) + 16 descriptors";
  }

  void on_incoming(const conn_ptr& c, const tcp_wire::frame_header& h) {
    const tcp_wire::frame_kind expected =
        rank0_directory() ? tcp_wire::frame_kind::hello : tcp_wire::frame_kind::peer_hello;
    if (h.kind != expected) {
      throw transport_error(std::string("expected a ") + tcp_wire::kind_name(expected) +
                            " frame, got a " + tcp_wire::kind_name(h.kind) + " frame");
    }
    const tcp_wire::hello_payload hello = tcp_wire::parse_hello(c->payload_in);
    check_identity(hello, h.sender);
    const auto j = static_cast<int>(hello.rank);
    if (j >= cfg_.world) {
      throw transport_error("rank " + std::to_string(j) + " is out of range for world size " +
                            std::to_string(cfg_.world));
    }
    if (j == cfg_.rank) {
      throw transport_error("duplicate rank " + std::to_string(j) +
                            ": the connecting process claims this rank's own rank");
    }
    if (j < cfg_.rank) {
      throw transport_error("rank " + std::to_string(j) + " must not connect to rank " +
                            std::to_string(cfg_.rank) +
                            " (lower ranks accept the connections of higher ones)");
    }
    if (reserved_[static_cast<std::size_t>(j)]) {
      throw transport_error("duplicate rank " + std::to_string(j) + ": rank " + std::to_string(j) +
                            " is already connected");
    }
    reserved_[static_cast<std::size_t>(j)] = true;
    c->peer = j;
    settle(c);
    if (rank0_directory()) {
      if (hello.listen_port == 0) throw transport_error("hello announces listening port 0");
      cfg_.table[static_cast<std::size_t>(j)] = {hello.host.empty() ? c->remote_host : hello.host,
                                                 hello.listen_port};
      links_[static_cast<std::size_t>(j)] = std::make_unique<tcp::socket>(std::move(c->socket));
      if (++linked_ == cfg_.world - 1) send_directories();
      return;
    }
    c->payload_out = tcp_wire::encode_hello({.world_size = static_cast<std::uint32_t>(cfg_.world),
                                             .rank = static_cast<std::uint32_t>(cfg_.rank),
                                             .token = cfg_.token,
                                             .listen_port = 0,
                                             .host = {}});
    c->header_out = tcp_wire::make_header(tcp_wire::frame_kind::peer_ack,
                                          static_cast<std::uint32_t>(cfg_.rank), 0, c->payload_out);
    ++pending_writes_;
    boost::asio::async_write(
        c->socket,
        std::array{boost::asio::buffer(c->header_out), boost::asio::buffer(c->payload_out)},
        [this, c](const error_code& ec, std::size_t) {
          if (finished_) return;
          --pending_writes_;
          if (ec) {
            fatal_ = "rank " + std::to_string(c->peer) + " (" + c->where +
                     ") vanished during the handshake: " + ec.message();
            return;
          }
          links_[static_cast<std::size_t>(c->peer)] =
              std::make_unique<tcp::socket>(std::move(c->socket));
          ++linked_;
        });
  }

  /// Token, header sender and world size of a hello or ack must match this
  /// job. The token first: a peer without it learns nothing of the job (not
  /// even its world size) from the refusal.
  void check_identity(const tcp_wire::hello_payload& hello, std::uint32_t sender) const {
    if (hello.token != cfg_.token) {
      throw transport_error("job token does not match rank " + std::to_string(cfg_.rank) +
                            "'s (a process of another job, or a different ECOPT_JOB_TOKEN)");
    }
    if (hello.rank != sender) {
      throw transport_error("the frame header says sender " + std::to_string(sender) +
                            " but the payload says rank " + std::to_string(hello.rank));
    }
    if (hello.world_size != static_cast<std::uint32_t>(cfg_.world)) {
      throw transport_error("world size " + std::to_string(hello.world_size) +
                            " does not match rank " + std::to_string(cfg_.rank) + "'s world size " +
                            std::to_string(cfg_.world));
    }
  }

  void send_directories() {
    cfg_.table[0] = {std::string(), cfg_.listen_port};
    directory_ = tcp_wire::encode_directory(cfg_.table);
    directory_header_ = tcp_wire::make_header(tcp_wire::frame_kind::directory, 0, 0, directory_);
    directory_sent_ = true;
    for (int j = 1; j < cfg_.world; ++j) {
      ++pending_writes_;
      boost::asio::async_write(
          *links_[static_cast<std::size_t>(j)],
          std::array{boost::asio::buffer(directory_header_), boost::asio::buffer(directory_)},
          [this, j](const error_code& ec, std::size_t) {
            if (finished_) return;
            --pending_writes_;
            if (ec) {
              fatal_ = "rank " + std::to_string(j) +
                       " closed its connection during the rendezvous: " + ec.message();
            }
          });
    }
  }

  /// Refuses an incoming connection: records why, tells the peer, closes.
  void refuse(const conn_ptr& c, const std::string& reason) {
    if (!settle(c)) return;  // dropped meanwhile
    note_refusal("connection from " + c->where + " refused: " + reason);
    const std::string text = reason.substr(0, tcp_wire::max_reason_length);
    c->payload_out.assign(reinterpret_cast<const std::byte*>(text.data()),
                          reinterpret_cast<const std::byte*>(text.data()) + text.size());
    c->header_out = tcp_wire::make_header(tcp_wire::frame_kind::reject,
                                          static_cast<std::uint32_t>(cfg_.rank), 0, c->payload_out);
    boost::asio::async_write(
        c->socket,
        std::array{boost::asio::buffer(c->header_out), boost::asio::buffer(c->payload_out)},
        [c](const error_code&, std::size_t) {
          error_code ignored;
          c->socket.shutdown(tcp::socket::shutdown_both, ignored);
          c->socket.close(ignored);
        });
  }

  // --- outgoing ----------------------------------------------------------------

  void connect_to(int j, tcp_wire::frame_kind kind) {
    conn_ptr c = new_connection();
    c->outgoing = true;
    c->peer = j;
    const tcp_wire::peer_address& a = cfg_.table[static_cast<std::size_t>(j)];
    c->where = tcp_wire::format_host_port(a.host, a.port);
    if (a.port == 0) {
      fatal_ = "rank " + std::to_string(j) + " has no listening port (" + c->where + ")";
      return;
    }
    // Name resolution is synchronous: addresses are numeric or local names.
    tcp::resolver resolver(io_);
    error_code ec;
    c->endpoints = resolver.resolve(a.host, std::to_string(a.port), ec);
    if (ec) {
      fatal_ = "cannot resolve the host of rank " + std::to_string(j) + " (" + c->where +
               "): " + ec.message();
      return;
    }
    try_connect(c, kind);
  }

  void try_connect(const conn_ptr& c, tcp_wire::frame_kind kind) {
    boost::asio::async_connect(
        c->socket, c->endpoints, [this, c, kind](const error_code& ec, const tcp::endpoint&) {
          if (finished_) return;
          if (ec) {
            if (out_of_descriptors(ec)) {
              fatal_ = descriptors_exhausted("connecting to rank " + std::to_string(c->peer), ec);
              return;
            }
            // The peer may not be listening yet: retry until the deadline.
            last_error_[static_cast<std::size_t>(c->peer)] = ec.message();
            if (std::chrono::steady_clock::now() + retry_interval >= cfg_.deadline) return;
            c->timer.expires_after(retry_interval);
            c->timer.async_wait([this, c, kind](const error_code& e) {
              if (!finished_ && !e) try_connect(c, kind);
            });
            return;
          }
          last_error_[static_cast<std::size_t>(c->peer)].clear();
          error_code e;
          c->socket.set_option(tcp::no_delay(true), e);
          const bool hello = kind == tcp_wire::frame_kind::hello;
          c->payload_out =
              tcp_wire::encode_hello({.world_size = static_cast<std::uint32_t>(cfg_.world),
                                      .rank = static_cast<std::uint32_t>(cfg_.rank),
                                      .token = cfg_.token,
                                      .listen_port = hello ? cfg_.listen_port : std::uint16_t{0},
                                      .host = hello ? cfg_.advertised_host : std::string()});
          c->header_out =
              tcp_wire::make_header(kind, static_cast<std::uint32_t>(cfg_.rank), 0, c->payload_out);
          boost::asio::async_write(
              c->socket,
              std::array{boost::asio::buffer(c->header_out), boost::asio::buffer(c->payload_out)},
              [this, c](const error_code& wec, std::size_t) {
                if (finished_) return;
                if (wec) {
                  on_read_error(c, wec);
                  return;
                }
                const std::uint64_t limit =
                    std::max({tcp_wire::max_directory_bytes(static_cast<std::size_t>(cfg_.world)),
                              tcp_wire::max_reason_length, tcp_wire::max_hello_bytes});
                read_frame(c, limit,
                           [this, c](const tcp_wire::frame_header& h) { on_reply(c, h); });
              });
        });
  }

  void on_reply(const conn_ptr& c, const tcp_wire::frame_header& h) {
    const int j = c->peer;
    const std::string who = "rank " + std::to_string(j) + " (" + c->where + ")";
    if (h.kind == tcp_wire::frame_kind::reject) {
      fatal_ = who + " refused the handshake: " +
               tcp_wire::printable(std::string_view(
                   reinterpret_cast<const char*>(c->payload_in.data()), c->payload_in.size()));
      return;
    }
    if (cfg_.directory_mode && j == 0) {
      if (h.kind != tcp_wire::frame_kind::directory) {
        throw transport_error(std::string("expected a directory frame, got a ") +
                              tcp_wire::kind_name(h.kind) + " frame");
      }
      std::vector<tcp_wire::peer_address> table =
          tcp_wire::parse_directory(c->payload_in, static_cast<std::size_t>(cfg_.world));
      for (int i = 1; i < cfg_.world; ++i) {
        cfg_.table[static_cast<std::size_t>(i)] = std::move(table[static_cast<std::size_t>(i)]);
      }
      links_[0] = std::make_unique<tcp::socket>(std::move(c->socket));
      ++linked_;
      for (int i = 1; i < cfg_.rank; ++i) connect_to(i, tcp_wire::frame_kind::peer_hello);
      return;
    }
    if (h.kind != tcp_wire::frame_kind::peer_ack) {
      throw transport_error(std::string("expected a peer_ack frame, got a ") +
                            tcp_wire::kind_name(h.kind) + " frame");
    }
    const tcp_wire::hello_payload ack = tcp_wire::parse_hello(c->payload_in);
    if (ack.rank != static_cast<std::uint32_t>(j)) {
      throw transport_error("the process there answered as rank " + std::to_string(ack.rank));
    }
    check_identity(ack, h.sender);
    links_[static_cast<std::size_t>(j)] = std::make_unique<tcp::socket>(std::move(c->socket));
    ++linked_;
  }

  // --- frames ------------------------------------------------------------------

  /// Reads one complete, checked frame into c->header_in / c->payload_in and
  /// calls on_frame(header); a transport_error thrown by on_frame refuses the
  /// connection (incoming) or ends the rendezvous (outgoing).
  template <class OnFrame>
  void read_frame(const conn_ptr& c, std::uint64_t limit, OnFrame on_frame) {
    boost::asio::async_read(c->socket, boost::asio::buffer(c->header_in),
                            [this, c, limit, on_frame](const error_code& ec, std::size_t) {
                              if (finished_) return;
                              if (ec) {
                                on_read_error(c, ec);
                                return;
                              }
                              tcp_wire::frame_header h;
                              try {
                                h = tcp_wire::parse_header(c->header_in, limit);
                              } catch (const transport_error& e) {
                                on_protocol_error(c, e.what());
                                return;
                              }
                              c->payload_in.resize(static_cast<std::size_t>(h.length));
                              boost::asio::async_read(
                                  c->socket, boost::asio::buffer(c->payload_in),
                                  [this, c, h, on_frame](const error_code& e2, std::size_t) {
                                    if (finished_) return;
                                    if (e2) {
                                      on_read_error(c, e2);
                                      return;
                                    }
                                    try {
                                      tcp_wire::check_payload(h, c->payload_in);
                                      on_frame(h);
                                    } catch (const transport_error& e) {
                                      on_protocol_error(c, e.what());
                                    }
                                  });
                            });
  }

  void on_protocol_error(const conn_ptr& c, const std::string& what) {
    if (c->outgoing) {
      fatal_ =
          "rank " + std::to_string(c->peer) + " (" + c->where + ") broke the handshake: " + what;
    } else {
      refuse(c, what);
    }
  }

  void on_read_error(const conn_ptr& c, const error_code& ec) {
    const std::string what = ec == boost::asio::error::eof ? "connection closed" : ec.message();
    if (c->outgoing) {
      fatal_ = "rank " + std::to_string(c->peer) + " (" + c->where +
               ") closed the connection during the handshake: " + what;
    } else if (settle(c)) {
      note_refusal("connection from " + c->where +
                   " closed before completing the handshake: " + what);
    }
  }

  // --- messages ----------------------------------------------------------------

  [[nodiscard]] std::string timeout_summary() const {
    std::string s = "not complete after " + std::to_string(cfg_.budget.count()) + " ms: ";
    std::vector<std::string> missing;
    if (rank0_directory()) {
      std::string ranks;
      for (int j = 1; j < cfg_.world; ++j) {
        if (!reserved_[static_cast<std::size_t>(j)])
          ranks += (ranks.empty() ? "" : ", ") + std::to_string(j);
      }
      if (!ranks.empty()) missing.push_back("no hello from rank(s) " + ranks);
    } else {
      for (int j = 0; j < cfg_.world; ++j) {
        if (j == cfg_.rank || links_[static_cast<std::size_t>(j)]) continue;
        const auto& a = cfg_.table[static_cast<std::size_t>(j)];
        if (j < cfg_.rank) {
          std::string m = "not connected to rank " + std::to_string(j);
          if (a.port != 0) m += " at " + tcp_wire::format_host_port(a.host, a.port);
          if (cfg_.directory_mode && j == 0) m += " (no directory yet)";
          const std::string& last = last_error_[static_cast<std::size_t>(j)];
          if (!last.empty()) m += " (last error: " + last + ")";
          missing.push_back(std::move(m));
        } else if (!reserved_[static_cast<std::size_t>(j)]) {
          missing.push_back("no connection from rank " + std::to_string(j));
        }
      }
    }
    if (missing.empty()) missing.push_back("handshake replies still in flight");
    for (std::size_t i = 0; i < missing.size(); ++i) s += (i ? "; " : "") + missing[i];
    return s;
  }

  [[nodiscard]] std::string refusal_summary() const {
    if (refusals_.empty()) return {};
    std::string s = " [refused " + std::to_string(refusal_count_) + " connection(s): ";
    const std::size_t shown = std::min<std::size_t>(refusals_.size(), 5);
    for (std::size_t i = 0; i < shown; ++i) s += (i ? "; " : "") + refusals_[i];
    if (shown < refusal_count_) s += "; ...";
    return s + "]";
  }

  boost::asio::io_context& io_;
  tcp::acceptor& acceptor_;
  tcp_rendezvous_config cfg_;
  boost::asio::steady_timer accept_timer_;
  std::vector<std::unique_ptr<tcp::socket>> links_;
  std::vector<bool> reserved_;           // incoming rank seen (duplicates are refused)
  std::vector<std::string> last_error_;  // per rank: why the last connect attempt failed
  std::vector<conn_ptr> connections_;    // outgoing connections, to close at the end
  std::deque<conn_ptr> pending_;         // incoming, waiting for their handshake (oldest first)
  std::vector<std::string> refusals_;    // the first kept_refusals
  std::size_t refusal_count_ = 0;
  std::vector<std::byte> directory_;
  tcp_wire::header_bytes directory_header_{};
  std::string fatal_;
  int linked_ = 0;
  int pending_writes_ = 0;
  bool directory_sent_ = false;
  bool finished_ = false;
};

}  // namespace ecopt::detail
