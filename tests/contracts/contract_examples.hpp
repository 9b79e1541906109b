#pragma once
// Shared pieces of the compressor tests: which instance of each policy the
// contracts exercise, random inputs, and a harness that owns a state and a
// payload buffer reserved for max_bits (so encode/decode never allocate).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/all.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt::test {

/// The entries of a registry tuple that satisfy Pred: the statistical contracts
/// run only on policies that declare what they check, so no instantiation of
/// them is vacuous.
template <template <class> class Pred, class Tuple>
struct filter_registry;
template <template <class> class Pred, class... Ts>
struct filter_registry<Pred, std::tuple<Ts...>> {
  using type = decltype(std::tuple_cat(
      std::declval<std::conditional_t<Pred<Ts>::value, std::tuple<Ts>, std::tuple<>>>()...));
};

template <class C>
struct declares_omega : std::bool_constant<UnbiasedCompressor<C>> {};
template <class C>
struct declares_delta : std::bool_constant<ContractiveCompressor<C>> {};

using unbiased_compressors = filter_registry<declares_omega, all_compressors>::type;
using contractive_compressors = filter_registry<declares_delta, all_compressors>::type;

/// The instance a contract tests: a default-constructed policy unless that is
/// not informative at the small test dimensions. `randomized` marks policies
/// whose payload depends on the seed (unbiased ones with omega > 0 are found
/// without it).
template <class C>
struct contract_traits {
  static C make() { return C{}; }
  static constexpr bool randomized = false;
};
template <>
struct contract_traits<top_k> {
  static top_k make() { return top_k{.ratio = 0.1}; }
  static constexpr bool randomized = false;
};
template <>
struct contract_traits<global_top_k> {
  static global_top_k make() { return global_top_k{.ratio = 0.1}; }
  static constexpr bool randomized = false;
};
template <>
struct contract_traits<threshold_top_k> {  // the sampled threshold's count varies with the seed
  static threshold_top_k make() { return threshold_top_k{.ratio = 0.1, .sample_ratio = 0.2}; }
  static constexpr bool randomized = true;
};
template <>
struct contract_traits<chain<top_k, qsgd>> {
  static chain<top_k, qsgd> make() { return {.first = {.ratio = 0.1}}; }
  static constexpr bool randomized = true;
};
template <>
struct contract_traits<chain<top_k, scaled_sign>> {
  static chain<top_k, scaled_sign> make() { return {.first = {.ratio = 0.1}}; }
  static constexpr bool randomized = false;
};
template <>
struct contract_traits<rand_k> {
  static rand_k make() { return rand_k{.ratio = 0.1}; }
  static constexpr bool randomized = true;
};
template <>
struct contract_traits<rand_k_unscaled> {
  static rand_k_unscaled make() { return rand_k_unscaled{.ratio = 0.1}; }
  static constexpr bool randomized = true;
};
template <>
struct contract_traits<power_sgd> {  // deterministic, but Q is drawn from the seed
  static power_sgd make() { return power_sgd{}; }
  static constexpr bool randomized = true;
};
template <>
struct contract_traits<count_sketch> {  // deterministic, but the hashes are drawn from the seed
  static count_sketch make() { return count_sketch{}; }
  static constexpr bool randomized = true;
};
template <>
struct contract_traits<qsgd> {
  static qsgd make() { return qsgd{}; }
  static constexpr bool randomized = true;
};

/// per_block: a one-entry block that travels dense ahead of the rest of the
/// vector, compressed as one block (the dense and the framed paths both run).
template <class C>
per_block<C> split_after_first(C c) {
  per_block<C> p{.compressor = c, .dense_below = 2, .min_gain = 0};
  p.layout.add_vector("head", 1);
  return p;
}
template <>
struct contract_traits<per_block<top_k>> {
  static per_block<top_k> make() { return split_after_first(top_k{.ratio = 0.1}); }
  static constexpr bool randomized = false;
};
template <>
struct contract_traits<per_block<rand_k>> {
  static per_block<rand_k> make() { return split_after_first(rand_k{.ratio = 0.1}); }
  static constexpr bool randomized = true;
};
template <>
struct contract_traits<per_block<power_sgd>> {  // one block: power_sgd itself
  static per_block<power_sgd> make() { return {.dense_below = 0, .min_gain = 0}; }
  static constexpr bool randomized = true;
};

/// Standard normal entries from the test stream `seed`.
template <class T>
std::vector<T> random_vector(std::size_t d, std::uint64_t seed) {
  auto rng = counter_rng::stream(seed, stream_purpose::test, 0, 0);
  std::vector<T> v(d);
  for (auto& x : v) x = static_cast<T>(rng.normal());
  return v;
}

template <class T>
double squared_norm(std::span<const T> x) {
  double s = 0;
  for (const T v : x) s += static_cast<double>(v) * static_cast<double>(v);
  return s;
}

template <class T>
double squared_distance(std::span<const T> a, std::span<const T> b) {
  double s = 0;
  for (std::size_t j = 0; j < a.size(); ++j) {
    const double e = static_cast<double>(a[j]) - static_cast<double>(b[j]);
    s += e * e;
  }
  return s;
}

/// A compressor with one worker's state and a payload buffer.
template <class C, class T>
struct harness {
  C comp;
  std::size_t dim;
  compressor_state_t<C, T> state;
  std::vector<std::byte> payload;
  std::uint64_t bits = 0;

  harness(const C& c, std::size_t d) : comp(c), dim(d), state(c.template make_state<T>(d)) {
    payload.reserve(static_cast<std::size_t>((c.max_bits(d) + 7) / 8));
  }

  /// Encodes x into `payload`; returns the payload bits.
  std::uint64_t encode(std::span<const T> x, const round_context& ctx) {
    bit_writer w(payload);
    comp.encode(x, state, w, ctx);
    w.finish();
    bits = w.bits();
    return bits;
  }

  void decode_add(std::span<const std::byte> p, std::span<T> out, T scale,
                  const round_context& sender) {
    bit_reader r(p);
    comp.decode_add(r, state, out, scale, sender);
  }

  /// C(x) for this context: encode then decode into zeros.
  std::vector<T> apply(std::span<const T> x, const round_context& ctx) {
    encode(x, ctx);
    std::vector<T> out(dim, T(0));
    decode_add(payload, out, T(1), ctx);
    return out;
  }
};

}  // namespace ecopt::test
