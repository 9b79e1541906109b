#pragma once
// TernGrad: each coordinate becomes s_B * sign(x_j) * b_j with s_B = max |x|
// over its bucket B and b_j ~ Bernoulli(|x_j| / s_B), a ternary {-1, 0, +1}
// value times one scale per bucket. Unbiased.
// Wen, Xu, Yan, Wu, Wang, Chen, Li 2017, arXiv:1705.07878.
//
// Variance, per bucket: E||C(x_B) - x_B||^2 = sum_j |x_j| (s_B - |x_j|)
// = s_B ||x_B||_1 - ||x_B||^2. Its largest ratio to ||x_B||^2 over all x_B in
// R^b is reached by one coordinate at s_B and the other b - 1 equal to
// s_B / (1 + sqrt(b)), where s_B ||x_B||_1 / ||x_B||^2 = (1 + sqrt(b)) / 2. So
//   omega(d) = (sqrt(b) - 1) / 2    for buckets of b coordinates,
// half of the sqrt(b) - 1 that ||x||_1 <= sqrt(b) ||x|| and s_B <= ||x|| give.
// (The scale is rounded up to float32; for double input that may add a
// relative 2^-24 to the variance.)
//
// Payload: the bucket scales as float32 (one per bucket, in order), then the
// trits of all d coordinates (0 = zero, 1 = +1, 2 = -1), five per byte in
// base 3 (t0 + 3 t1 + 9 t2 + 27 t3 + 81 t4 < 243), and the last d % 5 trits
// in ceil(log2(3^r)) bits (2, 4, 5 or 7). Exactly
//   32 * buckets + 8 * floor(d / 5) + {0, 2, 4, 5, 7}[d % 5] bits,
// about 1.6 bits per coordinate against the paper's 2.
//
// The rounding draws use the same 16-bit uniforms as qsgd (one level, scale
// s_B; detail/stochastic_levels.hpp), so the bias is below 2^-14 of s_B.
//
// The paper's two options (Section 4), both off by default:
//  - clip_sigmas = c > 0 (the paper's c = 2.5): each bucket's scale is
//    min(max |x_B|, c sigma_B), sigma_B the standard deviation of x_B about its
//    mean (the paper's sigma of a layer's gradient; buckets or per_block give
//    layers). Coordinates beyond the scale round to +-scale with probability 1,
//    which is exactly quantising the clipped vector. C(x) is then an unbiased
//    estimate of clip(x), not of x: biased, and omega holds for clip(x) only.
//  - share_scale: every rank uses, per bucket, the max of all ranks' scales
//    (the paper's scaler sharing), found by one allreduce_max of the scales in
//    `aggregate` before encoding; payloads keep their format (the scales, now
//    equal on every rank, travel as before). aggregate returns the payload bits
//    plus 32 per bucket for that allreduce.
// terngrad is an AggregatingCompressor so that the option can be chosen at run
// time: without share_scale, aggregate is the plain allgather of payloads.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/bulk_uniforms.hpp"
#include "ecopt/compressors/detail/gathered_exchange.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/compressors/detail/stochastic_levels.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transport.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ecopt {

namespace detail {
/// Bits of the last r < 5 trits: ceil(log2(3^r)).
inline constexpr unsigned trit_tail_bits[5] = {0, 2, 4, 5, 7};
inline constexpr std::uint32_t pow3[6] = {1, 3, 9, 27, 81, 243};

/// The five base-3 digits of each byte value below 243, one per byte of a word.
inline constexpr std::array<std::uint64_t, 243> trit_digits = [] {
  std::array<std::uint64_t, 243> t{};
  for (std::uint32_t v = 0; v < 243; ++v) {
    std::uint32_t r = v;
    for (unsigned k = 0; k < 5; ++k, r /= 3) t[v] |= std::uint64_t{r % 3} << (8 * k);
  }
  return t;
}();
}  // namespace detail

struct terngrad {
  static constexpr std::string_view name = "terngrad";

  std::size_t bucket_size = 0;  ///< coordinates per scale; 0 = the whole vector
  double clip_sigmas = 0;       ///< c: scales clipped to c * sigma per bucket (paper: 2.5); 0 = off
  bool share_scale = false;     ///< every rank uses the max over ranks of each bucket's scale

