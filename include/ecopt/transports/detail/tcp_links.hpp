#pragma once
// What the parts of a tcp_transport share: one link per peer (its socket,
// send queue, frame reader state and inbox, under four owners: send_mutex_,
// the link's reader, inbox_mutex_ and the io thread), the io thread's
// context and wake-up pipes, the buffer pools, and how a link fails. The
// send queue (tcp_send_queue.hpp), the frame reader (tcp_frame_reader.hpp)
// and tcp_transport build on it, in that order.
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio/buffer.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ecopt/transport.hpp"
#include "ecopt/transports/detail/tcp_buffers.hpp"
#include "ecopt/transports/detail/tcp_options.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"

namespace ecopt::detail {

class tcp_links {
 protected:
  using tcp = boost::asio::ip::tcp;
  using error_code = boost::system::error_code;

  explicit tcp_links(const tcp_options& options)
      : rank_(options.rank),
        world_(options.world_size),
        timeout_(options.timeout),
        max_message_(options.max_message_bytes),
        max_queued_(options.max_queued_bytes),
        payload_checksum_(options.payload_checksum),
        tolerate_lost_peers_(options.tolerate_lost_peers) {}

  ~tcp_links() {
    for (const int fd : {wake_write_fd_, notify_read_fd_, notify_write_fd_}) {
      if (fd >= 0) ::close(fd);
    }
  }

  tcp_links(const tcp_links&) = delete;
  tcp_links& operator=(const tcp_links&) = delete;

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

  /// Wakes the io thread to look at the send queues; one byte in the pipe
  /// stands for any number of sends until the io thread has looked.
  void wake() noexcept {
    if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) {
      const char byte = 1;
      [[maybe_unused]] const auto written = ::write(wake_write_fd_, &byte, 1);
    }
  }

  void drain_notify() noexcept {
    char bytes[64];
    while (::read(notify_read_fd_, bytes, sizeof bytes) > 0) {
    }
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
  /// one reported) -- only the link when lost peers are tolerated, unless
  /// `whole_world` (this rank's own failure). Returns false if the link was
  /// no longer open.
  bool fail_link(int j, const std::string& what, bool whole_world = false) {
    link& l = *links_[static_cast<std::size_t>(j)];
    {
      std::lock_guard lock(inbox_mutex_);
      if (l.state != link_state::open) return false;
      l.state = link_state::failed;
      l.closed_reason = what;
      l.usable.store(false, std::memory_order_release);
      if ((whole_world || !tolerate_lost_peers_) && !failed_.load(std::memory_order_relaxed)) {
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
        if (j != rank_) fail_link(j, what, true);
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
  bool tolerate_lost_peers_;
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

}  // namespace ecopt::detail
