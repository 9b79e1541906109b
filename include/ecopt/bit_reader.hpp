#pragma once
// Reads the bit fields a bit_writer wrote. Every read names the field it
// reads, so a truncated or corrupt payload fails with a decode_error that says
// which field and at which bit offset.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "ecopt/detail/bit_lanes.hpp"
#include "ecopt/error.hpp"

namespace ecopt {

class bit_reader {
 public:
  explicit bit_reader(std::span<const std::byte> payload) : data_(payload) {}

  /// Reads `width` bits (0..64) written by bit_writer::write.
  std::uint64_t read(unsigned width, const char* field) {
    if (width == 0) return 0;
    if (remaining() < width) throw_truncated(width, field);
    const std::size_t byte = pos_ / 8;
    const unsigned shift = pos_ % 8;
    std::uint64_t result = load(byte) >> shift;
    // A field that straddles the 8 loaded bytes takes its top bits from the next ones.
    if (shift + width > 64) result |= load(byte + 8) << (64 - shift);
    pos_ += width;
    return width == 64 ? result : result & ((std::uint64_t{1} << width) - 1);
  }

  /// Throws the truncation error for `field` unless `bits` more bits are left.
  /// Lets a decoder check a fixed-size payload once, before it touches any output.
  void require(std::uint64_t bits, const char* field) const {
    if (remaining() < bits) throw_truncated(bits, field);
  }

  /// Reads float32 values; a byte-aligned run is copied in one go.
  void read_f32s(std::span<float> out, const char* field) {
    const std::size_t n = out.size();
    require(32 * static_cast<std::uint64_t>(n), field);
    if (pos_ % 8 == 0) {
      if (n != 0) std::memcpy(out.data(), data_.data() + pos_ / 8, 4 * n);
      if constexpr (std::endian::native == std::endian::big) {
        for (float& v : out)
          v = std::bit_cast<float>(__builtin_bswap32(std::bit_cast<std::uint32_t>(v)));
      }
      pos_ += 32 * static_cast<std::uint64_t>(n);
      return;
    }
    std::size_t i = 0;
    for (; i + 2 <= n; i += 2) {
      const std::uint64_t w = read(64, field);
      out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(w));
      out[i + 1] = std::bit_cast<float>(static_cast<std::uint32_t>(w >> 32));
    }
    if (i < n) out[i] = read_f32(field);
  }

