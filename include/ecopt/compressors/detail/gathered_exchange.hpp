#pragma once
// The allgather half of an exchange, for compressors that run a small collective
// before encoding (TernGrad's shared scale, DQ-SGD's shared levels) and then
// send ordinary payloads: decode this rank's payload into `own`, allgather
// every rank's, and decode all of them into `sum`. The same steps as
// gradient_exchange's gathered path, with the compressor's own buffers.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/collectives/allgather.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transport.hpp"

namespace ecopt::detail {

/// `mine` is this rank's encoded payload (it may not live in `gathered`).
template <class C, Transport Tr, class S, class T>
void gather_and_decode(const C& c, Tr& transport, S& s, std::span<const std::byte> mine,
                       std::vector<std::vector<std::byte>>& gathered, std::span<T> own,
                       std::span<T> sum, const round_context& ctx) {
  {
    bit_reader reader(mine);
    c.decode_add(reader, s, own, T(1), ctx);
  }
  allgather_bytes(transport, mine, gathered);
  for (int sender = 0; sender < ctx.world; ++sender) {
    if (sender == ctx.rank) {
      for (std::size_t j = 0; j < sum.size(); ++j) sum[j] += own[j];
      continue;
    }
    round_context from = ctx;
    from.rank = sender;
    bit_reader reader(gathered[static_cast<std::size_t>(sender)]);
    try {
      c.decode_add(reader, s, sum, T(1), from);
    } catch (const decode_error& e) {
      throw decode_error("rank " + std::to_string(ctx.rank) + ", step " +
                         std::to_string(ctx.round) + ": payload from rank " +
                         std::to_string(sender) + ": " + e.what());
    }
  }
}

}  // namespace ecopt::detail
