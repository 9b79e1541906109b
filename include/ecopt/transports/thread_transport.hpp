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
// The collectives (allreduce, allgather, allgather_bytes, broadcast, barrier)
// do not pass messages here: the ranks share an address space, so each rank
// publishes a pointer to its data, and after a rendezvous every rank reads
// what it needs straight from its peers' memory -- one copy instead of the
// ring's two or three (see native_allreduce_sum). The reduction order is that
// of the message algorithms (ring, or halving-doubling for 4, 8, ... ranks),
// so results are bitwise those of the collectives over any other transport,
// and bytes_sent() counts what the messages would have been.
//
// Failures never hang a world: a recv waits at most timeout(), returns at once
// with transport_error when the awaited peer has finished, is waiting in a
// collective, or any rank has failed, and run_threads rethrows the first
// rank's original exception.
#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
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

#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/collectives/tags.hpp"
#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

struct thread_transport_options {
  std::chrono::milliseconds timeout{60'000};  ///< longest time one recv waits
};

namespace detail {

/// The state shared by the ranks of one run_threads call.
class thread_world {
 public:
  thread_world(int size, std::chrono::milliseconds timeout)
      : size_(size),
        timeout_(timeout),
        inboxes_(std::make_unique<inbox[]>(static_cast<std::size_t>(size))),
        finished_(std::make_unique<std::atomic<bool>[]>(static_cast<std::size_t>(size))),
        entries_{std::vector<collective_entry>(static_cast<std::size_t>(size)),
                 std::vector<collective_entry>(static_cast<std::size_t>(size))},
        joins_(static_cast<std::size_t>(size), 0),
        waiting_since_(
            std::make_unique<std::atomic<std::uint64_t>[]>(static_cast<std::size_t>(size))),
        receiving_(std::make_unique<std::atomic<bool>[]>(static_cast<std::size_t>(size))) {
    const auto n = static_cast<std::size_t>(size);
    for (std::size_t i = 0; i < n; ++i) {
      waiting_since_[i].store(0, std::memory_order_relaxed);
      receiving_[i].store(false, std::memory_order_relaxed);
    }
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
  /// Whether `rank` has returned from its function.
  [[nodiscard]] bool finished(int rank) const noexcept {
    return finished_[static_cast<std::size_t>(rank)].load(std::memory_order_acquire);
  }

  void send(int from, int to, message_tag tag, std::span<const std::byte> data) {
    if (failed_.load(std::memory_order_acquire)) {
      throw transport_error("rank " + std::to_string(from) + ": cannot send to rank " +
                            std::to_string(to) + " (tag " + tag_text(tag) +
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
        // The receiving flag (seq_cst, set before the check) pairs with the
        // rendezvous' waiting_since_ store: one side sees the other.
        receiving_[static_cast<std::size_t>(self)].store(true);
        if (from >= 0 && in_collective(from)) {
          // The peer cannot send before this rank joins its collective.
          result = outcome::peer_in_collective;
          break;
        }
        if (timed_out) {
          result = outcome::timed_out;
          break;
        }
        timed_out = box.ready.wait_until(lock, deadline) == std::cv_status::timeout;
      }
      receiving_[static_cast<std::size_t>(self)].store(false, std::memory_order_relaxed);
    }
    if (result != outcome::received) throw_recv_error(result, self, from, tag, actual_tag);
    return source;
  }

  /// What a rank brings to a shared-memory collective: its input bytes (read
  /// by the peers), the collective's tag (op and element type) and the root.
  struct collective_entry {
    message_tag tag = 0;
    const std::byte* input = nullptr;
    std::size_t bytes = 0;
    int root = -1;
  };

  /// Publishes `mine` and waits until every rank has published; then checks
  /// that every rank is in the same collective (tag, root). The entries stay
  /// valid until the caller's next rendezvous.
  /// Entries alternate between two sets by the rank's count of joins: a rank
  /// that leaves a collective first may publish for the next one while its
  /// peers still read this one's (it cannot get further ahead).
  const std::vector<collective_entry>& join(int self, collective_entry mine, const char* what) {
    std::uint64_t& joins = joins_[static_cast<std::size_t>(self)];
    std::vector<collective_entry>& entries = entries_[joins++ % 2];
    entries[static_cast<std::size_t>(self)] = mine;
    rendezvous(self, what);
    for (int q = 0; q < size_; ++q) {
      const collective_entry& theirs = entries[static_cast<std::size_t>(q)];
      if (theirs.tag != mine.tag || theirs.root != mine.root) {
        throw transport_error("rank " + std::to_string(self) + ": protocol mismatch: " + what +
                              " (tag " + tag_text(mine.tag) + ", root " +
                              std::to_string(mine.root) + ") met rank " + std::to_string(q) +
                              " in tag " + tag_text(theirs.tag) + ", root " +
                              std::to_string(theirs.root));
      }
    }
    return entries;
  }

  /// Returns once every rank has called rendezvous as often as this one.
  /// Throws transport_error when a rank failed or returned, or on timeout().
  void rendezvous(int self, const char* what) {
    std::unique_lock lock(rendezvous_mutex_);
    const std::uint64_t generation = generation_.load(std::memory_order_relaxed);
    if (++arrived_ == size_) {
      arrived_ = 0;
      generation_.store(generation + 1, std::memory_order_release);
      lock.unlock();
      rendezvous_ready_.notify_all();
      return;
    }
    waiting_since_[static_cast<std::size_t>(self)].store(generation + 1);
    lock.unlock();
    wake_receivers(self);  // a peer blocked in recv from this rank cannot succeed now
    // Ranks on cores of their own meet within microseconds, sooner than a
    // condition variable wakes a thread: poll a little first, yielding so
    // that ranks sharing a core still run.
    for (int poll = 0; poll < 64; ++poll) {
      if (generation_.load(std::memory_order_acquire) != generation) break;
      std::this_thread::yield();
    }
    lock.lock();
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    bool timed_out = false;
    enum class problem { none, world_failed, peer_finished, timed_out } found = problem::none;
    while (generation_.load(std::memory_order_relaxed) == generation && found == problem::none) {
      if (failed_.load(std::memory_order_acquire)) {
        found = problem::world_failed;
      } else if (any_peer_finished(self)) {
        found = problem::peer_finished;
      } else if (timed_out) {
        found = problem::timed_out;
      } else {
        timed_out = rendezvous_ready_.wait_until(lock, deadline) == std::cv_status::timeout;
      }
    }
    waiting_since_[static_cast<std::size_t>(self)].store(0);
    if (found == problem::none) return;
    --arrived_;  // leave the world's count as it was, should the caller go on
    lock.unlock();
    const std::string me = "rank " + std::to_string(self) + ": ";
    switch (found) {
      case problem::world_failed:
        throw transport_error(me + failure_description() + " (in " + what + ")");
      case problem::peer_finished:
        for (int q = 0; q < size_; ++q) {
          if (q != self && finished_[static_cast<std::size_t>(q)].load(std::memory_order_acquire)) {
            throw transport_error(me + "rank " + std::to_string(q) +
                                  " has returned without joining " + what);
          }
        }
        [[fallthrough]];
      default:
        throw transport_error(me + "timed out after " + std::to_string(timeout_.count()) +
                              " ms waiting for every rank to join " + what);
    }
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
  enum class outcome {
    received,
    wrong_tag,
    world_failed,
    peer_finished,
    peer_in_collective,
    timed_out
  };

  /// Whether `rank` waits in a rendezvous that has not completed. Reading
  /// waiting_since_ before generation_ errs only towards false.
  [[nodiscard]] bool in_collective(int rank) {
    const std::uint64_t since =
        waiting_since_[static_cast<std::size_t>(rank)].load(std::memory_order_seq_cst);
    if (since == 0) return false;
    std::lock_guard lock(rendezvous_mutex_);
    return generation_.load(std::memory_order_relaxed) < since;
  }

  [[nodiscard]] bool any_peer_finished(int self) const {
    for (int q = 0; q < size_; ++q) {
      if (q != self && finished_[static_cast<std::size_t>(q)].load(std::memory_order_acquire)) {
        return true;
      }
    }
    return false;
  }

  /// Wakes the ranks blocked in recv, so that they notice `rank` waiting in a collective.
  void wake_receivers(int rank) {
    for (int q = 0; q < size_; ++q) {
      if (q == rank || !receiving_[static_cast<std::size_t>(q)].load(std::memory_order_seq_cst)) {
        continue;
      }
      inbox& box = inboxes_[static_cast<std::size_t>(q)];
      { std::lock_guard lock(box.mutex); }
      box.ready.notify_all();
    }
  }

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
    { std::lock_guard lock(rendezvous_mutex_); }
    rendezvous_ready_.notify_all();
  }

  [[nodiscard]] std::string failure_description() const {
    std::lock_guard lock(failure_mutex_);
    return "peer rank " + std::to_string(failed_rank_) + " failed: " + failed_what_;
  }

  [[noreturn]] void throw_recv_error(outcome result, int self, int from, message_tag tag,
                                     message_tag actual_tag) const {
    const std::string me = "rank " + std::to_string(self) + ": ";
    const std::string peer = from >= 0 ? "rank " + std::to_string(from) : "any rank";
    const std::string wanted = "a message from " + peer + " (tag " + tag_text(tag) + ")";
    switch (result) {
      case outcome::wrong_tag:
        throw transport_error(me + "protocol mismatch: expected tag " + tag_text(tag) +
                              " from rank " + std::to_string(from) +
                              " but its next message has tag " + tag_text(actual_tag));
      case outcome::world_failed:
        throw transport_error(me + failure_description() + " (while waiting for " + wanted + ")");
      case outcome::peer_finished:
        throw transport_error(me + (from >= 0 ? peer + " has" : "every other rank has") +
                              " returned without sending " + wanted);
      case outcome::peer_in_collective:
        throw transport_error(me + "protocol mismatch: waiting for " + wanted + ", but rank " +
                              std::to_string(from) +
                              " waits in a collective this rank has not joined");
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
  // Shared-memory collectives: two sets of one entry per rank, and a counting rendezvous.
  std::vector<collective_entry> entries_[2];
  std::vector<std::uint64_t> joins_;  ///< per rank; only that rank's thread touches it
  std::mutex rendezvous_mutex_;
  std::condition_variable rendezvous_ready_;
  int arrived_ = 0;
  std::atomic<std::uint64_t> generation_{0};  ///< rendezvous completed; written under the mutex
  std::unique_ptr<std::atomic<std::uint64_t>[]> waiting_since_;  ///< generation + 1, or 0
  std::unique_ptr<std::atomic<bool>[]> receiving_;               ///< blocked in recv
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

  /// True once rank `peer` has returned from its function (PeerLossTransport).
  [[nodiscard]] bool peer_lost(int peer) const {
    check_peer(peer, "peer_lost of");
    return world_->finished(peer);
  }

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

  // --- Shared-memory collectives (found by collectives/ with `requires`) ------
  // Each publishes this rank's data, meets the others, reads from their
  // memory, and meets them again before returning, so no rank changes data a
  // peer still reads. bytes_sent() grows by what the ring collectives would
  // send, so reports agree with those over the other transports.

  /// The message allreduce's arithmetic in shared memory. Ring (n not 4, 8,
  /// ...): rank r reduces chunk r+1 (acc = x_{r+1}; acc = op(x_k, acc) for
  /// k = r+2, ..., r, as the ring's messages would fold it); halving-doubling:
  /// rank r reduces chunk r by the same tree as the messages (tree_value).
  /// Then every rank copies each chunk from its owner.
  template <reducible_value V>
  void native_allreduce_sum(std::span<V> data) {
    shared_allreduce(data, collective_tag_for<V>(collective_tag::allreduce_sum), "allreduce_sum",
                     [](V a, V b) { return static_cast<V>(a + b); });
  }
  template <reducible_value V>
  void native_allreduce_max(std::span<V> data) {
    shared_allreduce(data, collective_tag_for<V>(collective_tag::allreduce_max), "allreduce_max",
                     [](V a, V b) { return b > a ? b : a; });
  }

  /// all := the ranks' equal-size `mine` blocks in rank order.
  template <class V>
  requires std::is_trivially_copyable_v<V>
  void native_allgather(std::span<const V> mine, std::span<V> all) {
    const int n = size();
    const std::size_t block = mine.size();
    if (all.size() != block * static_cast<std::size_t>(n)) {
      throw invalid_argument("allgather: rank " + std::to_string(rank_) + " passed all.size() = " +
                             std::to_string(all.size()) + ", expected world size " +
                             std::to_string(n) + " x mine.size() " + std::to_string(block));
    }
    const auto& entries =
        join_checked({collective_tag_for<V>(collective_tag::allgather),
                      reinterpret_cast<const std::byte*>(mine.data()), mine.size_bytes(), -1},
                     "allgather");
    auto* out = reinterpret_cast<std::byte*>(all.data());
    for (int q = 0; q < n; ++q) {
      const auto& theirs = entries[static_cast<std::size_t>(q)];
      std::byte* into = out + static_cast<std::size_t>(q) * theirs.bytes;
      // `mine` may be this rank's block of `all` already (peers read it meanwhile).
      if (theirs.bytes > 0 && into != theirs.input) std::memmove(into, theirs.input, theirs.bytes);
    }
    world_->rendezvous(rank_, "allgather");
    bytes_sent_ += static_cast<std::uint64_t>(n - 1) * mine.size_bytes();
  }

  /// all[r] := rank r's `mine`; block sizes may differ between ranks.
  void native_allgather_bytes(std::span<const std::byte> mine,
                              std::vector<std::vector<std::byte>>& all) {
    const int n = size();
    const auto& entries = world_->join(
        rank_,
        {collective_tag_for<>(collective_tag::allgather_bytes), mine.data(), mine.size(), -1},
        "allgather_bytes");
    all.resize(static_cast<std::size_t>(n));
    // The peers' blocks first: `mine` may live in all[rank], which changes last.
    for (int q = 0; q < n; ++q) {
      if (q == rank_) continue;
      const auto& theirs = entries[static_cast<std::size_t>(q)];
      all[static_cast<std::size_t>(q)].assign(theirs.input, theirs.input + theirs.bytes);
    }
    // What the messages would send: the ring every block but the right
    // neighbour's; recursive doubling its group's blocks and sizes per step.
    std::uint64_t would_send = 0;
    if (detail::halving_doubling_applies(n)) {
      would_send = detail::doubling_allgather_bytes_sent(
          n, rank_, [&](int q) { return entries[static_cast<std::size_t>(q)].bytes; });
    } else if (n > 1) {
      for (const auto& e : entries) would_send += e.bytes;
      would_send -= entries[static_cast<std::size_t>((rank_ + 1) % n)].bytes;
    }
    world_->rendezvous(rank_, "allgather_bytes");  // nobody reads `mine` any more
    std::vector<std::byte>& own = all[static_cast<std::size_t>(rank_)];
    if (own.data() != mine.data() || own.size() != mine.size()) {
      const bool inside = !mine.empty() && std::greater_equal<>()(mine.data(), own.data()) &&
                          std::less<>()(mine.data(), own.data() + own.size());
      if (inside) {
        std::memmove(own.data(), mine.data(), mine.size());
        own.resize(mine.size());
      } else {
        own.assign(mine.begin(), mine.end());
      }
    }
    bytes_sent_ += would_send;
  }

  /// data := root's data (a binomial tree's byte count is charged).
  template <class V>
  requires std::is_trivially_copyable_v<V>
  void native_broadcast(std::span<V> data, int root) {
    const int n = size();
    if (root < 0 || root >= n) {
      throw invalid_argument("broadcast: rank " + std::to_string(rank_) + " passed root " +
                             std::to_string(root) + ", outside the world of " + std::to_string(n) +
                             " ranks");
    }
    const auto& entries =
        join_checked({collective_tag_for<V>(collective_tag::broadcast),
                      reinterpret_cast<const std::byte*>(data.data()), data.size_bytes(), root},
                     "broadcast");
    if (rank_ != root && !data.empty()) {
      std::memcpy(data.data(), entries[static_cast<std::size_t>(root)].input, data.size_bytes());
    }
    world_->rendezvous(rank_, "broadcast");
    // Children of this rank in the binomial tree rooted at `root`.
    const int relative = detail::ring_index(rank_ - root, n);
    int children = 0;
    for (int mask = 1; mask < n; mask <<= 1) {
      if (relative & mask) break;
      if (relative + mask < n) ++children;
    }
    bytes_sent_ += static_cast<std::uint64_t>(children) * data.size_bytes();
  }

  void native_barrier() {
    world_->join(rank_, {collective_tag_for<>(collective_tag::barrier), nullptr, 0, -1}, "barrier");
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

  /// join(), then the check every ring collective makes of its messages:
  /// all ranks pass the same number of bytes.
  const std::vector<detail::thread_world::collective_entry>& join_checked(
      detail::thread_world::collective_entry mine, const char* what) {
    const auto& entries = world_->join(rank_, mine, what);
    for (int q = 0; q < size(); ++q) {
      detail::check_message_size(what, rank_, q, mine.bytes,
                                 entries[static_cast<std::size_t>(q)].bytes);
    }
    return entries;
  }

  template <class V, class Op>
  void shared_allreduce(std::span<V> data, message_tag tag, const char* what, Op op) {
    const int n = size();
    if (n == 1) return;
    const auto& entries = join_checked(
        {tag, reinterpret_cast<const std::byte*>(data.data()), data.size_bytes(), -1}, what);
    auto input_of = [&](int q) {
      return reinterpret_cast<const V*>(entries[static_cast<std::size_t>(q)].input);
    };
    // Halving-doubling leaves chunk r complete on rank r, the ring chunk r+1.
    const bool halving = detail::halving_doubling_applies(n);
    const int owned = halving ? rank_ : detail::ring_index(rank_ + 1, n);
    const detail::part_bounds mine = detail::even_part(data.size(), n, owned);
    constexpr std::size_t block = l1_block<V>;  // reduce in blocks that stay in L1
    V* out = data.data();
    if (halving) {
      V result[block];
      for (std::size_t begin = mine.begin; begin < mine.begin + mine.size; begin += block) {
        const std::size_t length = std::min(block, mine.begin + mine.size - begin);
        tree_value(entries, rank_, std::countr_zero(static_cast<unsigned>(n)), begin, length,
                   result, op);
        std::memcpy(out + begin, result, length * sizeof(V));
      }
    } else if (n == 2) {
      // The last operand is this rank's own data (rank owned - 1 = rank_).
      const V* x = input_of(owned);
      for (std::size_t i = mine.begin; i < mine.begin + mine.size; ++i) out[i] = op(out[i], x[i]);
    } else {
      V acc[block];
      for (std::size_t begin = mine.begin; begin < mine.begin + mine.size; begin += block) {
        const std::size_t length = std::min(block, mine.begin + mine.size - begin);
        const V* first = input_of(owned) + begin;
        const V* second = input_of(detail::ring_index(owned + 1, n)) + begin;
        for (std::size_t i = 0; i < length; ++i) acc[i] = op(second[i], first[i]);
        for (int k = 2; k < n - 1; ++k) {
          const V* x = input_of(detail::ring_index(owned + k, n)) + begin;
          for (std::size_t i = 0; i < length; ++i) acc[i] = op(x[i], acc[i]);
        }
        for (std::size_t i = 0; i < length; ++i) out[begin + i] = op(out[begin + i], acc[i]);
      }
    }
    world_->rendezvous(rank_, what);
    // Copy every other chunk from its owner (rank c, or for the ring rank c - 1).
    for (int c = 0; c < n; ++c) {
      if (c == owned) continue;
      const detail::part_bounds b = detail::even_part(data.size(), n, c);
      const int owner = halving ? c : detail::ring_index(c - 1, n);
      if (b.size > 0) {
        std::memcpy(data.data() + b.begin, input_of(owner) + b.begin, b.size * sizeof(V));
      }
    }
    world_->rendezvous(rank_, what);
    if (halving) {
      bytes_sent_ += detail::halving_doubling_elements_sent(data.size(), n, rank_) * sizeof(V);
    } else {
      // The ring sends all chunks but r+1 (reduce-scatter) and all but r+2 (allgather).
      const std::uint64_t total = data.size_bytes();
      const std::uint64_t skip_1 = mine.size * sizeof(V);
      const std::uint64_t skip_2 =
          detail::even_part(data.size(), n, detail::ring_index(rank_ + 2, n)).size * sizeof(V);
      bytes_sent_ += (total - skip_1) + (total - skip_2);
    }
  }

  /// Elements of V in a block of the shared-memory reductions (4 KiB: in L1).
  template <class V>
  static constexpr std::size_t l1_block = 4096 / sizeof(V);

  /// out[0, length) := value(q, k) over elements [begin, begin + length): the
  /// halving-doubling allreduce's tree (collectives/allreduce.hpp), value(q, k) =
  /// op(value(q, k-1), value(q ^ (n >> k), k-1)) with value(q, 0) = x_q -- rank
  /// r's chunk r is value(r, log2 n), as the messages would fold it.
  template <class V, class Op, class Entries>
  void tree_value(const Entries& entries, int q, int k, std::size_t begin, std::size_t length,
                  V* out, Op op) {
    const int n = size();
    auto input_of = [&](int p) {
      return reinterpret_cast<const V*>(entries[static_cast<std::size_t>(p)].input) + begin;
    };
    if (k == 1) {
      const V* a = input_of(q);
      const V* b = input_of(q ^ (n >> 1));
      for (std::size_t i = 0; i < length; ++i) out[i] = op(a[i], b[i]);
      return;
    }
    tree_value(entries, q, k - 1, begin, length, out, op);
    V other[l1_block<V>];
    tree_value(entries, q ^ (n >> k), k - 1, begin, length, other, op);
    for (std::size_t i = 0; i < length; ++i) out[i] = op(out[i], other[i]);
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
