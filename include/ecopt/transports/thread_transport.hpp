#pragma once
// An in-process Transport: every rank is a thread of one process, and a
// message is a byte buffer handed from one thread to another.
//
// Each destination rank owns an inbox: one mutex, one condition variable, a
// FIFO per source rank and a free list of spare buffers. send() copies the
// payload into a spare buffer of the destination's inbox and queues it;
// recv() swaps the queued buffer with the caller's vector and puts the
// caller's old vector on the free list. Buffers thus circulate between an
// inbox and its senders. New ones are made only while message sizes grow or
// when more buffers are in use than ever before; the free list then grows to
// at least 8 buffers and doubles after that, so after a few rounds of
// repeating sizes neither side allocates, however the threads were scheduled.
// One condition variable per inbox also makes recv_any (the first matching
// message from any source) a scan of the FIFO heads.
//
// Failures never hang a world: a recv waits at most timeout(), returns at once
// with transport_error when the awaited peer has finished or any rank has
// failed, and run_threads rethrows the first rank's original exception.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

struct thread_transport_options {
  std::chrono::milliseconds timeout{60'000};  ///< longest time one recv waits
};

namespace detail {

/// Formats a tag for error messages: small tags in decimal, reserved
/// (collective) tags in hex.
inline std::string format_tag(message_tag tag) {
  if (tag < 0x10000u) return std::to_string(tag);
  static constexpr char digits[] = "0123456789abcdef";
  std::string s = "0x";
  for (int shift = 28; shift >= 0; shift -= 4) s += digits[(tag >> shift) & 0xfu];
  return s;
}

/// The state shared by the ranks of one run_threads call.
class thread_world {
 public:
  thread_world(int size, std::chrono::milliseconds timeout)
      : size_(size),
        timeout_(timeout),
        inboxes_(std::make_unique<inbox[]>(static_cast<std::size_t>(size))),
        finished_(std::make_unique<std::atomic<bool>[]>(static_cast<std::size_t>(size))) {
    const auto n = static_cast<std::size_t>(size);
    for (std::size_t i = 0; i < n; ++i) {
      inbox& box = inboxes_[i];
      box.head.assign(n, -1);
      box.tail.assign(n, -1);
      // Room for a few queued messages per source and as many spare buffers,
      // so that ordinary backlogs never grow these vectors.
      box.grow_nodes(4 * n + 16);
      box.spare.reserve(4 * n + 16);
      finished_[i].store(false, std::memory_order_relaxed);
    }
  }

  thread_world(const thread_world&) = delete;
  thread_world& operator=(const thread_world&) = delete;

  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return timeout_; }

  void send(int from, int to, message_tag tag, std::span<const std::byte> data) {
    if (failed_.load(std::memory_order_acquire)) {
      throw transport_error("rank " + std::to_string(from) + ": cannot send to rank " +
                            std::to_string(to) + " (tag " + format_tag(tag) +
                            "): " + failure_description());
    }
    inbox& box = inboxes_[static_cast<std::size_t>(to)];
    std::vector<std::byte> buffer;
    std::size_t reserve_to = 0;
    std::size_t extra = 0;
    if (!data.empty()) {
      std::lock_guard lock(box.mutex);
      if (data.size() > box.largest) {
        // Keep every spare able to hold every size seen here, so that a
        // spare taken later never grows. Sizes grow only while a protocol
        // warms up, so these allocations under the lock stay rare.
        box.largest = data.size();
        for (auto& spare : box.spare) spare.reserve(box.largest);
      }
      reserve_to = box.largest;
      if (!box.spare.empty()) {
        buffer = std::move(box.spare.back());
        box.spare.pop_back();
      } else {
        // More buffers are in flight to this rank or held in its `into`
        // vectors than ever before. How many depends on the thread schedule,
        // so grow to at least min_buffers and then double instead of adding
        // one: a later, slightly higher peak still finds a spare, and memory
        // stays within twice the peak.
        const std::size_t target = std::max(2 * box.buffers + 1, min_buffers);
        extra = target - box.buffers - 1;
        box.buffers = target;
      }
    }
    // Allocate and copy outside the lock: the receiver may be taking messages.
    std::vector<std::vector<std::byte>> extras(extra);
    for (auto& e : extras) e.reserve(reserve_to);
    if (!data.empty()) {
      if (buffer.capacity() < data.size()) buffer.reserve(reserve_to);
      buffer.assign(data.begin(), data.end());
    }
    {
      std::lock_guard lock(box.mutex);
      if (extra > 0) {
        // recv's push_back onto the free list must never reallocate.
        if (box.spare.capacity() < box.buffers) box.spare.reserve(2 * box.buffers);
        for (auto& e : extras) {
          e.reserve(box.largest);  // a larger message may have come meanwhile
          box.spare.push_back(std::move(e));
        }
      }
      box.push(from, tag, std::move(buffer));
    }
    box.ready.notify_all();
  }

