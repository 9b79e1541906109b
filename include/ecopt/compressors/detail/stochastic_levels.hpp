#pragma once
// The stochastic rounding shared by the level quantisers (qsgd, terngrad,
// dq_sgd): each coordinate's |x_j| / scale * s is rounded to one of the two
// neighbouring integer levels, up with probability equal to its fractional
// part, so the decoded scale * level / s is unbiased.
//
// Uniforms. Coordinate j of a payload uses the j-th 16-bit uniform of the
// sender's bulk_uniforms stream (detail/bulk_uniforms.hpp, fill_halves),
// drawn a block of 192 coordinates at a time whatever the bucket boundaries.
//
// Rounding in fixed point. With r = |x_j| / scale * s scaled by 2^16 and
// truncated to an integer R, level = (R + u) >> 16 equals floor(r) + 1 with
// probability exactly frac(R / 2^16): the only bias is the truncation of r,
// below 2^-16 of a level. Float arithmetic (4 lanes per SSE2 vector) is used
// when s <= 255 and the scale ratio fits a float; its two roundings add at
// most s * 2^-7 <= 2 fixed-point units, so the bias stays below 2^-14 of a
// level. Otherwise the product is taken in double.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressors/detail/bulk_uniforms.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ecopt::detail {

inline constexpr unsigned level_fraction_bits = 16;
/// Coordinates per block of uniforms.
inline constexpr std::size_t level_block = 192;
/// Largest s the float path serves (its rounding bias stays below 2^-14 of a level).
inline constexpr std::uint32_t float_path_max_levels = 255;

/// Fills u[0, m) (m <= level_block; u has room for level_block) with the
/// random words of the next m coordinates.
inline void fill_level_uniforms(bulk_uniforms& g, std::uint32_t* u, std::size_t m) noexcept {
  g.fill_halves(u, (m + 15) / 16 * 16);
}

/// Rounds the n coordinates x[0, n) to levels in [0, s] against `scale`
/// (finite, > 0, >= every |x_i|) and writes fields[i] = level << 1 | negative,
/// the sign bit set only for a nonzero level. u holds the coordinates' 16-bit
/// uniforms.
template <class T>
void round_to_levels(const T* x, std::size_t n, double scale, std::uint32_t s,
                     const std::uint32_t* u, std::uint32_t* fields) noexcept {
  constexpr double one = static_cast<double>(std::uint32_t{1} << level_fraction_bits);
  const double to_fixed = static_cast<double>(s) / scale * one;
  if (s <= float_path_max_levels && to_fixed <= 0x1p126) {
    // |x| <= scale keeps |x| * to_fixed <= s 2^16 up to rounding; the cap
    // keeps a level at most s. (s + 1) 2^16 <= 2^24 fits an int32 (and a float).
    const auto tf = static_cast<float>(to_fixed);
    const auto cap = static_cast<float>(static_cast<double>(s) * one);
    for (std::size_t i = 0; i < n; ++i) {
      const auto v = static_cast<float>(x[i]);
      const float a = std::min(std::fabs(v) * tf, cap);
      const auto fixed = static_cast<std::uint32_t>(static_cast<std::int32_t>(a));
      const std::uint32_t level = (fixed + u[i]) >> level_fraction_bits;
      const std::uint32_t negative =
          (std::bit_cast<std::uint32_t>(v) >> 31) & (level != 0 ? 1u : 0u);
      fields[i] = level << 1 | negative;
    }
  } else {
    // s <= 2^30: (s + 1) 2^16 <= 2^47 fits an int64.
    const double cap = static_cast<double>(s) * one;
    for (std::size_t i = 0; i < n; ++i) {
      const auto v = static_cast<double>(x[i]);
      const double a = std::min(std::fabs(v) * to_fixed, cap);
      const auto fixed = static_cast<std::uint64_t>(static_cast<std::int64_t>(a));
      const auto level = static_cast<std::uint32_t>((fixed + u[i]) >> level_fraction_bits);
      const std::uint32_t negative = std::signbit(v) && level != 0 ? 1u : 0u;
      fields[i] = level << 1 | negative;
    }
  }
}

