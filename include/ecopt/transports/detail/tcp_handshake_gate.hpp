#pragma once
// The door of tcp_transport's rendezvous: the connections it handles (one
// struct for both directions), and how incoming ones that have not yet
// proved the job token are kept from holding the ranks out -- a handshake
// deadline each, at most max_pending of them at once (a new one pushes out
// the oldest), refusals kept for the report (the first few, and a count) --
// and running out of file descriptors reported as what it is.
#include <sys/resource.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ecopt/transports/detail/tcp_auth.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"

namespace ecopt::detail {

/// One connection of the rendezvous, incoming or outgoing.
struct tcp_handshake_connection {
  using tcp = boost::asio::ip::tcp;
  explicit tcp_handshake_connection(boost::asio::io_context& io) : socket(io), timer(io) {}
  tcp::socket socket;
  boost::asio::steady_timer timer;  // connect retries; incoming: the handshake deadline
  tcp::resolver::results_type endpoints;
  tcp_wire::header_bytes header_in{};
  std::vector<std::byte> payload_in;
  tcp_wire::header_bytes header_out{};
  std::vector<std::byte> payload_out;
  std::string where;        // the remote address, for messages
  std::string remote_host;  // incoming: the peer's address as seen here
  int peer = -1;            // the rank at the other end (incoming: once authenticated)
  bool outgoing = false;
  tcp_auth::transcript auth{};  // what the proofs cover
  bool writing = false;         // a frame is being written
  std::string reject_next;      // a reject to write once that is done
};

/// EMFILE / ENFILE: retrying would not help.
[[nodiscard]] inline bool out_of_descriptors(const boost::system::error_code& ec) noexcept {
  return ec == boost::asio::error::no_descriptors ||
         ec == boost::system::errc::too_many_files_open_in_system;
}

/// Says what ran out, how many this process may open, and about how many a
/// rank needs.
[[nodiscard]] inline std::string descriptors_exhausted(const std::string& during,
                                                       const boost::system::error_code& ec,
                                                       std::size_t max_pending) {
  rlimit limit{};
  std::string allowed = "unknown";
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    allowed = limit.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(limit.rlim_cur);
  }
  return "out of file descriptors while " + during + " (" + ec.message() +
         "; this process may open " + allowed +
         ", see ulimit -n): a rank needs about world size + " + std::to_string(max_pending) +
         " (pending handshakes) + 16 descriptors";
}

/// Incoming connections waiting for their handshake, and the refusals.
class tcp_handshake_gate {
 public:
  using conn_ptr = std::shared_ptr<tcp_handshake_connection>;

  tcp_handshake_gate(std::size_t max_pending, std::chrono::milliseconds handshake_timeout)
      : max_pending_(max_pending), timeout_(handshake_timeout) {}

  [[nodiscard]] std::size_t max_pending() const noexcept { return max_pending_; }

  /// A newly accepted connection starts its handshake clock; at the cap, the
  /// oldest waiting one makes room (it has had the longest to finish).
  void admit(const conn_ptr& c) {
    if (pending_.size() >= max_pending_) {
      drop(pending_.front(), "dropped unauthenticated, the oldest of " +
                                 std::to_string(pending_.size()) +
                                 " connections waiting for their handshake");
    }
    pending_.push_back(c);
    c->timer.expires_after(timeout_);
    c->timer.async_wait([this, c](const boost::system::error_code& ec) {
      if (!ec) drop(c, "no complete handshake within " + std::to_string(timeout_.count()) + " ms");
    });
  }

  /// The connection leaves the waiting list (its handshake completed or
  /// failed); false if it had left already.
  bool settle(const conn_ptr& c) {
    const auto it = std::find(pending_.begin(), pending_.end(), c);
    if (it == pending_.end()) return false;
    pending_.erase(it);
    c->timer.cancel();
    return true;
  }

  /// Closes a connection that is still waiting for its handshake.
  void drop(const conn_ptr& c, const std::string& why) {
    if (!settle(c)) return;
    note("connection from " + c->where + " " + why);
    boost::system::error_code ignored;
    c->socket.close(ignored);
  }

  void note(std::string refusal) {
    if (refusals_.size() < kept) refusals_.push_back(std::move(refusal));
    ++count_;
  }

  /// Closes every waiting connection (the rendezvous ends).
  void close_all() {
    boost::system::error_code ignored;
    for (const auto& c : pending_) {
      c->timer.cancel();
      if (c->socket.is_open()) c->socket.close(ignored);
    }
  }

  void clear() { pending_.clear(); }

  /// " [refused n connection(s): ...]", or "" if none was.
  [[nodiscard]] std::string summary() const {
    if (refusals_.empty()) return {};
    std::string s = " [refused " + std::to_string(count_) + " connection(s): ";
    const std::size_t shown = std::min<std::size_t>(refusals_.size(), 5);
    for (std::size_t i = 0; i < shown; ++i) s += (i ? "; " : "") + refusals_[i];
    if (shown < count_) s += "; ...";
    return s + "]";
  }

 private:
  static constexpr std::size_t kept = 16;  // refusals kept for the report
  std::size_t max_pending_;
  std::chrono::milliseconds timeout_;
  std::deque<conn_ptr> pending_;  // oldest first
  std::vector<std::string> refusals_;
  std::size_t count_ = 0;
};

}  // namespace ecopt::detail
