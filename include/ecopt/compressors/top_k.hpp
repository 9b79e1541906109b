#pragma once
// TopK sparsification: keep the k entries of largest magnitude, ties broken by
// the lower index so results are deterministic. A delta = k/d contraction.
// Alistarh, Hoefler, Johansson, Khirirat, Konstantinov, Renggli 2018,
// arXiv:1809.10505; Stich, Cordonnier, Jaggi 2018, arXiv:1809.07599.
//
// Payload: the index set (detail/index_coding.hpp: the smallest of fixed width,
// Golomb-Rice gaps, Elias-gamma gaps or a bitmap, behind a 2-bit tag), then the
// k kept values as float32 in index order. The size depends on the set, so the
// writer's count is exact and max_bits(d) bounds it; there is no bits(d).
//
// Selection (detail::top_k_selector) orders entries by key = the bits of |x|
// (the magnitude order of non-negative IEEE numbers is the order of their bit
// patterns; a NaN sorts above infinity) and never sorts:
//  1. A fixed, evenly spread sample of 16384 keys gives a lower bound L whose
//     sample rank has 4 standard deviations of margin over k's.
//  2. One streaming pass collects, in index order, the indices with key >= L
//     and their values' bits (about 1.35 k of them at k = d/100). Each 64
//     entries fold to a 64-bit hit mask by vector compares, so the pass runs
//     near memory bandwidth and only hits cost more.
//  3. The k-th largest key among the candidates is found by radix select on a
//     copy of their keys, each round histogramming 11 bits of the range that is
//     left, and the candidates are filtered in index order: key above it, or
//     equal to it for the first few. The kept values come from the candidates,
//     so x is read once, in order.
// If the sample misled (fewer than k or too many collected) or d is small, a
// histogram pass over x finds the top bucket and the same collect-and-finish
// runs from it; only when heavy ties overflow the candidate buffer (2k + 65536
// entries) does it fall back to histogram passes over all of x. The result is
// exact either way. At d = 2^24, k = d/100, float, one core: about 5 ms per
// encode, 12-14x faster than std::nth_element over the magnitudes.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/index_coding.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ecopt {