/// round_to_levels for s <= 127, whose fields fit a byte. For float input on
/// SSE2 the float path runs 16 coordinates per step and packs their fields to
/// bytes in three instructions; it computes exactly what round_to_levels does.
template <class T>
void round_to_levels8(const T* x, std::size_t n, double scale, std::uint32_t s,
                      const std::uint32_t* u, std::uint8_t* fields) noexcept {
  std::size_t i = 0;
#if defined(__SSE2__)
  constexpr double one = static_cast<double>(std::uint32_t{1} << level_fraction_bits);
  const double to_fixed = static_cast<double>(s) / scale * one;
  if constexpr (std::is_same_v<T, float>) {
    if (to_fixed <= 0x1p126) {
      const __m128 tf = _mm_set1_ps(static_cast<float>(to_fixed));
      const __m128 cap = _mm_set1_ps(static_cast<float>(static_cast<double>(s) * one));
      const __m128 magnitude = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
      const __m128i zero = _mm_setzero_si128();
      for (; i + 16 <= n; i += 16) {
        __m128i f[4];
        for (unsigned q = 0; q < 4; ++q) {
          const __m128 v = _mm_loadu_ps(x + i + 4 * q);
          const __m128 a = _mm_min_ps(_mm_mul_ps(_mm_and_ps(v, magnitude), tf), cap);
          const __m128i r = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u + i + 4 * q));
          const __m128i level =
              _mm_srli_epi32(_mm_add_epi32(_mm_cvttps_epi32(a), r), level_fraction_bits);
          const __m128i negative = _mm_andnot_si128(_mm_cmpeq_epi32(level, zero),
                                                    _mm_srli_epi32(_mm_castps_si128(v), 31));
          f[q] = _mm_or_si128(_mm_slli_epi32(level, 1), negative);
        }
        _mm_storeu_si128(
            reinterpret_cast<__m128i*>(fields + i),
            _mm_packus_epi16(_mm_packs_epi32(f[0], f[1]), _mm_packs_epi32(f[2], f[3])));
      }
    }
  }
#endif
  std::uint32_t wide[level_block];
  for (; i < n; i += level_block) {
    const std::size_t m = std::min(level_block, n - i);
    round_to_levels(x + i, m, scale, s, u + i, wide);
    for (std::size_t t = 0; t < m; ++t) fields[i + t] = static_cast<std::uint8_t>(wide[t]);
  }
}

/// round_to_levels8 over a whole block (n <= level_block coordinates starting
/// at a block boundary) that draws its own uniforms from g, the same values
/// fill_level_uniforms would give, and writes the fields to `out` as
/// write_packed(fields, width) would. For float input on SSE2 the uniforms go
/// straight from the generator's registers into the rounding, and fields of 2,
/// 4 or 8 bits are packed to bytes in registers too.
template <class T>
void encode_level_block(const T* x, std::size_t n, double scale, std::uint32_t s, unsigned width,
                        bulk_uniforms& g, bit_writer& out) {
  std::uint8_t fields[level_block];
#if defined(__SSE2__)
  constexpr double one = static_cast<double>(std::uint32_t{1} << level_fraction_bits);
  const double to_fixed = static_cast<double>(s) / scale * one;
  if constexpr (std::is_same_v<T, float>) {
    if (to_fixed <= 0x1p126 && n % 16 == 0) {
      const __m128 tf = _mm_set1_ps(static_cast<float>(to_fixed));
      const __m128 cap = _mm_set1_ps(static_cast<float>(static_cast<double>(s) * one));
      const __m128 magnitude = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
      const __m128i zero = _mm_setzero_si128();
      const __m128i low_bytes = _mm_set1_epi16(0x00ff);
      // Bytes per 16 fields when they pack whole (2, 4, 8 bits), else 16 field bytes.
      const unsigned packed = width == 2 || width == 4 || width == 8 ? 2 * width : 16;
      std::uint8_t* o = fields;
      std::size_t i = 0;
      g.for_halves(n / 16, [&](const bulk_uniforms::vec* h) {
        __m128i f[4];
        for (unsigned q = 0; q < 4; ++q) {
          const __m128 v = _mm_loadu_ps(x + i + 4 * q);
          const __m128 a = _mm_min_ps(_mm_mul_ps(_mm_and_ps(v, magnitude), tf), cap);
          const auto r = std::bit_cast<__m128i>(h[q]);
          const __m128i level =
              _mm_srli_epi32(_mm_add_epi32(_mm_cvttps_epi32(a), r), level_fraction_bits);
          const __m128i negative = _mm_andnot_si128(_mm_cmpeq_epi32(level, zero),
                                                    _mm_srli_epi32(_mm_castps_si128(v), 31));
          f[q] = _mm_or_si128(_mm_slli_epi32(level, 1), negative);
        }
        __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(f[0], f[1]), _mm_packs_epi32(f[2], f[3]));
        if (packed == 16) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(o), bytes);
        } else {
          // Merge neighbouring bytes (16-bit lanes lo | hi << 8 -> lo | hi << have).
          for (unsigned have = width; have < 8; have *= 2) {
            const __m128i merged = _mm_and_si128(
                _mm_or_si128(bytes, _mm_srli_epi16(bytes, static_cast<int>(8 - have))), low_bytes);
            bytes = _mm_packus_epi16(merged, merged);
          }
          if (packed == 8) {
            _mm_storel_epi64(reinterpret_cast<__m128i*>(o), bytes);
          } else {
            std::memcpy(o, &bytes, packed);  // 4 bytes for 2-bit fields
          }
        }
        o += packed;
        i += 16;
      });
      if (packed == 16) {
        out.write_packed(std::span<const std::uint8_t>(fields, n), width);
      } else {
        out.write_bytes(std::span<const std::uint8_t>(fields, n / 16 * packed));
      }
      return;
    }
  }