  void validate() const {
    if (!(clip_sigmas >= 0) || !std::isfinite(clip_sigmas)) {
      throw invalid_argument("terngrad: clip_sigmas = " + std::to_string(clip_sigmas) +
                             " must be finite and non-negative (0 = no clipping)");
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
  /// Bits of the trits of d coordinates.
  [[nodiscard]] static constexpr std::uint64_t trit_bits(std::size_t d) noexcept {
    return 8 * static_cast<std::uint64_t>(d / 5) + detail::trit_tail_bits[d % 5];
  }

  [[nodiscard]] std::uint64_t bits(std::size_t d) const noexcept {
    return 32 * static_cast<std::uint64_t>(num_buckets(d)) + trit_bits(d);
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return bits(d); }
  [[nodiscard]] double omega(std::size_t d) const noexcept {
    return (std::sqrt(static_cast<double>(bucket(d))) - 1.0) / 2.0;
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    std::vector<float> scales;       ///< one per bucket: the last payload encoded or decoded
    std::vector<std::byte> payload;  ///< aggregate's own payload
    std::vector<std::vector<std::byte>> gathered;  ///< aggregate's payloads of all ranks
    /// Nothing is carried from round to round.
    template <class Archive>
    void persist(Archive&) {}
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_positive_dim(name, dim);
    return state<T>{dim, std::vector<float>(num_buckets(dim)), {}, {}};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    own_scales(x, s);
    encode_at_scales(x, s, out, ctx);
  }

  /// One round for every rank (AggregatingCompressor): with share_scale the
  /// ranks first agree on the max of each bucket's scale, then every payload is
  /// allgathered and decoded. Returns this rank's payload bits, plus 32 per
  /// bucket for the scales' allreduce when they are shared.
  template <Transport Tr, class T>
  std::uint64_t aggregate(Tr& transport, std::span<const T> x, state<T>& s, std::span<T> own,
                          std::span<T> sum, collective_workspace& workspace,
                          const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    detail::require_size(name, "own", own.size(), s.dim);
    detail::require_size(name, "sum", sum.size(), s.dim);
    own_scales(x, s);
    // A non-finite scale is +inf here, so it survives the max and every rank
    // throws in encode_at_scales alike instead of leaving the others waiting.
    if (share_scale) allreduce_max(transport, std::span<float>(s.scales), workspace);
    bit_writer writer(s.payload);
    encode_at_scales(x, s, writer, ctx);
    const std::uint64_t payload_bits = writer.bits();
    const std::span<const std::byte> mine = writer.finish();
    detail::gather_and_decode(*this, transport, s, mine, s.gathered, own, sum, ctx);
    return payload_bits + (share_scale ? 32 * static_cast<std::uint64_t>(s.scales.size()) : 0);
  }

  /// s.scales := this rank's scale of every bucket (max |x_B|, clipped to
  /// clip_sigmas * sigma_B when set); +inf for a bucket with a non-finite value.
  template <class T>
  void own_scales(std::span<const T> x, state<T>& s) const {
    detail::require_size(name, "input", x.size(), s.dim);
    const std::size_t d = s.dim;
    const std::size_t b = bucket(d);
    for (std::size_t k = 0; k < s.scales.size(); ++k) {
      const std::size_t b0 = k * b;
      const std::size_t n = std::min(b, d - b0);
      double m = max_abs(x.data() + b0, n);
      if (clip_sigmas > 0 && m != HUGE_VAL) {
        m = std::min(m, clip_sigmas * standard_deviation(x.subspan(b0, n)));
      }
      s.scales[k] = detail::round_up_to_float(m);
    }
  }

  /// The payload of x quantised against the scales in s.scales (each at least
  /// the bucket's max |x| unless clipped); throws numeric_error for a
  /// non-finite scale.
  template <class T>
  void encode_at_scales(std::span<const T> x, state<T>& s, bit_writer& out,
                        const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    const std::size_t d = s.dim;
    const std::size_t b = bucket(d);
    const T* xs = x.data();
    for (std::size_t k = 0; k < s.scales.size(); ++k) {
      if (!std::isfinite(s.scales[k])) {
        throw numeric_error("terngrad: max |x| over bucket " + std::to_string(k) +
                            " is not a finite float32 (non-finite or huge input)");
      }
    }
    out.write_f32s(s.scales);

    detail::bulk_uniforms rng(counter_rng::stream(ctx.seed, stream_purpose::compression,
                                                  static_cast<std::uint64_t>(ctx.rank), ctx.round));
    std::uint32_t u[chunk];
    std::uint8_t trits[chunk + 8];  // the 8-byte loads below read 3 past the last group
    std::uint8_t bytes[chunk / 5];
    for (std::size_t j0 = 0; j0 < d; j0 += chunk) {
      const std::size_t m = std::min(chunk, d - j0);
      rng.fill_halves(u, (m + 15) / 16 * 16);
      for (std::size_t j = j0; j < j0 + m;) {  // bucket by bucket
        const std::size_t k = j / b;
        const std::size_t e = std::min(j0 + m, (k + 1) * b);
        ternarize(xs + j, e - j, s.scales[k], u + (j - j0), trits + (j - j0));
        j = e;
      }
      std::fill_n(trits + m, 8, std::uint8_t{0});
      // Five trits to a byte by one multiply: with the trits t_0..t_4 as the low
      // bytes of w, byte 4 of w * (81 + 27 2^8 + 9 2^16 + 3 2^24 + 2^32) is
      // sum_k 3^k t_k, and no lower byte of the product exceeds 240, so nothing carries.
      constexpr std::uint64_t weights =
          81 + (27ull << 8) + (9ull << 16) + (3ull << 24) + (1ull << 32);
      const std::size_t groups = m / 5;
      for (std::size_t g = 0; g < groups; ++g) {
        std::uint64_t w;
        std::memcpy(&w, trits + 5 * g, 8);
        if constexpr (std::endian::native == std::endian::big) w = __builtin_bswap64(w);
        bytes[g] = static_cast<std::uint8_t>((w & 0xffffffffffull) * weights >> 32);
      }
      out.write_bytes(std::span<const std::uint8_t>(bytes, groups));
      if (const std::size_t r = m % 5; r != 0) {
        std::uint32_t v = 0;
        for (std::size_t t = r; t-- > 0;) v = 3 * v + trits[5 * groups + t];
        out.write(v, detail::trit_tail_bits[r]);
      }
    }
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const std::size_t d = s.dim;
    detail::require_payload_bits(in, bits(d), "terngrad");
    const std::size_t b = bucket(d);
    in.read_f32s(s.scales, "terngrad scale");
    for (std::size_t k = 0; k < s.scales.size(); ++k) {
      const float v = s.scales[k];
      if (!(v >= 0.0f) || !std::isfinite(v)) {
        throw decode_error("corrupt terngrad payload: scale[" + std::to_string(k) +
                           "] = " + std::to_string(v) + " is not a finite non-negative number");
      }
    }
    std::uint8_t bytes[chunk / 5];
    std::uint8_t trits[chunk + 8];  // 8-byte digit stores overrun by 3
    T* o = out.data();
    for (std::size_t j0 = 0; j0 < d; j0 += chunk) {
      const std::size_t m = std::min(chunk, d - j0);
      const std::size_t groups = m / 5;
      in.read_bytes(std::span<std::uint8_t>(bytes, groups), "terngrad trits");
      std::uint8_t worst = 0;
      for (std::size_t g = 0; g < groups; ++g) worst = std::max(worst, bytes[g]);
      if (worst >= 243) {
        throw decode_error("corrupt terngrad payload: a trit byte near coordinate " +
                           std::to_string(j0) + " is " + std::to_string(worst) +
                           ", not below 3^5 = 243");
      }
      for (std::size_t g = 0; g < groups; ++g) {
        put_digits(trits + 5 * g, detail::trit_digits[bytes[g]]);
      }
      if (const std::size_t r = m % 5; r != 0) {
        const auto v =
            static_cast<std::uint32_t>(in.read(detail::trit_tail_bits[r], "terngrad trits"));
        if (v >= detail::pow3[r]) {
          throw decode_error("corrupt terngrad payload: the last " + std::to_string(r) +
                             " trits read " + std::to_string(v) + ", not below 3^" +
                             std::to_string(r));
        }
        put_digits(trits + 5 * groups, detail::trit_digits[v]);
      }
      for (std::size_t j = j0; j < j0 + m;) {
        const std::size_t k = j / b;
        const std::size_t e = std::min(j0 + m, (k + 1) * b);
        add_trits(trits + (j - j0), e - j, static_cast<T>(scale * static_cast<T>(s.scales[k])),
                  o + j);
        j = e;
      }
    }
    in.expect_end("terngrad");
  }

 private:
  // Coordinates per round of uniforms, fields and trit bytes (a multiple of 5 and 16).
  static constexpr std::size_t chunk = 960;

  // Trits of x[0, n) against `scale` (>= every |x_i|): level (R + u) >> 16 in
  // {0, 1} as in detail::round_to_levels with s = 1, then 0 / 1 / 2 for zero /
  // positive / negative.
  template <class T>
  static void ternarize(const T* x, std::size_t n, float scale, const std::uint32_t* u,
                        std::uint8_t* t) noexcept {
    constexpr unsigned frac = detail::level_fraction_bits;
    constexpr double one = static_cast<double>(1u << frac);
    if (scale == 0.0f) {
      std::fill_n(t, n, std::uint8_t{0});
      return;
    }
    const double to_fixed = one / static_cast<double>(scale);
    if (to_fixed <= 0x1p126) {
      const auto tf = static_cast<float>(to_fixed);
      const auto cap = static_cast<float>(one);
      std::size_t i = 0;
#if defined(__SSE2__)
      if constexpr (std::is_same_v<T, float>) {  // the loop below, 16 values per step
        const __m128 tfv = _mm_set1_ps(tf);
        const __m128 capv = _mm_set1_ps(cap);
        const __m128 magnitude = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
        for (; i + 16 <= n; i += 16) {
          __m128i tv[4];
          for (unsigned q = 0; q < 4; ++q) {
            const __m128 v = _mm_loadu_ps(x + i + 4 * q);
            const __m128 a = _mm_min_ps(_mm_mul_ps(_mm_and_ps(v, magnitude), tfv), capv);
            const __m128i r = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u + i + 4 * q));
            const __m128i level = _mm_srli_epi32(_mm_add_epi32(_mm_cvttps_epi32(a), r), frac);
            tv[q] =
                _mm_add_epi32(level, _mm_and_si128(level, _mm_srli_epi32(_mm_castps_si128(v), 31)));
          }
          _mm_storeu_si128(
              reinterpret_cast<__m128i*>(t + i),
              _mm_packus_epi16(_mm_packs_epi32(tv[0], tv[1]), _mm_packs_epi32(tv[2], tv[3])));
        }
      }
#endif
      for (; i < n; ++i) {
        const auto v = static_cast<float>(x[i]);
        const std::uint32_t bits = std::bit_cast<std::uint32_t>(v);
        const float a = std::min(std::fabs(v) * tf, cap);
        const auto level =
            (static_cast<std::uint32_t>(static_cast<std::int32_t>(a)) + u[i]) >> frac;
        t[i] = static_cast<std::uint8_t>(level + (level & (bits >> 31)));
      }
    } else {  // a subnormal-range scale: the ratio does not fit a float
      for (std::size_t i = 0; i < n; ++i) {
        const auto v = static_cast<double>(x[i]);
        const double a = std::min(std::fabs(v) * to_fixed, one);
        const auto level = static_cast<std::uint32_t>(
            (static_cast<std::uint64_t>(static_cast<std::int64_t>(a)) + u[i]) >> frac);
        t[i] = static_cast<std::uint8_t>(level + (std::signbit(v) ? level : 0u));
      }
    }
  }