  /// Takes the next message from `from` (or, for from < 0, the earliest
  /// message with `tag` from any rank) into `into`; returns the sender.
  int recv(int self, int from, message_tag tag, std::vector<std::byte>& into) {
    inbox& box = inboxes_[static_cast<std::size_t>(self)];
    outcome result = outcome::received;
    int source = from;
    message_tag actual_tag = tag;
    {
      std::unique_lock lock(box.mutex);
      const auto deadline = std::chrono::steady_clock::now() + timeout_;
      bool timed_out = false;
      for (;;) {
        int node = -1;
        if (from >= 0) {
          node = box.head[static_cast<std::size_t>(from)];
        } else {
          std::tie(node, source) = box.earliest_with_tag(tag);
        }
        if (node >= 0) {
          actual_tag = box.nodes[static_cast<std::size_t>(node)].tag;
          if (actual_tag != tag) {
            result = outcome::wrong_tag;
          } else {
            std::vector<std::byte> old = std::move(box.nodes[static_cast<std::size_t>(node)].data);
            into.swap(old);
            box.pop(source);
            // Recycle the caller's old buffer, grown if sizes have grown
            // since it left (only while a protocol warms up).
            if (old.capacity() > 0) {
              if (old.capacity() < box.largest) old.reserve(box.largest);
              box.spare.push_back(std::move(old));
            }
          }
          break;
        }
        if (failed_.load(std::memory_order_acquire)) {
          result = outcome::world_failed;
          break;
        }
        if (peers_finished(self, from)) {
          // A failing rank is marked failed before finished: report the
          // failure, not the mere absence of its message.
          result = failed_.load(std::memory_order_acquire) ? outcome::world_failed
                                                           : outcome::peer_finished;
          break;
        }
        if (timed_out) {
          result = outcome::timed_out;
          break;
        }
        timed_out = box.ready.wait_until(lock, deadline) == std::cv_status::timeout;
      }
    }
    if (result != outcome::received) throw_recv_error(result, self, from, tag, actual_tag);
    return source;
  }

  /// Records a rank's failure (the first one becomes the root cause) and
  /// wakes every waiting receiver.
  void fail(int rank, std::exception_ptr error) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    {
      std::lock_guard lock(failure_mutex_);
      if (!root_cause_) {
        root_cause_ = std::move(error);
        failed_rank_ = rank;
        failed_what_ = std::move(what);
      }
    }
    failed_.store(true, std::memory_order_release);
    wake_all();
  }

  /// Marks a rank as returned: receivers waiting on it fail at once.
  void finish(int rank) {
    finished_[static_cast<std::size_t>(rank)].store(true, std::memory_order_release);
    wake_all();
  }

  [[nodiscard]] std::exception_ptr root_cause() const {
    std::lock_guard lock(failure_mutex_);
    return root_cause_;
  }

 private:
  enum class outcome { received, wrong_tag, world_failed, peer_finished, timed_out };

  // Payload buffers an inbox makes the first time its free list runs dry.
  static constexpr std::size_t min_buffers = 8;

  struct message {
    message_tag tag = 0;
    std::uint64_t sequence = 0;  // arrival order within the inbox, for recv_any
    int next = -1;               // next node of the same source FIFO, or of the free list
    std::vector<std::byte> data;
  };

  // Aligned to keep ranks' inboxes off each other's cache lines.
  struct alignas(64) inbox {
    std::mutex mutex;
    std::condition_variable ready;
    // Per-source FIFOs are linked lists threaded through one node vector, so
    // queueing reuses nodes instead of allocating (as std::deque would).
    std::vector<message> nodes;
    int free_node = -1;
    std::vector<int> head, tail;                // per source; -1 when empty
    std::vector<std::vector<std::byte>> spare;  // free list of payload buffers
    std::size_t largest = 0;                    // largest payload ever sent here
    std::size_t buffers = 0;                    // payload buffers made for this inbox
    std::uint64_t arrivals = 0;