#endif
  std::uint32_t u[level_block];
  fill_level_uniforms(g, u, n);
  round_to_levels8(x, n, scale, s, u, fields);
  out.write_packed(std::span<const std::uint8_t>(fields, n), width);
}

/// out[i] += step * (+-level) for byte fields level << 1 | negative.
template <class T>
void add_levels8(const std::uint8_t* fields, std::size_t n, T step, T* out) noexcept {
  // The signed level fits an int8 (|level| <= 127): (level ^ -neg) + neg.
  for (std::size_t i = 0; i < n; ++i) {
    const auto neg = static_cast<std::int8_t>(-(fields[i] & 1));
    const auto level = static_cast<std::int8_t>(fields[i] >> 1);
    const auto signed_level = static_cast<std::int8_t>((level ^ neg) - neg);
    out[i] += static_cast<T>(signed_level) * step;
  }
}

/// True when some byte field's level exceeds s.
[[nodiscard]] inline bool any_level_above8(const std::uint8_t* fields, std::size_t n,
                                           std::uint32_t s) noexcept {
  unsigned above = 0;
  for (std::size_t i = 0; i < n; ++i) above |= (fields[i] >> 1) > s ? 1u : 0u;
  return above != 0;
}

/// out[i] += step * (+-level) for fields level << 1 | negative (level < 2^31).
/// The signed level is formed in integers so the loop vectorises.
template <class T>
void add_levels(const std::uint32_t* fields, std::size_t n, T step, T* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t f = fields[i];
    const std::uint32_t neg = 0u - (f & 1u);
    const auto level = static_cast<std::int32_t>(((f >> 1) ^ neg) + (f & 1u));
    out[i] += static_cast<T>(level) * step;
  }
}

/// True when some level among fields[0, n) exceeds s (s < 2^31, so the
/// comparison is a signed one, which SSE2 vectorises).
[[nodiscard]] inline bool any_level_above(const std::uint32_t* fields, std::size_t n,
                                          std::uint32_t s) noexcept {
  int above = 0;
  const auto limit = static_cast<std::int32_t>(s);
  for (std::size_t i = 0; i < n; ++i) above |= static_cast<std::int32_t>(fields[i] >> 1) > limit;
  return above != 0;
}

/// The largest level among fields[0, n).
[[nodiscard]] inline std::uint32_t max_level(const std::uint32_t* fields, std::size_t n) noexcept {
  std::uint32_t m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, fields[i] >> 1);
  return m;
}

/// The float32 at or above v (v >= 0): a scale rounded up, so |x| / scale <= 1.
[[nodiscard]] inline float round_up_to_float(double v) noexcept {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) f = std::nextafter(f, HUGE_VALF);
  return f;
}

