#pragma once
// mpi_transport: a Transport over MPI (target ecopt::mpi), for clusters where
// jobs start under mpirun / srun. The same solver code runs on it as on
// threads or TCP.
//
// Point-to-point. ecopt tags are 32-bit and MPI's are at most 2^31 - 1, so a
// message travels as a 16-byte header (magic, tag, length) on one duplicated
// communicator and its payload on another. Headers are matched with MPI_ANY_TAG
// from the sender, so the next message from a rank is taken in order and a tag
// mismatch is an error (as in thread_transport), and the payload is received
// straight into the caller's buffer (no staging copy on the receive side).
// send() copies the payload into a pooled buffer and posts MPI_Isend: it
// returns at once, never waits for the receiver, and the caller may reuse its
// data (the Transport contract). Finished sends return their buffers to the
// pool, so steady traffic does not allocate.
//
// Collectives. allreduce (sum, max), allgather, allgather_bytes, broadcast and
// barrier map onto MPI's own (MPI_Iallreduce, MPI_Iallgather(v), MPI_Ibcast,
// MPI_Ibarrier) through the `native_*` members the collectives in
// collectives/ look for. MPI's reductions give every rank the same result for
// the same inputs in the implementations we use (Open MPI's algorithms reduce
// each element in one place and distribute it); the solver relies on that to
// keep the ranks' iterates equal.
//
// Deadlines. Every operation is non-blocking underneath and polled until it
// completes or `timeout` passes, which throws transport_error naming the
// operation and the peer. A rank that dies is, under Open MPI's default
// settings, noticed by mpirun, which ends the whole job; errors MPI returns
// (MPI_ERRORS_RETURN is set on our communicators) become transport_error.
//
// bytes_sent() counts point-to-point payload bytes, and for a native
// collective the bytes a bandwidth-optimal algorithm sends per rank
// (allreduce 2(P-1)/P n, allgather (P-1) block, broadcast n at the root), so
// reports stay comparable with the ring collectives of the other transports.
//
// Use one mpi_transport from one thread at a time; MPI must be initialised
// (mpi_session does it) with at least MPI_THREAD_SERIALIZED when other threads
// also call MPI.
// The C API only: MPI's deprecated C++ bindings are not needed, and Open MPI's
// do not compile warning-free.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

/// Initialises MPI for the lifetime of the object (MPI_Init_thread) unless it
/// is already initialised, and finalises it on destruction if it initialised
/// it. Make one in main(), before any mpi_transport.
class mpi_session {
 public:
  mpi_session(int* argc, char*** argv, int required = MPI_THREAD_SERIALIZED) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, required, &provided) != MPI_SUCCESS) {
      throw transport_error("mpi_session: MPI_Init_thread failed");
    }
    owner_ = true;
    if (provided < required) {
      MPI_Finalize();
      owner_ = false;
      throw transport_error("mpi_session: this MPI provides thread level " +
                            std::to_string(provided) + ", below the required " +
                            std::to_string(required));
    }
  }
  mpi_session() : mpi_session(nullptr, nullptr) {}
  mpi_session(const mpi_session&) = delete;
  mpi_session& operator=(const mpi_session&) = delete;
  ~mpi_session() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owner_ && !finalized) MPI_Finalize();
  }

 private:
  bool owner_ = false;
};

