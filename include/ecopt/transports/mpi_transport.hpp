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
// operation and the peer. Errors MPI returns (MPI_ERRORS_RETURN is set on our
// communicators) become transport_error.
//
// Closing and failures, as in the other transports. A transport's destructor
// sends every peer a control message -- goodbye, or abort with the reason
// while an exception propagates -- and waits (at most timeout) for theirs.
// Control messages carry how many collectives the sender completed. While a
// rank waits (recv, recv_any, a collective, and at each send) it looks for
// them: a peer's abort fails every later operation of this rank with
// "peer rank P failed: <reason>"; a goodbye fails the recvs waiting for that
// peer ("rank P has closed its transport without sending ...") and a
// collective the peer left before joining. A rank that dies without closing
// is noticed by mpirun, which ends the whole job (Open MPI's default).
// A collective given up that way cannot be cancelled in MPI: the transport
// then leaves its communicators and buffers to MPI (they are not freed, so a
// late message never reaches a later communicator, and MPI never touches
// freed memory). Collectives therefore run on the transport's own copy of the
// data (mpi_options::stage_collectives; two memcpys per collective).
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
#include <exception>
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
  /// Native collectives work on the transport's own copy of the data (two
  /// memcpys each). A collective given up after a peer failed cannot be
  /// cancelled in MPI, which may go on reading and writing its buffers: with
  /// staging those are the transport's (then left to MPI); without it, the
  /// caller's, which the caller must then keep alive until MPI_Finalize.
  bool stage_collectives = true;

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

