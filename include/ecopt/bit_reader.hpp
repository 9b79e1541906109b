#pragma once
// Reads the bit fields a bit_writer wrote. Every read names the field it
// reads, so a truncated or corrupt payload fails with a decode_error that says
// which field and at which bit offset.
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

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
  // The 8 bytes from `byte` on as a little-endian word, zero past the end.
  [[nodiscard]] std::uint64_t load(std::size_t byte) const noexcept {
    std::uint64_t word = 0;
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
