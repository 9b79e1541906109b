#pragma once
// Sign bits a word at a time, shared by sign, scaled_sign and natural: 64
// comparisons into bytes (a loop that vectorises), then 16 bytes to 16 bits by
// one pmovmskb on SSE2 (elsewhere 8 bytes to 8 bits by one multiply,
// gather_bits), and back by spread_bits.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ecopt/compressors/detail/payload.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ecopt::detail {

/// Packs n <= 64 flags (each 0 or 1), flag i to bit i.
[[nodiscard]] inline std::uint64_t pack_flag_bytes(const std::uint8_t* flags,
                                                   std::size_t n) noexcept {
  std::uint8_t b[64] = {};
  std::memcpy(b, flags, n);
#if defined(__SSE2__)
  // pmovmskb collects the top bit of 16 bytes at once; a 16-bit shift by 7
  // moves each 0/1 byte's bit to its top without touching its neighbour.
  std::uint64_t word = 0;
  for (unsigned q = 0; q < 4; ++q) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * q));
    const auto bits16 = static_cast<unsigned>(_mm_movemask_epi8(_mm_slli_epi16(v, 7)));
    word |= std::uint64_t{bits16} << (16 * q);
  }
  return word;
#else
  std::uint64_t word = 0;
  for (unsigned q = 0; q < 8; ++q) {
    std::uint64_t v;
    std::memcpy(&v, b + 8 * q, 8);
    if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
    word |= gather_bits(v) << (8 * q);
  }
  return word;
#endif
}

/// Unpacks the 64 bits of `word` to flags (each 0 or 1), bit i to flag i.
inline void unpack_flag_bytes(std::uint64_t word, std::uint8_t* flags) noexcept {
  for (unsigned q = 0; q < 8; ++q) {
    std::uint64_t v = spread_bits((word >> (8 * q)) & 0xff);
    if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
    std::memcpy(flags + 8 * q, &v, 8);
  }
}

/// Bit i set when x[i] < 0 (n <= 64; -0 and +0 count as positive, NaN too).
template <class T>
[[nodiscard]] std::uint64_t negative_bits(const T* x, std::size_t n) noexcept {
  std::uint8_t neg[64];
  for (std::size_t i = 0; i < n; ++i) neg[i] = x[i] < T(0) ? 1 : 0;
  return pack_flag_bytes(neg, n);
}

/// out[i] += (bit i of `negative` ? -v : v) for i < n (n <= 64), by flipping
/// the sign bit of v, so the loop vectorises.
template <class T>
void add_signed(std::uint64_t negative, std::size_t n, T v, T* out) noexcept {
  using bits_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  static_assert(sizeof(T) == sizeof(bits_t));
  constexpr unsigned sign_shift = 8 * sizeof(T) - 1;
  const auto pos = std::bit_cast<bits_t>(v);
  std::uint8_t neg[64];
  unpack_flag_bytes(negative, neg);
  for (std::size_t i = 0; i < n; ++i) {
    out[i] += std::bit_cast<T>(pos ^ (static_cast<bits_t>(neg[i]) << sign_shift));
  }
}

}  // namespace ecopt::detail