  // Stores the five digits of w at dst (8 bytes are written; the last 3 are
  // overwritten by the next group).
  static void put_digits(std::uint8_t* dst, std::uint64_t w) noexcept {
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(dst, &w, 8);
    } else {
      for (unsigned t = 0; t < 5; ++t) dst[t] = static_cast<std::uint8_t>(w >> (8 * t));
    }
  }

  // out[i] += c * {0, +1, -1}[t[i]], as c * ((t & 1) - (t >> 1)) so the loop vectorises.
  template <class T>
  static void add_trits(const std::uint8_t* t, std::size_t n, T c, T* out) noexcept {
    for (std::size_t i = 0; i < n; ++i) {
      out[i] += c * static_cast<T>(static_cast<int>(t[i] & 1) - static_cast<int>(t[i] >> 1));
    }
  }

  // Standard deviation about the mean, in double (the paper's sigma).
  template <class T>
  static double standard_deviation(std::span<const T> x) noexcept {
    const auto n = static_cast<double>(x.size());
    const double mean = detail::lane_sum(x, [](double v) { return v; }) / n;
    return std::sqrt(detail::lane_sum(x, [mean](double v) { return (v - mean) * (v - mean); }) / n);
  }

  // max |x_i| in double; NaN propagates (the scale check rejects it).
  template <class T>
  static double max_abs(const T* x, std::size_t n) noexcept {
    if constexpr (sizeof(T) == 4 && std::numeric_limits<T>::is_iec559) {
      // On the bit patterns: |x| orders like its bits, and a NaN or infinity
      // has all exponent bits set, so it surfaces as the maximum.
      // 16 independent maxima, so the loop is not bound by one compare chain.
      constexpr std::size_t lanes = 16;
      std::int32_t acc[lanes] = {};
      std::size_t i = 0;
      for (; i + lanes <= n; i += lanes) {
        for (std::size_t l = 0; l < lanes; ++l) {
          acc[l] = std::max(acc[l], static_cast<std::int32_t>(
                                        std::bit_cast<std::uint32_t>(x[i + l]) & 0x7fffffffu));
        }
      }
      for (; i < n; ++i) {
        acc[0] = std::max(
            acc[0], static_cast<std::int32_t>(std::bit_cast<std::uint32_t>(x[i]) & 0x7fffffffu));
      }
      const std::int32_t m = *std::max_element(acc, acc + lanes);
      return m >= 0x7f800000 ? HUGE_VAL : static_cast<double>(std::bit_cast<float>(m));
    } else {
      double m = 0;
      bool finite = true;
      for (std::size_t i = 0; i < n; ++i) {
        const double a = std::fabs(static_cast<double>(x[i]));
        finite &= std::isfinite(a);
        m = std::max(m, a);
      }
      return finite ? m : HUGE_VAL;
    }
  }
};

static_assert(Compressor<terngrad, float> && Compressor<terngrad, double>);

}  // namespace ecopt