namespace detail {

/// The unsigned integer whose order is the magnitude order of T's values.
template <class T>
using magnitude_key_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

template <class T>
[[nodiscard]] inline magnitude_key_t<T> magnitude_key(T v) noexcept {
  using key_t = magnitude_key_t<T>;
  static_assert(sizeof(T) == sizeof(key_t));
  return std::bit_cast<key_t>(v) & (~key_t{0} >> 1);
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_not_finite_input(std::string_view who,
                                                                          std::size_t j) {
  throw numeric_error(std::string(who) + ": input[" + std::to_string(j) +
                      "] is not finite as float32 (NaN, infinity or beyond the float32 range)");
}

/// Appends n values of type T, given by their bits, as float32, and throws
/// numeric_error naming idx[i] when one is not a finite float32. A kept set
/// holds the largest keys, so this also catches any NaN or infinity in x.
template <class T>
void write_kept_values(std::string_view who, bit_writer& w, const magnitude_key_t<T>* bits,
                       std::span<const std::uint32_t> idx) {
  float buf[value_chunk];
  for (std::size_t at = 0; at < idx.size(); at += value_chunk) {
    const std::size_t m = std::min(value_chunk, idx.size() - at);
    std::uint32_t acc = 0;
    for (std::size_t i = 0; i < m; ++i) {
      buf[i] = static_cast<float>(std::bit_cast<T>(bits[at + i]));
      acc |= (std::bit_cast<std::uint32_t>(buf[i]) & 0x7f800000u) + 0x00800000u;
    }
    if ((acc >> 31) != 0) {
      for (std::size_t i = 0; i < m; ++i) {
        if (not_finite_bits(buf[i])) throw_not_finite_input(who, idx[at + i]);
      }
    }
    w.write_f32s(std::span<const float>(buf, m));
  }
}

/// Exact top-k selection by magnitude, lower index first on ties, with all
/// scratch made up front. See top_k.hpp for the algorithm.
template <class T>
class top_k_selector {
 public:
  using key_t = magnitude_key_t<T>;
  static constexpr key_t magnitude = ~key_t{0} >> 1;  ///< clears the sign bit
  static constexpr unsigned digit_bits = 11;
  static constexpr std::size_t sample_size = 16384;  ///< keys sampled, when d is large enough
  static constexpr std::size_t sample_block = 8;     ///< adjacent keys per sampled block
  static constexpr std::size_t group = 64;           ///< entries per collect-pass mask

  top_k_selector() = default;

  /// Scratch for selecting k of d: room for 2k + 65536 candidates (at most d),
  /// or `candidates` when that is larger.
  top_k_selector(std::size_t d, std::size_t k, std::size_t candidates = 0)
      : cap_(std::min(d, std::max(2 * k + 65536, candidates))),
        use_sample_(d >= 4 * sample_size && k <= d / 8),
        cand_(cap_ + group),
        raw_(std::max(cap_ + group, use_sample_ ? sample_size : std::size_t{0})),
        work_(cap_),
        kept_(std::min(d, k)),
        hist_(std::size_t{1} << digit_bits) {}

  /// How many candidates collect() may return.
  [[nodiscard]] std::size_t capacity() const noexcept { return cap_; }

  /// Writes the k (1 <= k <= d) indices of largest |x_j| to out, increasing,
  /// and their values' bits to kept_bits().
  void select(std::span<const T> x, std::size_t k, std::uint32_t* out) {
    const std::size_t d = x.size();
    if (k >= d) {
      std::iota(out, out + d, std::uint32_t{0});
      for (std::size_t j = 0; j < d; ++j) kept_[j] = std::bit_cast<key_t>(x[j]);
      return;
    }
    if (use_sample_) {
      const key_t lower = sample_lower_bound(x, k);
      if (lower > 0) {
        const std::size_t n = collect(x, lower);
        if (n >= k && n <= cap_) {
          select_among(n, k, out);
          return;
        }
      }
    }
    select_by_histograms(x, k, out);
  }

  /// Collects, in index order, the indices j of x with key(x_j) >= lower and
  /// their values' bits (candidates() and candidate_bits()). Returns how many
  /// there were, or a number above capacity() as soon as they do not fit.
  ///
  /// Each group of 64 entries is folded to a 64-bit hit mask by 16-byte vector
  /// compares (hit_mask), and only the set bits are visited, so a group without
  /// hits costs a few vector instructions and one well-predicted branch.
  std::size_t collect(std::span<const T> x, key_t lower) noexcept {
    const T* xs = x.data();
    const std::size_t d = x.size();
    const std::size_t cap = cap_;
    std::uint32_t* cand = cand_.data();
    key_t* raw = raw_.data();
    // The vector prefilter of double is exact below the NaN patterns only.
    const bool exact = sizeof(T) == 4 || lower <= magnitude_key(std::numeric_limits<T>::infinity());
    std::size_t n = 0;
    key_t top = lower;  // the largest key collected
    std::size_t j0 = 0;
    for (; exact && j0 + group <= d; j0 += group) {
      std::uint64_t m = hit_mask(xs + j0, lower);
      while (m != 0) {
        const std::size_t j = j0 + static_cast<unsigned>(std::countr_zero(m));
        const key_t bits = std::bit_cast<key_t>(xs[j]);
        cand[n] = static_cast<std::uint32_t>(j);
        raw[n] = bits;
        top = std::max<key_t>(top, bits & magnitude);
        ++n;
        m &= m - 1;
      }
      if (n > cap) return n;  // the 64 spare entries took this group's overflow
    }
    for (; j0 < d; ++j0) {
      const key_t bits = std::bit_cast<key_t>(xs[j0]);
      const bool hit = (bits & magnitude) >= lower;
      cand[n] = static_cast<std::uint32_t>(j0);
      raw[n] = bits;
      top = hit ? std::max<key_t>(top, bits & magnitude) : top;
      n += static_cast<std::size_t>(hit);
      if (n > cap) return n;
    }
    lower_ = lower;
    top_ = top;
    return n;
  }

  [[nodiscard]] const std::uint32_t* candidates() const noexcept { return cand_.data(); }
  /// The bits of the collected candidates' values.
  [[nodiscard]] const key_t* candidate_bits() const noexcept { return raw_.data(); }
  /// The bits of the values at the indices the last select() or select_among() wrote.
  [[nodiscard]] const key_t* kept_bits() const noexcept { return kept_.data(); }

  /// Writes to out, increasing, the k indices of largest key among the first n
  /// candidates of the last collect() (k <= n <= capacity()), lower index first on ties,
  /// and their values' bits to kept_bits().
  void select_among(std::size_t n, std::size_t k, std::uint32_t* out) {
    const std::uint32_t* cand = cand_.data();
    const key_t* raw = raw_.data();
    key_t* kept = kept_.data();
    if (n == k) {
      std::copy_n(cand, n, out);
      std::copy_n(raw, n, kept);
      return;
    }
    std::size_t krem = k;
    const key_t threshold = kth_largest(raw, n, lower_, top_, krem);
    // Keep keys above the threshold, and the first krem equal to it; the loop
    // stops at the k-th kept index.
    std::size_t equal_left = krem;
    std::size_t m = 0;
    for (std::size_t i = 0; i < n && m < k; ++i) {
      const key_t kv = raw[i] & magnitude;
      const std::size_t take_equal =
          static_cast<std::size_t>(kv == threshold) & static_cast<std::size_t>(equal_left != 0);
      const std::size_t keep = static_cast<std::size_t>(kv > threshold) | take_equal;
      equal_left -= take_equal;
      out[m] = cand[i];
      kept[m] = raw[i];
      m += keep;
    }
  }

 private:
  // Bit i set when key(p[i]) >= lower, for the 64 entries from p. float keys
  // compare as signed 32-bit integers (they are below 2^31). SSE2 has no 64-bit
  // integer compare, so double tests !(|x| < bound), the key order for every
  // value when the bound is not a NaN pattern (a NaN passes, and its key is
  // above every bound that is not). On SSE2 each 4 (2) lanes fold with one
  // movemask; elsewhere GNU vector extensions fold each 16 entries by OR-ing
  // lanes weighted by their bit.
  static std::uint64_t hit_mask(const T* p, key_t lower) noexcept {
    std::uint64_t m = 0;
#if defined(__SSE2__)
    if constexpr (sizeof(T) == 4) {
      const __m128i magnitude = _mm_set1_epi32(0x7fffffff);
      const __m128i below = _mm_set1_epi32(static_cast<int>(lower) - 1);  // lower < 2^31
      for (unsigned q = 0; q < group / 4; ++q) {
        const __m128i v =
            _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4 * q)), magnitude);
        const auto bits =
            static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(v, below))));
        m |= std::uint64_t{bits} << (4 * q);
      }
    } else {
      const __m128d magnitude = _mm_castsi128_pd(_mm_set1_epi64x(0x7fffffffffffffffLL));
      const __m128d bound = _mm_set1_pd(std::bit_cast<double>(lower));
      for (unsigned q = 0; q < group / 2; ++q) {
        const __m128d v = _mm_and_pd(_mm_loadu_pd(p + 2 * q), magnitude);
        const auto bits = static_cast<unsigned>(_mm_movemask_pd(_mm_cmpnlt_pd(v, bound)));
        m |= std::uint64_t{bits} << (2 * q);
      }
    }
