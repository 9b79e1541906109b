#pragma once
// per_block<C>: the compressor C applied to each block of a parameter_layout
// with the block's own shape -- PowerSGD per weight matrix (Vogels, Karimireddy,
// Jaggi 2019, arXiv:1905.13727, compress each layer's gradient matrix; PyTorch's
// hook does the same), top-k per layer -- instead of to the whole vector.
// Global top-k over all blocks is plain top_k on the whole vector.
//
// Blocks. The layout is completed to cover the whole vector (layout.covering:
// entries no block names form vector blocks of their own); an empty layout is
// one block. A compressor that knows shapes (a member `C for_block(const
// parameter_block&) const`, e.g. power_sgd, which takes the block's rows) is
// configured per block of a layout; others see the block as a vector. With an
// empty layout, C sees the whole vector as it is configured.
//
// Which blocks travel dense (float32, exactly), the documented rule: a block
// with fewer than `dense_below` entries (biases, norms), or one the compressor
// would not shrink by at least `min_gain` (its max_bits > 32 size / min_gain,
// e.g. PowerSGD on a vector). With dense_below = 0 and min_gain = 0 every
// block is compressed, and per_block<C> over a single block is C bit for bit.
//
// Messages: the blocks of one round travel together.
//   - gathered payloads (allgather): one payload, the blocks in layout order;
//     a dense block is its values as float32, a compressed block is a 32-bit
//     byte count followed by C's payload for it (whole bytes);
//   - summable C (allreduce): one buffer, the blocks' summable slices in order;
//   - C whose exchange is a sequence of allreduces offered phase by phase
//     (PhasedAggregation: PowerSGD): one allreduce per phase for all blocks
//     together, the dense blocks riding with the first (PowerSGD: two per round);
//   - other C with their own exchange (gTop-k, Sketched SGD): one `aggregate`
//     per compressed block, in layout order, and one allreduce of all dense
//     blocks together.
// Exact payload bits per block of the last encode or aggregate are in the
// state (`block_bits`, framing not included; `framing_bits` holds it).
//
// Randomness: block i > 0 sees the round's seed mixed with i, so randomized
// compressors draw independently per block; block 0 sees the seed unchanged.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/parameter_layout.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

/// Compressors that take a block's shape (power_sgd: its rows).
template <class C>
concept BlockShapedCompressor = requires(const C& c, const parameter_block& b) {
  { c.for_block(b) } -> std::same_as<C>;
};

template <class C>
struct per_block {
  static constexpr std::string_view name = "per_block";

  C compressor{};
  parameter_layout layout{};       ///< the blocks; empty: the whole vector is one block
  std::size_t dense_below = 1024;  ///< blocks with fewer entries travel dense
  double min_gain = 2.0;           ///< ... and blocks C would not shrink by this factor

  void validate() const {
    validate_policy(compressor);
    if (!(min_gain >= 0.0) || !std::isfinite(min_gain)) {
      throw invalid_argument("per_block: min_gain = " + std::to_string(min_gain) +
                             " must be finite and >= 0");
    }
  }

  /// One block of the plan: where it is, whether it travels dense, and the
  /// compressor configured for it.
  struct planned_block {
    parameter_block block;
    bool dense = false;
    C compressor;
  };

