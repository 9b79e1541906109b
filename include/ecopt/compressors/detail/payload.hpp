#pragma once
// Helpers shared by the compressors: argument checks and the tight loops that
// move float32 values and packed bit fields between spans and a payload.
// Values are staged through a small stack buffer, so nothing here allocates.
#include <algorithm>
#include <bit>
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
#include "ecopt/detail/all_finite.hpp"
#include "ecopt/error.hpp"

namespace ecopt::detail {

/// Float32 values staged per chunk (1 KiB of stack).
inline constexpr std::size_t value_chunk = 256;

/// make_state's check: a compressor needs at least one coordinate.
inline void require_positive_dim(std::string_view who, std::size_t dim) {
  if (dim == 0) throw invalid_argument(std::string(who) + ": dim must be positive, got 0");
}

/// The state of a compressor that keeps nothing between rounds but the
/// dimension it was made for (encode and decode check their spans against it).
template <class T>
struct dim_state {
  std::size_t dim = 0;
  /// Nothing is carried from round to round (checkpoint.hpp).
  template <class Archive>
  void persist(Archive&) {}
};

/// make_state for such a compressor: checks dim and allocates nothing.
template <class T>
[[nodiscard]] dim_state<T> make_dim_state(std::string_view who, std::size_t dim) {
  require_positive_dim(who, dim);
  return dim_state<T>{dim};
}

/// Compressors that keep 32-bit indices in their state need d < 2^32.
inline void require_index_dim(std::string_view who, std::size_t dim) {
  require_positive_dim(who, dim);
  if (dim > std::numeric_limits<std::uint32_t>::max()) {
    throw invalid_argument(std::string(who) + ": dim = " + std::to_string(dim) +
                           " exceeds the 32-bit index range");
  }
}

/// `ratio` must lie in (0, 1].
inline void validate_ratio(std::string_view who, double ratio) {
  if (!(ratio > 0.0 && ratio <= 1.0)) {
    throw invalid_argument(std::string(who) + ": ratio = " + std::to_string(ratio) +
                           " must be in (0, 1]");
  }
}

/// Number of coordinates a sparsifier keeps: `k` if nonzero, else round(ratio * d),
/// clamped to [1, d].
[[nodiscard]] inline std::size_t kept_count(double ratio, std::size_t k, std::size_t d) noexcept {
  if (d == 0) return 0;
  if (k == 0) {
    const double r = std::round(ratio * static_cast<double>(d));
    k = r >= static_cast<double>(d) ? d : (r >= 1.0 ? static_cast<std::size_t>(r) : 1);
  }
  return std::clamp<std::size_t>(k, 1, d);
}

/// Checks a fixed-size payload's length up front, so a truncated or padded
/// payload is rejected before any output is touched. Padding bits are checked
/// by bit_reader::expect_end after the last field.
inline void require_payload_bits(const bit_reader& in, std::uint64_t bits, const char* name) {
  in.require(bits, name);
  const std::uint64_t extra = in.remaining() - bits;
  if (extra >= 8) {
    throw decode_error(std::string("corrupt ") + name + " payload: " + std::to_string(extra) +
                       " unexpected bits after the last field");
  }
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_not_finite(const char* field,
                                                                    std::size_t index) {
  throw decode_error(std::string("corrupt payload: ") + field + "[" + std::to_string(index) +
                     "] is not finite");
}

/// True when the float32 has an all-ones exponent (infinity or NaN).
[[nodiscard]] inline bool not_finite_bits(float v) noexcept {
  return (std::bit_cast<std::uint32_t>(v) & 0x7f800000u) == 0x7f800000u;
}

/// Throws decode_error naming field[i] for the first non-finite value.
inline void require_finite(std::span<const float> v, const char* field, std::size_t offset = 0) {
  if (all_finite(v)) return;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (not_finite_bits(v[i])) throw_not_finite(field, offset + i);
  }
}

/// sum_j f(x_j) in double over 8 interleaved partial sums: a fixed order (so the
/// result is reproducible) that is not bound by the latency of one add chain.
template <class T, class F>
[[nodiscard]] double lane_sum(std::span<const T> x, F f) noexcept {
  constexpr std::size_t lanes = 8;
  double acc[lanes] = {};
  const std::size_t n = x.size();
  const T* p = x.data();
  std::size_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    for (std::size_t i = 0; i < lanes; ++i) acc[i] += f(static_cast<double>(p[j + i]));
  }
  for (std::size_t i = 0; i < lanes && j + i < n; ++i) acc[i] += f(static_cast<double>(p[j + i]));
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <class T>
[[nodiscard]] double sum_abs(std::span<const T> x) noexcept {
  return lane_sum(x, [](double v) { return std::fabs(v); });
}

template <class T>
[[nodiscard]] double sum_squares(std::span<const T> x) noexcept {
  return lane_sum(x, [](double v) { return v * v; });
}

/// Spreads the 8 bits of `byte` to 8 bytes, bit i to the low bit of byte i
/// (replicate, mask one bit per byte, then carry it to bit 7 and down).
[[nodiscard]] constexpr std::uint64_t spread_bits(std::uint64_t byte) noexcept {
  return ((((byte * 0x0101010101010101ULL) & 0x8040201008040201ULL) + 0x7f7f7f7f7f7f7f7fULL) >> 7) &
         0x0101010101010101ULL;
}

/// The inverse of spread_bits: 8 bytes that are each 0 or 1 to one byte.
[[nodiscard]] constexpr std::uint64_t gather_bits(std::uint64_t bytes) noexcept {
  return (bytes * 0x0102040810204080ULL) >> 56;
}

/// Packs up to 64 flags (each 0 or 1), flag i to bit i.
[[nodiscard]] inline std::uint64_t pack_flags(const unsigned char* flags, std::size_t n) noexcept {
  unsigned char b[64] = {};
  std::copy_n(flags, n, b);
  std::uint64_t word = 0;
  for (unsigned q = 0; q < 8; ++q) {
    std::uint64_t v = 0;
    for (unsigned i = 0; i < 8; ++i) v |= std::uint64_t{b[8 * q + i]} << (8 * i);
    word |= gather_bits(v) << (8 * q);
  }
  return word;
}

/// Unpacks the 64 bits of `word` to flags (each 0 or 1), bit i to flag i.
inline void unpack_flags(std::uint64_t word, unsigned char* flags) noexcept {
  for (unsigned q = 0; q < 8; ++q) {
    const std::uint64_t v = spread_bits((word >> (8 * q)) & 0xff);
    for (unsigned i = 0; i < 8; ++i) flags[8 * q + i] = static_cast<unsigned char>(v >> (8 * i));
  }
}

/// Appends x as float32 values.
template <class T>
void write_values(bit_writer& w, std::span<const T> x) {
  if constexpr (std::is_same_v<T, float>) {
    w.write_f32s(x);
  } else {
    float buf[value_chunk];
    for (std::size_t at = 0; at < x.size(); at += value_chunk) {
      const std::size_t m = std::min(value_chunk, x.size() - at);
      for (std::size_t i = 0; i < m; ++i) buf[i] = static_cast<float>(x[at + i]);
      w.write_f32s(std::span<const float>(buf, m));
    }
  }
}

/// Appends x[idx[i]] as float32 values.
template <class T, class Index>
void write_gathered(bit_writer& w, std::span<const T> x, std::span<const Index> idx) {
  float buf[value_chunk];
  for (std::size_t at = 0; at < idx.size(); at += value_chunk) {
    const std::size_t m = std::min(value_chunk, idx.size() - at);
    for (std::size_t i = 0; i < m; ++i) buf[i] = static_cast<float>(x[idx[at + i]]);
    w.write_f32s(std::span<const float>(buf, m));
  }
}

/// Reads n float32 values chunk by chunk, rejects non-finite ones, and calls
/// f(offset, chunk) for each chunk.
template <class F>
void read_values(bit_reader& in, std::size_t n, const char* field, F&& f) {
  float buf[value_chunk];
  for (std::size_t at = 0; at < n; at += value_chunk) {
    const std::size_t m = std::min(value_chunk, n - at);
    in.read_f32s(std::span<float>(buf, m), field);
    require_finite(std::span<const float>(buf, m), field, at);
    f(at, std::span<const float>(buf, m));
  }
}

/// Writes n fields of `width` bits (<= 64), get(i) < 2^width, packing as many
/// fields as fit into each 64-bit write.
template <class Get>
void write_fields(bit_writer& w, std::size_t n, unsigned width, Get&& get) {
  if (width == 0 || n == 0) return;
  const unsigned per = 64 / width;
  std::size_t i = 0;
  for (; i + per <= n; i += per) {
    std::uint64_t word = 0;
    for (unsigned t = 0; t < per; ++t)
      word |= static_cast<std::uint64_t>(get(i + t)) << (t * width);
    w.write(word, per * width);
  }
  std::uint64_t word = 0;
  unsigned t = 0;
  for (; i < n; ++i, ++t) word |= static_cast<std::uint64_t>(get(i)) << (t * width);
  w.write(word, t * width);
}

/// Reads n fields of `width` bits and calls put(i, value) for each.
template <class Put>
void read_fields(bit_reader& in, std::size_t n, unsigned width, const char* field, Put&& put) {
  if (width == 0) {
    for (std::size_t i = 0; i < n; ++i) put(i, std::uint64_t{0});
    return;
  }
  const unsigned per = 64 / width;
  const std::uint64_t mask = width == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << width) - 1;
  std::size_t i = 0;
  for (; i + per <= n; i += per) {
    const std::uint64_t word = in.read(per * width, field);
    for (unsigned t = 0; t < per; ++t) put(i + t, (word >> (t * width)) & mask);
  }
  if (i < n) {
    const auto rest = static_cast<unsigned>(n - i);
    const std::uint64_t word = in.read(rest * width, field);
    for (unsigned t = 0; t < rest; ++t) put(i + t, (word >> (t * width)) & mask);
  }
}

}  // namespace ecopt::detail