#else
    using lane_t = std::make_signed_t<key_t>;
    constexpr std::size_t lanes = 16 / sizeof(T);
    using ivec [[gnu::vector_size(16)]] = lane_t;
    using fvec [[gnu::vector_size(16)]] = T;
    ivec magnitude{};
    ivec ilower{};
    fvec flower{};
    ivec weight{};
    for (std::size_t i = 0; i < lanes; ++i) {
      magnitude[i] = static_cast<lane_t>(~key_t{0} >> 1);
      ilower[i] = static_cast<lane_t>(lower);
      flower[i] = std::bit_cast<T>(lower);
      weight[i] = lane_t{1} << i;
    }
    for (std::size_t q = 0; q < group; q += 16) {
      ivec acc{};
      for (std::size_t v = 0; v < 16; v += lanes) {
        ivec a;
        std::memcpy(&a, p + q + v, 16);
        a &= magnitude;
        if constexpr (sizeof(T) == 4) {
          acc |= (a >= ilower) & (weight << static_cast<lane_t>(v));
        } else {
          fvec f;
          std::memcpy(&f, &a, 16);
          acc |= ~(f < flower) & (weight << static_cast<lane_t>(v));
        }
      }
      lane_t bits = 0;
      for (std::size_t i = 0; i < lanes; ++i) bits |= acc[i];
      m |= std::uint64_t{static_cast<std::uint16_t>(bits)} << q;
    }
