#pragma once
// QSGD: stochastic rounding of |x_j| / ||x|| to s uniform levels, per bucket.
// Unbiased with omega = min(b/s^2, sqrt(b)/s) for buckets of b coordinates.
// Alistarh, Grubic, Li, Tomioka, Vojnovic 2017, arXiv:1610.02132.
//
// Payload, per bucket: its L2 norm as float32, then per coordinate one field of
// 1 + ceil(log2(s+1)) bits: the sign (1 = negative) in the low bit and the
// level in [0, s] above it. This is the paper's fixed-width variant, not its
// Elias coding, so the size is exact: 32 * buckets + d * (1 + ceil(log2(s+1))).
//
// The norm is rounded up to float32 and the levels are drawn against that
// rounded norm, so the decoded value norm * level / s is unbiased and a level
// never exceeds s. Stochastic rounding uses 32-bit uniforms (bias below 2^-32
// of a level), two per draw of the sender's private stream (seed, rank, round),
// so a payload is reproducible.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
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
    counter_rng rng = counter_rng::stream(ctx.seed, stream_purpose::compression,
                                          static_cast<std::uint64_t>(ctx.rank), ctx.round);
    const std::size_t d = s.dim;
    const std::size_t b = bucket(d);
    const T* xs = x.data();
    for (std::size_t b0 = 0; b0 < d; b0 += b) {
      const std::size_t n = std::min(b, d - b0);
      const T* xb = xs + b0;
      const double norm = std::sqrt(detail::sum_squares(std::span<const T>(xb, n)));
      float nf = static_cast<float>(norm);
      if (static_cast<double>(nf) < norm)
        nf = std::nextafter(nf, std::numeric_limits<float>::infinity());
      if (!std::isfinite(nf)) {
        throw numeric_error("qsgd: the norm of bucket " + std::to_string(b0 / b) +
                            " is not a finite float32 (non-finite or huge input)");
      }
      out.write_f32(nf);
      if (nf == 0.0f) {  // all levels 0, no draws
        detail::write_fields(out, n, 1 + level_bits(),
                             [](std::size_t) { return std::uint64_t{0}; });
        continue;
      }
      if (level_bits() <= 11) {
        encode_bucket<std::int32_t>(xb, n, nf, rng, out);
      } else {
        encode_bucket<std::int64_t>(xb, n, nf, rng, out);
      }
    }
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const std::size_t d = s.dim;
    detail::require_payload_bits(in, bits(d), "qsgd");
    const std::size_t b = bucket(d);
    const unsigned width = 1 + level_bits();
    const std::uint64_t s_levels = levels;
    const unsigned per = 64 / width;
    const std::uint64_t mask = (std::uint64_t{1} << width) - 1;
    // Small s: a table of the 2^width decoded values per bucket, when the bucket
    // is long enough to pay for it.
    T table[256];
    T* o = out.data();
    for (std::size_t b0 = 0; b0 < d; b0 += b) {
      const std::size_t n = std::min(b, d - b0);
      const float nf = in.read_f32("qsgd bucket norm");
      if (!(nf >= 0.0f) || !std::isfinite(nf)) throw_bad_norm(b0 / b, nf);
      const double step = static_cast<double>(nf) / static_cast<double>(s_levels);
      const auto value = [&](std::uint64_t field) {
        const T mag = scale * static_cast<T>(step * static_cast<double>(field >> 1));
        return (field & 1) ? -mag : mag;
      };
      const bool use_table = width <= 8 && (std::size_t{1} << width) <= n;
      if (use_table) {
        for (std::uint64_t f = 0; f <= mask; ++f) table[f] = value(f);
      }
      T* ob = o + b0;
      for (std::size_t i0 = 0; i0 < n; i0 += per) {
        const std::size_t m = std::min<std::size_t>(per, n - i0);
        const std::uint64_t word = in.read(static_cast<unsigned>(m) * width, "qsgd level");
        std::uint64_t worst = 0;
        std::uint64_t w = word;
        for (std::size_t t = 0; t < m; ++t, w >>= width) worst = std::max(worst, (w & mask) >> 1);
        if (worst > s_levels) throw_bad_level(b0 + i0, worst);
        w = word;
        for (std::size_t t = 0; t < m; ++t, w >>= width) {
          ob[i0 + t] += use_table ? table[w & mask] : value(w & mask);
        }
      }
    }
    in.expect_end("qsgd");
  }

 private:
  // Stochastic rounding in fixed point: with r = s|x|/norm scaled by 2^F and a
  // uniform F-bit u, floor((r 2^F + u) / 2^F) rounds r up with probability
  // frac(r), to within 2^-F, without a branch. Fixed = int32 (F = 31 - level
  // bits >= 20) keeps the conversions vectorisable; int64 (F = 32) serves large s.
  template <class Fixed, class T>
  void encode_bucket(const T* xb, std::size_t n, float nf, counter_rng& rng,
                     bit_writer& out) const {
    const unsigned width = 1 + level_bits();
    const unsigned per = 64 / width;  // fields per 64-bit write (<= 32)
    constexpr bool narrow = sizeof(Fixed) == 4;
    const unsigned frac = narrow ? 31 - level_bits() : 32;
    const auto s_levels = static_cast<double>(levels);
    const double to_fixed =
        s_levels / static_cast<double>(nf) * std::ldexp(1.0, static_cast<int>(frac));
    const double cap = s_levels * std::ldexp(1.0, static_cast<int>(frac));
    using ufixed = std::make_unsigned_t<Fixed>;
    ufixed u[32];
    ufixed fields[32];
    for (std::size_t i0 = 0; i0 < n; i0 += per) {
      const std::size_t m = std::min<std::size_t>(per, n - i0);
      for (std::size_t t = 0; t < m; t += 2) {
        const std::uint64_t r = rng();
        u[t] = static_cast<ufixed>(static_cast<std::uint32_t>(r) >> (32 - frac));
        u[t + 1] = static_cast<ufixed>(static_cast<std::uint32_t>(r >> 32) >> (32 - frac));
      }
      const T* xg = xb + i0;
      for (std::size_t t = 0; t < m; ++t) {
        const auto v = static_cast<double>(xg[t]);
        const auto fixed =
            static_cast<ufixed>(static_cast<Fixed>(std::min(std::fabs(v) * to_fixed, cap)));
        const ufixed level = static_cast<ufixed>(fixed + u[t]) >> frac;
        const ufixed negative = static_cast<ufixed>((v < 0) & (level != 0));
        fields[t] = static_cast<ufixed>(level << 1) | negative;
      }
      std::uint64_t word = 0;
      for (std::size_t t = 0; t < m; ++t) word |= std::uint64_t{fields[t]} << (t * width);
      out.write(word, static_cast<unsigned>(m) * width);
    }
  }

  [[noreturn, gnu::cold]] static void throw_bad_norm(std::size_t bucket_index, float v) {
    throw decode_error("corrupt qsgd payload: bucket norm[" + std::to_string(bucket_index) +
                       "] = " + std::to_string(v) + " is not a finite non-negative number");
  }
  [[noreturn, gnu::cold]] void throw_bad_level(std::size_t j, std::uint64_t level) const {
    throw decode_error("corrupt qsgd payload: a level near coordinate " + std::to_string(j) +
                       " is " + std::to_string(level) + ", beyond s = " + std::to_string(levels));
  }
};

static_assert(Compressor<qsgd, float> && Compressor<qsgd, double>);

}  // namespace ecopt
