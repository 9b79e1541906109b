#pragma once
// Moving runs of narrow fields between 64-bit words with a few shifts and
// masks instead of one shift and or per field (bit_writer::write_packed,
// bit_reader::read_packed).
//
// A word holds G = 64 / L fields in lanes of L bits (L = 8, 16 or 32), each
// field below 2^w. Squeezing merges neighbouring lanes pairwise, log2(G)
// times (four operations each), until the G * w field bits are contiguous at
// the bottom of the word; spreading undoes it.
#include <cstdint>

namespace ecopt::detail {

class lane_plan {
 public:
  /// Fields of `width` bits (1..32) in lanes of the narrowest of 8, 16, 32 bits that holds them.
  explicit constexpr lane_plan(unsigned width) noexcept
      : lane_(width <= 8 ? 8 : (width <= 16 ? 16 : 32)) {
    steps_ = lane_ == 8 ? 3 : (lane_ == 16 ? 2 : 1);
    for (unsigned s = 0; s < steps_; ++s) {
      const unsigned lane = lane_ << s;  // lane width before step s
      const unsigned have = width << s;  // field bits at the bottom of each lane
      shift_[s] = lane - have;
      low_[s] = repeat(2 * lane, have);  // the even lane's bits in each lane pair
      next_[s] = low_[s] << have;        // where the odd lane's bits go
      odd_[s] = low_[s] << lane;         // where they come from
    }
    lane_mask_ = repeat(lane_, width);
    chunk_ = width * (64 / lane_);
  }

  [[nodiscard]] constexpr unsigned lane_bits() const noexcept { return lane_; }
  [[nodiscard]] constexpr unsigned fields_per_word() const noexcept { return 64 / lane_; }
  /// Bits of one squeezed word: fields_per_word() * width.
  [[nodiscard]] constexpr unsigned chunk_bits() const noexcept { return chunk_; }

  /// G lane-aligned fields -> their G * width bits, field i at bit i * width.
  /// Each step moves every odd lane down next to its even neighbour.
  [[nodiscard]] constexpr std::uint64_t squeeze(std::uint64_t x) const noexcept {
    for (unsigned s = 0; s < steps_; ++s) x = (x & low_[s]) | ((x >> shift_[s]) & next_[s]);
    return x;
  }
  /// The inverse of squeeze (bits above chunk_bits() must be zero).
  [[nodiscard]] constexpr std::uint64_t spread(std::uint64_t x) const noexcept {
    for (unsigned s = steps_; s-- > 0;) x = (x & low_[s]) | ((x << shift_[s]) & odd_[s]);
    return x;
  }
  /// Each lane's field bits (drops bits above the width).
  [[nodiscard]] constexpr std::uint64_t lane_mask() const noexcept { return lane_mask_; }

 private:
  // `bits` low ones in every `unit`-bit unit of a word.
  static constexpr std::uint64_t repeat(unsigned unit, unsigned bits) noexcept {
    const std::uint64_t one = bits >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
    std::uint64_t r = 0;
    for (unsigned at = 0; at < 64; at += unit) r |= one << at;
    return r;
  }

  unsigned lane_;
  unsigned steps_ = 0;
  unsigned chunk_ = 0;
  unsigned shift_[3] = {};
  std::uint64_t low_[3] = {};
  std::uint64_t next_[3] = {};
  std::uint64_t odd_[3] = {};
  std::uint64_t lane_mask_ = 0;
};

}  // namespace ecopt::detail
