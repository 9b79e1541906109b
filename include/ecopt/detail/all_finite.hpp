#pragma once
// all_finite: whether every entry of a float or double span is finite, as an OR
// over the entries' exponent fields, each plus one unit so that an all-ones
// exponent (infinity, NaN) carries into the sign bit: a loop that vectorises,
// unlike one that stops at the first bad entry. Callers look for the index only
// when it says no.
#include <bit>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>

namespace ecopt::detail {

template <class T>
[[nodiscard]] bool all_finite(std::span<const T> values) noexcept {
  using bits_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  static_assert(sizeof(T) == sizeof(bits_t) && std::numeric_limits<T>::is_iec559);
  constexpr int mantissa = std::numeric_limits<T>::digits - 1;
  constexpr bits_t exponent = ~bits_t{0} >> 1 & ~((bits_t{1} << mantissa) - 1);
  constexpr bits_t unit = bits_t{1} << mantissa;
  bits_t acc = 0;
  for (const T v : values) acc |= (std::bit_cast<bits_t>(v) & exponent) + unit;
  return (acc >> (8 * sizeof(T) - 1)) == 0;
}

}  // namespace ecopt::detail
