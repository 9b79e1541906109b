#pragma once
// tcp_transport's writing side. send() writes a frame straight from the
// caller's data while the link is idle (one non-blocking gathered sendmsg,
// no copy); what the socket does not take -- and every frame while others
// wait -- is copied into a pooled buffer and queued; the io thread writes
// each link's queue with gathered writes of up to max_batch frames.
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstddef>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "ecopt/transports/detail/tcp_links.hpp"

namespace ecopt::detail {

class tcp_send_queue : protected tcp_links {
 protected:
  using tcp_links::tcp_links;

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

  void recycle_send_buffer(std::vector<std::byte>&& buffer) {
    if (buffer.capacity() > 0) send_spare_.push_back(std::move(buffer));
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
};

}  // namespace ecopt::detail