    void grow_nodes(std::size_t count) {
      const std::size_t old = nodes.size();
      nodes.resize(old + count);
      for (std::size_t i = old; i < nodes.size(); ++i) {
        nodes[i].next = i + 1 < nodes.size() ? static_cast<int>(i + 1) : free_node;
      }
      free_node = static_cast<int>(old);
    }

    void push(int source, message_tag tag, std::vector<std::byte>&& data) {
      if (free_node < 0) grow_nodes(std::max<std::size_t>(nodes.size(), 16));
      const int index = free_node;
      message& m = nodes[static_cast<std::size_t>(index)];
      free_node = m.next;
      m.tag = tag;
      m.sequence = arrivals++;
      m.next = -1;
      m.data = std::move(data);
      const auto s = static_cast<std::size_t>(source);
      if (tail[s] >= 0) {
        nodes[static_cast<std::size_t>(tail[s])].next = index;
      } else {
        head[s] = index;
      }
      tail[s] = index;
    }

    void pop(int source) {
      const auto s = static_cast<std::size_t>(source);
      const int index = head[s];
      message& m = nodes[static_cast<std::size_t>(index)];
      head[s] = m.next;
      if (head[s] < 0) tail[s] = -1;
      m.next = free_node;
      free_node = index;
    }

    /// The earliest-arrived FIFO head carrying `tag`: {node, source}, or {-1, -1}.
    [[nodiscard]] std::pair<int, int> earliest_with_tag(message_tag tag) const {
      std::pair<int, int> best{-1, -1};
      for (std::size_t s = 0; s < head.size(); ++s) {
        const int index = head[s];
        if (index < 0) continue;
        const message& m = nodes[static_cast<std::size_t>(index)];
        if (m.tag != tag) continue;
        if (best.first < 0 || m.sequence < nodes[static_cast<std::size_t>(best.first)].sequence) {
          best = {index, static_cast<int>(s)};
        }
      }
      return best;
    }
  };

  [[nodiscard]] bool peers_finished(int self, int from) const {
    if (from >= 0) return finished_[static_cast<std::size_t>(from)].load(std::memory_order_acquire);
    for (int r = 0; r < size_; ++r) {
      if (r != self && !finished_[static_cast<std::size_t>(r)].load(std::memory_order_acquire)) {
        return false;
      }
    }
    return true;
  }

  void wake_all() {
    for (int r = 0; r < size_; ++r) {
      inbox& box = inboxes_[static_cast<std::size_t>(r)];
      // Taking the lock orders this wake-up after a receiver's predicate
      // check, so the notification cannot slip in before its wait.
      { std::lock_guard lock(box.mutex); }
      box.ready.notify_all();
    }
  }

  [[nodiscard]] std::string failure_description() const {
    std::lock_guard lock(failure_mutex_);
    return "peer rank " + std::to_string(failed_rank_) + " failed: " + failed_what_;
  }

  [[noreturn]] void throw_recv_error(outcome result, int self, int from, message_tag tag,
                                     message_tag actual_tag) const {
    const std::string me = "rank " + std::to_string(self) + ": ";
    const std::string peer = from >= 0 ? "rank " + std::to_string(from) : "any rank";
    const std::string wanted = "a message from " + peer + " (tag " + format_tag(tag) + ")";
    switch (result) {
      case outcome::wrong_tag:
        throw transport_error(me + "protocol mismatch: expected tag " + format_tag(tag) +
                              " from rank " + std::to_string(from) +
                              " but its next message has tag " + format_tag(actual_tag));
      case outcome::world_failed:
        throw transport_error(me + failure_description() + " (while waiting for " + wanted + ")");
      case outcome::peer_finished:
        throw transport_error(me + (from >= 0 ? peer + " has" : "every other rank has") +
                              " returned without sending " + wanted);
      case outcome::timed_out:
      default:
        throw transport_error(me + "timed out after " + std::to_string(timeout_.count()) +
                              " ms waiting for " + wanted);
    }
  }

  int size_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<inbox[]> inboxes_;
  std::unique_ptr<std::atomic<bool>[]> finished_;
  std::atomic<bool> failed_{false};
  mutable std::mutex failure_mutex_;
  std::exception_ptr root_cause_;
  int failed_rank_ = -1;
  std::string failed_what_;
};

}  // namespace detail

