#pragma once
// Allgather: every rank ends with every rank's block. Two schedules:
//
// Ring (any n). At step s (s = 0..n-2) a rank sends block (rank-s) mod n to
// its right neighbour and receives block (rank-s-1) mod n from its left one.
// Cost per rank: n-1 messages, and the sum of the other ranks' block sizes
// received (each rank sends every block but its right neighbour's).
//
// Recursive doubling (n = 4, 8, 16, ...; Thakur, Rabenseifner, Gropp 2005,
// "Optimization of collective communication operations in MPICH"): at the
// step with distance d = 1, 2, ..., n/2, rank r and its partner r^d swap the
// d blocks each has gathered so far (the aligned group of d ranks around it)
// in one message. log2(n) messages instead of n-1, the same block bytes; for
// allgather_bytes each message starts with its blocks' sizes (8 bytes each),
// as the receiver cannot know them.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/collectives/tags.hpp"
#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {
namespace detail {

/// Recursive doubling for allgather_bytes (all[rank] holds this rank's block).
/// A message carries d little-endian u64 sizes, then the d blocks.
template <Transport Tr>
void doubling_allgather_bytes(Tr& t, std::vector<std::vector<std::byte>>& all, message_tag tag) {
  const int n = static_cast<int>(t.size());
  const int rank = static_cast<int>(t.rank());
  // Scratch for packing and receiving: kept per thread, so repeating sizes do not allocate.
  thread_local std::vector<std::byte> packed;
  thread_local std::vector<std::byte> received;
  for (int d = 1; d < n; d *= 2) {
    const int partner = rank ^ d;
    const int mine = rank & ~(d - 1);
    std::size_t total = 8 * static_cast<std::size_t>(d);
    for (int q = mine; q < mine + d; ++q) total += all[static_cast<std::size_t>(q)].size();
    packed.resize(total);
    std::byte* out = packed.data();
    for (int q = mine; q < mine + d; ++q) {
      std::uint64_t size = all[static_cast<std::size_t>(q)].size();
      for (int b = 0; b < 8; ++b, size >>= 8) *out++ = static_cast<std::byte>(size & 0xffu);
    }
    for (int q = mine; q < mine + d; ++q) {
      const auto& block = all[static_cast<std::size_t>(q)];
      if (!block.empty()) std::memcpy(out, block.data(), block.size());
      out += block.size();
    }
    t.send(partner, tag, std::span<const std::byte>(packed));
    t.recv(partner, tag, received);
    // Check the sizes against the message before copying anything.
    const int theirs = partner & ~(d - 1);
    const std::size_t header = 8 * static_cast<std::size_t>(d);
    auto malformed = [&](const std::string& why) {
      return transport_error("allgather_bytes: rank " + std::to_string(rank) +
                             " received a malformed message of " + std::to_string(received.size()) +
                             " bytes from rank " + std::to_string(partner) + ": " + why);
    };
    if (received.size() < header) {
      throw malformed("shorter than its " + std::to_string(d) + " block sizes");
    }
    auto size_at = [&](int i) {
      std::uint64_t size = 0;
      for (std::size_t b = 8; b-- > 0;) {
        size = (size << 8) |
               std::to_integer<std::uint64_t>(received[8 * static_cast<std::size_t>(i) + b]);
      }
      return size;
    };
    std::size_t sum = 0;
    for (int i = 0; i < d; ++i) {
      const std::uint64_t size = size_at(i);
      if (size > received.size() - header - sum) {
        throw malformed("block sizes exceed the message");
      }
      sum += static_cast<std::size_t>(size);
    }
    if (sum != received.size() - header)
      throw malformed("block sizes do not add up to the message");
    const std::byte* in = received.data() + header;
    for (int i = 0; i < d; ++i) {
      const auto size = static_cast<std::size_t>(size_at(i));
      all[static_cast<std::size_t>(theirs + i)].assign(in, in + size);
      in += size;
    }
  }
}

}  // namespace detail

