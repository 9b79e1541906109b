#pragma once
// TopK sparsification: keep the k entries of largest magnitude, ties broken by
// the lower index so results are deterministic. A delta = k/d contraction.
// Alistarh, Hoefler, Johansson, Khirirat, Konstantinov, Renggli 2018,
// arXiv:1809.10505; Stich, Cordonnier, Jaggi 2018, arXiv:1809.07599.
//
// Payload: the index set, then the k kept values as float32 in index order.
// The index set is k fixed-width indices of ceil(log2 d) bits, increasing, or a
// d-bit bitmap when that is smaller; the choice depends on k and d only, so no
// flag is sent.
//
// Selection is a radix select on the bits of |x| (the magnitude order of
// non-negative IEEE numbers is the order of their bit patterns): a histogram of
// the top 8-16 bits over all of x finds the bucket that holds the k-th largest
// magnitude, later digits are resolved on that bucket's members only, and the
// survivors are merged in index order. Three passes over x, no sort.
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct top_k {
  static constexpr std::string_view name = "top_k";

  double ratio = 0.01;  ///< fraction of coordinates kept (used when k == 0)
  std::size_t k = 0;    ///< number kept; overrides ratio when nonzero

  void validate() const { detail::validate_ratio(name, ratio); }

  /// Effective k for dimension d: clamp(k ? k : round(ratio * d), 1, d).
  [[nodiscard]] std::size_t kept(std::size_t d) const noexcept {
    return detail::kept_count(ratio, k, d);
  }

  /// True when the index set travels as a d-bit bitmap.
  [[nodiscard]] bool uses_bitmap(std::size_t d) const noexcept {
    return static_cast<std::uint64_t>(d) < fixed_index_bits(d);
  }

  [[nodiscard]] std::uint64_t bits(std::size_t d) const noexcept {
    return 32 * static_cast<std::uint64_t>(kept(d)) +
           std::min<std::uint64_t>(fixed_index_bits(d), d);
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return bits(d); }
  [[nodiscard]] double delta(std::size_t d) const noexcept {
    return static_cast<double>(kept(d)) / static_cast<double>(d);
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    std::size_t k = 0;
    std::vector<std::uint32_t> chosen;      ///< k kept indices, increasing (decoder scratch too)
    std::vector<std::uint32_t> above;       ///< indices above the threshold bucket (< k)
    std::vector<std::uint32_t> candidates;  ///< indices in the threshold bucket (<= d)
    std::vector<std::uint32_t> histogram;   ///< 2^radix counts
    unsigned radix = 8;                     ///< bits per radix digit
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_index_dim(name, dim);
    const std::size_t kk = kept(dim);
    const unsigned radix = radix_for(dim);
    return state<T>{dim,
                    kk,
                    std::vector<std::uint32_t>(kk),
                    std::vector<std::uint32_t>(kk),
                    std::vector<std::uint32_t>(dim),
                    std::vector<std::uint32_t>(std::size_t{1} << radix),
                    radix};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context&) const {
    detail::require_size(name, "input", x.size(), s.dim);
    select(x, s);
    const std::size_t d = s.dim;
    const std::size_t kk = s.k;
    const std::uint32_t* chosen = s.chosen.data();
    if (uses_bitmap(d)) {
      std::size_t ci = 0;
      for (std::size_t base = 0; base < d; base += 64) {
        const std::size_t end = std::min(base + 64, d);
        std::uint64_t word = 0;
        for (; ci < kk && chosen[ci] < end; ++ci) word |= std::uint64_t{1} << (chosen[ci] - base);
        out.write(word, static_cast<unsigned>(end - base));
      }
    } else {
      detail::write_fields(out, kk, bits_for(d), [chosen](std::size_t i) { return chosen[i]; });
    }
    detail::write_gathered(out, x, std::span<const std::uint32_t>(chosen, kk));
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const std::size_t d = s.dim;
    const std::size_t kk = s.k;
    detail::require_payload_bits(in, bits(d), "top_k");
    std::uint32_t* idx = s.chosen.data();
    if (uses_bitmap(d)) {
      std::size_t n = 0;
      for (std::size_t base = 0; base < d; base += 64) {
        std::uint64_t word = in.read(static_cast<unsigned>(std::min<std::size_t>(64, d - base)),
                                     "top_k index bitmap");
        for (; word != 0; word &= word - 1) {
          if (n == kk) throw_bad_bitmap(">", kk);
          idx[n++] =
              static_cast<std::uint32_t>(base + static_cast<unsigned>(std::countr_zero(word)));
        }
      }
      if (n != kk) throw_bad_bitmap(std::to_string(n).c_str(), kk);
    } else {
      detail::read_fields(in, kk, bits_for(d), "top_k index", [&](std::size_t i, std::uint64_t v) {
        if (v >= d || (i > 0 && v <= idx[i - 1])) throw_bad_index(i, v, i > 0 ? idx[i - 1] : 0, d);
        idx[i] = static_cast<std::uint32_t>(v);
      });
    }
    T* o = out.data();
    detail::read_values(in, kk, "top_k value",
                        [o, idx, scale](std::size_t at, std::span<const float> v) {
                          for (std::size_t i = 0; i < v.size(); ++i)
                            o[idx[at + i]] += scale * static_cast<T>(v[i]);
                        });
    in.expect_end("top_k");
  }

 private:
  // Digit width: about d/16 buckets, 8 to 16 bits, so the histogram stays small
  // for small d and the threshold bucket holds few candidates for large d.
  static unsigned radix_for(std::size_t d) noexcept {
    return std::clamp(static_cast<unsigned>(std::bit_width(d)), 12u, 20u) - 4;
  }

  [[nodiscard]] std::uint64_t fixed_index_bits(std::size_t d) const noexcept {
    return static_cast<std::uint64_t>(kept(d)) * bits_for(d);
  }

  [[noreturn, gnu::cold]] static void throw_bad_bitmap(const char* found, std::size_t kk) {
    throw decode_error(std::string("corrupt top_k payload: index bitmap has ") + found +
                       " set bits, expected k = " + std::to_string(kk));
  }
  [[noreturn, gnu::cold]] static void throw_bad_index(std::size_t i, std::uint64_t v,
                                                      std::uint64_t prev, std::size_t d) {
    throw decode_error("corrupt top_k payload: index[" + std::to_string(i) +
                       "] = " + std::to_string(v) +
                       (v >= d ? " is out of range [0, " + std::to_string(d) + ")"
                               : " does not increase (previous " + std::to_string(prev) + ")"));
  }

  // Picks the digit holding the krem-th largest key from a histogram, counting
  // down from the top; krem becomes the rank within that digit's bucket.
  static std::uint32_t pick_digit(const std::uint32_t* hist, std::uint32_t buckets,
                                  std::size_t& krem) noexcept {
    std::size_t cum = 0;
    std::uint32_t v = buckets - 1;
    for (;; --v) {
      if (cum + hist[v] >= krem) break;
      cum += hist[v];
    }
    krem -= cum;
    return v;
  }

  // Fills s.chosen with the k indices of largest |x_j| (lower index first on
  // ties), in increasing order.
  template <class T>
  static void select(std::span<const T> x, state<T>& s) {
    using key_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    static_assert(sizeof(T) == sizeof(key_t));
    constexpr unsigned key_bits = 8 * sizeof(key_t) - 1;  // the sign bit is cleared
    constexpr key_t magnitude = ~key_t{0} >> 1;
    const T* xs = x.data();
    const auto key = [xs](std::size_t j) { return std::bit_cast<key_t>(xs[j]) & magnitude; };

    const std::size_t d = s.dim;
    const std::size_t kk = s.k;
    std::uint32_t* chosen = s.chosen.data();
    if (kk == d) {
      std::iota(chosen, chosen + d, std::uint32_t{0});
      return;
    }
    std::uint32_t* hist = s.histogram.data();
    std::uint32_t* above = s.above.data();
    std::uint32_t* cand = s.candidates.data();

    // Top digit over all of x.
    const unsigned radix = s.radix;
    const unsigned top_shift = key_bits - radix;
    std::fill_n(hist, std::size_t{1} << radix, 0u);
    for (std::size_t j = 0; j < d; ++j) ++hist[key(j) >> top_shift];
    std::size_t krem = kk;
    const key_t top = pick_digit(hist, std::uint32_t{1} << radix, krem);

    // Everything in a higher bucket is kept; the threshold bucket's members are candidates.
    std::size_t na = 0;
    std::size_t nc = 0;
    for (std::size_t j = 0; j < d; ++j) {
      const key_t digit = key(j) >> top_shift;
      if (digit < top) [[likely]]
        continue;
      if (digit > top) {
        above[na++] = static_cast<std::uint32_t>(j);
      } else {
        cand[nc++] = static_cast<std::uint32_t>(j);
      }
    }

    // Resolve the remaining digits on the candidates only, unless all of them are kept.
    const bool take_all = krem == nc;
    key_t threshold = top;
    if (!take_all) {
      unsigned consumed = radix;
      while (consumed < key_bits) {
        const unsigned width = std::min(radix, key_bits - consumed);
        const unsigned shift = key_bits - consumed - width;
        const key_t mask = (key_t{1} << width) - 1;
        std::fill_n(hist, std::size_t{1} << width, 0u);
        for (std::size_t c = 0; c < nc; ++c) {
          const key_t kv = key(cand[c]);
          if ((kv >> (shift + width)) == threshold) ++hist[(kv >> shift) & mask];
        }
        threshold = (threshold << width) | pick_digit(hist, std::uint32_t{1} << width, krem);
        consumed += width;
      }
    }

    // Merge the kept candidates (key above the threshold, or equal to it for the
    // first krem of them) with the indices above, both increasing.
    std::size_t equal_left = krem;
    std::size_t ai = 0;
    std::size_t n = 0;
    for (std::size_t c = 0; c < nc; ++c) {
      const std::uint32_t j = cand[c];
      bool keep = take_all;
      if (!keep) {
        const key_t kv = key(j);
        keep = kv > threshold;
        if (kv == threshold && equal_left > 0) {
          keep = true;
          --equal_left;
        }
      }
      if (!keep) continue;
      while (ai < na && above[ai] < j) chosen[n++] = above[ai++];
      chosen[n++] = j;
    }
    while (ai < na) chosen[n++] = above[ai++];
  }
};

static_assert(Compressor<top_k, float> && Compressor<top_k, double>);

}  // namespace ecopt
