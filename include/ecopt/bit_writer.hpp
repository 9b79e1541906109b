#pragma once
// Appends bit fields to a byte buffer, least significant bit first, and counts
// every bit written. The buffer is the caller's: once its capacity covers the
// largest payload (reserve it when the compressor state is made) writing
// never allocates.
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "ecopt/detail/bit_lanes.hpp"

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

  /// Appends each fields[i] as a `width`-bit field (1 <= width <= 32): the same
  /// bits as write(fields[i], width) for every i, but merged a byte or a word
  /// of fields at a time (detail/bit_lanes.hpp) with one buffer append per 64
  /// output words. Bits above `width` are ignored.
  void write_packed(std::span<const std::uint32_t> fields, unsigned width) {
    const std::size_t n = fields.size();
    if (n == 0 || width == 0) return;
    const std::uint32_t* f = fields.data();
    if (width <= 8) {  // narrowed to bytes 256 at a time (a loop that vectorises)
      std::uint8_t b[256];
      for (std::size_t i = 0; i < n; i += 256) {
        const std::size_t m = std::min<std::size_t>(256, n - i);
        for (std::size_t t = 0; t < m; ++t) b[t] = static_cast<std::uint8_t>(f[i + t]);
        write_packed(std::span<const std::uint8_t>(b, m), width);
      }
      return;
    }
    const detail::lane_plan plan(width);
    const unsigned per = plan.fields_per_word();
    const unsigned lane_bits = plan.lane_bits();
    const std::uint64_t lane_max = (std::uint64_t{1} << lane_bits) - 1;
    run r;
    std::size_t i = 0;
    if constexpr (std::endian::native == std::endian::little) {
      // 4 (or 2) fields to a lane word, narrowed 256 at a time, then squeezed.
      std::uint16_t h[256];
      while (n - i >= per) {
        const std::size_t m = std::min<std::size_t>(256, (n - i) / per * per);
        const unsigned char* lanes = reinterpret_cast<const unsigned char*>(f + i);
        if (lane_bits == 16) {
          for (std::size_t t = 0; t < m; ++t) h[t] = static_cast<std::uint16_t>(f[i + t]);
          lanes = reinterpret_cast<const unsigned char*>(h);
        }
        for (std::size_t g = 0; g < m; g += per) {
          std::uint64_t x;
          std::memcpy(&x, lanes + g * (lane_bits / 8), 8);
          append_chunk(r, plan.squeeze(x & plan.lane_mask()), plan.chunk_bits());
        }
        i += m;
      }
    }
    for (; i + per <= n; i += per) {
      std::uint64_t x = 0;
      for (unsigned t = 0; t < per; ++t) x |= (f[i + t] & lane_max) << (t * lane_bits);
      append_chunk(r, plan.squeeze(x & plan.lane_mask()), plan.chunk_bits());
    }
    std::uint64_t x = 0;
    for (unsigned t = 0; i + t < n; ++t) x |= (f[i + t] & lane_max) << (t * lane_bits);
    append_chunk(r, plan.squeeze(x & plan.lane_mask()), static_cast<unsigned>(n - i) * width);
    append_words(r.words, r.count);
    write(r.cur, r.used);
  }

  /// write_packed for fields held in bytes (1 <= width <= 8).
  void write_packed(std::span<const std::uint8_t> fields, unsigned width) {
    const std::size_t n = fields.size();
    if (n == 0 || width == 0) return;
    const std::uint8_t* f = fields.data();
    if (std::endian::native == std::endian::little && 8 % width == 0) {
      return pack_to_bytes(f, n, width);
    }
    const detail::lane_plan plan(width);  // 8 fields to a word, squeezed
    run r;
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      std::uint64_t x;
      std::memcpy(&x, f + i, 8);
      if constexpr (std::endian::native == std::endian::big) x = __builtin_bswap64(x);
      append_chunk(r, plan.squeeze(x & plan.lane_mask()), plan.chunk_bits());
    }
    std::uint64_t x = 0;
    for (unsigned t = 0; i + t < n; ++t) x |= std::uint64_t{f[i + t]} << (8 * t);
    append_chunk(r, plan.squeeze(x & plan.lane_mask()), static_cast<unsigned>(n - i) * width);
    append_words(r.words, r.count);
    write(r.cur, r.used);
  }

  /// Appends bytes as 8-bit fields; a byte-aligned run is copied in one go.
  void write_bytes(std::span<const std::uint8_t> bytes) {
    const std::size_t n = bytes.size();
    if (n == 0) return;
    if (fill_ % 8 == 0) {
      spill_bytes();
      const auto* b = reinterpret_cast<const std::byte*>(bytes.data());
      out_->insert(out_->end(), b, b + n);
      bits_ += 8 * static_cast<std::uint64_t>(n);
      return;
    }
    std::uint64_t words[word_batch];
    std::size_t k = 0;
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      std::uint64_t w = 0;
      for (unsigned t = 0; t < 8; ++t) w |= std::uint64_t{bytes[i + t]} << (8 * t);
      words[k++] = w;
      if (k == word_batch) {
        append_words(words, k);
        k = 0;
      }
    }
    if (k > 0) append_words(words, k);
    std::uint64_t w = 0;
    for (unsigned t = 0; i < n; ++i, ++t) w |= std::uint64_t{bytes[i]} << (8 * t);
    write(w, static_cast<unsigned>(8 * (n % 8)));
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
  // Words staged on the stack between buffer appends (512 bytes).
  static constexpr std::size_t word_batch = 64;

  // Widths 1, 2, 4, 8 (little endian): whole bytes of fields. Neighbouring
  // bytes are merged pairwise (as one 16-bit lane each, so the loops
  // vectorise) until a byte holds 8 / width fields.
  void pack_to_bytes(const std::uint8_t* f, std::size_t n, unsigned width) {
    constexpr std::size_t block = 256;
    const unsigned per_byte = 8 / width;
    const auto mask = static_cast<std::uint8_t>((1u << width) - 1);
    const std::size_t whole = n / per_byte * per_byte;
    std::uint8_t a[block];
    std::uint8_t b[block];
    std::uint16_t h[block / 2];
    for (std::size_t i = 0; i < whole; i += block) {
      const std::size_t m = std::min(block, whole - i);  // a multiple of per_byte
      std::size_t units = m;
      const std::uint8_t* src = f + i;
      std::uint8_t* dst = a;
      if (width < 8) {
        for (std::size_t t = 0; t < m; ++t) a[t] = f[i + t] & mask;
        src = a;
        dst = b;
      }
      for (unsigned have = width; have < 8; have *= 2) {
        // A lane lo | hi << 8 (lo, hi < 2^have <= 2^4) becomes the byte lo | hi << have.
        std::memcpy(h, src, units);
        units /= 2;
        for (std::size_t k = 0; k < units; ++k) {
          dst[k] = static_cast<std::uint8_t>(h[k] | (h[k] >> (8 - have)));
        }
        src = dst;
        dst = dst == a ? b : a;
      }
      write_bytes(std::span<const std::uint8_t>(src, units));
    }
    for (std::size_t i = whole; i < n; ++i) write(f[i], width);
  }

  // Output words of a packed run, staged before they are appended.
  struct run {
    std::uint64_t words[word_batch];
    std::size_t count = 0;
    std::uint64_t cur = 0;  // the partial word, `used` bits
    unsigned used = 0;
  };

  // Appends the low `bits` (<= 64) bits of v to the run.
  void append_chunk(run& r, std::uint64_t v, unsigned bits) {
    r.cur |= v << r.used;
    r.used += bits;
    if (r.used >= 64) {
      r.used -= 64;
      r.words[r.count++] = r.cur;
      r.cur = r.used == 0 ? 0 : v >> (bits - r.used);
      if (r.count == word_batch) {
        append_words(r.words, r.count);
        r.count = 0;
      }
    }
  }

  // Appends n whole 64-bit words at the current bit offset, in one buffer append.
  void append_words(const std::uint64_t* w, std::size_t n) {
    if (n == 0) return;
    bits_ += 64 * static_cast<std::uint64_t>(n);
    std::uint64_t merged[word_batch];
    const std::uint64_t* src = w;
    for (std::size_t at = 0; at < n; at += word_batch) {
      const std::size_t m = n - at < word_batch ? n - at : word_batch;
      if (fill_ != 0 || std::endian::native == std::endian::big) {
        // The partial accumulator goes first; each word's top bits carry over.
        for (std::size_t i = 0; i < m; ++i) {
          const std::uint64_t v = src[at + i];
          merged[i] = to_little_endian(acc_ | v << fill_);
          acc_ = fill_ == 0 ? 0 : v >> (64 - fill_);
        }
        put_bytes(merged, m);
      } else {
        put_bytes(src + at, m);
      }
    }
  }
  void put_bytes(const std::uint64_t* words, std::size_t m) {
    const auto* bytes = reinterpret_cast<const std::byte*>(words);
    out_->insert(out_->end(), bytes, bytes + 8 * m);
  }

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