/// One rank's endpoint in a run_threads world. Use it only from the thread
/// that runs that rank.
class thread_transport {
 public:
  /// Made by run_threads; `world` must outlive the transport.
  thread_transport(detail::thread_world& world, int rank) noexcept : world_(&world), rank_(rank) {}
  thread_transport(const thread_transport&) = delete;
  thread_transport& operator=(const thread_transport&) = delete;

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return world_->size(); }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return world_->timeout(); }
  /// Payload bytes this rank has sent.
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return bytes_sent_; }

  /// Queues a copy of `data` for `to`; never waits for the receiver.
  void send(int to, message_tag tag, std::span<const std::byte> data) {
    check_peer(to, "send to");
    world_->send(rank_, to, tag, data);
    bytes_sent_ += data.size();
  }

  /// Replaces `into` with the next message from `from`, which must carry
  /// `tag`. Throws transport_error on a tag mismatch, a failed or finished
  /// peer, or when timeout() passes.
  void recv(int from, message_tag tag, std::vector<std::byte>& into) {
    check_peer(from, "recv from");
    world_->recv(rank_, from, tag, into);
  }

  /// Replaces `into` with the earliest-arrived message carrying `tag` from
  /// any rank and returns its sender. Only each rank's next message is a
  /// candidate (per-pair FIFO order holds); messages with other tags stay
  /// queued. Throws transport_error like recv, or once every peer returned.
  int recv_any(message_tag tag, std::vector<std::byte>& into) {
    if (size() == 1) {
      throw invalid_argument("rank 0: recv_any in a world of one rank has no peer to receive from");
    }
    return world_->recv(rank_, -1, tag, into);
  }

 private:
  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= size()) {
      throw invalid_argument("rank " + std::to_string(rank_) + ": " + what + " rank " +
                             std::to_string(peer) + " is out of range (world size " +
                             std::to_string(size()) + ")");
    }
    if (peer == rank_) {
      throw invalid_argument("rank " + std::to_string(rank_) + ": " + what +
                             " itself is not allowed");
    }
  }

  detail::thread_world* world_;
  int rank_;
  std::uint64_t bytes_sent_ = 0;
};

static_assert(Transport<thread_transport>);

/// Runs fn(thread_transport&) for ranks 0..n-1, each on its own thread (rank 0
/// on the calling thread), and joins them. Returns void when fn does, else a
/// std::vector of the ranks' results indexed by rank. When ranks throw, the
/// exception of the first rank to fail is rethrown with its original type;
/// the other ranks' consequent transport_errors are dropped.
template <class Fn>
auto run_threads(int n, Fn&& fn, thread_transport_options opts = {}) {
  using result = std::invoke_result_t<Fn&, thread_transport&>;
  constexpr bool returns_void = std::is_void_v<result>;
  if (n < 1) {
    throw invalid_argument("run_threads: world size must be at least 1, got " + std::to_string(n));
  }
  if (opts.timeout.count() <= 0) {
    throw invalid_argument("run_threads: timeout must be positive, got " +
                           std::to_string(opts.timeout.count()) + " ms");
  }
  detail::thread_world world(n, opts.timeout);
  using stored = std::conditional_t<returns_void, bool, std::optional<std::remove_cvref_t<result>>>;
  std::vector<stored> results(returns_void ? 0 : static_cast<std::size_t>(n));

  auto run_rank = [&](int rank) noexcept {
    try {
      thread_transport transport(world, rank);
      if constexpr (returns_void) {
        std::invoke(fn, transport);
      } else {
        results[static_cast<std::size_t>(rank)].emplace(std::invoke(fn, transport));
      }
    } catch (...) {
      world.fail(rank, std::current_exception());
    }
    world.finish(rank);
  };

  std::vector<std::thread> threads;
  bool launched = true;
  try {
    threads.reserve(static_cast<std::size_t>(n - 1));
    for (int rank = 1; rank < n; ++rank)
      threads.emplace_back([&run_rank, rank] { run_rank(rank); });
  } catch (...) {
    // The rank whose thread could not start counts as failed; the started
    // ranks then stop at their next send or recv.
    world.fail(static_cast<int>(threads.size()) + 1, std::current_exception());
    launched = false;
  }
  if (launched) run_rank(0);
  for (std::thread& thread : threads) thread.join();

  if (std::exception_ptr error = world.root_cause()) std::rethrow_exception(error);
  if constexpr (!returns_void) {
    std::vector<std::remove_cvref_t<result>> out;
    out.reserve(results.size());
    for (auto& r : results) out.push_back(std::move(*r));
    return out;
  }
}

}  // namespace ecopt