  /// How a vector of `dim` entries is cut and sent (throws when the layout does
  /// not fit in dim).
  [[nodiscard]] std::vector<planned_block> plan(std::size_t dim) const {
    const bool whole = layout.block_count() == 0;
    const parameter_layout cover = whole ? parameter_layout::flat(dim) : layout.covering(dim);
    std::vector<planned_block> out;
    out.reserve(cover.block_count());
    for (const parameter_block& b : cover.blocks()) {
      C c = compressor;
      if constexpr (BlockShapedCompressor<C>) {
        if (!whole) c = compressor.for_block(b);
      }
      const double dense_bits = 32.0 * static_cast<double>(b.size());
      const bool dense = b.size() < dense_below ||
                         min_gain * static_cast<double>(c.max_bits(b.size())) > dense_bits;
      out.push_back({b, dense, std::move(c)});
    }
    return out;
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    std::vector<planned_block> blocks;
    /// C's state of each compressed block (index: slot[i] of block i).
    std::vector<compressor_state_t<C, T>> inner;
    std::vector<std::size_t> slot;
    /// An encode buffer per compressed block, reserved to its max_bits.
    std::vector<std::vector<std::byte>> scratch;
    std::vector<float> dense_wire;          ///< the dense blocks' values (aggregate's allreduce)
    std::vector<float> phase_wire;          ///< one phase of every block (PhasedAggregation)
    std::vector<std::uint64_t> block_bits;  ///< payload bits of each block, last round
    std::uint64_t framing_bits = 0;         ///< byte counts and padding, last round

    /// The layout (checked on load) and every compressed block's state.
    template <class Archive>
    void persist(Archive& a) requires requires(compressor_state_t<C, T>& inner_state) {
      inner_state.persist(a);
    }
    {
      std::string shape;
      for (const planned_block& b : blocks) {
        shape += b.block.name + "@" + std::to_string(b.block.offset) + ":" +
                 std::to_string(b.block.rows) + "x" + std::to_string(b.block.cols) +
                 (b.dense ? " dense; " : "; ");
      }
      a.text("compressor", policy_name<C>());
      a.text("layout", shape);
      for (std::size_t i = 0; i < blocks.size(); ++i) {
        if (!blocks[i].dense) a.nest(blocks[i].block.name, inner[slot[i]]);
      }
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_positive_dim(name, dim);
    state<T> s;
    s.dim = dim;
    s.blocks = plan(dim);
    s.slot.assign(s.blocks.size(), 0);
    s.block_bits.assign(s.blocks.size(), 0);
    std::size_t dense_entries = 0;
    for (std::size_t i = 0; i < s.blocks.size(); ++i) {
      const planned_block& b = s.blocks[i];
      if (b.dense) {
        dense_entries += b.block.size();
        continue;
      }
      s.slot[i] = s.inner.size();
      s.inner.push_back(b.compressor.template make_state<T>(b.block.size()));
      s.scratch.emplace_back();
      s.scratch.back().reserve(
          static_cast<std::size_t>((b.compressor.max_bits(b.block.size()) + 7) / 8 + 8));
    }
    s.dense_wire.resize(dense_entries);
    if constexpr (PhasedAggregation<C, T>) {
      std::size_t largest = 0;
      for (std::size_t phase = 0; phase < phase_count(s); ++phase) {
        largest = std::max(largest, phase_total(s, phase));
      }
      s.phase_wire.resize(largest);
    }
    return s;
  }

  /// A bound on the payload bits: every block's bound, in whole bytes, plus
  /// 32 bits of byte count per compressed block.
  [[nodiscard]] std::uint64_t max_bits(std::size_t dim) const {
    std::uint64_t bits = 0;
    for (const planned_block& b : plan(dim)) {
      if (b.dense) {
        bits += 32 * static_cast<std::uint64_t>(b.block.size());
      } else {
        bits += 32 + 8 * ((b.compressor.max_bits(b.block.size()) + 7) / 8);
      }
    }
    return bits;
  }

  /// Unbiased when C is: the largest variance factor of the compressed blocks.
  [[nodiscard]] double omega(std::size_t dim) const requires UnbiasedCompressor<C> {
    double w = 0;
    for (const planned_block& b : plan(dim)) {
      if (!b.dense) w = std::max(w, b.compressor.omega(b.block.size()));
    }
    return w;
  }

  /// Contractive when C is: the smallest delta of the compressed blocks.
  [[nodiscard]] double delta(std::size_t dim) const requires ContractiveCompressor<C> {
    double d = 1;
    for (const planned_block& b : plan(dim)) {
      if (!b.dense) d = std::min(d, b.compressor.delta(b.block.size()));
    }
    return d;
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    s.framing_bits = 0;
    for (std::size_t i = 0; i < s.blocks.size(); ++i) {
      const planned_block& b = s.blocks[i];
      const std::span<const T> xi = x.subspan(b.block.offset, b.block.size());
      if (b.dense) {
        detail::write_values(out, xi);
        s.block_bits[i] = 32 * static_cast<std::uint64_t>(xi.size());
        continue;
      }
      std::vector<std::byte>& buffer = s.scratch[s.slot[i]];
      bit_writer inner(buffer);
      b.compressor.encode(xi, s.inner[s.slot[i]], inner, block_context(ctx, i));
      s.block_bits[i] = inner.bits();
      const std::span<const std::byte> bytes = inner.finish();
      out.write_u32(static_cast<std::uint32_t>(bytes.size()));
      out.write_bytes(std::span<const std::uint8_t>(
          reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
      s.framing_bits += 32 + (8 * bytes.size() - s.block_bits[i]);
    }
  }

  /// out += scale * C(x), block by block. A corrupt block throws decode_error
  /// naming it; the blocks before it have then been added.
  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context& sender) const {
    detail::require_size(name, "output", out.size(), s.dim);
    for (std::size_t i = 0; i < s.blocks.size(); ++i) {
      const planned_block& b = s.blocks[i];
      const std::span<T> oi = out.subspan(b.block.offset, b.block.size());
      if (b.dense) {
        T* o = oi.data();
        detail::read_values(in, oi.size(), "per_block dense value",
                            [o, scale](std::size_t at, std::span<const float> v) {
                              for (std::size_t j = 0; j < v.size(); ++j) {
                                o[at + j] += scale * static_cast<T>(v[j]);
                              }
                            });
        continue;
      }
      const std::uint32_t bytes = in.read_u32("per_block byte count");
      const std::span<const std::byte> payload = in.take_bytes(bytes, "per_block block payload");
      bit_reader inner(payload);
      try {
        b.compressor.decode_add(inner, s.inner[s.slot[i]], oi, scale, block_context(sender, i));
      } catch (const decode_error& e) {
        throw decode_error("per_block: block '" + b.block.name + "': " + e.what());
      }
    }
    in.expect_end("per_block");
  }

  // --- Payloads that add in compressed form: one allreduce of all blocks ----------

  [[nodiscard]] bool summable() const requires SummableCompressor<C, float> {
    return compressor.summable();
  }

  [[nodiscard]] std::size_t summable_size(std::size_t dim) const requires
      SummableCompressor<C, float> {
    return summed_floats(plan(dim));
  }

  template <class T>
  void encode_summable(std::span<const T> x, state<T>& s, std::span<float> buf,
                       const round_context& ctx) const requires SummableCompressor<C, T> {
    detail::require_size(name, "input", x.size(), s.dim);
    detail::require_size(name, "summable buffer", buf.size(), summed_floats(s.blocks));
    std::size_t at = 0;
    for (std::size_t i = 0; i < s.blocks.size(); ++i) {
      const planned_block& b = s.blocks[i];
      const std::span<const T> xi = x.subspan(b.block.offset, b.block.size());
      if (b.dense) {
        for (std::size_t j = 0; j < xi.size(); ++j) buf[at + j] = static_cast<float>(xi[j]);
        at += xi.size();
        s.block_bits[i] = 32 * static_cast<std::uint64_t>(xi.size());
        continue;
      }
      const std::size_t n = b.compressor.summable_size(xi.size());
      b.compressor.encode_summable(xi, s.inner[s.slot[i]], buf.subspan(at, n),
                                   block_context(ctx, i));
      at += n;
      s.block_bits[i] = 32 * static_cast<std::uint64_t>(n);
    }
    s.framing_bits = 0;
  }

  template <class T>
  void decode_summed(std::span<const float> summed, state<T>& s, std::span<T> out, T scale,
                     const round_context& ctx) const requires SummableCompressor<C, T> {
    detail::require_size(name, "output", out.size(), s.dim);
    detail::require_size(name, "summed buffer", summed.size(), summed_floats(s.blocks));
    std::size_t at = 0;
    for (std::size_t i = 0; i < s.blocks.size(); ++i) {
      const planned_block& b = s.blocks[i];
      const std::span<T> oi = out.subspan(b.block.offset, b.block.size());
      if (b.dense) {
        // Dense blocks carry raw floats: check them as no_compression does.
        detail::require_finite(summed.subspan(at, oi.size()), "per_block summed value", at);
        for (std::size_t j = 0; j < oi.size(); ++j) oi[j] += scale * static_cast<T>(summed[at + j]);
        at += oi.size();
        continue;
      }
      const std::size_t n = b.compressor.summable_size(oi.size());
      b.compressor.decode_summed(summed.subspan(at, n), s.inner[s.slot[i]], oi, scale,
                                 block_context(ctx, i));
      at += n;
    }
  }

  /// Floats of the summable buffer of these blocks.
  [[nodiscard]] static std::size_t summed_floats(const std::vector<planned_block>& blocks) {
    std::size_t n = 0;
    for (const planned_block& b : blocks) {
      n += b.dense ? b.block.size() : b.compressor.summable_size(b.block.size());
    }
    return n;
  }

  // --- Compressors with their own exchange ----------------------------------------

  /// One `aggregate` of C per compressed block, then one allreduce of every
  /// dense block; the AggregatingCompressor contract (compressor.hpp) for the
  /// whole vector. Returns this rank's payload bits.
  template <class T, Transport Tr>
  std::uint64_t aggregate(Tr& transport, std::span<const T> x, state<T>& s, std::span<T> own,
                          std::span<T> sum, collective_workspace& workspace,
                          const round_context& ctx) const requires AggregatingCompressor<C, T, Tr> {
    detail::require_size(name, "input", x.size(), s.dim);
    detail::require_size(name, "own output", own.size(), s.dim);
    detail::require_size(name, "sum output", sum.size(), s.dim);
    if constexpr (PhasedAggregation<C, T>) {
      return aggregate_fused(transport, x, s, own, sum, workspace, ctx);
    }
    std::uint64_t bits = 0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < s.blocks.size(); ++i) {
      const planned_block& b = s.blocks[i];
      const std::size_t off = b.block.offset;
      const std::size_t n = b.block.size();
      if (b.dense) {
        for (std::size_t j = 0; j < n; ++j) {
          s.dense_wire[at + j] = static_cast<float>(x[off + j]);
          own[off + j] += static_cast<T>(s.dense_wire[at + j]);
        }
        at += n;
        s.block_bits[i] = 32 * static_cast<std::uint64_t>(n);
        continue;
      }
      s.block_bits[i] = b.compressor.aggregate(transport, x.subspan(off, n), s.inner[s.slot[i]],
                                               own.subspan(off, n), sum.subspan(off, n), workspace,
                                               block_context(ctx, i));
      bits += s.block_bits[i];
    }
    if (at > 0) {
      allreduce_sum(transport, std::span<float>(s.dense_wire.data(), at), workspace);
      at = 0;
      for (const planned_block& b : s.blocks) {
        if (!b.dense) continue;
        for (std::size_t j = 0; j < b.block.size(); ++j) {
          sum[b.block.offset + j] += static_cast<T>(s.dense_wire[at + j]);
        }
        at += b.block.size();
      }
      bits += 32 * static_cast<std::uint64_t>(at);
    }
    s.framing_bits = 0;
    return bits;
  }

  /// Phases of a round: the most any compressed block has (at least one, which
  /// carries the dense blocks).
  template <class T>
  [[nodiscard]] std::size_t phase_count(const state<T>& s) const {
    std::size_t n = 1;
    for (std::size_t i = 0; i < s.blocks.size(); ++i) {
      if (!s.blocks[i].dense) n = std::max(n, s.blocks[i].compressor.phases(s.inner[s.slot[i]]));
    }
    return n;
  }

  /// Floats of one phase over all blocks: each compressed block's share, in
  /// layout order, then (phase 0) the dense blocks.
  template <class T>
  [[nodiscard]] std::size_t phase_total(const state<T>& s, std::size_t phase) const {
    std::size_t n = 0;
    for (std::size_t i = 0; i < s.blocks.size(); ++i) {
      const planned_block& b = s.blocks[i];
      if (b.dense) {
        n += phase == 0 ? b.block.size() : 0;
      } else if (phase < b.compressor.phases(s.inner[s.slot[i]])) {
        n += b.compressor.phase_floats(s.inner[s.slot[i]], phase);
      }
    }
    return n;
  }

  /// Phase k of every block in one allreduce (PowerSGD: all P's, then all Q's).
  template <class T, Transport Tr>
  std::uint64_t aggregate_fused(Tr& transport, std::span<const T> x, state<T>& s, std::span<T> own,
                                std::span<T> sum, collective_workspace& workspace,
                                const round_context& ctx) const {
    std::fill(s.block_bits.begin(), s.block_bits.end(), 0);
    std::uint64_t bits = 0;
    const std::size_t phases = phase_count(s);
    for (std::size_t phase = 0; phase < phases; ++phase) {
      const std::size_t total = phase_total(s, phase);
      const std::span<float> wire(s.phase_wire.data(), total);
      std::size_t at = 0;
      for (std::size_t i = 0; i < s.blocks.size(); ++i) {
        const planned_block& b = s.blocks[i];
        if (b.dense || phase >= b.compressor.phases(s.inner[s.slot[i]])) continue;
        auto& inner = s.inner[s.slot[i]];
        const std::size_t m = b.compressor.phase_floats(inner, phase);
        b.compressor.phase_begin(x.subspan(b.block.offset, b.block.size()), inner, phase,
                                 wire.subspan(at, m), own.subspan(b.block.offset, b.block.size()),
                                 block_context(ctx, i));
        s.block_bits[i] += 32 * static_cast<std::uint64_t>(m);
        at += m;
      }
      if (phase == 0) {
        for (std::size_t i = 0; i < s.blocks.size(); ++i) {
          const planned_block& b = s.blocks[i];
          if (!b.dense) continue;
          for (std::size_t j = 0; j < b.block.size(); ++j) {
            wire[at + j] = static_cast<float>(x[b.block.offset + j]);
            own[b.block.offset + j] += static_cast<T>(wire[at + j]);
          }
          at += b.block.size();
          s.block_bits[i] = 32 * static_cast<std::uint64_t>(b.block.size());
        }
      }
      allreduce_sum(transport, wire, workspace);
      bits += 32 * static_cast<std::uint64_t>(total);
      at = 0;
      for (std::size_t i = 0; i < s.blocks.size(); ++i) {
        const planned_block& b = s.blocks[i];
        if (b.dense || phase >= b.compressor.phases(s.inner[s.slot[i]])) continue;
        auto& inner = s.inner[s.slot[i]];
        const std::size_t m = b.compressor.phase_floats(inner, phase);
        b.compressor.phase_end(inner, phase, std::span<const float>(wire.subspan(at, m)),
                               own.subspan(b.block.offset, b.block.size()),
                               sum.subspan(b.block.offset, b.block.size()), block_context(ctx, i));
        at += m;
      }
      if (phase == 0) {
        for (const planned_block& b : s.blocks) {
          if (!b.dense) continue;
          for (std::size_t j = 0; j < b.block.size(); ++j) {
            sum[b.block.offset + j] += static_cast<T>(wire[at + j]);
          }
          at += b.block.size();
        }
      }
    }
    s.framing_bits = 0;
    return bits;
  }

  /// The context block i sees: block 0 the round's own, block i > 0 the seed
  /// mixed with i (SplitMix64's finaliser), so blocks draw independently.
  [[nodiscard]] static round_context block_context(const round_context& ctx, std::size_t i) {
    if (i == 0) return ctx;
    round_context c = ctx;
    std::uint64_t z = ctx.seed + 0x9E3779B97F4A7C15ULL * static_cast<std::uint64_t>(i);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    c.seed = z ^ (z >> 31);
    return c;
  }
};

}  // namespace ecopt
