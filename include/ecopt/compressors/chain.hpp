#pragma once
// chain<A, B>: sparsify with A, then compress the k kept values with B, e.g.
// chain<top_k, qsgd> (top-k, then QSGD on the kept values: the composition of
// sparsification and quantisation in Lin, Han, Mao, Wang, Dally 2018,
// arXiv:1712.01887, and Basu, Data, Karakus, Diggavi 2019, arXiv:1906.02367).
//
// A models SelectsCoordinates (k = A.kept(d) increasing indices, values kept
// unchanged); B is any Compressor, run on the k-vector y = x_S of kept values
// with a state made for dimension k.
//
// Payload: A's index set (detail/index_coding.hpp), then B's payload for y.
// Bits: the writer's count, at most index_bits_bound(k, d) + B.max_bits(k).
//
// Contraction. With S the kept set and C(x) = c * scatter_S(B(y)),
//   ||C(x) - x||^2 = ||c B(y) - y||^2 + ||x||^2 - ||y||^2,
// and a contractive A (E||y||^2 >= delta_A ||x||^2, as its error is what it drops):
//  * B contractive (delta_B): c = 1, E||B(y) - y||^2 <= (1 - delta_B)||y||^2, so
//    E||C(x) - x||^2 <= ||x||^2 - delta_B E||y||^2 <= (1 - delta_A delta_B)||x||^2.
//  * B unbiased (omega_B), not contractive: c = 1/(1 + omega_B), and
//    E||c B(y) - y||^2 = c^2 E||B(y)||^2 - 2c ||y||^2 + ||y||^2
//                     <= (c^2 (1 + omega_B) - 2c + 1) ||y||^2 = (1 - c) ||y||^2,
//    so E||C(x) - x||^2 <= (1 - delta_A / (1 + omega_B)) ||x||^2. The decoder
//    applies c, so delta(d) = delta_A / (1 + omega_B(k)) holds for what it adds.
//  * Otherwise no delta is declared and c = 1.
// (A B that declares both, like no_compression, takes the first case.) The
// scale shrinks what is sent when omega_B is large: QSGD over one bucket of k
// values has omega = sqrt(k)/s, so chain<top_k, qsgd> wants QSGD's buckets
// (bucket_size = 512 gives omega <= 5.7 at s = 4) for a useful delta.
//
// Randomness: B runs with the round's context whose seed is remixed
// (stage_context), so its draws never coincide with a random A's private
// stream; the decoder remixes the sender's context the same way.
#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/checkpoint.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/index_coding.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/compressors/qsgd.hpp"
#include "ecopt/compressors/selects_coordinates.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

namespace detail {

/// "chain<A, B>" as a constant string (NUL-terminated storage).
template <class A, class B>
struct chain_name {
  static constexpr std::string_view a = policy_name<A>();
  static constexpr std::string_view b = policy_name<B>();
  static constexpr auto storage = [] {
    std::array<char, a.size() + b.size() + 10> s{};
    std::size_t at = 0;
    for (const char ch : std::string_view("chain<")) s[at++] = ch;
    for (const char ch : a) s[at++] = ch;
    s[at++] = ',';
    s[at++] = ' ';
    for (const char ch : b) s[at++] = ch;
    s[at++] = '>';
    s[at] = '\0';
    return s;
  }();
  static constexpr std::string_view value{storage.data(), storage.size() - 1};
};

/// The context the second stage of a chain runs with: the same round and rank,
/// a remixed seed.
[[nodiscard]] constexpr round_context stage_context(const round_context& ctx) noexcept {
  round_context c = ctx;
  c.seed = mix64(ctx.seed ^ 0x636861696e2f4232ULL);  // "chain/B2"
  return c;
}

}  // namespace detail

template <class A, class B>
requires SelectsCoordinates<A, float> && Compressor<B, float>
struct chain {
  static constexpr std::string_view name = detail::chain_name<A, B>::value;

  A first{};   ///< the sparsifier
  B second{};  ///< the compressor of the kept values