struct mpi_options {
  std::chrono::milliseconds timeout{60'000};  ///< longest wait of one operation
  /// Messages longer than this are refused by send() and by the receiver
  /// (before it allocates); at most 2^31 - 1 (one MPI count of bytes).
  std::uint64_t max_message_bytes = std::uint64_t{1} << 30;

  void validate() const {
    if (timeout.count() <= 0) {
      throw invalid_argument("mpi_options: timeout must be positive, got " +
                             std::to_string(timeout.count()) + " ms");
    }
    if (max_message_bytes == 0 || max_message_bytes > 0x7fff'ffffu) {
      throw invalid_argument("mpi_options: max_message_bytes must be in [1, 2^31 - 1], got " +
                             std::to_string(max_message_bytes));
    }
  }
};

namespace detail {

/// The MPI datatype of V, or MPI_DATATYPE_NULL when there is none.
template <class V>
[[nodiscard]] MPI_Datatype mpi_datatype() noexcept {
  using U = std::remove_cv_t<V>;
  if constexpr (std::is_same_v<U, float>)
    return MPI_FLOAT;
  else if constexpr (std::is_same_v<U, double>)
    return MPI_DOUBLE;
  else if constexpr (std::is_same_v<U, long double>)
    return MPI_LONG_DOUBLE;
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 1)
    return MPI_INT8_T;
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 2)
    return MPI_INT16_T;
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 4)
    return MPI_INT32_T;
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 8)
    return MPI_INT64_T;
  else if constexpr (std::is_integral_v<U> && sizeof(U) == 1)
    return MPI_UINT8_T;
  else if constexpr (std::is_integral_v<U> && sizeof(U) == 2)
    return MPI_UINT16_T;
  else if constexpr (std::is_integral_v<U> && sizeof(U) == 4)
    return MPI_UINT32_T;
  else if constexpr (std::is_integral_v<U> && sizeof(U) == 8)
    return MPI_UINT64_T;
  else
    return MPI_DATATYPE_NULL;
}

template <class V>
concept mpi_reducible =
    std::is_arithmetic_v<V> && !std::is_same_v<std::remove_cv_t<V>, bool> &&
    !std::is_same_v<std::remove_cv_t<V>, char> && !std::is_same_v<std::remove_cv_t<V>, wchar_t>;

[[nodiscard]] inline std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(length));
}

}  // namespace detail

