#pragma once
// Index-set coding shared by the sparsifiers: a strictly increasing set of k
// indices in [0, d), with k known to the decoder, in the smallest of four codes.
//
//   tag 0  fixed width   k fields of ceil(log2 d) bits
//   tag 1  Golomb-Rice   5-bit parameter b, then per gap g: floor(g / 2^b) zeros,
//                        a one, and the low b bits of g (Golomb 1966; Rice 1979)
//   tag 2  Elias gamma   per gap g, n = bit_width(g + 1): n - 1 zeros, a one, and
//                        the low n - 1 bits of g + 1 (Elias 1975)
//   tag 3  bitmap        d bits, bit j set when j is in the set
//
// The gaps are g_0 = i_0 and g_j = i_j - i_{j-1} - 1, so they sum to
// i_{k-1} + 1 - k <= d - k. The encoder measures every code on the actual set
// and writes a 2-bit tag and the cheapest (ties go to the lower tag); Rice's
// parameter is the best one for the set. Random sets of density p cost about
// log2(1/p) + 1.5 bits per index in Rice, clustered runs about 1 bit per index
// in gamma, dense sets d bits as a bitmap. When k = 0 or k = d the set is
// implied and nothing at all is written.
//
// Rice's cost k (1 + b) + sum_j floor(g_j / 2^b) is convex in b (the drop from b
// to b + 1, sum_j ceil(floor(g_j / 2^b) / 2), does not grow with b), so the
// encoder walks downhill from the parameter suggested by the mean gap and
// needs a few passes over the k gaps, not one per parameter.
//
// Decoding never reads past the index set: unary runs are read through a
// lookahead of at most as many bits as the rest of the set is certain to hold
// (b + 1 per remaining Rice code, 1 per remaining gamma code), so whatever
// follows on the wire is left in place. Nothing here allocates.
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/error.hpp"