#endif
    return m;
  }

  // The k-th largest key of the values' bits src[0, n) (keys in [lo, hi]); krem
  // becomes the number of keys equal to it among the k largest. Each round
  // histograms 11 bits of the range left and compacts the keys of the chosen
  // bucket into work_.
  key_t kth_largest(const key_t* src, std::size_t n, key_t lo, key_t hi, std::size_t& krem) {
    std::uint32_t* hist = hist_.data();
    key_t* work = work_.data();
    while (lo != hi) {
      const auto width = static_cast<unsigned>(std::bit_width(static_cast<key_t>(hi - lo)));
      const unsigned shift = width > digit_bits ? width - digit_bits : 0;
      const std::size_t buckets = static_cast<std::size_t>((hi - lo) >> shift) + 1;
      std::fill_n(hist, buckets, 0u);
      for (std::size_t i = 0; i < n; ++i) ++hist[((src[i] & magnitude) - lo) >> shift];
      const std::size_t b = pick_bucket(hist, buckets, krem);
      key_t nlo = ~key_t{0};
      key_t nhi = 0;
      std::size_t m = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const key_t kv = src[i] & magnitude;
        work[m] = kv;
        const bool in = ((kv - lo) >> shift) == b;
        m += static_cast<std::size_t>(in);
        nlo = in ? std::min(nlo, kv) : nlo;
        nhi = in ? std::max(nhi, kv) : nhi;
      }
      src = work;
      n = m;
      lo = nlo;
      hi = nhi;
    }
    return lo;
  }

  // The bucket that holds the krem-th largest key, counting down from the top;
  // krem becomes the rank within that bucket.
  static std::size_t pick_bucket(const std::uint32_t* hist, std::size_t buckets,
                                 std::size_t& krem) noexcept {
    std::size_t cum = 0;
    std::size_t v = buckets - 1;
    for (;; --v) {
      if (cum + hist[v] >= krem) break;
      cum += hist[v];
    }
    krem -= cum;
    return v;
  }

  // A key below the k-th largest with high probability: the key of sample rank
  // mp + 4 sqrt(mp) + 4 among sample_size keys, mp = sample_size k / d the
  // expected rank of the k-th largest (for k = d/100 about 1.35 k keys pass).
  // Blocks of 8 adjacent keys at an even stride keep the sample to 2048 cache
  // lines. Returns 0 when the sample
  // cannot give a useful bound.
  key_t sample_lower_bound(std::span<const T> x, std::size_t k) {
    const std::size_t d = x.size();
    constexpr std::size_t blocks = sample_size / sample_block;
    const std::size_t stride = d / blocks;
    key_t* keys = raw_.data();
    for (std::size_t b = 0; b < blocks; ++b) {
      const T* xb = x.data() + b * stride;
      for (std::size_t i = 0; i < sample_block; ++i) {
        keys[b * sample_block + i] = magnitude_key(xb[i]);
      }
    }
    const double mp =
        static_cast<double>(sample_size) * static_cast<double>(k) / static_cast<double>(d);
    const double rank = std::ceil(mp + 4.0 * std::sqrt(mp) + 4.0);
    if (rank >= static_cast<double>(sample_size)) return 0;
    const auto r = static_cast<std::size_t>(rank);
    std::nth_element(keys, keys + (r - 1), keys + sample_size, std::greater<>());
    return keys[r - 1];
  }

  // Fallback: a histogram of the top 11 bits over x; when the top bucket and
  // those above it fit the candidate buffer they are collected and finished as
  // above, otherwise more histogram passes over x narrow the threshold down
  // (heavy ties) and a last pass writes the kept indices.
  void select_by_histograms(std::span<const T> x, std::size_t k, std::uint32_t* out) {
    const std::size_t d = x.size();
    const T* xs = x.data();
    std::uint32_t* hist = hist_.data();
    key_t lo = 0;
    key_t hi = ~key_t{0} >> 1;
    std::size_t krem = k;
    bool first = true;
    while (lo != hi) {
      const auto width = static_cast<unsigned>(std::bit_width(static_cast<key_t>(hi - lo)));
      const unsigned shift = width > digit_bits ? width - digit_bits : 0;
      const std::size_t buckets = static_cast<std::size_t>((hi - lo) >> shift) + 1;
      std::fill_n(hist, buckets, 0u);
      for (std::size_t j = 0; j < d; ++j) {
        const key_t kv = magnitude_key(xs[j]);
        if (kv >= lo && kv <= hi) ++hist[(kv - lo) >> shift];
      }
      const std::size_t b = pick_bucket(hist, buckets, krem);
      const key_t nlo = lo + (static_cast<key_t>(b) << shift);
      const key_t nhi = std::min<key_t>(hi, nlo + ((key_t{1} << shift) - 1));
      if (first) {
        first = false;
        // The keys above the bucket and the bucket's fit: collect them and finish there.
        if ((k - krem) + hist[b] <= cap_) {
          select_among(collect(x, nlo), k, out);
          return;
        }
      }
      lo = nlo;
      hi = nhi;
    }
    std::size_t equal_left = krem;
    std::size_t m = 0;
    for (std::size_t j = 0; j < d && m < k; ++j) {
      const key_t kv = magnitude_key(xs[j]);
      const std::size_t take_equal =
          static_cast<std::size_t>(kv == lo) & static_cast<std::size_t>(equal_left != 0);
      equal_left -= take_equal;
      out[m] = static_cast<std::uint32_t>(j);
      kept_[m] = std::bit_cast<key_t>(xs[j]);
      m += static_cast<std::size_t>(kv > lo) | take_equal;
    }
  }

  std::size_t cap_ = 0;
  bool use_sample_ = false;
  key_t lower_ = 0;  ///< the last collect's bound: its keys lie in [lower_, top_]
  key_t top_ = 0;
  std::vector<std::uint32_t> cand_;  ///< collected indices (cap + 64)
  std::vector<key_t> raw_;           ///< their values' bits (cap + 64); the sample before that
  std::vector<key_t> work_;          ///< radix-select scratch (cap)
  std::vector<key_t> kept_;          ///< the kept values' bits (k)
  std::vector<std::uint32_t> hist_;  ///< 2^11 counts
};

}  // namespace detail