class mpi_transport {
 public:
  /// Duplicates `comm` (so ecopt's traffic never mixes with the caller's);
  /// the ranks are those of `comm`. MPI must be initialised.
  explicit mpi_transport(MPI_Comm comm = MPI_COMM_WORLD, mpi_options options = {})
      : options_(options) {
    options_.validate();
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      throw transport_error("mpi_transport: MPI is not initialised (make an mpi_session first)");
    }
    check(MPI_Comm_dup(comm, &headers_), "MPI_Comm_dup");
    check(MPI_Comm_dup(comm, &payloads_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(headers_, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(payloads_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(headers_, &rank_);
    MPI_Comm_size(headers_, &size_);
    int* upper = nullptr;
    int found = 0;
    MPI_Comm_get_attr(headers_, MPI_TAG_UB, &upper, &found);
    tag_upper_bound_ = found && upper != nullptr ? *upper : 32767;  // the standard's minimum
  }
  mpi_transport(const mpi_transport&) = delete;
  mpi_transport& operator=(const mpi_transport&) = delete;

  /// Waits (at most timeout) for this rank's sends to complete, then frees
  /// the communicators.
  ~mpi_transport() {
    const auto deadline = clock::now() + options_.timeout;
    auto busy = [&] {
      return std::any_of(pending_.begin(), pending_.end(),
                         [](const pending_send& p) { return p.busy; });
    };
    while (busy() && clock::now() < deadline) {
      try {
        reap_sends();
      } catch (const transport_error&) {
        break;  // a destructor does not throw; MPI reported the failure already
      }
      std::this_thread::yield();
    }
    for (auto& p : pending_) {
      // Not completed in time: let MPI finish (or drop) them on its own.
      if (!p.busy) continue;
      if (p.header != MPI_REQUEST_NULL) MPI_Request_free(&p.header);
      if (p.payload != MPI_REQUEST_NULL) MPI_Request_free(&p.payload);
      // MPI may still read the buffer after we are gone: leak it on purpose.
      new std::vector<std::byte>(std::move(p.buffer));
    }
    MPI_Comm_free(&headers_);
    MPI_Comm_free(&payloads_);
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return options_.timeout; }
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return bytes_sent_; }

  void send(int to, message_tag tag, std::span<const std::byte> data) {
    check_peer(to, "send to");
    if (data.size() > options_.max_message_bytes) {
      throw invalid_argument(
          "rank " + std::to_string(rank_) + ": send to rank " + std::to_string(to) + " of " +
          std::to_string(data.size()) +
          " bytes exceeds max_message_bytes = " + std::to_string(options_.max_message_bytes));
    }
    reap_sends();
    pending_send& p = free_slot();
    p.buffer.resize(header_bytes + data.size());
    write_header(p.buffer.data(), tag, data.size());
    if (!data.empty()) std::memcpy(p.buffer.data() + header_bytes, data.data(), data.size());
    check(MPI_Isend(p.buffer.data(), header_bytes, MPI_BYTE, to, mpi_tag(tag), headers_, &p.header),
          [&] { return "MPI_Isend (header) to rank " + std::to_string(to); });
    if (!data.empty()) {
      check(MPI_Isend(p.buffer.data() + header_bytes, static_cast<int>(data.size()), MPI_BYTE, to,
                      0, payloads_, &p.payload),
            [&] { return "MPI_Isend to rank " + std::to_string(to); });
    }
    p.busy = true;
    bytes_sent_ += data.size();
  }

  /// Replaces `into` with the next message from `from`, which must carry `tag`.
  void recv(int from, message_tag tag, std::vector<std::byte>& into) {
    check_peer(from, "recv from");
    const auto deadline = clock::now() + options_.timeout;
    MPI_Message message{};
    MPI_Status status{};
    poll(
        deadline,
        [&] {
          return "waiting for a message from rank " + std::to_string(from) + " (tag " +
                 detail::tag_text(tag) + ")";
        },
        [&] {
          int found = 0;
          check(MPI_Improbe(from, MPI_ANY_TAG, headers_, &found, &message, &status), "MPI_Improbe");
          return found != 0;
        });
    receive_matched(from, tag, message, into, deadline);
  }

  /// Replaces `into` with the next message carrying `tag` from whichever rank
  /// has one first, and returns that rank. Only each rank's next message is a
  /// candidate (per-pair order holds); ranks are polled round-robin.
  int recv_any(message_tag tag, std::vector<std::byte>& into) {
    if (size_ == 1) {
      throw invalid_argument("rank 0: recv_any in a world of one rank has no peer to receive from");
    }
    const auto deadline = clock::now() + options_.timeout;
    MPI_Message message{};
    int sender = -1;
    poll(
        deadline,
        [&] { return "waiting for a message from any rank (tag " + detail::tag_text(tag) + ")"; },
        [&] {
          for (int i = 0; i < size_; ++i) {
            const int peer = (next_any_ + i) % size_;
            if (peer == rank_) continue;
            int found = 0;
            MPI_Status status{};
            // A probe does not receive: a header with another tag stays queued.
            check(MPI_Iprobe(peer, MPI_ANY_TAG, headers_, &found, &status), "MPI_Iprobe");
            if (!found || status.MPI_TAG != mpi_tag(tag)) continue;
            // The next header from `peer` has this MPI tag, so a probe for the
            // tag matches that very header (the full tag is checked on receipt).
            check(MPI_Improbe(peer, mpi_tag(tag), headers_, &found, &message, &status),
                  "MPI_Improbe");
            if (!found) continue;
            sender = peer;
            next_any_ = (peer + 1) % size_;
            return true;
          }
          return false;
        });
    receive_matched(sender, tag, message, into, deadline);
    return sender;
  }

  // --- Native collectives (found by collectives/ with `requires`) -------------

  template <detail::mpi_reducible V>
  void native_allreduce_sum(std::span<V> data) {
    allreduce(data, MPI_SUM, "allreduce_sum");
  }
  template <detail::mpi_reducible V>
  void native_allreduce_max(std::span<V> data) {
    allreduce(data, MPI_MAX, "allreduce_max");
  }

  template <class V>
  requires std::is_trivially_copyable_v<V>
  void native_broadcast(std::span<V> data, int root) {
    check_root(root, "broadcast");
    check_count(data.size_bytes(), "broadcast");
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Ibcast(data.data(), static_cast<int>(data.size_bytes()), MPI_BYTE, root, headers_,
                     &request),
          "MPI_Ibcast");
    wait(request, "broadcast");
    if (rank_ == root) bytes_sent_ += data.size_bytes();
  }

  void native_barrier() {
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Ibarrier(headers_, &request), "MPI_Ibarrier");
    wait(request, "barrier");
  }

