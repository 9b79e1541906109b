#pragma once
// Allreduce: every rank ends with the elementwise sum (or max) of all ranks'
// data, bitwise identical on every rank. Two schedules, both
// bandwidth-optimal (each rank sends 2(n-1)/n of the data's bytes):
//
// Ring (any n). The data is cut into n chunks as even as possible. A
// reduce-scatter of n-1 ring steps leaves rank r with the complete reduction
// of chunk r+1; an allgather of n-1 ring steps then copies each complete
// chunk around the ring: 2(n-1) messages per rank.
//
// Recursive halving and doubling (Rabenseifner 2004, "Optimization of
// collective reduction operations"), for n = 4, 8, 16, ...: at the halving
// step with distance d = n/2, n/4, ..., 1, rank r and its partner r^d split
// their current range of chunks, each sends the half the other keeps and
// folds in the half it receives, so rank r ends with chunk r complete; the
// doubling steps (d = 1, 2, ..., n/2) swap the ranges back. 2 log2(n)
// messages per rank, each step between a pair of ranks only -- fewer steps
// and fewer waits on a chain of neighbours (the ring's P-1 hops), which shows
// when ranks share cores.
//
// Either way every rank ends up with the owner's bytes for each chunk, so
// floating-point results agree exactly across ranks even though the
// summation order differs from a serial sum.
//
// A transport with its own collective (a member native_allreduce_sum / _max,
// as mpi_transport maps them to MPI_Allreduce) is given the call instead; so
// are the other collectives in this directory (native_allgather,
// native_allgather_bytes, native_broadcast, native_barrier).
#include <cstddef>
#include <cstring>
#include <span>

#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/collectives/tags.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {
namespace detail {

/// mine[i] = op(mine[i], the i-th V of `in`) (a received message holds bytes, not V objects).
template <class V, class Op>
void fold_bytes_into(std::span<V> mine, const std::byte* in, Op op) noexcept {
  for (std::size_t i = 0; i < mine.size(); ++i) {
    V other;
    std::memcpy(&other, in + i * sizeof(V), sizeof(V));
    mine[i] = op(mine[i], other);
  }
}

template <Transport Tr, class V, class Op>
void ring_allreduce(Tr& t, std::span<V> data, collective_workspace& ws, message_tag tag,
                    const char* name, Op op) {
  const int n = static_cast<int>(t.size());
  if (n == 1) return;
  const int rank = static_cast<int>(t.rank());
  const int right = ring_index(rank + 1, n);
  const int left = ring_index(rank - 1, n);
  auto chunk = [&](int index) {
    const part_bounds b = even_part(data.size(), n, index);
    return data.subspan(b.begin, b.size);
  };

  // Reduce-scatter: at step s, pass on chunk rank-s, fold chunk rank-s-1 in.
  // Empty chunks (data.size() < n) are still sent: the size check then also
  // catches ranks that disagree on data.size().
  for (int s = 0; s < n - 1; ++s) {
    t.send(right, tag, std::as_bytes(chunk(ring_index(rank - s, n))));
    t.recv(left, tag, ws.recv);
    const std::span<V> mine = chunk(ring_index(rank - s - 1, n));
    check_message_size(name, rank, left, mine.size_bytes(), ws.recv.size());
    fold_bytes_into(mine, ws.recv.data(), op);
  }
  // Allgather: rank r now owns chunk r+1; at step s pass on chunk r+1-s and
  // overwrite chunk r-s with its owner's bytes.
  for (int s = 0; s < n - 1; ++s) {
    t.send(right, tag, std::as_bytes(chunk(ring_index(rank + 1 - s, n))));
    recv_in_place(t, left, tag, chunk(ring_index(rank - s, n)), ws, name);
  }
}

/// Recursive halving and doubling for n = 4, 8, 16, ... (see the top of the
/// file). Rank r's value of a chunk after the halving step with distance d is
/// op(its own partial, partner r^d's partial): thread_transport's shared-memory
/// allreduce evaluates the same tree.
template <Transport Tr, class V, class Op>
void halving_doubling_allreduce(Tr& t, std::span<V> data, collective_workspace& ws, message_tag tag,
                                const char* name, Op op) {
  const int n = static_cast<int>(t.size());
  const int rank = static_cast<int>(t.rank());
  // The chunks of the aligned group of d ranks around rank q: what q holds
  // after the halving step with distance d, and before the doubling one.
  auto group = [&](int q, int d) {
    const part_bounds b = aligned_group_parts(data.size(), n, q, d);
    return data.subspan(b.begin, b.size);
  };
  for (int d = n / 2; d >= 1; d /= 2) {
    const int partner = rank ^ d;
    t.send(partner, tag, std::as_bytes(group(partner, d)));
    const std::span<V> mine = group(rank, d);
    t.recv(partner, tag, ws.recv);
    check_message_size(name, rank, partner, mine.size_bytes(), ws.recv.size());
    fold_bytes_into(mine, ws.recv.data(), op);
  }
  for (int d = 1; d < n; d *= 2) {
    const int partner = rank ^ d;
    t.send(partner, tag, std::as_bytes(group(rank, d)));
    recv_in_place(t, partner, tag, group(partner, d), ws, name);
  }
}

template <Transport Tr, class V, class Op>
void message_allreduce(Tr& t, std::span<V> data, collective_workspace& ws, message_tag tag,
                       const char* name, Op op) {
  if (halving_doubling_applies(static_cast<int>(t.size()))) {
    halving_doubling_allreduce(t, data, ws, tag, name, op);
  } else {
    ring_allreduce(t, data, ws, tag, name, op);
  }
}

}  // namespace detail

/// data := elementwise sum of every rank's data (all ranks pass the same
/// size). Integer sums wrap as V's own arithmetic does (signed overflow is
/// the caller's to avoid).
template <Transport Tr, reducible_value V>
void allreduce_sum(Tr& t, std::span<V> data, collective_workspace& ws) {
  if constexpr (requires { t.native_allreduce_sum(data); }) {
    t.native_allreduce_sum(data);  // the transport's own (MPI_Allreduce)
    return;
  }
  detail::message_allreduce(t, data, ws, collective_tag_for<V>(collective_tag::allreduce_sum),
                            "allreduce_sum", [](V a, V b) { return static_cast<V>(a + b); });
}

/// data := elementwise maximum over the ranks (a NaN is kept or dropped
/// depending on the reduction order, but identically on every rank).
template <Transport Tr, reducible_value V>
void allreduce_max(Tr& t, std::span<V> data, collective_workspace& ws) {
  if constexpr (requires { t.native_allreduce_max(data); }) {
    t.native_allreduce_max(data);
    return;
  }
  detail::message_allreduce(t, data, ws, collective_tag_for<V>(collective_tag::allreduce_max),
                            "allreduce_max", [](V a, V b) { return b > a ? b : a; });
}

}  // namespace ecopt
