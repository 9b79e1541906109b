#pragma once
// RandK sparsification: keep k coordinates drawn uniformly without replacement.
// Scaled by d/k it is unbiased with omega = d/k - 1; unscaled (x o mask) it is
// a contraction with delta = k/d in expectation.
// Wangni, Wang, Liu, Zhang 2018, arXiv:1710.09854; Stich, Cordonnier, Jaggi
// 2018, arXiv:1809.07599.
//
// The indices are never sent: the decoder regenerates them from a counter_rng
// stream. With shared_seed the stream is keyed by (seed, round) only, so every
// rank keeps the same coordinates and payloads add in compressed form (shared
// randomness as in BytePS's same-seed RandK); otherwise it is the sender's
// private stream (seed, rank, round). Payload: k float32 values, increasing index.
//
// Indices are drawn by rejection into a d-bit mark set kept in the state (for
// k > d/2 the d - k dropped ones are drawn instead, so at most 2 draws per
// index are expected), then read back in increasing order. The mark set costs
// d/8 bytes, not the 4d of a Fisher-Yates permutation, and yields sorted
// indices without a sort when k is large.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

template <bool Scaled>
struct basic_rand_k {
  static constexpr std::string_view name = Scaled ? "rand_k" : "rand_k_unscaled";

  double ratio = 0.01;      ///< fraction of coordinates kept (used when k == 0)
  std::size_t k = 0;        ///< number kept; overrides ratio when nonzero
  bool shared_seed = true;  ///< same indices on every rank (summable payloads)

  void validate() const { detail::validate_ratio(name, ratio); }

  /// Effective k for dimension d: clamp(k ? k : round(ratio * d), 1, d).
  [[nodiscard]] std::size_t kept(std::size_t d) const noexcept {
    return detail::kept_count(ratio, k, d);
  }

  [[nodiscard]] std::uint64_t bits(std::size_t d) const noexcept {
    return 32 * static_cast<std::uint64_t>(kept(d));
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return bits(d); }

  [[nodiscard]] double omega(std::size_t d) const noexcept requires Scaled {
    return static_cast<double>(d) / static_cast<double>(kept(d)) - 1.0;
  }
  [[nodiscard]] double delta(std::size_t d) const noexcept requires(!Scaled) {
    return static_cast<double>(kept(d)) / static_cast<double>(d);
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    std::size_t k = 0;
    std::vector<std::uint64_t> marks;    ///< d-bit mark set, all zero between calls
    std::vector<std::uint32_t> indices;  ///< the k drawn indices, increasing
    /// Scratch only: nothing is carried from round to round (checkpoint.hpp).
    template <class Archive>
    void persist(Archive&) {}
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_index_dim(name, dim);
    const std::size_t kk = kept(dim);
    return state<T>{dim, kk, std::vector<std::uint64_t>((dim + 63) / 64),
                    std::vector<std::uint32_t>(kk)};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    draw(s, ctx);
    detail::write_gathered(out, x, std::span<const std::uint32_t>(s.indices));
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context& sender) const {
    detail::require_size(name, "output", out.size(), s.dim);
    detail::require_payload_bits(in, bits(s.dim), name.data());
    draw(s, sender);
    const T c = scale * factor<T>(s);
    const std::uint32_t* idx = s.indices.data();
    T* o = out.data();
    detail::read_values(in, s.k, "rand_k value",
                        [o, idx, c](std::size_t at, std::span<const float> v) {
                          for (std::size_t i = 0; i < v.size(); ++i)
                            o[idx[at + i]] += scaled(c, v[i], at + i);
                        });
    in.expect_end(name.data());
  }

  /// Payloads add in compressed form only when every rank keeps the same indices.
  [[nodiscard]] bool summable() const noexcept { return shared_seed; }
  [[nodiscard]] std::size_t summable_size(std::size_t d) const noexcept { return kept(d); }

  template <class T>
  void encode_summable(std::span<const T> x, state<T>& s, std::span<float> buf,
                       const round_context& ctx) const {
    require_shared();
    detail::require_size(name, "input", x.size(), s.dim);
    detail::require_size(name, "summable buffer", buf.size(), s.k);
    draw(s, ctx);
    for (std::size_t i = 0; i < s.k; ++i) buf[i] = static_cast<float>(x[s.indices[i]]);
  }