  /// all := the ranks' equal-size `mine` blocks in rank order.
  template <class V>
  requires std::is_trivially_copyable_v<V>
  void native_allgather(std::span<const V> mine, std::span<V> all) {
    if (all.size() != mine.size() * static_cast<std::size_t>(size_)) {
      throw invalid_argument("allgather: rank " + std::to_string(rank_) +
                             " passed all.size() = " + std::to_string(all.size()) +
                             ", expected world size " + std::to_string(size_) + " x mine.size() " +
                             std::to_string(mine.size()));
    }
    check_count(mine.size_bytes(), "allgather");
    // MPI_IN_PLACE when `mine` is this rank's block already.
    const bool in_place = mine.data() == all.data() + static_cast<std::size_t>(rank_) * mine.size();
    MPI_Request request = MPI_REQUEST_NULL;
    const int count = static_cast<int>(mine.size_bytes());
    check(MPI_Iallgather(in_place ? MPI_IN_PLACE : mine.data(), count, MPI_BYTE, all.data(), count,
                         MPI_BYTE, headers_, &request),
          "MPI_Iallgather");
    wait(request, "allgather");
    bytes_sent_ += static_cast<std::uint64_t>(size_ - 1) * mine.size_bytes();
  }

  /// all[r] := rank r's `mine` (sizes may differ): sizes by MPI_Iallgather,
  /// then the blocks by MPI_Iallgatherv into one buffer.
  void native_allgather_bytes(std::span<const std::byte> mine,
                              std::vector<std::vector<std::byte>>& all) {
    check_count(mine.size(), "allgather_bytes");
    const auto n = static_cast<std::size_t>(size_);
    counts_.assign(n, 0);
    const int own = static_cast<int>(mine.size());
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Iallgather(&own, 1, MPI_INT, counts_.data(), 1, MPI_INT, headers_, &request),
          "MPI_Iallgather (sizes)");
    wait(request, "allgather_bytes (sizes)");
    displacements_.assign(n, 0);
    std::uint64_t total = 0;
    for (std::size_t r = 0; r < n; ++r) {
      if (counts_[r] < 0 || static_cast<std::uint64_t>(counts_[r]) > options_.max_message_bytes) {
        throw transport_error("allgather_bytes: rank " + std::to_string(rank_) + " got size " +
                              std::to_string(counts_[r]) + " from rank " + std::to_string(r) +
                              ", above max_message_bytes");
      }
      displacements_[r] = static_cast<int>(total);
      total += static_cast<std::uint64_t>(counts_[r]);
      if (total > 0x7fff'ffffu) {
        throw transport_error("allgather_bytes: the blocks add up to more than 2^31 - 1 bytes");
      }
    }
    gathered_.resize(static_cast<std::size_t>(total));
    check(MPI_Iallgatherv(mine.data(), own, MPI_BYTE, gathered_.data(), counts_.data(),
                          displacements_.data(), MPI_BYTE, headers_, &request),
          "MPI_Iallgatherv");
    wait(request, "allgather_bytes");
    all.resize(n);
    for (std::size_t r = 0; r < n; ++r) {
      const auto* begin = gathered_.data() + displacements_[r];
      all[r].assign(begin, begin + counts_[r]);
    }
    bytes_sent_ += static_cast<std::uint64_t>(size_ - 1) * mine.size();
  }

 private:
  using clock = std::chrono::steady_clock;
  static constexpr int header_bytes = 16;
  static constexpr std::uint32_t magic = 0xEC0A'7B11u;

  struct pending_send {
    MPI_Request header = MPI_REQUEST_NULL;
    MPI_Request payload = MPI_REQUEST_NULL;
    std::vector<std::byte> buffer;  ///< header, then payload
    bool busy = false;
  };

  /// Throws transport_error naming `what` (text, or a callable making it --
  /// so that nothing is built per call when MPI succeeds) unless code is MPI_SUCCESS.
  template <class What>
  void check(int code, const What& what) const {
    if (code == MPI_SUCCESS) return;
    throw transport_error("rank " + std::to_string(rank_) + ": " + describe(what) +
                          " failed: " + detail::mpi_error_text(code));
  }

  template <class What>
  static std::string describe(const What& what) {
    if constexpr (std::is_invocable_v<const What&>) {
      return what();
    } else {
      return std::string(what);
    }
  }

  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= size_) {
      throw invalid_argument("rank " + std::to_string(rank_) + ": " + what + " rank " +
                             std::to_string(peer) + " is out of range (world size " +
                             std::to_string(size_) + ")");
    }
    if (peer == rank_) {
      throw invalid_argument("rank " + std::to_string(rank_) + ": " + what +
                             " itself is not allowed");
    }
  }

  void check_root(int root, const char* what) const {
    if (root < 0 || root >= size_) {
      throw invalid_argument(std::string(what) + ": rank " + std::to_string(rank_) +
                             " passed root " + std::to_string(root) + ", outside the world of " +
                             std::to_string(size_) + " ranks");
    }
  }

  void check_count(std::size_t bytes, const char* what) const {
    if (bytes > 0x7fff'ffffu) {
      throw invalid_argument(std::string(what) + ": " + std::to_string(bytes) +
                             " bytes is more than one MPI call carries here (2^31 - 1)");
    }
  }

  template <class V>
  void allreduce(std::span<V> data, MPI_Op op, const char* what) {
    if (data.size() > 0x7fff'ffffu) {
      throw invalid_argument(std::string(what) + ": more than 2^31 - 1 elements");
    }
    if (size_ == 1 || data.empty()) return;
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Iallreduce(MPI_IN_PLACE, data.data(), static_cast<int>(data.size()),
                         detail::mpi_datatype<V>(), op, headers_, &request),
          [&] { return std::string("MPI_Iallreduce (") + what + ")"; });
    wait(request, what);
    bytes_sent_ += 2 * static_cast<std::uint64_t>(size_ - 1) * data.size_bytes() /
                   static_cast<std::uint64_t>(size_);
  }

  /// Calls `ready` until it returns true; throws transport_error naming
  /// `what` (see check) when the deadline passes. Spins briefly, then backs off.
  template <class What, class Ready>
  void poll(clock::time_point deadline, const What& what, Ready&& ready) {
    for (unsigned spins = 0;; ++spins) {
      if (ready()) return;
      if ((spins & 63u) == 63u) {
        reap_sends();
        if (clock::now() >= deadline) {
          throw transport_error("rank " + std::to_string(rank_) + ": timed out after " +
                                std::to_string(options_.timeout.count()) + " ms " + describe(what));
        }
      }
      if (spins > 4096)
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      else if (spins > 256)
        std::this_thread::yield();
    }
  }

  void wait(MPI_Request& request, const char* what) {
    const auto deadline = clock::now() + options_.timeout;
    poll(
        deadline, [&] { return std::string("in ") + what; },
        [&] {
          int done = 0;
          check(MPI_Test(&request, &done, MPI_STATUS_IGNORE),
                [&] { return std::string("MPI_Test (") + what + ")"; });
          return done != 0;
        });
  }

  static void write_header(std::byte* out, message_tag tag, std::uint64_t length) noexcept {
    const std::uint32_t m = magic;
    std::memcpy(out, &m, 4);
    std::memcpy(out + 4, &tag, 4);
    std::memcpy(out + 8, &length, 8);
  }
  static message_tag read_tag(const std::byte* header) noexcept {
    message_tag tag;
    std::memcpy(&tag, header + 4, 4);
    return tag;
  }

  /// The MPI tag a header travels with: the ecopt tag modulo MPI_TAG_UB + 1
  /// (MPI tags are non-negative ints, 2^31 - 1 at most in Open MPI), so
  /// recv_any can select by tag with a probe. The header carries the full tag, which the receiver
  /// checks.
  [[nodiscard]] int mpi_tag(message_tag tag) const noexcept {
    return static_cast<int>(tag % (static_cast<std::uint64_t>(tag_upper_bound_) + 1));
  }

  void receive_matched(int from, message_tag tag, MPI_Message& message,
                       std::vector<std::byte>& into, clock::time_point deadline) {
    std::byte header[header_bytes];
    MPI_Status status{};
    check(MPI_Mrecv(header, header_bytes, MPI_BYTE, &message, &status),
          [&] { return "MPI_Mrecv (header) from rank " + std::to_string(from); });
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    std::uint32_t m = 0;
    std::memcpy(&m, header, 4);
    if (count != header_bytes || m != magic) {
      throw transport_error("rank " + std::to_string(rank_) +
                            ": malformed message header from rank " + std::to_string(from) + " (" +
                            std::to_string(count) + " bytes, magic " + std::to_string(m) + ")");
    }
    const message_tag got = read_tag(header);
    std::uint64_t length = 0;
    std::memcpy(&length, header + 8, 8);
    if (length > options_.max_message_bytes) {
      throw transport_error(
          "rank " + std::to_string(rank_) + ": message from rank " + std::to_string(from) +
          " announces " + std::to_string(length) +
          " bytes, above max_message_bytes = " + std::to_string(options_.max_message_bytes));
    }
    // Receive the payload even on a tag mismatch, so the stream stays in step.
    into.resize(static_cast<std::size_t>(length));
    if (length > 0) {
      MPI_Request request = MPI_REQUEST_NULL;
      check(
          MPI_Irecv(into.data(), static_cast<int>(length), MPI_BYTE, from, 0, payloads_, &request),
          [&] { return "MPI_Irecv from rank " + std::to_string(from); });
      poll(
          deadline,
          [&] {
            return "waiting for the payload of a message from rank " + std::to_string(from) +
                   " (tag " + detail::tag_text(got) + ")";
          },
          [&] {
            int done = 0;
            check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
            return done != 0;
          });
    }
    if (got != tag) {
      throw transport_error("rank " + std::to_string(rank_) + ": protocol mismatch: expected tag " +
                            detail::tag_text(tag) + " from rank " + std::to_string(from) +
                            " but its next message has tag " + detail::tag_text(got));
    }
  }

  pending_send& free_slot() {
    for (auto& p : pending_) {
      if (!p.busy) return p;
    }
    pending_.emplace_back();
    return pending_.back();
  }

  void reap_sends() {
    for (auto& p : pending_) {
      if (!p.busy) continue;
      int done = 1;
      if (p.header != MPI_REQUEST_NULL) {
        check(MPI_Test(&p.header, &done, MPI_STATUS_IGNORE), "MPI_Test (send)");
        if (!done) continue;
      }
      if (p.payload != MPI_REQUEST_NULL) {
        check(MPI_Test(&p.payload, &done, MPI_STATUS_IGNORE), "MPI_Test (send)");
        if (!done) continue;
      }
      p.busy = false;
    }
  }

  mpi_options options_;
  MPI_Comm headers_ = MPI_COMM_NULL;
  MPI_Comm payloads_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int next_any_ = 0;
  int tag_upper_bound_ = 32767;
  std::uint64_t bytes_sent_ = 0;
  std::vector<pending_send> pending_;
  std::vector<int> counts_, displacements_;
  std::vector<std::byte> gathered_;
};

static_assert(RecvAnyTransport<mpi_transport>);

}  // namespace ecopt