  void validate() const {
    validate_policy(first);
    validate_policy(second);
  }

  [[nodiscard]] std::size_t kept(std::size_t d) const noexcept { return first.kept(d); }

  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept {
    const std::size_t kk = kept(d);
    return detail::index_bits_bound(kk, d) + static_cast<std::uint64_t>(second.max_bits(kk));
  }

  /// The factor decode applies to B's output: 1 / (1 + omega_B(k)) when B is
  /// unbiased and not contractive, else 1.
  [[nodiscard]] double stage_scale(std::size_t d) const noexcept {
    if constexpr (!ContractiveCompressor<B> && UnbiasedCompressor<B>) {
      return 1.0 / (1.0 + static_cast<double>(second.omega(kept(d))));
    } else {
      return 1.0;
    }
  }

  [[nodiscard]] double delta(std::size_t d) const noexcept requires ContractiveCompressor<A> &&
      (ContractiveCompressor<B> || UnbiasedCompressor<B>) {
    const auto delta_a = static_cast<double>(first.delta(d));
    if constexpr (ContractiveCompressor<B>) {
      return delta_a * static_cast<double>(second.delta(kept(d)));
    } else {
      return delta_a * stage_scale(d);
    }
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    std::size_t k = 0;
    compressor_state_t<A, T> first;      ///< A's state, dimension d
    compressor_state_t<B, T> second;     ///< B's state, dimension k
    std::vector<T> values;               ///< the kept values (encode) or B's output (decode)
    std::vector<std::uint32_t> indices;  ///< the decoded index set
    /// What A and B carry; the kept values and indices are per round.
    template <class Archive>
    void persist(Archive& a) requires PersistentState<compressor_state_t<A, T>> &&
        PersistentState<compressor_state_t<B, T>> {
      a.nest("first", first);
      a.nest("second", second);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    auto a = first.template make_state<T>(dim);
    const std::size_t kk = kept(dim);
    return state<T>{dim,
                    kk,
                    std::move(a),
                    second.template make_state<T>(kk),
                    std::vector<T>(kk),
                    std::vector<std::uint32_t>(kk)};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    const std::span<const std::uint32_t> idx = first.select(x, s.first);
    detail::require_size(name, "selection", idx.size(), s.k);
    T* v = s.values.data();
    std::uint32_t acc = 0;  // non-finite float32 values carry into bit 31
    for (std::size_t i = 0; i < s.k; ++i) {
      v[i] = x[idx[i]];
      acc |= (std::bit_cast<std::uint32_t>(static_cast<float>(v[i])) & 0x7f800000u) + 0x00800000u;
    }
    if ((acc >> 31) != 0) {
      for (std::size_t i = 0; i < s.k; ++i) {
        if (detail::not_finite_bits(static_cast<float>(v[i]))) {
          detail::throw_not_finite_input(name, idx[i]);
        }
      }
    }
    detail::write_indices(out, idx, s.dim);
    second.encode(std::span<const T>(v, s.k), s.second, out, detail::stage_context(ctx));
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context& sender) const {
    detail::require_size(name, "output", out.size(), s.dim);
    std::uint32_t* idx = s.indices.data();
    detail::read_indices(in, s.dim, std::span<std::uint32_t>(idx, s.k), name.data());
    // B decodes (and checks the rest of the payload) into scratch first, so a
    // corrupt payload leaves out untouched.
    T* v = s.values.data();
    std::fill_n(v, s.k, T(0));
    second.decode_add(in, s.second, std::span<T>(v, s.k), T(1), detail::stage_context(sender));
    const T c = scale * static_cast<T>(stage_scale(s.dim));
    T* o = out.data();
    for (std::size_t i = 0; i < s.k; ++i) o[idx[i]] += c * v[i];
  }
};

static_assert(SelectsCoordinates<top_k, float> && SelectsCoordinates<top_k, double>);
static_assert(Compressor<chain<top_k, qsgd>, float> && Compressor<chain<top_k, qsgd>, double>);

}  // namespace ecopt
