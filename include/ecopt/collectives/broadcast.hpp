#pragma once
// Binomial-tree broadcast: data := root's data on every rank.
//
// Ranks are numbered relative to the root (v = rank - root mod n). Rank v > 0
// receives once, from v minus its lowest set bit, then forwards to v + 2^k
// for each 2^k below that bit. Cost: ceil(log2 n) rounds; every non-root
// receives the data once; a rank sends it at most ceil(log2 n) times (the
// root the most), n-1 messages in all.
#include <cstddef>
#include <span>
#include <string>
#include <type_traits>

#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/collectives/tags.hpp"
#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

/// data := root's data (all ranks pass the same size and root).
template <Transport Tr, class V>
requires std::is_trivially_copyable_v<V>
void broadcast(Tr& t, std::span<V> data, int root, collective_workspace& ws) {
  if constexpr (requires { t.native_broadcast(data, root); }) {
    t.native_broadcast(data, root);  // the transport's own (MPI_Bcast)
    return;
  }
  const int n = static_cast<int>(t.size());
  const int rank = static_cast<int>(t.rank());
  if (root < 0 || root >= n) {
    throw invalid_argument("broadcast: rank " + std::to_string(rank) + " passed root " +
                           std::to_string(root) + ", outside the world of " + std::to_string(n) +
                           " ranks");
  }
  const message_tag tag = collective_tag_for<V>(collective_tag::broadcast);
  const int relative = detail::ring_index(rank - root, n);
  int mask = 1;
  while (mask < n) {
    if (relative & mask) {
      const int parent = detail::ring_index(relative - mask + root, n);
      detail::recv_in_place(t, parent, tag, data, ws, "broadcast");
      break;
    }
    mask <<= 1;
  }
  // mask is now the bit this rank received on (or >= n at the root); the
  // subtree below it is relative + 1 .. relative + mask - 1.
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (relative + mask < n) {
      t.send(detail::ring_index(relative + mask + root, n), tag, std::as_bytes(data));
    }
  }
}

}  // namespace ecopt
