#pragma once
// Appends bit fields to a byte buffer, least significant bit first, and counts
// every bit written. The buffer is the caller's: once its capacity covers the
// largest payload (reserve it when the compressor state is made) writing
// never allocates.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace ecopt {

class bit_writer {
 public:
  /// Starts an empty payload in `storage` (its capacity is kept).
  explicit bit_writer(std::vector<std::byte>& storage) : out_(&storage) { out_->clear(); }

  /// Appends the low `width` bits of `value` (0 <= width <= 64).
  void write(std::uint64_t value, unsigned width) {
    if (width == 0) return;
    if (width < 64) value &= (std::uint64_t{1} << width) - 1;
    bits_ += width;
    acc_ |= value << fill_;
    const unsigned room = 64 - fill_;
    if (width < room) {
      fill_ += width;
      return;
    }
    flush_word(acc_);
    // The bits of `value` that did not fit start the next word.
    acc_ = room == 64 ? 0 : value >> room;
    fill_ = width - room;
  }

  void write_bit(bool bit) { write(bit ? 1u : 0u, 1); }
  void write_u32(std::uint32_t v) { write(v, 32); }
  void write_u64(std::uint64_t v) { write(v, 64); }
  void write_f32(float v) { write(std::bit_cast<std::uint32_t>(v), 32); }

  /// Appends float32 values. When the payload is byte aligned the values are
  /// copied as one run of bytes; otherwise they go two per 64-bit write.
  void write_f32s(std::span<const float> values) {
    const std::size_t n = values.size();
    if (n == 0) return;
    if (fill_ % 8 == 0) {
      spill_bytes();
      const auto* bytes = reinterpret_cast<const std::byte*>(values.data());
      if constexpr (std::endian::native == std::endian::little) {
        out_->insert(out_->end(), bytes, bytes + 4 * n);
      } else {
        for (float v : values) append_le(std::bit_cast<std::uint32_t>(v), 4);
      }
      bits_ += 32 * static_cast<std::uint64_t>(n);
      return;
    }
    std::size_t i = 0;
    for (; i + 2 <= n; i += 2) {
      write(std::uint64_t{std::bit_cast<std::uint32_t>(values[i])} |
                std::uint64_t{std::bit_cast<std::uint32_t>(values[i + 1])} << 32,
            64);
    }
    if (i < n) write_f32(values[i]);
  }

  /// Number of payload bits written so far (exact, without padding).
  [[nodiscard]] std::uint64_t bits() const noexcept { return bits_; }

  /// Flushes the partial word; the last byte is padded with zero bits.
  /// Returns the payload bytes. Writing after finish() is not allowed.
  std::span<const std::byte> finish() {
    const std::size_t tail_bytes = (fill_ + 7) / 8;
    if (tail_bytes) append_le(acc_, tail_bytes);
    acc_ = 0;
    fill_ = 0;
    return {out_->data(), out_->size()};
  }

 private:
  static std::uint64_t to_little_endian(std::uint64_t w) noexcept {
    if constexpr (std::endian::native == std::endian::big) {
      std::uint64_t r = 0;
      for (int i = 0; i < 8; ++i) r |= ((w >> (8 * i)) & 0xffu) << (8 * (7 - i));
      return r;
    }
    return w;
  }
  // Appends the low `count` bytes of `w`, least significant first. Inserting
  // within the capacity never allocates and, unlike resize, does not zero first.
  void append_le(std::uint64_t w, std::size_t count) {
    std::byte bytes[8];
    w = to_little_endian(w);
    std::memcpy(bytes, &w, 8);
    out_->insert(out_->end(), bytes, bytes + count);
  }
  void flush_word(std::uint64_t w) { append_le(w, 8); }
  // Moves the whole bytes of the accumulator to the buffer (fill_ % 8 == 0).
  void spill_bytes() {
    if (fill_ != 0) append_le(acc_, fill_ / 8);
    acc_ = 0;
    fill_ = 0;
  }

  std::vector<std::byte>* out_;
  std::uint64_t acc_ = 0;
  unsigned fill_ = 0;
  std::uint64_t bits_ = 0;
};

/// Number of bits needed to write any value in [0, n): ceil(log2 n), 0 for n <= 1.
[[nodiscard]] constexpr unsigned bits_for(std::uint64_t n) noexcept {
  return n <= 1 ? 0u : static_cast<unsigned>(std::bit_width(n - 1));
}

}  // namespace ecopt
