#pragma once
// Natural compression C_nat: each value is rounded at random to one of the two
// powers of two around it, 2^a <= |t| < 2^(a+1), up with probability
// (|t| - 2^a) / 2^a, so E C_nat(t) = t. Only a sign and an exponent are sent.
// Horvath, Ho, Horvath, Sahu, Canini, Richtarik 2019, arXiv:1905.10988.
//
// omega = 1/8: the variance (|t| - 2^a)(2^(a+1) - |t|) over t^2 is largest at
// |t| = 4/3 2^a, where it is 1/8.
//
// Exactness. For a normal float32 |t| = 2^a (1 + m / 2^23) with a 23-bit
// mantissa m, so rounding up when m + u carries (u a 23-bit uniform) happens
// with probability exactly m / 2^23: no bias at all. Values travel as float32, so a
// double input is first rounded to the nearest float32.
//
// Wire code, 8 bits per value: c = 0 is zero, c in [1, 255] is 2^(c - 128),
// i.e. the powers 2^-127 .. 2^127. Handled specially:
//  - |t| >= 2^127 (it could round up to 2^128, which is infinite in float32),
//    infinities and NaN: encode throws numeric_error naming the coordinate;
//  - float32 subnormals: those in [2^-127, 2^-126) round between 2^-127 and
//    2^-126 as above; those below 2^-127 round between 0 and 2^-127, which is
//    still unbiased but exceeds omega = 1/8 relative to t^2 (by at most an
//    absolute 2^-254 per coordinate);
//  - a zero is sent with sign bit 0, and a decoder rejects a negative zero code.
//
// Payload, per group of 64 coordinates (the last group has the d % 64 rest):
// the group's sign bits (1 = negative), then its codes as bytes. Exactly 9 bits
// per coordinate, and every group starts byte aligned.
//
// Uniforms: coordinate j uses the top 23 bits of word j of the sender's
// bulk_uniforms stream (seed, rank, round; fill_top).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/bulk_uniforms.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/compressors/detail/sign_bits.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ecopt {

struct natural {
  static constexpr std::string_view name = "natural";

  [[nodiscard]] std::uint64_t bits(std::size_t d) const noexcept {
    return 9 * static_cast<std::uint64_t>(d);
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return bits(d); }
  [[nodiscard]] double omega(std::size_t) const noexcept { return 0.125; }

  /// The value of wire code c (0 <= c <= 255): 0 or 2^(c - 128).
  [[nodiscard]] static double code_value(unsigned c) noexcept {
    return c == 0 ? 0.0 : std::ldexp(1.0, static_cast<int>(c) - 128);
  }