struct top_k {
  static constexpr std::string_view name = "top_k";

  double ratio = 0.01;  ///< fraction of coordinates kept (used when k == 0)
  std::size_t k = 0;    ///< number kept; overrides ratio when nonzero

  void validate() const { detail::validate_ratio(name, ratio); }

  /// Effective k for dimension d: clamp(k ? k : round(ratio * d), 1, d).
  [[nodiscard]] std::size_t kept(std::size_t d) const noexcept {
    return detail::kept_count(ratio, k, d);
  }

  /// Worst-case payload: the index set's bound plus 32 bits per kept value.
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept {
    const std::size_t kk = kept(d);
    return detail::index_bits_bound(kk, d) + 32 * static_cast<std::uint64_t>(kk);
  }
  [[nodiscard]] double delta(std::size_t d) const noexcept {
    return static_cast<double>(kept(d)) / static_cast<double>(d);
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    std::size_t k = 0;
    std::vector<std::uint32_t> chosen;  ///< k kept indices, increasing (decoder scratch too)
    detail::top_k_selector<T> selector;
    /// Scratch only: nothing is carried from round to round (checkpoint.hpp).
    template <class Archive>
    void persist(Archive&) {}
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_index_dim(name, dim);
    const std::size_t kk = kept(dim);
    return state<T>{dim, kk, std::vector<std::uint32_t>(kk), detail::top_k_selector<T>(dim, kk)};
  }

  /// The kept indices for x (increasing, kept(d) of them), also left in s.chosen.
  template <class T>
  std::span<const std::uint32_t> select(std::span<const T> x, state<T>& s) const {
    detail::require_size(name, "input", x.size(), s.dim);
    s.selector.select(x, s.k, s.chosen.data());
    return {s.chosen.data(), s.k};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context&) const {
    const auto idx = select(x, s);
    detail::write_indices(out, idx, s.dim);
    detail::write_kept_values<T>(name, out, s.selector.kept_bits(), idx);
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    detail::read_sparse_add(in, s.dim, std::span<std::uint32_t>(s.chosen.data(), s.k), out.data(),
                            scale, "top_k", "top_k value");
    in.expect_end("top_k");
  }
};

static_assert(Compressor<top_k, float> && Compressor<top_k, double>);

}  // namespace ecopt
