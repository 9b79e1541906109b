#pragma once
// QSGD: stochastic rounding of |x_j| / ||x|| to s uniform levels, per bucket.
// Unbiased with omega = min(b/s^2, sqrt(b)/s) for buckets of b coordinates.
// Alistarh, Grubic, Li, Tomioka, Vojnovic 2017, arXiv:1610.02132.
//
// Payload, per bucket: its L2 norm as float32, then per coordinate one field of
// 1 + ceil(log2(s+1)) bits: the sign (1 = negative) in the low bit and the
// level in [0, s] above it (the sign bit is 0 for level 0). This is the
// paper's fixed-width variant, not its Elias coding, so the size is exact:
// 32 * buckets + d * (1 + ceil(log2(s+1))).
//
// The norm is rounded up to float32 and the levels are drawn against that
// rounded norm, so the decoded value norm * level / s is unbiased and a level
// never exceeds s. The stochastic rounding (detail/stochastic_levels.hpp) uses
// 16-bit uniforms from the sender's private stream (seed, rank, round), so a
// payload is reproducible; its bias is below 2^-14 of a level.
//
// Speed (d = 2^24 float32, one core, SSE2): encoding is one pass for the norm
// and one that draws, rounds and packs 16 coordinates per step in registers
// when s <= 127 and a bucket covers a whole block of 192; decoding unpacks
// whole bytes of fields and adds them in 4-lane loops. Otherwise the same
// computation runs in portable loops (double input, s > 255, small buckets).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/compressors/detail/stochastic_levels.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct qsgd {
  static constexpr std::string_view name = "qsgd";
  static constexpr std::uint32_t max_levels = std::uint32_t{1} << 30;

  std::uint32_t levels = 4;     ///< s: the number of nonzero quantisation levels
  std::size_t bucket_size = 0;  ///< coordinates per norm; 0 = the whole vector

  void validate() const {
    if (levels < 1 || levels > max_levels) {
      throw invalid_argument("qsgd: levels = " + std::to_string(levels) + " must be in [1, 2^30]");
    }
  }

  /// Coordinates per bucket for dimension d (the last bucket may be shorter).
  [[nodiscard]] std::size_t bucket(std::size_t d) const noexcept {
    return bucket_size == 0 || bucket_size > d ? d : bucket_size;
  }
  [[nodiscard]] std::size_t num_buckets(std::size_t d) const noexcept {
    const std::size_t b = bucket(d);
    return b == 0 ? 0 : (d + b - 1) / b;
  }
  /// Bits of one coordinate's level: ceil(log2(s + 1)).
  [[nodiscard]] unsigned level_bits() const noexcept {
    return bits_for(static_cast<std::uint64_t>(levels) + 1);
  }

  [[nodiscard]] std::uint64_t bits(std::size_t d) const noexcept {
    return 32 * static_cast<std::uint64_t>(num_buckets(d)) +
           static_cast<std::uint64_t>(d) * (1 + level_bits());
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return bits(d); }
  [[nodiscard]] double omega(std::size_t d) const noexcept {
    const auto b = static_cast<double>(bucket(d));
    const auto s = static_cast<double>(levels);
    return std::min(b / (s * s), std::sqrt(b) / s);
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    /// Nothing is carried from round to round (checkpoint.hpp).
    template <class Archive>
    void persist(Archive&) {}
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_positive_dim(name, dim);
    return state<T>{dim};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    detail::bulk_uniforms rng(counter_rng::stream(ctx.seed, stream_purpose::compression,
                                                  static_cast<std::uint64_t>(ctx.rank), ctx.round));
    detail::encode_level_buckets(x, levels, bucket(s.dim), rng, out, "qsgd");
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    detail::require_payload_bits(in, bits(s.dim), "qsgd");
    detail::decode_level_buckets(in, out, scale, levels, bucket(s.dim), "qsgd");
    in.expect_end("qsgd");
  }
};

static_assert(Compressor<qsgd, float> && Compressor<qsgd, double>);

}  // namespace ecopt