  template <class T>
  using state = detail::dim_state<T>;

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    return detail::make_dim_state<T>(name, dim);
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    const std::size_t d = s.dim;
    const T* xs = x.data();
    detail::bulk_uniforms rng(counter_rng::stream(ctx.seed, stream_purpose::compression,
                                                  static_cast<std::uint64_t>(ctx.rank), ctx.round));
    std::uint32_t u[block];
    std::uint8_t codes[block];
    std::uint64_t signs[block / 64];     // bit i of word g: coordinate 64 g + i is negative
    std::uint8_t wire[block / 64 * 72];  // whole groups: 8 sign bytes, then 64 codes
    for (std::size_t j0 = 0; j0 < d; j0 += block) {
      const std::size_t m = std::min(block, d - j0);
#if defined(__SSE2__)
      if constexpr (std::is_same_v<T, float>) {
        if (m == block) {  // draw, round and lay out the wire bytes in one pass
          if (!encode_block_sse(xs + j0, rng, wire)) throw_out_of_range(xs + j0, m, j0);
          out.write_bytes(std::span<const std::uint8_t>(wire, sizeof(wire)));
          continue;
        }
      }
#endif
      rng.fill_top(u, (m + 7) / 8 * 8);
      if (!round_block(xs + j0, m, u, codes, signs)) throw_out_of_range(xs + j0, m, j0);
      // Whole groups are byte aligned: lay them out as bytes and append once.
      const std::size_t whole = m / 64;
      for (std::size_t g = 0; g < whole; ++g) {
        std::uint64_t w = signs[g];
        if constexpr (std::endian::native == std::endian::big) w = __builtin_bswap64(w);
        std::memcpy(wire + 72 * g, &w, 8);
        std::memcpy(wire + 72 * g + 8, codes + 64 * g, 64);
      }
      out.write_bytes(std::span<const std::uint8_t>(wire, 72 * whole));
      if (const std::size_t n = m % 64; n != 0) {  // the last, shorter group
        out.write(signs[whole], static_cast<unsigned>(n));
        out.write_bytes(std::span<const std::uint8_t>(codes + 64 * whole, n));
      }
    }
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const std::size_t d = s.dim;
    detail::require_payload_bits(in, bits(d), "natural");
    // scale * 2^(c - 128) for every code, so the loop below is one lookup per value.
    T table[256];
    for (unsigned c = 0; c < 256; ++c)
      table[c] = static_cast<T>(code_value(c) * static_cast<double>(scale));
    std::uint8_t codes[64];
    std::uint8_t neg[64];
    T* o = out.data();
    for (std::size_t g = 0; g < d; g += 64) {
      const std::size_t n = std::min<std::size_t>(64, d - g);
      const std::uint64_t signs = in.read(static_cast<unsigned>(n), "natural signs");
      in.read_bytes(std::span<std::uint8_t>(codes, n), "natural codes");
      detail::unpack_flag_bytes(signs, neg);
      T* og = o + g;
#if defined(__SSE2__)
      if constexpr (std::is_same_v<T, float>) {
        if (n == 64) {
          if (add_group_sse(codes, neg, scale, og) != 0) throw_negative_zero(g);
          continue;
        }
      }
#endif
      unsigned negative_zero = 0;
      for (std::size_t i = 0; i < n; ++i) {
        negative_zero |= neg[i] & (codes[i] == 0 ? 1u : 0u);
        const T v = table[codes[i]];
        og[i] += neg[i] ? -v : v;
      }
      if (negative_zero != 0) throw_negative_zero(g);
    }
    in.expect_end("natural");
  }

 private:
  static constexpr std::size_t block = 256;  // coordinates per round of uniforms

  // Codes and sign words of x[0, n) (n <= block); false if some |x_i| >= 2^127
  // or is not finite.
  //
  // Rounding by carry: with the float's magnitude bits A = e 2^23 + m and a
  // uniform r in [0, 2^23), A + r carries into the exponent with probability
  // exactly m / 2^23, so for a normal value the code is (A + 2^23 + r) >> 23
  // = e + 1 (+1). A subnormal m 2^-149 = (2m) 2^-150 takes (2m + r) >> 23:
  // below 2^-127 (2m < 2^23) it gives code 1 with probability 2m / 2^23, above
  // it code 1 or 2 the same way. A < 2^23 selects the subnormal form.
  template <class T>
  static bool round_block(const T* x, std::size_t n, const std::uint32_t* u, std::uint8_t* codes,
                          std::uint64_t* signs) noexcept {
    std::uint32_t bad = 0;
    for (std::size_t g = 0; g < (n + 63) / 64; ++g) signs[g] = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t b = std::bit_cast<std::uint32_t>(static_cast<float>(x[i]));
      const std::uint32_t a = b & 0x7fffffffu;
      const std::uint32_t r = u[i] >> 9;  // 23-bit uniform
      const std::uint32_t base = a < 0x800000u ? a << 1 : a + 0x800000u;
      const std::uint32_t c = (base + r) >> 23;  // wraps only for rejected inputs
      bad |= a > 0x7effffffu ? 1u : 0u;          // |x| >= 2^127, infinity or NaN
      codes[i] = static_cast<std::uint8_t>(c);
      signs[i / 64] |= std::uint64_t{(b >> 31) & (c != 0 ? 1u : 0u)} << (i % 64);
    }
    return bad == 0;
  }