/// all[r] := rank r's `mine`, for every rank r (all.size() becomes n). Block
/// sizes may differ between ranks and may be 0. Blocks are received by
/// swapping buffers with `all`, so repeating sizes do not allocate.
template <Transport Tr>
void allgather_bytes(Tr& t, std::span<const std::byte> mine,
                     std::vector<std::vector<std::byte>>& all) {
  if constexpr (requires { t.native_allgather_bytes(mine, all); }) {
    t.native_allgather_bytes(mine, all);  // the transport's own (MPI_Allgatherv)
    return;
  }
  const int n = static_cast<int>(t.size());
  const int rank = static_cast<int>(t.rank());
  all.resize(static_cast<std::size_t>(n));
  std::vector<std::byte>& own = all[static_cast<std::size_t>(rank)];
  const std::byte* begin = own.data();
  if (!mine.empty() && std::greater_equal<>()(mine.data(), begin) &&
      std::less<>()(mine.data(), begin + own.size())) {
    // `mine` lies inside all[rank] already (assign() must not read its own storage).
    std::memmove(own.data(), mine.data(), mine.size());
    own.resize(mine.size());
  } else {
    own.assign(mine.begin(), mine.end());
  }
  const message_tag tag = collective_tag_for<>(collective_tag::allgather_bytes);
  if (detail::halving_doubling_applies(n)) {
    detail::doubling_allgather_bytes(t, all, tag);
    return;
  }
  const int right = detail::ring_index(rank + 1, n);
  const int left = detail::ring_index(rank - 1, n);
  for (int s = 0; s < n - 1; ++s) {
    t.send(
        right, tag,
        std::span<const std::byte>(all[static_cast<std::size_t>(detail::ring_index(rank - s, n))]));
    t.recv(left, tag, all[static_cast<std::size_t>(detail::ring_index(rank - s - 1, n))]);
  }
}

/// all := the ranks' `mine` blocks in rank order (all.size() must be
/// n * mine.size(), the same on every rank). `mine` may alias all's own block.
template <Transport Tr, class V>
requires std::is_trivially_copyable_v<V>
void allgather(Tr& t, std::span<const V> mine, std::span<V> all, collective_workspace& ws) {
  if constexpr (requires { t.native_allgather(mine, all); }) {
    t.native_allgather(mine, all);  // the transport's own (MPI_Allgather)
    return;
  }
  const int n = static_cast<int>(t.size());
  const int rank = static_cast<int>(t.rank());
  const std::size_t block = mine.size();
  if (all.size() != block * static_cast<std::size_t>(n)) {
    throw invalid_argument("allgather: rank " + std::to_string(rank) + " passed all.size() = " +
                           std::to_string(all.size()) + ", expected world size " +
                           std::to_string(n) + " x mine.size() " + std::to_string(block));
  }
  auto block_of = [&](int r) { return all.subspan(static_cast<std::size_t>(r) * block, block); };
  if (block > 0) std::memmove(block_of(rank).data(), mine.data(), mine.size_bytes());
  const message_tag tag = collective_tag_for<V>(collective_tag::allgather);
  if (detail::halving_doubling_applies(n)) {
    for (int d = 1; d < n; d *= 2) {
      const int partner = rank ^ d;
      const std::size_t group = static_cast<std::size_t>(d) * block;
      t.send(partner, tag,
             std::as_bytes(all.subspan(static_cast<std::size_t>(rank & ~(d - 1)) * block, group)));
      detail::recv_in_place(
          t, partner, tag, all.subspan(static_cast<std::size_t>(partner & ~(d - 1)) * block, group),
          ws, "allgather");
    }
    return;
  }
  const int right = detail::ring_index(rank + 1, n);
  const int left = detail::ring_index(rank - 1, n);
  for (int s = 0; s < n - 1; ++s) {
    t.send(right, tag, std::as_bytes(block_of(detail::ring_index(rank - s, n))));
    detail::recv_in_place(t, left, tag, block_of(detail::ring_index(rank - s - 1, n)), ws,
                          "allgather");
  }
}

}  // namespace ecopt