  template <class T>
  void decode_summed(std::span<const float> buf, state<T>& s, std::span<T> out, T scale,
                     const round_context& ctx) const {
    require_shared();
    detail::require_size(name, "summed buffer", buf.size(), s.k);
    detail::require_size(name, "output", out.size(), s.dim);
    detail::require_finite(buf, "summed value");
    draw(s, ctx);
    const T c = scale * factor<T>(s);
    for (std::size_t i = 0; i < s.k; ++i) out[s.indices[i]] += scaled(c, buf[i], i);
  }

  /// The indices this policy keeps for `ctx` (increasing); for tests and observers.
  template <class T>
  std::span<const std::uint32_t> draw_indices(state<T>& s, const round_context& ctx) const {
    draw(s, ctx);
    return s.indices;
  }

 private:
  template <class T>
  static T factor(const state<T>& s) noexcept {
    if constexpr (Scaled) {
      return static_cast<T>(static_cast<double>(s.dim) / static_cast<double>(s.k));
    } else {
      return T(1);
    }
  }

  /// c * v, checked after the scaling: a finite float32 times d/k can overflow a
  /// float model to infinity.
  template <class T>
  static T scaled(T c, float v, std::size_t index) {
    const T product = c * static_cast<T>(v);
    if (!std::isfinite(product)) [[unlikely]]
      detail::throw_not_finite("rand_k scaled value", index);
    return product;
  }

  void require_shared() const {
    if (!shared_seed) {
      throw invalid_argument(
          std::string(name) +
          ": summable payloads need shared_seed = true (indices differ per rank)");
    }
  }

  template <class T>
  void draw(state<T>& s, const round_context& ctx) const {
    counter_rng rng =
        shared_seed
            ? counter_rng::stream(ctx.seed, stream_purpose::shared_compression, 0, ctx.round)
            : counter_rng::stream(ctx.seed, stream_purpose::compression,
                                  static_cast<std::uint64_t>(ctx.rank), ctx.round);
    const std::size_t d = s.dim;
    const std::size_t kk = s.k;
    std::uint64_t* marks = s.marks.data();
    std::uint32_t* idx = s.indices.data();
    if (kk == d) {
      for (std::size_t i = 0; i < d; ++i) idx[i] = static_cast<std::uint32_t>(i);
      return;
    }
    // Mark the kept indices, or the dropped ones when those are fewer.
    const bool mark_dropped = kk > d / 2;
    const std::size_t m = mark_dropped ? d - kk : kk;
    for (std::size_t drawn = 0; drawn < m;) {
      const std::uint64_t j = rng.below(d);
      std::uint64_t& word = marks[j / 64];
      const std::uint64_t bit = std::uint64_t{1} << (j % 64);
      if (word & bit) continue;
      word |= bit;
      if (!mark_dropped) idx[drawn] = static_cast<std::uint32_t>(j);
      ++drawn;
    }
    const std::size_t words = s.marks.size();
    if (!mark_dropped && m * 32 < words) {
      // Few indices: sort them and clear their marks one by one.
      std::sort(idx, idx + m);
      for (std::size_t i = 0; i < m; ++i) marks[idx[i] / 64] = 0;
      return;
    }
    std::size_t n = 0;
    for (std::size_t w = 0; w < words; ++w) {
      std::uint64_t bits_here = marks[w];
      if (mark_dropped) {
        const std::size_t valid = std::min<std::size_t>(64, d - 64 * w);
        bits_here =
            ~bits_here & (valid == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << valid) - 1);
      }
      for (; bits_here != 0; bits_here &= bits_here - 1) {
        idx[n++] =
            static_cast<std::uint32_t>(64 * w + static_cast<unsigned>(std::countr_zero(bits_here)));
      }
      marks[w] = 0;
    }
  }
};

using rand_k = basic_rand_k<true>;
using rand_k_unscaled = basic_rand_k<false>;

static_assert(Compressor<rand_k, float> && Compressor<rand_k, double>);
static_assert(Compressor<rand_k_unscaled, float> && Compressor<rand_k_unscaled, double>);

}  // namespace ecopt
