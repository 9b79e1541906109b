#pragma once
// The rendezvous of tcp_transport: how ranks find each other, prove that
// they belong to the same job, and open one socket per pair (a full mesh).
//
// Directory mode (a rank-0 address): every rank listens on its own port
// (rank 0 on the given address) and connects to rank 0 with `hello`. Once
// every rank has joined, rank 0 sends everyone the `directory` of listening
// addresses; its hello sockets become its links. Then each rank r connects
// to ranks 1..r-1 with `peer_hello` and accepts the connections of ranks
// r+1..n-1, answering `peer_ack`.
// Host-list mode: the directory is given up front; rank r connects to ranks
// 0..r-1 and accepts ranks r+1..n-1.
//
// Every connection first runs the mutual challenge-response of tcp_auth.hpp
// over the job token (hello -> challenge -> proof); world size, ranks and
// addresses are compared only after both sides have proved the token, so a
// stranger learns nothing of the job. A connection whose handshake is wrong
// (bad frame, no proof of the token, other world size, rank out of range)
// is answered with a `reject` frame naming the reason and closed; the
// rendezvous goes on (a stray connection must not break a job) and lists the
// refusals if it later times out. A rank that is refused fails at once with
// that reason. A rank claimed twice by processes that both hold the token
// fails both claimants and this rank at once: one of them is not who it says.
//
// Strangers cannot hold the ranks out (tcp_handshake_gate.hpp): a handshake
// deadline per incoming connection, at most max_pending waiting at once.
//
// Everything runs as asynchronous operations on the transport's io_context,
// driven by the constructing thread until done or the deadline; connections
// are handled concurrently, so a silent or slow connection holds up no other.
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
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transports/detail/tcp_auth.hpp"
#include "ecopt/transports/detail/tcp_handshake_gate.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"

namespace ecopt::detail {

struct tcp_rendezvous_config {
  int rank = 0;
  int world = 1;
  std::string token;  ///< the job token: the key of every proof
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
  using frame_kind = tcp_wire::frame_kind;

  tcp_rendezvous(boost::asio::io_context& io, tcp::acceptor& acceptor, tcp_rendezvous_config cfg)
      : io_(io),
        acceptor_(acceptor),
        cfg_(std::move(cfg)),
        accept_timer_(io),
        gate_(std::max(cfg_.max_pending, static_cast<std::size_t>(cfg_.world - 1 - cfg_.rank)),
              cfg_.handshake_timeout) {
    const auto n = static_cast<std::size_t>(cfg_.world);
    links_.resize(n);
    claimed_.resize(n);
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
      if (cfg_.rank != 0) connect_to(0, frame_kind::hello);
    } else {
      for (int j = 0; j < cfg_.rank; ++j) connect_to(j, frame_kind::peer_hello);
    }
    while (std::chrono::steady_clock::now() < cfg_.deadline) {
      // After a fatal error the rejects still go out (they say why).
      if (fatal_.empty() ? done() : flushing_ == 0) break;
      if (io_.run_one_until(cfg_.deadline) == 0 && io_.stopped())
        break;  // nothing left to wait for
    }
    const bool ok = done() && fatal_.empty();
    std::vector<std::unique_ptr<tcp::socket>> sockets(links_.size());
    if (ok) {
      for (std::size_t j = 0; j < links_.size(); ++j) {
        if (links_[j]) sockets[j] = std::make_unique<tcp::socket>(std::move(links_[j]->socket));
      }
    }
    finish(ok);
    if (!fatal_.empty()) throw transport_error(prefix() + fatal_ + gate_.summary());
    if (!ok) throw transport_error(prefix() + timeout_summary() + gate_.summary());
    return sockets;
  }

 private:
  using connection = tcp_handshake_connection;
  using conn_ptr = std::shared_ptr<connection>;

  static constexpr std::chrono::milliseconds retry_interval{25};

  [[nodiscard]] bool rank0_directory() const noexcept {
    return cfg_.directory_mode && cfg_.rank == 0;
  }
  [[nodiscard]] bool expects_incoming() const noexcept { return cfg_.rank < cfg_.world - 1; }
  [[nodiscard]] std::uint32_t me() const noexcept { return static_cast<std::uint32_t>(cfg_.rank); }

  [[nodiscard]] bool done() const noexcept {
    if (pending_writes_ != 0) return false;
    if (rank0_directory()) return directory_sent_;
    return linked_ == cfg_.world - 1;
  }

