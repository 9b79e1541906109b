#pragma once
// Sampled-threshold top-k, the selection of Deep Gradient Compression: the
// magnitude threshold of the top k is estimated from a random sample, and every
// entry at or above it is sent, so about k entries travel without an exact
// selection. Lin, Han, Mao, Wang, Dally 2018, arXiv:1712.01887.
//
// Per encode, with target k = kept(d) and bound K = max_kept(d) = min(d,
// ceil(max_factor k)):
//  1. Sample m = round(sample_ratio d) magnitudes (at least 1), one uniform
//     draw in each of m equal strata of [0, d), from the sender's private
//     stream (seed, rank, round).
//  2. The threshold is the sample's r-th largest magnitude, r = ceil(sqrt(K/k)
//     k m / d): aiming at sqrt(k K) entries, the geometric middle of [k, K],
//     leaves equal room for the sampling error on either side.
//  3. One pass collects every entry at or above the threshold. A count in
//     [k, K] is sent as is. More than K: the exact top k among the collected
//     ones (DGC's refinement on the over-selected set; the exact top k of x when
//     more were found than the candidate buffer holds). Fewer than k: the exact
//     top k of x. DGC instead retries with the threshold scaled by 0.8 or 1.3;
//     an exact fallback bounds the cost and the count at once.
// So k <= count <= K always, and the kept set is the count largest magnitudes
// (the threshold keeps all ties), which makes this a deterministic contraction
// with delta = k/d, like top_k. The count varies with the seed when the sample
// is small, so this policy does not model SelectsCoordinates (chain.hpp).
//
// Payload: count - k in ceil(log2(K - k + 1)) bits, the index set
// (detail/index_coding.hpp), then count float32 values in index order.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/index_coding.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct threshold_top_k {
  static constexpr std::string_view name = "threshold_top_k";

  double ratio = 0.01;         ///< target fraction kept (used when k == 0)
  std::size_t k = 0;           ///< target number kept; overrides ratio when nonzero
  double sample_ratio = 0.01;  ///< fraction of coordinates sampled for the threshold
  double max_factor = 1.3;     ///< at most ceil(max_factor * k) entries are sent

  void validate() const {
    detail::validate_ratio(name, ratio);
    if (!(sample_ratio > 0.0 && sample_ratio <= 1.0)) {
      throw invalid_argument("threshold_top_k: sample_ratio = " + std::to_string(sample_ratio) +
                             " must be in (0, 1]");
    }
    if (!(max_factor >= 1.0 && max_factor <= 1e6)) {
      throw invalid_argument("threshold_top_k: max_factor = " + std::to_string(max_factor) +
                             " must be in [1, 1e6]");
    }
  }

  /// The target (and least) number kept: clamp(k ? k : round(ratio * d), 1, d).
  [[nodiscard]] std::size_t kept(std::size_t d) const noexcept {
    return detail::kept_count(ratio, k, d);
  }
  /// The most ever kept: min(d, ceil(max_factor * kept(d))).
  [[nodiscard]] std::size_t max_kept(std::size_t d) const noexcept {
    const std::size_t kk = kept(d);
    const double bound = std::ceil(max_factor * static_cast<double>(kk));
    return bound >= static_cast<double>(d) ? d : std::max(kk, static_cast<std::size_t>(bound));
  }
  /// Sampled coordinates: clamp(round(sample_ratio * d), 1, d).
  [[nodiscard]] std::size_t samples(std::size_t d) const noexcept {
    return detail::kept_count(sample_ratio, 0, d);
  }

  /// Bits of the count field.
  [[nodiscard]] unsigned count_bits(std::size_t d) const noexcept {
    return bits_for(static_cast<std::uint64_t>(max_kept(d) - kept(d)) + 1);
  }

  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept {
    // The index bound grows with the count except at count = d (implied set).
    const std::size_t kk = kept(d);
    const std::size_t most = max_kept(d);
    const std::size_t widest = most < d ? most : std::max(kk, d - 1);
    const std::uint64_t index_bound =
        std::max(detail::index_bits_bound(widest, d), detail::index_bits_bound(kk, d));
    return count_bits(d) + index_bound + 32 * static_cast<std::uint64_t>(most);
  }
  /// At least k of the largest magnitudes are kept, whatever the sample.
  [[nodiscard]] double delta(std::size_t d) const noexcept {
    return static_cast<double>(kept(d)) / static_cast<double>(d);
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    std::size_t k = 0;
    std::size_t max_kept = 0;
    std::vector<std::uint32_t> chosen;               ///< the kept indices (max_kept entries)
    std::vector<detail::magnitude_key_t<T>> values;  ///< their values' bits
    std::vector<detail::magnitude_key_t<T>> sample;  ///< sampled keys
    detail::top_k_selector<T> selector;
    std::size_t count = 0;        ///< entries kept by the last encode
    bool used_threshold = false;  ///< the last encode sent the sampled threshold's set as is
    /// Nothing is carried from round to round (the threshold is sampled anew).
    template <class Archive>
    void persist(Archive&) {}
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_index_dim(name, dim);
    const std::size_t kk = kept(dim);
    const std::size_t most = max_kept(dim);
    return state<T>{dim,
                    kk,
                    most,
                    std::vector<std::uint32_t>(most),
                    std::vector<detail::magnitude_key_t<T>>(most),
                    std::vector<detail::magnitude_key_t<T>>(samples(dim)),
                    detail::top_k_selector<T>(dim, kk, 2 * most),
                    0,
                    false};
  }

  /// The kept indices for x in this round (increasing, between kept(d) and
  /// max_kept(d) of them), also left in s.chosen.
  template <class T>
  std::span<const std::uint32_t> select_for(std::span<const T> x, state<T>& s,
                                            const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    const std::size_t d = s.dim;
    const std::size_t kk = s.k;
    std::uint32_t* chosen = s.chosen.data();
    s.used_threshold = false;
    if (kk == d) {
      s.selector.select(x, kk, chosen);
      std::copy_n(s.selector.kept_bits(), kk, s.values.data());
      s.count = kk;
      return {chosen, kk};
    }
    using key_t = detail::magnitude_key_t<T>;
    // Stratified sample: one uniform draw in each of m equal strata.
    counter_rng rng = counter_rng::stream(ctx.seed, stream_purpose::compression,
                                          static_cast<std::uint64_t>(ctx.rank), ctx.round);
    const std::size_t m = s.sample.size();
    key_t* sample = s.sample.data();
    const T* xs = x.data();
    for (std::size_t i = 0; i < m; ++i) {
      const std::size_t lo = i * d / m;
      const std::size_t hi = (i + 1) * d / m;
      sample[i] = detail::magnitude_key(xs[lo + rng.below(hi - lo)]);
    }
    const double aim = std::sqrt(static_cast<double>(s.max_kept) / static_cast<double>(kk)) *
                       static_cast<double>(kk) * static_cast<double>(m) / static_cast<double>(d);
    const std::size_t r = std::clamp<std::size_t>(static_cast<std::size_t>(std::ceil(aim)), 1, m);
    std::nth_element(sample, sample + (r - 1), sample + m, std::greater<>());
    const key_t threshold = sample[r - 1];

    const std::size_t n = s.selector.collect(x, threshold);
    if (n >= kk && n <= s.max_kept) {
      std::copy_n(s.selector.candidates(), n, chosen);
      std::copy_n(s.selector.candidate_bits(), n, s.values.data());
      s.count = n;
      s.used_threshold = true;
      return {chosen, n};
    }
    if (n > s.max_kept && n <= s.selector.capacity()) {
      s.selector.select_among(n, kk, chosen);  // refine on the over-selected set
    } else {
      s.selector.select(x, kk, chosen);
    }
    std::copy_n(s.selector.kept_bits(), kk, s.values.data());
    s.count = kk;
    return {chosen, kk};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    const auto idx = select_for(x, s, ctx);
    out.write(idx.size() - s.k, count_bits(s.dim));
    detail::write_indices(out, idx, s.dim);
    detail::write_kept_values<T>(name, out, s.values.data(), idx);
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const std::uint64_t extra = in.read(count_bits(s.dim), "threshold_top_k count");
    if (extra > s.max_kept - s.k) {
      throw decode_error("corrupt threshold_top_k payload: count = " + std::to_string(s.k + extra) +
                         " exceeds max_kept = " + std::to_string(s.max_kept));
    }
    const auto n = static_cast<std::size_t>(s.k + extra);
    detail::read_sparse_add(in, s.dim, std::span<std::uint32_t>(s.chosen.data(), n), out.data(),
                            scale, "threshold_top_k", "threshold_top_k value");
    in.expect_end("threshold_top_k");
  }
};

static_assert(Compressor<threshold_top_k, float> && Compressor<threshold_top_k, double>);

}  // namespace ecopt