/// The body of a qsgd payload with s levels and buckets of b coordinates: per
/// bucket its L2 norm (float32, rounded up) and one field level << 1 | negative
/// of 1 + ceil(log2(s + 1)) bits per coordinate. dq_sgd sends the same body.
/// A caller that already has ||x||^2 passes it as `whole_squared` (used when
/// one bucket covers x) to save a pass. A caller that quantises against norms
/// agreed between workers passes them as `bucket_norms` (one per bucket, each
/// at least the bucket's own norm, so every |x_j| / norm stays within 1).
template <class T>
void encode_level_buckets(std::span<const T> x, std::uint32_t s, std::size_t b, bulk_uniforms& rng,
                          bit_writer& out, const char* who, double whole_squared = -1.0,
                          std::span<const float> bucket_norms = {}) {
  const std::size_t d = x.size();
  const unsigned width = 1 + bits_for(static_cast<std::uint64_t>(s) + 1);
  const T* xs = x.data();
  std::uint32_t u[level_block];
  std::uint32_t fields[level_block];
  std::uint8_t fields8[level_block];  // fields of at most 8 bits (s <= 127)
  for (std::size_t b0 = 0; b0 < d; b0 += b) {
    const std::size_t n = std::min(b, d - b0);
    const float nf =
        !bucket_norms.empty()
            ? bucket_norms[b0 / b]
            : round_up_to_float(std::sqrt(n == d && whole_squared >= 0
                                              ? whole_squared
                                              : sum_squares(std::span<const T>(xs + b0, n))));
    if (!std::isfinite(nf)) {
      throw numeric_error(std::string(who) + ": the norm of bucket " + std::to_string(b0 / b) +
                          " is not a finite float32 (non-finite or huge input)");
    }
    out.write_f32(nf);
    // Uniforms come a block at a time by coordinate index, so a chunk never
    // crosses a block boundary.
    for (std::size_t j = b0; j < b0 + n;) {
      const std::size_t off = j % level_block;
      const std::size_t block = std::min(level_block, d - j + off);
      const std::size_t m = std::min(level_block - off, b0 + n - j);
      if (off == 0 && m == block && width <= 8 && nf != 0.0f) {
        // The bucket covers the whole block: draw, round and pack in one pass.
        encode_level_block(xs + j, m, static_cast<double>(nf), s, width, rng, out);
        j += m;
        continue;
      }
      if (off == 0) fill_level_uniforms(rng, u, block);
      if (width <= 8) {
        if (nf == 0.0f) {
          std::fill_n(fields8, m, std::uint8_t{0});
        } else {
          round_to_levels8(xs + j, m, static_cast<double>(nf), s, u + off, fields8);
        }
        out.write_packed(std::span<const std::uint8_t>(fields8, m), width);
      } else {
        if (nf == 0.0f) {
          std::fill_n(fields, m, 0u);
        } else {
          round_to_levels(xs + j, m, static_cast<double>(nf), s, u + off, fields);
        }
        out.write_packed(std::span<const std::uint32_t>(fields, m), width);
      }
      j += m;
    }
  }
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_bad_level_scale(const char* who,
                                                                         const char* what,
                                                                         std::size_t bucket_index,
                                                                         float v) {
  throw decode_error(std::string("corrupt ") + who + " payload: bucket " + what + "[" +
                     std::to_string(bucket_index) + "] = " + std::to_string(v) +
                     " is not a finite non-negative number");
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_bad_level(const char* who, std::size_t j,
                                                                   std::uint32_t level,
                                                                   std::uint32_t s) {
  throw decode_error(std::string("corrupt ") + who + " payload: a level near coordinate " +
                     std::to_string(j) + " is " + std::to_string(level) +
                     ", beyond s = " + std::to_string(s));
}

/// Adds scale times the payload body encode_level_buckets wrote to out. Every
/// level is checked against s before its chunk touches the output.
template <class T>
void decode_level_buckets(bit_reader& in, std::span<T> out, T scale, std::uint32_t s, std::size_t b,
                          const char* who) {
  const std::size_t d = out.size();
  const unsigned width = 1 + bits_for(static_cast<std::uint64_t>(s) + 1);
  constexpr std::size_t chunk = 256;
  std::uint32_t fields[chunk];
  std::uint8_t fields8[chunk];
  T* o = out.data();
  for (std::size_t b0 = 0; b0 < d; b0 += b) {
    const std::size_t n = std::min(b, d - b0);
    const float nf = in.read_f32("bucket norm");
    if (!(nf >= 0.0f) || !std::isfinite(nf)) throw_bad_level_scale(who, "norm", b0 / b, nf);
    const T step = static_cast<T>(static_cast<double>(scale) * static_cast<double>(nf) /
                                  static_cast<double>(s));
    for (std::size_t i0 = 0; i0 < n; i0 += chunk) {
      const std::size_t m = std::min(chunk, n - i0);
      if (width <= 8) {
        in.read_packed(std::span<std::uint8_t>(fields8, m), width, "level");
        if (any_level_above8(fields8, m, s)) {
          for (std::size_t t = 0; t < m; ++t) fields[t] = fields8[t];
          throw_bad_level(who, b0 + i0, max_level(fields, m), s);
        }
        add_levels8(fields8, m, step, o + b0 + i0);
      } else {
        in.read_packed(std::span<std::uint32_t>(fields, m), width, "level");
        if (any_level_above(fields, m, s)) throw_bad_level(who, b0 + i0, max_level(fields, m), s);
        add_levels(fields, m, step, o + b0 + i0);
      }
    }
  }
}

}  // namespace ecopt::detail