  [[nodiscard]] std::string prefix() const {
    return "rank " + std::to_string(cfg_.rank) + ": tcp rendezvous failed: ";
  }

  /// Stops everything still in flight and runs the cancelled handlers, so
  /// that none of them is left in the io_context for the data phase.
  void finish(bool ok) {
    finished_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    accept_timer_.cancel();
    auto close = [&](const conn_ptr& c) {
      if (!c) return;
      c->timer.cancel();
      if (c->socket.is_open()) c->socket.close(ignored);
    };
    for (const auto& c : outgoing_) close(c);
    gate_.close_all();
    if (!ok) {
      for (const auto& c : links_) close(c);
      for (const auto& c : claimed_) close(c);
    }
    io_.restart();
    io_.run();
    io_.restart();
    outgoing_.clear();
    gate_.clear();
    links_.clear();
    claimed_.clear();
  }

  // --- writing -----------------------------------------------------------------

  /// Writes one frame on c (one at a time per connection) and calls then(ec).
  template <class Then>
  void write_frame(const conn_ptr& c, frame_kind kind, std::vector<std::byte> payload, Then then) {
    c->payload_out = std::move(payload);
    c->header_out = tcp_wire::make_header(kind, me(), 0, c->payload_out);
    c->writing = true;
    boost::asio::async_write(
        c->socket,
        std::array{boost::asio::buffer(c->header_out), boost::asio::buffer(c->payload_out)},
        [this, c, then](const error_code& ec, std::size_t) {
          c->writing = false;
          if (finished_) return;
          then(ec);
          if (!c->reject_next.empty() && !c->writing) send_reject(c, std::move(c->reject_next));
        });
  }

  /// Tells the other end why this connection ends, then closes it.
  void send_reject(const conn_ptr& c, std::string reason) {
    if (c->writing) {
      c->reject_next = std::move(reason);
      return;
    }
    c->reject_next.clear();
    reason.resize(std::min(reason.size(), tcp_wire::max_reason_length));
    const auto* p = reinterpret_cast<const std::byte*>(reason.data());
    ++flushing_;
    write_frame(c, frame_kind::reject, std::vector<std::byte>(p, p + reason.size()),
                [this, c](const error_code&) {
                  --flushing_;
                  error_code ignored;
                  c->socket.shutdown(tcp::socket::shutdown_both, ignored);
                  c->socket.close(ignored);
                });
  }

  // --- incoming: the accepting side ------------------------------------------------

