#pragma once
// tcp_transport's reading side: one frame state machine per link (pump),
// run by whoever holds the link's reader -- the io thread, or a recv waiting
// for that peer, which may land a body straight in the caller's memory.
// Every field of a frame is checked; memory for a body grows as its bytes
// arrive; a full inbox stops reading (back-pressure); any failure fails the
// link naming the peer, never leaves the reader taken.
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <exception>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transports/detail/crc32c.hpp"
#include "ecopt/transports/detail/tcp_send_queue.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"

namespace ecopt::detail {

class tcp_frame_reader : protected tcp_send_queue {
 protected:
  using tcp_send_queue::tcp_send_queue;

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
      tcp_frame_reader& self;
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
};

}  // namespace ecopt::detail