/// Types whose sums MPI_SUM gets right. Open MPI 4.1's AVX reductions
/// (op/avx) saturate 8- and 16-bit integer sums instead of wrapping them
/// (open-mpi/ompi#8045, closed as "wontfix"), so those sums go through the
/// ring of collectives/ on point-to-point messages instead, which wraps as
/// the other transports do.
template <class V>
inline constexpr bool mpi_sum_trusted = std::is_floating_point_v<V> || sizeof(V) >= 4;
template <class V>
concept mpi_summable = mpi_reducible<V> && mpi_sum_trusted<V>;

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
    // The largest MPI tag is the control messages'; data headers use the rest.
    control_tag_ = found && upper != nullptr ? *upper : 32767;  // the standard's minimum
    peers_.assign(static_cast<std::size_t>(size_), peer{});
    control_in_.reserve(header_bytes + max_reason_bytes);
  }
  mpi_transport(const mpi_transport&) = delete;
  mpi_transport& operator=(const mpi_transport&) = delete;

  /// Says goodbye (or abort, while an exception propagates) to every peer,
  /// waits (at most timeout) for this rank's sends and the peers' own
  /// goodbyes, then frees the communicators -- unless something was given up
  /// (see the top of this file).
  ~mpi_transport() {
    try {
      close(std::uncaught_exceptions() > uncaught_at_start_);
    } catch (...) {
      abandoned_ = true;  // a destructor does not throw; leave the rest to MPI
    }
    for (auto& p : pending_) {
      // Not completed in time: let MPI finish (or drop) them on its own.
      if (!p.busy) continue;
      if (p.header != MPI_REQUEST_NULL) MPI_Request_free(&p.header);
      if (p.payload != MPI_REQUEST_NULL) MPI_Request_free(&p.payload);
      // MPI may still read the buffer after we are gone: leak it on purpose.
      new std::vector<std::byte>(std::move(p.buffer));
      abandoned_ = true;
    }
    if (abandoned_) return;  // the communicators stay MPI's (see the top of this file)
    MPI_Comm_free(&headers_);
    MPI_Comm_free(&payloads_);
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return options_.timeout; }
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return bytes_sent_; }

  /// Copies `data` into a pooled buffer and posts it; never waits for the
  /// receiver. Throws transport_error once a peer failed or `to` has closed.
  void send(int to, message_tag tag, std::span<const std::byte> data) {
    check_peer(to, "send to");
    if (data.size() > options_.max_message_bytes) {
      throw invalid_argument(
          "rank " + std::to_string(rank_) + ": send to rank " + std::to_string(to) + " of " +
          std::to_string(data.size()) +
          " bytes exceeds max_message_bytes = " + std::to_string(options_.max_message_bytes));
    }
    reap_sends();
    poll_control();
    if (!failure_.empty() || peers_[static_cast<std::size_t>(to)].state != peer_state::open) {
      const std::string head = "rank " + std::to_string(rank_) + ": cannot send to rank " +
                               std::to_string(to) + " (tag " + detail::tag_text(tag) + "): ";
      if (!failure_.empty()) throw transport_error(head + failure_);
      throw transport_error(head + "rank " + std::to_string(to) + " has closed its transport");
    }
    post(to, mpi_tag(tag), header_magic, tag, data);
    bytes_sent_ += data.size();
  }

  /// Replaces `into` with the next message from `from`, which must carry `tag`.
  /// Throws transport_error on a tag mismatch, when `from` has closed without
  /// sending, when a peer failed, or when timeout() passes.
  void recv(int from, message_tag tag, std::vector<std::byte>& into) {
    check_peer(from, "recv from");
    const auto deadline = clock::now() + options_.timeout;
    MPI_Message message{};
    MPI_Status status{};
    const peer& p = peers_[static_cast<std::size_t>(from)];
    poll(
        deadline,
        [&] {
          int found = 0;
          check(MPI_Improbe(from, MPI_ANY_TAG, headers_, &found, &message, &status), "MPI_Improbe");
          if (found != 0 && status.MPI_TAG == control_tag_) {
            take_control(message, status);  // its last message: nothing follows
            return false;
          }
          return found != 0;
        },
        [&] {
          // The awaited peer's own failure is the most precise report.
          const std::string& failure = p.state == peer_state::failed ? p.failure : failure_;
          if (!failure.empty()) {
            throw transport_error(me() + failure + " (while waiting for " + wanted_text(from, tag) +
                                  ")");
          }
          if (p.state == peer_state::closed) {
            throw transport_error(me() + "rank " + std::to_string(from) +
                                  " has closed its transport without sending " +
                                  wanted_text(from, tag));
          }
        },
        [&] { return "waiting for " + wanted_text(from, tag); });
    receive_matched(from, tag, message, into, deadline);
  }

  /// Replaces `into` with the next message carrying `tag` from whichever rank
  /// has one first, and returns that rank. Only each rank's next message is a
  /// candidate (per-pair order holds); ranks are polled round-robin. Throws
  /// transport_error like recv, or once every other rank has closed.
  int recv_any(message_tag tag, std::vector<std::byte>& into) {
    if (size_ == 1) {
      throw invalid_argument("rank 0: recv_any in a world of one rank has no peer to receive from");
    }
    const auto deadline = clock::now() + options_.timeout;
    MPI_Message message{};
    int sender = -1;
    poll(
        deadline,
        [&] {
          for (int i = 0; i < size_; ++i) {
            const int peer = (next_any_ + i) % size_;
            if (peer == rank_) continue;
            int found = 0;
            MPI_Status status{};
            // A probe does not receive: a header with another tag stays queued.
            check(MPI_Iprobe(peer, MPI_ANY_TAG, headers_, &found, &status), "MPI_Iprobe");
            if (!found) continue;
            if (status.MPI_TAG != control_tag_ && status.MPI_TAG != mpi_tag(tag)) continue;
            // The next message from `peer` has this MPI tag, so a probe for the
            // tag matches that very message (the full tag is checked on receipt).
            check(MPI_Improbe(peer, status.MPI_TAG, headers_, &found, &message, &status),
                  "MPI_Improbe");
            if (!found) continue;
            if (status.MPI_TAG == control_tag_) {
              take_control(message, status);
              continue;
            }
            sender = peer;
            next_any_ = (peer + 1) % size_;
            return true;
          }
          return false;
        },
        [&] {
          if (!failure_.empty()) {
            throw transport_error(me() + failure_ + " (while waiting for " + wanted_text(-1, tag) +
                                  ")");
          }
          if (!any_peer_open()) {
            throw transport_error(me() +
                                  "every other rank has closed its transport without "
                                  "sending " +
                                  wanted_text(-1, tag));
          }
        },
        [&] { return "waiting for " + wanted_text(-1, tag); });
    receive_matched(sender, tag, message, into, deadline);
    return sender;
  }
  // --- Native collectives (found by collectives/ with `requires`) -------------

  template <detail::mpi_summable V>
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
    const auto bytes = std::as_writable_bytes(data);
    std::byte* buffer = stage(bytes, rank_ == root);
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Ibcast(buffer, static_cast<int>(bytes.size()), MPI_BYTE, root, headers_, &request),
          "MPI_Ibcast");
    wait(request, "broadcast");
    ++collectives_;
    unstage(bytes, buffer);
    if (rank_ == root) bytes_sent_ += data.size_bytes();
  }

  void native_barrier() {
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Ibarrier(headers_, &request), "MPI_Ibarrier");
    wait(request, "barrier");
    ++collectives_;
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
    check_count(all.size_bytes(), "allgather");
    // In place: this rank's block goes where MPI_Iallgather leaves it.
    const auto out = std::as_writable_bytes(all);
    const std::size_t block = mine.size_bytes();
    std::byte* buffer = stage(out, false);
    std::byte* own = buffer + static_cast<std::size_t>(rank_) * block;
    if (block > 0 && own != reinterpret_cast<const std::byte*>(mine.data())) {
      std::memmove(own, mine.data(), block);
    }
    MPI_Request request = MPI_REQUEST_NULL;
    const int count = static_cast<int>(block);
    check(
        MPI_Iallgather(MPI_IN_PLACE, count, MPI_BYTE, buffer, count, MPI_BYTE, headers_, &request),
        "MPI_Iallgather");
    wait(request, "allgather");
    ++collectives_;
    unstage(out, buffer);
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
    counts_[static_cast<std::size_t>(rank_)] = own;
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Iallgather(MPI_IN_PLACE, 1, MPI_INT, counts_.data(), 1, MPI_INT, headers_, &request),
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
    // In place, so MPI reads this rank's block from the transport's buffer.
    if (own > 0) {
      std::memcpy(gathered_.data() + displacements_[static_cast<std::size_t>(rank_)], mine.data(),
                  mine.size());
    }
    check(MPI_Iallgatherv(MPI_IN_PLACE, own, MPI_BYTE, gathered_.data(), counts_.data(),
                          displacements_.data(), MPI_BYTE, headers_, &request),
          "MPI_Iallgatherv");
    wait(request, "allgather_bytes");
    ++collectives_;
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
  static constexpr std::uint32_t header_magic = 0xEC0A'7B11u;
  // Control messages: the same 16-byte header (magic, kind, collectives
  // completed), then the reason.
  static constexpr std::uint32_t control_magic = 0xEC0A'7B12u;
  static constexpr std::uint32_t goodbye_kind = 1;
  static constexpr std::uint32_t abort_kind = 2;
  static constexpr std::size_t max_reason_bytes = 1024;

  enum class peer_state : unsigned char { open, closed, failed };

  struct peer {
    peer_state state = peer_state::open;  // this rank's own entry stays open
    std::uint64_t collectives = 0;        // completed before it closed
    std::string failure;                  // "peer rank P failed: ..." once it did
  };

  struct pending_send {
    MPI_Request header = MPI_REQUEST_NULL;
    MPI_Request payload = MPI_REQUEST_NULL;
    std::vector<std::byte> buffer;  ///< header, then payload
    int to = -1;
    bool busy = false;
  };

  /// Throws transport_error naming `what` (text, or a callable making it --
  /// so that nothing is built per call when MPI succeeds) unless code is MPI_SUCCESS.
  template <class What>
  void check(int code, const What& what) const {
    if (code == MPI_SUCCESS) return;
    throw transport_error(me() + describe(what) + " failed: " + detail::mpi_error_text(code));
  }

  template <class What>
  static std::string describe(const What& what) {
    if constexpr (std::is_invocable_v<const What&>) {
      return what();
    } else {
      return std::string(what);
    }
  }

  [[nodiscard]] std::string me() const { return "rank " + std::to_string(rank_) + ": "; }

  /// "a message from rank F (tag T)", or "from any rank" for from = -1.
  [[nodiscard]] static std::string wanted_text(int from, message_tag tag) {
    return "a message from " + (from >= 0 ? "rank " + std::to_string(from) : "any rank") +
           " (tag " + detail::tag_text(tag) + ")";
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
    const auto bytes = std::as_writable_bytes(data);
    std::byte* buffer = stage(bytes, true);
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Iallreduce(MPI_IN_PLACE, buffer, static_cast<int>(data.size()),
                         detail::mpi_datatype<V>(), op, headers_, &request),
          [&] { return std::string("MPI_Iallreduce (") + what + ")"; });
    wait(request, what);
    ++collectives_;
    unstage(bytes, buffer);
    bytes_sent_ += 2 * static_cast<std::uint64_t>(size_ - 1) * data.size_bytes() /
                   static_cast<std::uint64_t>(size_);
  }

  /// Calls `ready` until it returns true. Every 64 calls it also reaps sends,
  /// reads control messages, and calls `hopeless`, which throws once waiting
  /// cannot succeed; it throws transport_error naming `what` (see check) when
  /// the deadline passes. Spins briefly, then backs off.
  template <class Ready, class Hopeless, class What>
  void poll(clock::time_point deadline, Ready&& ready, Hopeless&& hopeless, const What& what) {
    for (unsigned spins = 0;; ++spins) {
      if (ready()) return;
      if ((spins & 63u) == 63u) {
        reap_sends();
        poll_control();
        // A closing peer's last messages are matched before its goodbye:
        // look once more, after the control messages were read.
        if (ready()) return;
        hopeless();
        if (clock::now() >= deadline) {
          throw transport_error(me() + "timed out after " +
                                std::to_string(options_.timeout.count()) + " ms " + describe(what));
        }
      }
      if (spins > 4096)
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      else if (spins > 256)
        std::this_thread::yield();
    }
  }

  /// Waits for a collective's request. A peer's failure, or a peer that
  /// closed before completing this collective (it counts the ones it
  /// completed), makes the wait hopeless: the request is then given up.
  void wait(MPI_Request& request, const char* what) {
    const auto deadline = clock::now() + options_.timeout;
    try {
      poll(
          deadline,
          [&] {
            int done = 0;
            check(MPI_Test(&request, &done, MPI_STATUS_IGNORE),
                  [&] { return std::string("MPI_Test (") + what + ")"; });
            return done != 0;
          },
          [&] {
            if (!failure_.empty()) {
              throw transport_error(me() + failure_ + " (in " + what + ")");
            }
            for (int r = 0; r < size_; ++r) {
              const peer& p = peers_[static_cast<std::size_t>(r)];
              if (p.state == peer_state::closed && p.collectives <= collectives_) {
                throw transport_error(me() + "rank " + std::to_string(r) +
                                      " has closed its transport without joining " + what);
              }
            }
          },
          [&] { return std::string("in ") + what; });
    } catch (...) {
      abandon();
      throw;
    }
  }

  /// The buffer a native collective hands MPI for `data`: the transport's
  /// staging copy (holding `data` when `copy_in`), or `data` itself when
  /// staging is off (mpi_options::stage_collectives).
  std::byte* stage(std::span<std::byte> data, bool copy_in) {
    if (!options_.stage_collectives) return data.data();
    staging_.resize(data.size());
    if (copy_in && !data.empty()) std::memcpy(staging_.data(), data.data(), data.size());
    return staging_.data();
  }

  /// Copies a finished collective's result back from the staging buffer.
  static void unstage(std::span<std::byte> data, const std::byte* buffer) noexcept {
    if (buffer != data.data() && !data.empty()) std::memcpy(data.data(), buffer, data.size());
  }

  [[nodiscard]] bool any_peer_open() const noexcept {
    for (int r = 0; r < size_; ++r) {
      if (r != rank_ && peers_[static_cast<std::size_t>(r)].state == peer_state::open) return true;
    }
    return false;
  }

  /// A collective was given up: MPI may still use its buffers, so the
  /// internal ones are left to it, and the communicators are not freed.
  void abandon() noexcept {
    abandoned_ = true;
    try {
      new std::vector<int>(std::move(counts_));
      new std::vector<int>(std::move(displacements_));
      new std::vector<std::byte>(std::move(gathered_));
      new std::vector<std::byte>(std::move(staging_));
    } catch (...) {
    }
  }

  static void write_header(std::byte* out, std::uint32_t magic, std::uint32_t word,
                           std::uint64_t length) noexcept {
    std::memcpy(out, &magic, 4);
    std::memcpy(out + 4, &word, 4);
    std::memcpy(out + 8, &length, 8);
  }

  /// Posts a 16-byte header (magic, word, data's length or a count) with MPI
  /// tag `tag` and, for data messages, `data` on the payload communicator.
  /// Control messages carry `data` in the same message instead.
  void post(int to, int tag, std::uint32_t magic, std::uint32_t word,
            std::span<const std::byte> data, std::uint64_t count = 0) {
    const bool control = magic == control_magic;
    pending_send& p = free_slot();
    p.buffer.resize(header_bytes + data.size());
    write_header(p.buffer.data(), magic, word, control ? count : data.size());
    if (!data.empty()) std::memcpy(p.buffer.data() + header_bytes, data.data(), data.size());
    const int head = control ? static_cast<int>(p.buffer.size()) : header_bytes;
    check(MPI_Isend(p.buffer.data(), head, MPI_BYTE, to, tag, headers_, &p.header),
          [&] { return "MPI_Isend (header) to rank " + std::to_string(to); });
    p.to = to;
    p.busy = true;
    if (!control && !data.empty()) {
      check(MPI_Isend(p.buffer.data() + header_bytes, static_cast<int>(data.size()), MPI_BYTE, to,
                      0, payloads_, &p.payload),
            [&] { return "MPI_Isend to rank " + std::to_string(to); });
    }
  }

  /// The MPI tag a data header travels with: the ecopt tag modulo MPI_TAG_UB
  /// (MPI tags are non-negative ints, 2^31 - 1 at most in Open MPI; the
  /// largest is the control messages'), so recv_any can select by tag with a
  /// probe. The header carries the full tag, which the receiver checks.
  [[nodiscard]] int mpi_tag(message_tag tag) const noexcept {
    return static_cast<int>(tag % static_cast<std::uint64_t>(control_tag_));
  }

  /// Reads every control message that has arrived.
  void poll_control() {
    for (;;) {
      int found = 0;
      MPI_Message message{};
      MPI_Status status{};
      check(MPI_Improbe(MPI_ANY_SOURCE, control_tag_, headers_, &found, &message, &status),
            "MPI_Improbe (control)");
      if (!found) return;
      take_control(message, status);
    }
  }

  /// Receives a matched control message and records the peer's goodbye or
  /// failure (a malformed one fails the peer).
  void take_control(MPI_Message& message, const MPI_Status& status) {
    const int from = status.MPI_SOURCE;
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    // The buffer holds the largest valid message without allocating; a larger
    // one is still received (in full, so the stream stays usable) to report it.
    control_in_.resize(static_cast<std::size_t>(std::max(count, 0)));
    check(MPI_Mrecv(control_in_.data(), count, MPI_BYTE, &message, MPI_STATUS_IGNORE),
          [&] { return "MPI_Mrecv (control) from rank " + std::to_string(from); });
    peer& p = peers_[static_cast<std::size_t>(from)];
    if (p.state != peer_state::open) return;  // nothing follows a goodbye or an abort
    std::uint32_t magic = 0, kind = 0;
    std::uint64_t collectives = 0;
    if (count >= header_bytes) {
      std::memcpy(&magic, control_in_.data(), 4);
      std::memcpy(&kind, control_in_.data() + 4, 4);
      std::memcpy(&collectives, control_in_.data() + 8, 8);
    }
    const auto reason_bytes = static_cast<std::size_t>(std::max(count - header_bytes, 0));
    const bool valid =
        count >= header_bytes && magic == control_magic &&
        (kind == goodbye_kind ? reason_bytes == 0
                              : kind == abort_kind && reason_bytes <= max_reason_bytes);
    if (valid && kind == goodbye_kind) {
      p.state = peer_state::closed;
      p.collectives = collectives;
      return;
    }
    p.state = peer_state::failed;
    if (valid) {
      p.failure = "peer rank " + std::to_string(from) + " failed: " +
                  std::string(reinterpret_cast<const char*>(control_in_.data()) + header_bytes,
                              reason_bytes);
    } else {
      p.failure = "rank " + std::to_string(from) +
                  " broke the message protocol: a control "
                  "message of " +
                  std::to_string(count) + " bytes (magic " + std::to_string(magic) + ", kind " +
                  std::to_string(kind) + ")";
    }
    if (failure_.empty()) failure_ = p.failure;
  }

  /// Tells every peer this rank closes (goodbye, or abort with the reason),
  /// then waits until the sends to open peers completed and every peer has
  /// closed too, or the deadline passes.
  void close(bool failing) {
    const auto deadline = clock::now() + options_.timeout;
    poll_control();
    std::string reason;
    if (failing) {
      reason = "its transport was destroyed while an exception was propagating";
      if (!failure_.empty()) reason += "; it had seen: " + failure_;
      reason.resize(std::min(reason.size(), max_reason_bytes));
    }
    const auto text = std::as_bytes(std::span(reason.data(), reason.size()));
    // Every peer waits for it, failed ones too (they are closing as well).
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      post(r, control_tag_, control_magic, failing ? abort_kind : goodbye_kind, text, collectives_);
    }
    const auto finished = [&] {
      if (any_peer_open()) return false;
      // A send to a closed or failed peer may never be received: not waited for.
      return std::none_of(pending_.begin(), pending_.end(), [&](const pending_send& p) {
        return p.busy && peers_[static_cast<std::size_t>(p.to)].state == peer_state::open;
      });
    };
    for (unsigned spins = 0;; ++spins) {
      reap_sends();
      poll_control();
      if (finished()) break;
      if (clock::now() >= deadline) {
        abandoned_ = true;  // a peer may still send: keep the communicators out of reuse
        break;
      }
      if (spins > 256)
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      else
        std::this_thread::yield();
    }
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
    if (count != header_bytes || m != header_magic) {
      throw transport_error(me() + "malformed message header from rank " + std::to_string(from) +
                            " (" + std::to_string(count) + " bytes, magic " + std::to_string(m) +
                            ")");
    }
    message_tag got = 0;
    std::memcpy(&got, header + 4, 4);
    std::uint64_t length = 0;
    std::memcpy(&length, header + 8, 8);
    if (length > options_.max_message_bytes) {
      throw transport_error(me() + "message from rank " + std::to_string(from) + " announces " +
                            std::to_string(length) + " bytes, above max_message_bytes = " +
                            std::to_string(options_.max_message_bytes));
    }
    // Receive the payload even on a tag mismatch, so the stream stays in step.
    into.resize(static_cast<std::size_t>(length));
    if (length > 0) {
      MPI_Request request = MPI_REQUEST_NULL;
      check(
          MPI_Irecv(into.data(), static_cast<int>(length), MPI_BYTE, from, 0, payloads_, &request),
          [&] { return "MPI_Irecv from rank " + std::to_string(from); });
      // The sender posted the payload with its header, before any goodbye or
      // abort: only the deadline ends this wait.
      try {
        poll(
            deadline,
            [&] {
              int done = 0;
              check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
              return done != 0;
            },
            [] {},
            [&] {
              return "waiting for the payload of a message from rank " + std::to_string(from) +
                     " (tag " + detail::tag_text(got) + ")";
            });
      } catch (...) {
        MPI_Cancel(&request);
        MPI_Request_free(&request);
        abandoned_ = true;
        // If MPI had matched the receive already, it may still write the
        // buffer: the buffer is left to it, and the caller gets an empty one.
        try {
          new std::vector<std::byte>(std::move(into));
        } catch (...) {
        }
        into = std::vector<std::byte>();
        throw;
      }
    }
    if (got != tag) {
      throw transport_error(me() + "protocol mismatch: expected tag " + detail::tag_text(tag) +
                            " from rank " + std::to_string(from) +
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
  int control_tag_ = 32767;
  int uncaught_at_start_ = std::uncaught_exceptions();
  std::uint64_t bytes_sent_ = 0;
  std::uint64_t collectives_ = 0;  // native collectives completed
  bool abandoned_ = false;         // an operation was given up (see the top of this file)
  std::vector<peer> peers_;        // by rank
  std::string failure_;            // the first failure seen, reported by every later operation
  std::vector<std::byte> control_in_;
  std::vector<pending_send> pending_;
  std::vector<int> counts_, displacements_;
  std::vector<std::byte> gathered_;
  std::vector<std::byte> staging_;  // native collectives' copy of the data
};
static_assert(RecvAnyTransport<mpi_transport>);

}  // namespace ecopt