  void accept_next() {
    auto c = std::make_shared<connection>(io_);
    acceptor_.async_accept(c->socket, [this, c](const error_code& ec) {
      if (finished_) return;
      if (ec) {
        if (out_of_descriptors(ec)) {
          fatal_ = descriptors_exhausted("accepting a connection", ec, gate_.max_pending());
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
      gate_.admit(c);
      read_frame(c, tcp_wire::max_hello_bytes,
                 [this, c](const tcp_wire::frame_header& h) { on_hello(c, h); });
      accept_next();
    });
  }

  /// A claim (rank, nonce): answered with this rank's nonce and proof.
  void on_hello(const conn_ptr& c, const tcp_wire::frame_header& h) {
    const frame_kind expected = rank0_directory() ? frame_kind::hello : frame_kind::peer_hello;
    if (h.kind != expected) {
      throw transport_error(std::string("expected a ") + tcp_wire::kind_name(expected) +
                            " frame, got a " + tcp_wire::kind_name(h.kind) + " frame");
    }
    const tcp_wire::hello_payload hello = tcp_wire::parse_hello(c->payload_in);
    if (hello.rank != h.sender) {
      throw transport_error("the frame header says sender " + std::to_string(h.sender) +
                            " but the payload says rank " + std::to_string(hello.rank));
    }
    c->auth = {.kind = h.kind,
               .client_nonce = hello.nonce,
               .server_nonce = tcp_auth::fresh_nonce(),
               .client_rank = hello.rank,
               .server_rank = me()};
    const tcp_wire::challenge_payload challenge{
        .nonce = c->auth.server_nonce, .proof = tcp_auth::accepting_proof(cfg_.token, c->auth)};
    write_frame(c, frame_kind::challenge, tcp_wire::encode_challenge(challenge),
                [this, c](const error_code& ec) {
                  if (ec) on_read_error(c, ec);
                });
    read_frame(c, std::max(tcp_wire::max_proof_bytes, tcp_wire::max_reason_length),
               [this, c](const tcp_wire::frame_header& ph) { on_proof(c, ph); });
  }

  /// The connecting side's proof: checked before anything of the job is.
  void on_proof(const conn_ptr& c, const tcp_wire::frame_header& h) {
    if (h.kind == frame_kind::reject) {
      throw transport_error("the connecting process refused this rank's proof: " +
                            tcp_wire::printable(text_of(c->payload_in)));
    }
    if (h.kind != frame_kind::proof) {
      throw transport_error(std::string("expected a proof frame, got a ") +
                            tcp_wire::kind_name(h.kind) + " frame");
    }
    const tcp_wire::proof_payload proof = tcp_wire::parse_proof(c->payload_in);
    const auto details = std::span<const std::byte>(c->payload_in).subspan(tcp_wire::mac_size);
    if (h.sender != c->auth.client_rank ||
        !tcp_auth::same(proof.proof, tcp_auth::connecting_proof(cfg_.token, c->auth, details))) {
      throw transport_error(
          "authentication failed: no proof of this job's token (a process of another job, a "
          "different ECOPT_JOB_TOKEN, or a replayed handshake)");
    }
    // Authenticated: the job's details may be compared now.
    if (proof.world_size != static_cast<std::uint32_t>(cfg_.world)) {
      throw transport_error("world size " + std::to_string(proof.world_size) +
                            " does not match rank " + std::to_string(cfg_.rank) + "'s world size " +
                            std::to_string(cfg_.world));
    }
    if (c->auth.client_rank >= static_cast<std::uint32_t>(cfg_.world)) {
      throw transport_error("rank " + std::to_string(c->auth.client_rank) +
                            " is out of range for world size " + std::to_string(cfg_.world));
    }
    const auto j = static_cast<int>(c->auth.client_rank);
    if (j == cfg_.rank) {
      throw transport_error("duplicate rank " + std::to_string(j) +
                            ": the connecting process claims this rank's own rank");
    }
    if (j < cfg_.rank) {
      throw transport_error("rank " + std::to_string(j) + " must not connect to rank " +
                            std::to_string(cfg_.rank) +
                            " (lower ranks accept the connections of higher ones)");
    }
    if (rank0_directory() && proof.listen_port == 0) {
      throw transport_error("hello announces listening port 0");
    }
    if (claimed_[static_cast<std::size_t>(j)]) {
      claimed_twice(j, c);
      return;
    }
    gate_.settle(c);
    c->peer = j;
    claimed_[static_cast<std::size_t>(j)] = c;
    if (rank0_directory()) {
      cfg_.table[static_cast<std::size_t>(j)] = {proof.host.empty() ? c->remote_host : proof.host,
                                                 proof.listen_port};
      links_[static_cast<std::size_t>(j)] = c;
      if (++linked_ == cfg_.world - 1) send_directories();
      return;
    }
    ++pending_writes_;
    write_frame(c, frame_kind::peer_ack, {}, [this, c](const error_code& ec) {
      --pending_writes_;
      if (ec) {
        fatal_ = "rank " + std::to_string(c->peer) + " (" + c->where +
                 ") vanished during the handshake: " + ec.message();
        return;
      }
      if (fatal_.empty()) {
        links_[static_cast<std::size_t>(c->peer)] = c;
        ++linked_;
      }
    });
  }

  /// Two processes that both hold the token claim rank j: one of them is not
  /// who it says. Both are refused, and every rank that joined here learns
  /// why this rank gives up (rather than wait out the connect timeout).
  void claimed_twice(int j, const conn_ptr& second) {
    const conn_ptr first = claimed_[static_cast<std::size_t>(j)];
    const std::string why = "rank " + std::to_string(j) + " was claimed twice, from " +
                            first->where + " and from " + second->where +
                            ": two processes were started as rank " + std::to_string(j) +
                            " (or the job token is known outside the job)";
    gate_.settle(second);
    claimed_.push_back(second);  // closed with the others at the end
    gate_.note("connection from " + second->where + " refused: " + why);
    for (const auto& c : claimed_) {
      if (c) send_reject(c, why);
    }
    fatal_ = why;
  }

  void send_directories() {
    cfg_.table[0] = {std::string(), cfg_.listen_port};
    const std::vector<std::byte> directory = tcp_wire::encode_directory(cfg_.table);
    directory_sent_ = true;
    for (int j = 1; j < cfg_.world; ++j) {
      ++pending_writes_;
      write_frame(links_[static_cast<std::size_t>(j)], frame_kind::directory, directory,
                  [this, j](const error_code& ec) {
                    --pending_writes_;
                    if (ec) {
                      fatal_ = "rank " + std::to_string(j) +
                               " closed its connection during the rendezvous: " + ec.message();
                    }
                  });
    }
  }

  // --- the connecting side -----------------------------------------------------------

  void connect_to(int j, frame_kind kind) {
    auto c = std::make_shared<connection>(io_);
    outgoing_.push_back(c);
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

  void try_connect(const conn_ptr& c, frame_kind kind) {
    boost::asio::async_connect(
        c->socket, c->endpoints, [this, c, kind](const error_code& ec, const tcp::endpoint&) {
          if (finished_) return;
          auto& last_error = last_error_[static_cast<std::size_t>(c->peer)];
          if (ec) {
            if (out_of_descriptors(ec)) {
              fatal_ = descriptors_exhausted("connecting to rank " + std::to_string(c->peer), ec,
                                             gate_.max_pending());
              return;
            }
            // The peer may not be listening yet: retry until the deadline.
            last_error = ec.message();
            if (std::chrono::steady_clock::now() + retry_interval >= cfg_.deadline) return;
            c->timer.expires_after(retry_interval);
            c->timer.async_wait([this, c, kind](const error_code& e) {
              if (!finished_ && !e) try_connect(c, kind);
            });
            return;
          }
          last_error.clear();
          error_code e;
          c->socket.set_option(tcp::no_delay(true), e);
          c->auth = {.kind = kind,
                     .client_nonce = tcp_auth::fresh_nonce(),
                     .server_nonce = {},
                     .client_rank = me(),
                     .server_rank = static_cast<std::uint32_t>(c->peer)};
          write_frame(c, kind,
                      tcp_wire::encode_hello({.rank = me(), .nonce = c->auth.client_nonce}),
                      [this, c](const error_code& wec) {
                        if (wec) on_read_error(c, wec);
                      });
          read_frame(c, std::max(tcp_wire::max_challenge_bytes, tcp_wire::max_reason_length),
                     [this, c](const tcp_wire::frame_header& h) { on_challenge(c, h); });
        });
  }

  /// The accepting side's proof: checked, then answered with this rank's.
  void on_challenge(const conn_ptr& c, const tcp_wire::frame_header& h) {
    const int j = c->peer;
    const std::string who = "rank " + std::to_string(j) + " (" + c->where + ")";
    if (h.kind == frame_kind::reject) {
      fatal_ = who + " refused the handshake: " + tcp_wire::printable(text_of(c->payload_in));
      return;
    }
    if (h.kind != frame_kind::challenge) {
      throw transport_error(std::string("expected a challenge frame, got a ") +
                            tcp_wire::kind_name(h.kind) + " frame");
    }
    const tcp_wire::challenge_payload challenge = tcp_wire::parse_challenge(c->payload_in);
    c->auth.server_nonce = challenge.nonce;
    if (h.sender != static_cast<std::uint32_t>(j) ||
        !tcp_auth::same(challenge.proof, tcp_auth::accepting_proof(cfg_.token, c->auth))) {
      send_reject(c, "the job token does not match: rank " + std::to_string(cfg_.rank) +
                         " could not verify this process's proof");
      fatal_ = who +
               " could not prove it holds this job's token (a process of another job there, or a "
               "different ECOPT_JOB_TOKEN)";
      return;
    }
    const bool hello = c->auth.kind == frame_kind::hello;
    tcp_wire::proof_payload proof{.proof = {},
                                  .world_size = static_cast<std::uint32_t>(cfg_.world),
                                  .listen_port = hello ? cfg_.listen_port : std::uint16_t{0},
                                  .host = hello ? cfg_.advertised_host : std::string()};
    proof.proof = tcp_auth::connecting_proof(cfg_.token, c->auth, tcp_wire::encode_details(proof));
    write_frame(c, frame_kind::proof, tcp_wire::encode_proof(proof),
                [this, c](const error_code& ec) {
                  if (ec) on_read_error(c, ec);
                });
    const std::uint64_t limit =
        std::max(tcp_wire::max_directory_bytes(static_cast<std::size_t>(cfg_.world)),
                 tcp_wire::max_reason_length);
    read_frame(c, limit, [this, c](const tcp_wire::frame_header& rh) { on_reply(c, rh); });
  }

  /// The accepting side's verdict on this rank's proof.
  void on_reply(const conn_ptr& c, const tcp_wire::frame_header& h) {
    const int j = c->peer;
    if (h.kind == frame_kind::reject) {
      fatal_ = "rank " + std::to_string(j) + " (" + c->where +
               ") refused the handshake: " + tcp_wire::printable(text_of(c->payload_in));
      return;
    }
    if (cfg_.directory_mode && j == 0) {
      if (h.kind != frame_kind::directory) {
        throw transport_error(std::string("expected a directory frame, got a ") +
                              tcp_wire::kind_name(h.kind) + " frame");
      }
      std::vector<tcp_wire::peer_address> table =
          tcp_wire::parse_directory(c->payload_in, static_cast<std::size_t>(cfg_.world));
      for (int i = 1; i < cfg_.world; ++i) {
        cfg_.table[static_cast<std::size_t>(i)] = std::move(table[static_cast<std::size_t>(i)]);
      }
      links_[0] = c;
      ++linked_;
      for (int i = 1; i < cfg_.rank; ++i) connect_to(i, frame_kind::peer_hello);
      return;
    }
    if (h.kind != frame_kind::peer_ack) {
      throw transport_error(std::string("expected a peer_ack frame, got a ") +
                            tcp_wire::kind_name(h.kind) + " frame");
    }
    if (!c->payload_in.empty()) {
      throw transport_error("peer_ack frame with a payload of " +
                            std::to_string(c->payload_in.size()) + " bytes");
    }
    links_[static_cast<std::size_t>(j)] = c;
    ++linked_;
  }

  // --- frames ------------------------------------------------------------------

  /// Reads one complete, checked frame into c->header_in / c->payload_in and
  /// calls on_frame(header); a transport_error thrown by on_frame refuses the
  /// connection (incoming) or ends the rendezvous (outgoing).
  template <class OnFrame>
  void read_frame(const conn_ptr& c, std::uint64_t limit, OnFrame on_frame) {
    boost::asio::async_read(
        c->socket, boost::asio::buffer(c->header_in),
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
          c->payload_in.resize(static_cast<std::size_t>(h.length));  // at most `limit`
          boost::asio::async_read(c->socket, boost::asio::buffer(c->payload_in),
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

  static std::string_view text_of(const std::vector<std::byte>& bytes) {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  void on_protocol_error(const conn_ptr& c, const std::string& what) {
    if (c->outgoing) {
      fatal_ =
          "rank " + std::to_string(c->peer) + " (" + c->where + ") broke the handshake: " + what;
    } else if (gate_.settle(c)) {
      gate_.note("connection from " + c->where + " refused: " + what);
      send_reject(c, what);
    }
  }

  void on_read_error(const conn_ptr& c, const error_code& ec) {
    const std::string what = ec == boost::asio::error::eof ? "connection closed" : ec.message();
    if (c->outgoing) {
      if (fatal_.empty()) {
        fatal_ = "rank " + std::to_string(c->peer) + " (" + c->where +
                 ") closed the connection during the handshake: " + what;
      }
    } else if (gate_.settle(c)) {
      gate_.note("connection from " + c->where +
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
        if (!claimed_[static_cast<std::size_t>(j)])
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
        } else if (!claimed_[static_cast<std::size_t>(j)]) {
          missing.push_back("no connection from rank " + std::to_string(j));
        }
      }
    }
    if (missing.empty()) missing.push_back("handshake replies still in flight");
    for (std::size_t i = 0; i < missing.size(); ++i) s += (i ? "; " : "") + missing[i];
    return s;
  }

  boost::asio::io_context& io_;
  tcp::acceptor& acceptor_;
  tcp_rendezvous_config cfg_;
  boost::asio::steady_timer accept_timer_;
  std::vector<conn_ptr> links_;          // by rank: the connection that became the link
  std::vector<conn_ptr> claimed_;        // by rank: incoming, authenticated (then extras)
  std::vector<std::string> last_error_;  // per rank: why the last connect attempt failed
  std::vector<conn_ptr> outgoing_;       // connections this rank opened, to close at the end
  tcp_handshake_gate gate_;              // incoming connections before their proof
  std::string fatal_;
  int linked_ = 0;
  int pending_writes_ = 0;
  int flushing_ = 0;  // rejects being written
  bool directory_sent_ = false;
  bool finished_ = false;
};

}  // namespace ecopt::detail