#if defined(__SSE2__)
  // round_block for a whole block of float input with its uniforms drawn in
  // registers, 16 values per step, written straight to the wire layout (per
  // group of 64: the sign word, then the 64 codes). Same results as
  // fill_top + round_block.
  static bool encode_block_sse(const float* x, detail::bulk_uniforms& g,
                               std::uint8_t* wire) noexcept {
    const __m128i magnitude = _mm_set1_epi32(0x7fffffff);
    const __m128i smallest_normal = _mm_set1_epi32(0x800000);
    const __m128i largest_ok = _mm_set1_epi32(0x7effffff);
    const __m128i zero = _mm_setzero_si128();
    __m128i badv = zero;
    std::uint64_t signs = 0;
    std::size_t i = 0;
    g.for_top(block / 16, [&](const detail::bulk_uniforms::vec* w) {
      __m128i b[4];
      __m128i a[4];
      __m128i c[4];
      __m128i negative[4];
      __m128i small = zero;
      for (unsigned q = 0; q < 4; ++q) {
        b[q] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i + 4 * q));
        a[q] = _mm_and_si128(b[q], magnitude);
        small = _mm_or_si128(small, _mm_cmpgt_epi32(smallest_normal, a[q]));
        badv = _mm_or_si128(badv, _mm_cmpgt_epi32(a[q], largest_ok));
      }
      if (_mm_movemask_epi8(small) == 0) {
        // All normal (the usual case): code e + 1 (+ carry) >= 2, sign as is.
        for (unsigned q = 0; q < 4; ++q) {
          const __m128i r = _mm_srli_epi32(std::bit_cast<__m128i>(w[q]), 9);
          c[q] = _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(a[q], smallest_normal), r), 23);
          negative[q] = _mm_srai_epi32(b[q], 31);
        }
      } else {  // zeros or subnormals among them
        for (unsigned q = 0; q < 4; ++q) {
          const __m128i r = _mm_srli_epi32(std::bit_cast<__m128i>(w[q]), 9);
          const __m128i sub = _mm_cmpgt_epi32(smallest_normal, a[q]);
          const __m128i base =
              _mm_or_si128(_mm_and_si128(sub, _mm_slli_epi32(a[q], 1)),
                           _mm_andnot_si128(sub, _mm_add_epi32(a[q], smallest_normal)));
          c[q] = _mm_srli_epi32(_mm_add_epi32(base, r), 23);
          negative[q] = _mm_andnot_si128(_mm_cmpeq_epi32(c[q], zero), _mm_srai_epi32(b[q], 31));
        }
      }
      std::uint8_t* group = wire + 72 * (i / 64);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(group + 8 + i % 64),
                       _mm_packus_epi16(_mm_packs_epi32(c[0], c[1]), _mm_packs_epi32(c[2], c[3])));
      const __m128i neg_bytes = _mm_packs_epi16(_mm_packs_epi32(negative[0], negative[1]),
                                                _mm_packs_epi32(negative[2], negative[3]));
      signs |= std::uint64_t{static_cast<std::uint16_t>(_mm_movemask_epi8(neg_bytes))} << (i % 64);
      i += 16;
      if (i % 64 == 0) {
        std::memcpy(group, &signs, 8);  // SSE2 implies little endian
        signs = 0;
      }
    });
    return _mm_movemask_epi8(badv) == 0;
  }

  // decode_add's inner loop for float output: 2^(c - 128) built in the
  // exponent field ((c - 1) << 23 for c >= 2, the subnormal 2^-127 for c = 1,
  // 0 for c = 0), the sign bit or-ed in, times the scale. Returns a nonzero
  // mask if a zero code carries a sign.
  static int add_group_sse(const std::uint8_t* codes, const std::uint8_t* neg, float scale,
                           float* out) noexcept {
    const __m128i zero = _mm_setzero_si128();
    const __m128i one = _mm_set1_epi32(1);
    const __m128i half_min = _mm_set1_epi32(0x00400000);
    const __m128 sc = _mm_set1_ps(scale);
    __m128i bad = zero;
    for (unsigned k = 0; k < 64; k += 16) {
      const __m128i c8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k));
      const __m128i n8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(neg + k));
      const __m128i c16[2] = {_mm_unpacklo_epi8(c8, zero), _mm_unpackhi_epi8(c8, zero)};
      const __m128i n16[2] = {_mm_unpacklo_epi8(n8, zero), _mm_unpackhi_epi8(n8, zero)};
      for (unsigned q = 0; q < 4; ++q) {
        const __m128i c = q % 2 == 0 ? _mm_unpacklo_epi16(c16[q / 2], zero)
                                     : _mm_unpackhi_epi16(c16[q / 2], zero);
        const __m128i n = q % 2 == 0 ? _mm_unpacklo_epi16(n16[q / 2], zero)
                                     : _mm_unpackhi_epi16(n16[q / 2], zero);
        const __m128i is_zero = _mm_cmpeq_epi32(c, zero);
        __m128i bits = _mm_slli_epi32(_mm_andnot_si128(is_zero, _mm_sub_epi32(c, one)), 23);
        bits = _mm_or_si128(bits, _mm_and_si128(_mm_cmpeq_epi32(c, one), half_min));
        bits = _mm_or_si128(bits, _mm_slli_epi32(n, 31));
        bad = _mm_or_si128(bad, _mm_and_si128(is_zero, n));
        float* o = out + k + 4 * q;
        _mm_storeu_ps(o, _mm_add_ps(_mm_loadu_ps(o), _mm_mul_ps(_mm_castsi128_ps(bits), sc)));
      }
    }
    return _mm_movemask_epi8(bad);
  }
#endif

  [[noreturn, gnu::cold, gnu::noinline]] static void throw_negative_zero(std::size_t at) {
    throw decode_error(
        "corrupt natural payload: a zero code with the sign bit set near "
        "coordinate " +
        std::to_string(at));
  }

  template <class T>
  [[noreturn, gnu::cold, gnu::noinline]] static void throw_out_of_range(const T* x, std::size_t n,
                                                                        std::size_t at) {
    std::size_t i = 0;
    while (i + 1 < n && std::fabs(static_cast<float>(x[i])) < 0x1p127f) ++i;
    throw numeric_error("natural: input[" + std::to_string(at + i) +
                        "] = " + std::to_string(static_cast<double>(x[i])) +
                        " is not finite or not below 2^127 (outside the 8-bit exponent code)");
  }
};

static_assert(Compressor<natural, float> && Compressor<natural, double>);

}  // namespace ecopt