  /// Reads out.size() fields of `width` bits each (1 <= width <= 32), as written
  /// by bit_writer::write_packed or by one write(v, width) per field. The length
  /// is checked once for the whole run; then a byte or a word of fields is
  /// spread to its lanes at a time (detail/bit_lanes.hpp).
  void read_packed(std::span<std::uint32_t> out, unsigned width, const char* field) {
    const std::size_t n = out.size();
    require(static_cast<std::uint64_t>(n) * width, field);
    std::uint32_t* o = out.data();
    if (width == 0) {
      std::fill_n(o, n, 0u);
      return;
    }
    if (width <= 8) {  // through bytes, 256 at a time, widened by a loop that vectorises
      std::uint8_t b[256];
      for (std::size_t i = 0; i < n; i += 256) {
        const std::size_t m = std::min<std::size_t>(256, n - i);
        read_packed(std::span<std::uint8_t>(b, m), width, field);
        for (std::size_t t = 0; t < m; ++t) o[i + t] = b[t];
      }
      return;
    }
    const detail::lane_plan plan(width);
    const unsigned per = plan.fields_per_word();
    const unsigned lane_bits = plan.lane_bits();
    const std::uint64_t lane_max = (std::uint64_t{1} << lane_bits) - 1;
    const unsigned chunk = plan.chunk_bits();
    const std::uint64_t chunk_mask =
        chunk == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << chunk) - 1;
    std::size_t i = 0;
    for (; i + per <= n; i += per) {
      const std::uint64_t x = plan.spread(bits_at(pos_) & chunk_mask);
      pos_ += chunk;
      for (unsigned t = 0; t < per; ++t)
        o[i + t] = static_cast<std::uint32_t>((x >> (t * lane_bits)) & lane_max);
    }
    if (i < n) {
      const auto rest = static_cast<unsigned>(n - i);
      const std::uint64_t x =
          plan.spread(bits_at(pos_) & ((std::uint64_t{1} << (rest * width)) - 1));
      pos_ += static_cast<std::uint64_t>(rest) * width;
      for (unsigned t = 0; t < rest; ++t)
        o[i + t] = static_cast<std::uint32_t>((x >> (t * lane_bits)) & lane_max);
    }
  }

  /// read_packed into bytes (1 <= width <= 8).
  void read_packed(std::span<std::uint8_t> out, unsigned width, const char* field) {
    const std::size_t n = out.size();
    require(static_cast<std::uint64_t>(n) * width, field);
    std::uint8_t* o = out.data();
    if (width == 0) {
      std::fill_n(o, n, std::uint8_t{0});
      return;
    }
    if (std::endian::native == std::endian::little && 8 % width == 0) {
      return unpack_bytes(o, n, width);
    }
    const detail::lane_plan plan(width);  // 8 fields to a word
    const unsigned chunk = plan.chunk_bits();
    const std::uint64_t chunk_mask =
        chunk == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << chunk) - 1;
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      std::uint64_t x = plan.spread(bits_at(pos_) & chunk_mask);
      pos_ += chunk;
      if constexpr (std::endian::native == std::endian::big) x = __builtin_bswap64(x);
      std::memcpy(o + i, &x, 8);
    }
    if (i < n) {
      const auto rest = static_cast<unsigned>(n - i);
      const std::uint64_t x =
          plan.spread(bits_at(pos_) & ((std::uint64_t{1} << (rest * width)) - 1));
      pos_ += static_cast<std::uint64_t>(rest) * width;
      for (unsigned t = 0; t < rest; ++t) o[i + t] = static_cast<std::uint8_t>(x >> (8 * t));
    }
  }

  /// Reads out.size() 8-bit fields; a byte-aligned run is copied in one go.
  void read_bytes(std::span<std::uint8_t> out, const char* field) {
    const std::size_t n = out.size();
    require(8 * static_cast<std::uint64_t>(n), field);
    if (pos_ % 8 == 0) {
      if (n != 0) std::memcpy(out.data(), data_.data() + pos_ / 8, n);
      pos_ += 8 * static_cast<std::uint64_t>(n);
      return;
    }
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const std::uint64_t w = bits_at(pos_);
      pos_ += 64;
      for (unsigned t = 0; t < 8; ++t) out[i + t] = static_cast<std::uint8_t>(w >> (8 * t));
    }
    for (; i < n; ++i) {
      out[i] = static_cast<std::uint8_t>(bits_at(pos_));
      pos_ += 8;
    }
  }

  /// The next n whole bytes as a view into the payload, skipped over; the
  /// position must be on a byte boundary (a framed sub-payload).
  std::span<const std::byte> take_bytes(std::size_t n, const char* field) {
    if (pos_ % 8 != 0) {
      throw decode_error(std::string("corrupt payload: ") + field + " at bit offset " +
                         std::to_string(pos_) + " is not on a byte boundary");
    }
    require(8 * static_cast<std::uint64_t>(n), field);
    const std::span<const std::byte> out = data_.subspan(static_cast<std::size_t>(pos_ / 8), n);
    pos_ += 8 * static_cast<std::uint64_t>(n);
    return out;
  }

  bool read_bit(const char* field) { return read(1, field) != 0; }
  std::uint32_t read_u32(const char* field) { return static_cast<std::uint32_t>(read(32, field)); }
  std::uint64_t read_u64(const char* field) { return read(64, field); }
  float read_f32(const char* field) { return std::bit_cast<float>(read_u32(field)); }

  /// Reads a float32 that must be finite.
  float read_finite_f32(const char* field) {
    const std::uint64_t at = pos_;
    const float v = read_f32(field);
    if (!std::isfinite(v)) {
      throw decode_error(std::string("corrupt payload: ") + field + " at bit offset " +
                         std::to_string(at) + " is not finite");
    }
    return v;
  }

  /// Reads an index that must be below `bound`, using `width` bits.
  std::uint64_t read_index(unsigned width, std::uint64_t bound, const char* field) {
    const std::uint64_t at = pos_;
    const std::uint64_t v = read(width, field);
    if (v >= bound) {
      throw decode_error(std::string("corrupt payload: ") + field + " = " + std::to_string(v) +
                         " at bit offset " + std::to_string(at) + " is out of range [0, " +
                         std::to_string(bound) + ")");
    }
    return v;
  }

  [[nodiscard]] std::uint64_t position() const noexcept { return pos_; }
  [[nodiscard]] std::uint64_t remaining() const noexcept { return 8 * data_.size() - pos_; }

  /// Checks that only the zero padding of the last byte is left.
  void expect_end(const char* payload_name) const {
    const std::uint64_t left = remaining();
    bool padding_is_zero = left < 8;
    if (padding_is_zero && left > 0) {
      const auto last = std::to_integer<unsigned>(data_.back());
      padding_is_zero = (last >> (8 - left)) == 0;
    }
    if (!padding_is_zero) {
      throw decode_error(std::string("corrupt ") + payload_name + " payload: " +
                         std::to_string(left) + " unexpected bits after the last field");
    }
  }

 private:
  // The 64 bits from bit offset p on (zero past the end); no length check.
  [[nodiscard]] std::uint64_t bits_at(std::uint64_t p) const noexcept {
    const auto byte = static_cast<std::size_t>(p / 8);
    const unsigned shift = p % 8;
    std::uint64_t w = load(byte) >> shift;
    if (shift != 0) w |= load(byte + 8) << (64 - shift);
    return w;
  }

  // Widths 1, 2, 4, 8 (little endian; length already checked): whole bytes of
  // fields, split pairwise into 16-bit lanes (loops that vectorise) until a
  // byte holds one field.
  void unpack_bytes(std::uint8_t* o, std::size_t n, unsigned width) {
    constexpr std::size_t block = 256;
    const unsigned per_byte = 8 / width;
    const std::size_t whole = n / per_byte * per_byte;
    std::uint8_t a[block];
    std::uint8_t b[block];
    std::uint16_t h[block / 2];
    for (std::size_t i = 0; i < whole; i += block) {
      const std::size_t m = std::min(block, whole - i);
      std::size_t units = m / per_byte;
      std::uint8_t* src = width == 8 ? o + i : a;
      read_bytes(std::span<std::uint8_t>(src, units), "packed fields");
      for (unsigned have = 8; have > width; have /= 2) {
        const unsigned half = have / 2;
        const auto low = static_cast<std::uint8_t>((1u << half) - 1);
        for (std::size_t k = 0; k < units; ++k) {
          h[k] = static_cast<std::uint16_t>((src[k] & low) | (src[k] >> half) << 8);
        }
        units *= 2;
        std::uint8_t* dst = half == width ? o + i : (src == a ? b : a);
        std::memcpy(dst, h, units);
        src = dst;
      }
    }
    for (std::size_t i = whole; i < n; ++i)
      o[i] = static_cast<std::uint8_t>(read(width, "packed fields"));
  }

  // The 8 bytes from `byte` on as a little-endian word, zero past the end.
  [[nodiscard]] std::uint64_t load(std::size_t byte) const noexcept {
    std::uint64_t word = 0;
    if (byte >= data_.size()) return 0;
    const std::size_t avail = data_.size() - byte;
    if (avail >= 8) {
      std::memcpy(&word, data_.data() + byte, 8);
    } else {
      std::memcpy(&word, data_.data() + byte, avail);
    }
    if constexpr (std::endian::native == std::endian::big) word = __builtin_bswap64(word);
    return word;
  }

  [[noreturn, gnu::cold, gnu::noinline]] void throw_truncated(std::uint64_t width,
                                                              const char* field) const {
    throw decode_error(std::string("payload truncated while reading ") + field + ": needed " +
                       std::to_string(width) + " bits at bit offset " + std::to_string(pos_) +
                       ", only " + std::to_string(remaining()) + " left");
  }

  std::span<const std::byte> data_;
  std::uint64_t pos_ = 0;
};

}  // namespace ecopt