namespace ecopt::detail {

enum class index_code : std::uint8_t { fixed = 0, rice = 1, gamma = 2, bitmap = 3 };

inline constexpr unsigned index_tag_bits = 2;
inline constexpr unsigned rice_param_bits = 5;
inline constexpr unsigned max_rice_param = (1u << rice_param_bits) - 1;

/// The code chosen for one index set and its exact size in bits (tag included).
struct index_plan {
  index_code code = index_code::fixed;
  unsigned rice_param = 0;
  std::uint64_t bits = 0;
};

/// True when (k, d) alone determine the set (k = 0 or k = d): nothing is sent.
[[nodiscard]] constexpr bool index_set_implied(std::size_t k, std::size_t d) noexcept {
  return k == 0 || k == d;
}

/// Worst-case bits of a set of k indices in [0, d), over all such sets.
[[nodiscard]] inline std::uint64_t index_bits_bound(std::size_t k, std::size_t d) noexcept {
  if (index_set_implied(k, d)) return 0;
  const auto kk = static_cast<std::uint64_t>(k);
  const auto dd = static_cast<std::uint64_t>(d);
  std::uint64_t best = std::min(kk * bits_for(dd), dd);
  // Rice with parameter b: the floor(g / 2^b) sum to at most floor((d - k) / 2^b).
  for (unsigned b = 0; b <= max_rice_param; ++b) {
    best = std::min(best, rice_param_bits + kk * (1 + b) + ((dd - kk) >> b));
  }
  return index_tag_bits + best;
}

namespace index_coding_impl {

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_bad_set(const char* who, std::size_t i,
                                                                 std::uint64_t v, std::size_t d) {
  throw invalid_argument(std::string(who) + ": index[" + std::to_string(i) +
                         "] = " + std::to_string(v) +
                         " is out of range or does not increase (d = " + std::to_string(d) + ")");
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_too_many(const char* who, std::size_t k,
                                                                  std::size_t d) {
  throw invalid_argument(std::string(who) + ": " + std::to_string(k) +
                         " indices cannot be distinct in [0, " + std::to_string(d) + ")");
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_bad_index(const char* who, std::size_t i,
                                                                   std::uint64_t v,
                                                                   std::uint64_t prev,
                                                                   std::size_t d) {
  throw decode_error(std::string("corrupt ") + who + " payload: index[" + std::to_string(i) +
                     "] = " + std::to_string(v) +
                     (v >= d ? " is out of range [0, " + std::to_string(d) + ")"
                             : " does not increase (previous " + std::to_string(prev) + ")"));
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_gap_out_of_range(const char* who,
                                                                          std::size_t i,
                                                                          std::size_t d) {
  throw decode_error(std::string("corrupt ") + who + " payload: the gap before index[" +
                     std::to_string(i) + "] runs past d = " + std::to_string(d));
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_bitmap_count(const char* who,
                                                                      std::size_t found,
                                                                      std::size_t k) {
  throw decode_error(
      std::string("corrupt ") + who + " payload: index bitmap has " +
      (found > k ? std::string("more than ") + std::to_string(k) : std::to_string(found)) +
      " set bits, expected k = " + std::to_string(k));
}

/// sum_j floor(g_j / 2^b) over the gaps of idx.
[[nodiscard]] inline std::uint64_t rice_quotients(const std::uint32_t* idx, std::size_t k,
                                                  unsigned b) noexcept {
  std::uint64_t sum = idx[0] >> b;
  for (std::size_t i = 1; i < k; ++i) sum += (idx[i] - idx[i - 1] - 1) >> b;
  return sum;
}

/// Packs short codes into 64-bit words before they reach the bit_writer (a
/// code costs a shift and an OR; the writer sees one call per 64 bits).
class bit_sink {
 public:
  explicit bit_sink(bit_writer& w) noexcept : w_(w) {}
  /// Appends the low `width` bits of v (v < 2^width, 1 <= width <= 64).
  void put(std::uint64_t v, unsigned width) {
    acc_ |= v << fill_;
    fill_ += width;
    if (fill_ >= 64) {
      w_.write(acc_, 64);
      fill_ -= 64;
      acc_ = fill_ == 0 ? 0 : v >> (width - fill_);
    }
  }
  void flush() {
    w_.write(acc_, fill_);
    acc_ = 0;
    fill_ = 0;
  }

 private:
  bit_writer& w_;
  std::uint64_t acc_ = 0;
  unsigned fill_ = 0;  // < 64 between calls
};

/// Reads a code stream of unknown length through a 64-bit buffer, fetching only
/// bits the caller guarantees still belong to the stream.
class lookahead {
 public:
  lookahead(bit_reader& in, const char* field) : in_(in), field_(field) {}

  /// Buffers as many bits as fit, but no more than `guaranteed` counted from the
  /// current position (the least the rest of the stream can hold).
  void refill(std::uint64_t guaranteed) {
    if (guaranteed <= n_ || n_ == 64) return;
    const auto take = static_cast<unsigned>(std::min<std::uint64_t>(64 - n_, guaranteed - n_));
    buf_ |= in_.read(take, field_) << n_;
    n_ += take;
  }
  [[nodiscard]] std::uint64_t bits() const noexcept { return buf_; }
  [[nodiscard]] unsigned size() const noexcept { return n_; }
  void drop(unsigned c) noexcept {
    buf_ = c >= 64 ? 0 : buf_ >> c;
    n_ -= c;
  }
  /// The low w (<= n) buffered bits, consumed.
  std::uint64_t take(unsigned w) noexcept {
    const std::uint64_t v = w == 0 ? 0 : (w >= 64 ? buf_ : buf_ & ((std::uint64_t{1} << w) - 1));
    drop(w);
    return v;
  }

 private:
  bit_reader& in_;
  const char* field_;
  std::uint64_t buf_ = 0;  // bits above n_ are zero
  unsigned n_ = 0;
};

/// Counts the zeros before the next one bit and consumes them and the one.
/// `guaranteed(zeros)` is the least number of bits the stream holds from the
/// current position once `zeros` zeros have been seen; runs longer than
/// `limit` are corrupt.
template <class Guaranteed>
std::uint64_t read_unary(lookahead& la, std::uint64_t limit, Guaranteed&& guaranteed,
                         const char* who, std::size_t i, std::size_t d) {
  std::uint64_t zeros = 0;
  for (;;) {
    la.refill(guaranteed(zeros));
    const std::uint64_t w = la.bits();
    if (w != 0) {
      const auto z = static_cast<unsigned>(std::countr_zero(w));
      zeros += z;
      if (zeros > limit) throw_gap_out_of_range(who, i, d);
      la.drop(z + 1);
      return zeros;
    }
    zeros += la.size();
    la.drop(la.size());
    if (zeros > limit) throw_gap_out_of_range(who, i, d);
  }
}

}  // namespace index_coding_impl

/// Measures every code on `idx` (strictly increasing, below d) and picks the
/// cheapest. Throws invalid_argument when idx is not such a set.
[[nodiscard]] inline index_plan plan_indices(std::span<const std::uint32_t> idx, std::size_t d) {
  using namespace index_coding_impl;
  const std::size_t k = idx.size();
  const std::uint32_t* p = idx.data();
  if (k > d) throw_too_many("index coding", k, d);
  if (k == 0) return {};
  // One pass: validity, and the gamma lengths (2 bit_width(g + 1) - 1 per gap).
  std::uint64_t gamma_widths = std::bit_width(std::uint64_t{p[0]} + 1);
  std::uint32_t bad = 0;
  for (std::size_t i = 1; i < k; ++i) {
    bad |= static_cast<std::uint32_t>(p[i] <= p[i - 1]);
    gamma_widths += static_cast<unsigned>(std::bit_width(std::uint64_t{p[i]} - p[i - 1]));
  }
  if (bad != 0 || p[k - 1] >= d) {
    for (std::size_t i = 0; i < k; ++i) {
      if (p[i] >= d || (i > 0 && p[i] <= p[i - 1])) throw_bad_set("index coding", i, p[i], d);
    }
  }
  if (k == d) return {};

  const auto kk = static_cast<std::uint64_t>(k);
  const auto dd = static_cast<std::uint64_t>(d);
  index_plan best{index_code::fixed, 0, kk * bits_for(dd)};
  const auto consider = [&best](index_code code, unsigned param, std::uint64_t bits) {
    if (bits < best.bits) best = {code, param, bits};
  };

  // Rice: start from b with 2^b near ln(2) times the mean gap, then walk downhill.
  const std::uint64_t gap_sum = std::uint64_t{p[k - 1]} + 1 - kk;
  const std::uint64_t guess = gap_sum / kk * 7 / 10;
  unsigned b = std::min<unsigned>(guess == 0 ? 0 : std::bit_width(guess) - 1, max_rice_param);
  const auto rice_bits = [&](unsigned param) {
    return rice_param_bits + kk * (1 + param) + rice_quotients(p, k, param);
  };
  std::uint64_t here = rice_bits(b);
  bool moved_down = false;
  while (b > 0) {
    const std::uint64_t lower = rice_bits(b - 1);
    if (lower > here) break;
    here = lower;
    --b;
    moved_down = true;
  }
  while (!moved_down && b < max_rice_param) {
    const std::uint64_t upper = rice_bits(b + 1);
    if (upper >= here) break;
    here = upper;
    ++b;
  }
  consider(index_code::rice, b, here);
  consider(index_code::gamma, 0, 2 * gamma_widths - kk);
  consider(index_code::bitmap, 0, dd);
  best.bits += index_tag_bits;
  return best;
}

/// Exact bits write_indices spends on this set.
[[nodiscard]] inline std::uint64_t exact_index_bits(std::span<const std::uint32_t> idx,
                                                    std::size_t d) {
  if (index_set_implied(idx.size(), d)) {
    (void)plan_indices(idx, d);  // still validates
    return 0;
  }
  return plan_indices(idx, d).bits;
}

/// Writes the set with a plan from plan_indices(idx, d); returns the bits written.
inline std::uint64_t write_indices(bit_writer& w, std::span<const std::uint32_t> idx, std::size_t d,
                                   const index_plan& plan) {
  const std::size_t k = idx.size();
  if (index_set_implied(k, d)) return 0;
  const std::uint64_t start = w.bits();
  const std::uint32_t* p = idx.data();
  w.write(static_cast<std::uint64_t>(plan.code), index_tag_bits);
  switch (plan.code) {
    case index_code::fixed:
      write_fields(w, k, bits_for(d), [p](std::size_t i) { return p[i]; });
      break;
    case index_code::rice: {
      const unsigned b = plan.rice_param;
      w.write(b, rice_param_bits);
      const std::uint64_t low = (std::uint64_t{1} << b) - 1;
      index_coding_impl::bit_sink sink(w);
      std::uint64_t prev_plus_one = 0;
      for (std::size_t i = 0; i < k; ++i) {
        const std::uint64_t g = p[i] - prev_plus_one;
        prev_plus_one = std::uint64_t{p[i]} + 1;
        std::uint64_t q = g >> b;
        // q zeros, a one, then b low bits: one piece while it fits in 64 bits.
        if (q + 1 + b <= 64) [[likely]] {
          sink.put((((g & low) << 1) | 1) << q, static_cast<unsigned>(q + 1 + b));
          continue;
        }
        for (; q >= 64; q -= 64) sink.put(0, 64);
        sink.put(std::uint64_t{1} << q, static_cast<unsigned>(q + 1));
        if (b > 0) sink.put(g & low, b);
      }
      sink.flush();
      break;
    }
    case index_code::gamma: {
      index_coding_impl::bit_sink sink(w);
      std::uint64_t prev_plus_one = 0;
      for (std::size_t i = 0; i < k; ++i) {
        const std::uint64_t v = std::uint64_t{p[i]} - prev_plus_one + 1;  // g + 1 >= 1
        prev_plus_one = std::uint64_t{p[i]} + 1;
        const auto z = static_cast<unsigned>(std::bit_width(v)) - 1;  // <= 32
        const std::uint64_t rest = v & ((std::uint64_t{1} << z) - 1);
        if (2 * z + 1 <= 64) [[likely]] {
          sink.put(((rest << 1) | 1) << z, 2 * z + 1);
        } else {
          sink.put(std::uint64_t{1} << z, z + 1);
          sink.put(rest, z);
        }
      }
      sink.flush();
      break;
    }
    case index_code::bitmap: {
      std::size_t ci = 0;
      for (std::size_t base = 0; base < d; base += 64) {
        const std::size_t end = std::min(base + 64, d);
        std::uint64_t word = 0;
        for (; ci < k && p[ci] < end; ++ci) word |= std::uint64_t{1} << (p[ci] - base);
        w.write(word, static_cast<unsigned>(end - base));
      }
      break;
    }
  }
  return w.bits() - start;
}

/// Plans and writes the set; returns the bits written.
inline std::uint64_t write_indices(bit_writer& w, std::span<const std::uint32_t> idx,
                                   std::size_t d) {
  if (index_set_implied(idx.size(), d)) return exact_index_bits(idx, d);
  return write_indices(w, idx, d, plan_indices(idx, d));
}

/// Reads a set of out.size() indices in [0, d) into `out`. Throws decode_error
/// naming `who` when the stream is truncated, an index is out of range or does
/// not increase, or a bitmap has the wrong number of set bits.
inline void read_indices(bit_reader& in, std::size_t d, std::span<std::uint32_t> out,
                         const char* who) {
  using namespace index_coding_impl;
  const std::size_t k = out.size();
  std::uint32_t* idx = out.data();
  if (k > d) throw_too_many(who, k, d);
  if (index_set_implied(k, d)) {
    for (std::size_t i = 0; i < k; ++i) idx[i] = static_cast<std::uint32_t>(i);
    return;
  }
  const auto code = static_cast<index_code>(in.read(index_tag_bits, "index code tag"));
  switch (code) {
    case index_code::fixed:
      read_fields(in, k, bits_for(d), "index", [&](std::size_t i, std::uint64_t v) {
        if (v >= d || (i > 0 && v <= idx[i - 1])) {
          throw_bad_index(who, i, v, i > 0 ? idx[i - 1] : 0, d);
        }
        idx[i] = static_cast<std::uint32_t>(v);
      });
      return;
    case index_code::rice: {
      const auto b = static_cast<unsigned>(in.read(rice_param_bits, "index Rice parameter"));
      lookahead la(in, "index Rice code");
      std::uint64_t next = 0;  // the smallest value index i may take
      for (std::size_t i = 0; i < k; ++i) {
        const std::uint64_t left = k - i;
        const std::uint64_t limit = (d - next) >> b;  // larger quotients leave [0, d)
        const std::uint64_t q = read_unary(
            la, limit, [&](std::uint64_t) { return left * (1 + b); }, who, i, d);
        la.refill(b + (left - 1) * (1 + b));
        const std::uint64_t v = next + ((q << b) | la.take(b));
        if (v >= d) throw_gap_out_of_range(who, i, d);
        idx[i] = static_cast<std::uint32_t>(v);
        next = v + 1;
      }
      return;
    }
    case index_code::gamma: {
      lookahead la(in, "index gamma code");
      std::uint64_t next = 0;
      for (std::size_t i = 0; i < k; ++i) {
        const std::uint64_t left = k - i;
        const std::uint64_t z = read_unary(
            la, 32, [&](std::uint64_t zeros) { return 1 + zeros + (left - 1); }, who, i, d);
        la.refill(z + (left - 1));  // z <= 32, so the z low bits are all buffered now
        const std::uint64_t v =
            next + ((std::uint64_t{1} << z) | la.take(static_cast<unsigned>(z))) - 1;
        if (v >= d) throw_gap_out_of_range(who, i, d);
        idx[i] = static_cast<std::uint32_t>(v);
        next = v + 1;
      }
      return;
    }
    case index_code::bitmap: {
      std::size_t n = 0;
      for (std::size_t base = 0; base < d; base += 64) {
        std::uint64_t word =
            in.read(static_cast<unsigned>(std::min<std::size_t>(64, d - base)), "index bitmap");
        for (; word != 0; word &= word - 1) {
          if (n == k) throw_bitmap_count(who, k + 1, k);
          idx[n++] =
              static_cast<std::uint32_t>(base + static_cast<unsigned>(std::countr_zero(word)));
        }
      }
      if (n != k) throw_bitmap_count(who, n, k);
      return;
    }
  }
}

/// Reads a sparse payload's body: idx.size() indices in [0, d) into idx, then
/// as many float32 values, adding scale * value to out[idx[i]]. The values'
/// length is checked before out is touched; throws decode_error naming `who`
/// (indices, length) or `value_field` (a non-finite value).
template <class T>
void read_sparse_add(bit_reader& in, std::size_t d, std::span<std::uint32_t> idx, T* out, T scale,
                     const char* who, const char* value_field) {
  read_indices(in, d, idx, who);
  require_payload_bits(in, 32 * static_cast<std::uint64_t>(idx.size()), who);
  const std::uint32_t* ix = idx.data();
  read_values(in, idx.size(), value_field,
              [out, ix, scale](std::size_t at, std::span<const float> v) {
                for (std::size_t i = 0; i < v.size(); ++i)
                  out[ix[at + i]] += scale * static_cast<T>(v[i]);
              });
}

}  // namespace ecopt::detail
