#pragma once
// Buffers the collectives reuse from call to call, so that a collective on
// repeating sizes does not allocate after its first calls. Keep one workspace
// per rank (per thread) and pass it to every collective call.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

struct collective_workspace {
  /// Staging for outgoing bytes that are not already contiguous in the
  /// caller's data (for collectives built on top of these). The built-in
  /// collectives send straight from the caller's span.
  std::vector<std::byte> send;
  /// The message most recently received; the transport swaps its buffers
  /// through here, so its capacity settles at the largest chunk.
  std::vector<std::byte> recv;
};

/// Element types the reducing collectives accept.
template <class V>
concept reducible_value = std::is_arithmetic_v<V> && !std::same_as<std::remove_cv_t<V>, bool>;

namespace detail {

/// Bounds of part `index` when `count` elements are split into `parts`
/// contiguous parts as evenly as possible (the first count % parts parts
/// get one element more).
struct part_bounds {
  std::size_t begin;
  std::size_t size;
};

[[nodiscard]] constexpr part_bounds even_part(std::size_t count, int parts, int index) noexcept {
  const auto p = static_cast<std::size_t>(parts);
  const auto i = static_cast<std::size_t>(index);
  const std::size_t base = count / p;
  const std::size_t extra = count % p;
  return {i * base + (i < extra ? i : extra), base + (i < extra ? 1 : 0)};
}

/// Parts [lo, hi) of even_part(count, parts, .) as one contiguous range.
[[nodiscard]] constexpr part_bounds even_parts(std::size_t count, int parts, int lo,
                                               int hi) noexcept {
  const part_bounds first = even_part(count, parts, lo);
  const part_bounds last = even_part(count, parts, hi - 1);
  return {first.begin, last.begin + last.size - first.begin};
}

/// Allreduce by recursive halving and doubling (Rabenseifner 2004) rather than
/// the ring: for worlds of 4, 8, 16, ... ranks. Same bytes per rank, 2 log2(n)
/// steps instead of 2(n-1), each between a pair of ranks (on loopback TCP with
/// 4 ranks on 2 cores, 10-20 % more bandwidth than the ring).
[[nodiscard]] constexpr bool halving_doubling_applies(int n) noexcept {
  return n >= 4 && (n & (n - 1)) == 0;
}

/// The parts of the aligned group of d ranks (d a power of two) around rank q,
/// [q & ~(d-1), (q & ~(d-1)) + d): what q holds between the halving and the
/// doubling steps with distance d of a halving-doubling collective.
[[nodiscard]] constexpr part_bounds aligned_group_parts(std::size_t count, int parts, int q,
                                                        int d) noexcept {
  const int first = q & ~(d - 1);
  return even_parts(count, parts, first, first + d);
}

/// Elements rank `rank` sends in a halving-doubling allreduce of `count`
/// elements over `n` ranks: its partner's group at each halving step, its own
/// at each doubling step.
[[nodiscard]] constexpr std::size_t halving_doubling_elements_sent(std::size_t count, int n,
                                                                   int rank) noexcept {
  std::size_t sent = 0;
  for (int d = 1; d < n; d *= 2) {
    sent += aligned_group_parts(count, n, rank ^ d, d).size +
            aligned_group_parts(count, n, rank, d).size;
  }
  return sent;
}

/// Bytes rank `rank` sends in the recursive-doubling allgather_bytes
/// (collectives/allgather.hpp), block q having size_of(q) bytes: the sizes and
/// blocks of its aligned group at each step (for transports that do the work
/// another way but report what the messages would be).
template <class SizeOf>
[[nodiscard]] std::uint64_t doubling_allgather_bytes_sent(int n, int rank, SizeOf size_of) {
  std::uint64_t sent = 0;
  for (int d = 1; d < n; d *= 2) {
    const int mine = rank & ~(d - 1);
    sent += 8 * static_cast<std::uint64_t>(d);
    for (int q = mine; q < mine + d; ++q) sent += size_of(q);
  }
  return sent;
}

/// (a mod n) for a in (-2n, 2n).
[[nodiscard]] constexpr int ring_index(int a, int n) noexcept { return ((a % n) + n) % n; }

/// Throws transport_error unless a message from `peer` has the size the
/// protocol expects (a mismatch means ranks passed different sizes).
inline void check_message_size(const char* collective, int rank, int peer, std::size_t expected,
                               std::size_t received) {
  if (expected == received) return;
  throw transport_error(std::string(collective) + ": rank " + std::to_string(rank) + " received " +
                        std::to_string(received) + " bytes from rank " + std::to_string(peer) +
                        ", expected " + std::to_string(expected) +
                        " (do all ranks pass the same number of elements?)");
}

/// Copies a received message into typed storage of the same byte size.
template <class V>
void copy_from_bytes(std::span<const std::byte> from, std::span<V> to) noexcept {
  if (!to.empty()) std::memcpy(to.data(), from.data(), to.size_bytes());
}

/// Receives the next message from `peer`, which must be exactly `into`'s
/// bytes, into `into`: in place where the transport can (recv_into), else
/// through ws.recv and a copy. A message of another size means the ranks
/// disagree on the sizes (transport_error naming the collective).
template <Transport Tr, class V>
void recv_in_place(Tr& t, int peer, message_tag tag, std::span<V> into, collective_workspace& ws,
                   const char* collective) {
  const int rank = static_cast<int>(t.rank());
  if constexpr (InPlaceRecvTransport<Tr>) {
    const std::size_t got = t.recv_into(peer, tag, std::as_writable_bytes(into));
    check_message_size(collective, rank, peer, into.size_bytes(), got);
  } else {
    t.recv(peer, tag, ws.recv);
    check_message_size(collective, rank, peer, into.size_bytes(), ws.recv.size());
    copy_from_bytes(std::span<const std::byte>(ws.recv), into);
  }
}

}  // namespace detail
}  // namespace ecopt
