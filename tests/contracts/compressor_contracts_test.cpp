// One contract per test case, every compressor in the registry (compressors/all.hpp).
// A new compressor joins by adding one tuple entry there (and, if its default
// instance is not informative at these dimensions, a contract_traits entry).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "contracts/contract_examples.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/all.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace compressor_contracts_test {

namespace {

using ecopt::round_context;
using ecopt::test::contract_traits;
using ecopt::test::harness;
using ecopt::test::random_vector;
using ecopt::test::squared_distance;
using ecopt::test::squared_norm;

constexpr std::size_t sizes[] = {1, 2, 3, 7, 64, 1000, 4097};

// Values travel as float32: a relative squared error of (2^-24)^2 per
// coordinate is allowed on top of every declared bound.
constexpr double float32_slack = 1e-12;

// One-sided Hoeffding margin for the mean of n samples in [0, range] at
// confidence 1 - 1e-4 (the range is the largest sample seen).
double hoeffding_margin(double range, std::size_t n) {
  return range * std::sqrt(std::log(1e4) / (2.0 * static_cast<double>(n)));
}

round_context ctx_for(std::uint64_t seed, std::uint64_t round, int rank = 0) {
  return round_context{.seed = seed, .round = round, .rank = rank, .world = 4, .lr = 0.1};
}

template <class C>
bool is_randomized(const C& c, std::size_t d) {
  if (contract_traits<C>::randomized) return true;
  if constexpr (ecopt::UnbiasedCompressor<C>) return c.omega(d) > 0;  // unbiased + lossy => random
  return false;
}

template <class C, class T>
void check_decode_adds_scaled(const C& c, std::size_t d) {
  harness<C, T> h(c, d);
  const auto x = random_vector<T>(d, 7);
  const auto ctx = ctx_for(3, 5, 1);
  const auto cx = h.apply(x, ctx);
  for (const T v : cx) REQUIRE(std::isfinite(v));
  auto out = random_vector<T>(d, 8);  // nonzero start
  const auto start = out;
  const T scale = T(2.5);
  h.decode_add(h.payload, out, scale, ctx);
  for (std::size_t j = 0; j < d; ++j) {
    REQUIRE(static_cast<double>(out[j]) ==
            doctest::Approx(static_cast<double>(start[j] + scale * cx[j])).epsilon(1e-5));
  }
  // A negative scale subtracts (how a solver takes a descent step).
  h.decode_add(h.payload, out, -scale, ctx);
  for (std::size_t j = 0; j < d; ++j) {
    REQUIRE(static_cast<double>(out[j]) ==
            doctest::Approx(static_cast<double>(start[j])).epsilon(1e-5).scale(1.0));
  }
}

template <class C, class T>
void check_zero_vector(const C& c, std::size_t d) {
  harness<C, T> h(c, d);
  const std::vector<T> zero(d, T(0));
  const auto out = h.apply(zero, ctx_for(1, 2));
  CHECK(std::all_of(out.begin(), out.end(), [](T v) { return v == T(0) && !std::signbit(v); }));
}

template <class C, class T>
void check_no_allocation(const C& c, std::size_t d) {
  harness<C, T> h(c, d);
  const auto x = random_vector<T>(d, 9);
  std::vector<T> out(d, T(0));
  h.encode(x, ctx_for(1, 0));
  h.decode_add(h.payload, out, T(1), ctx_for(1, 0));  // warm-up
  std::vector<float> buf;
  std::vector<float> sum;
  if constexpr (ecopt::SummableCompressor<C, T>) {
    buf.resize(c.summable_size(d));
    sum.resize(c.summable_size(d));
  }
  ecopt::test::allocation_scope scope;
  for (std::uint64_t t = 1; t <= 5; ++t) {
    h.encode(x, ctx_for(1, t));
    h.decode_add(h.payload, out, T(-0.5), ctx_for(1, t));
    if constexpr (ecopt::SummableCompressor<C, T>) {
      if (c.summable()) {
        c.encode_summable(std::span<const T>(x), h.state, std::span<float>(buf), ctx_for(1, t));
        c.decode_summed(std::span<const float>(buf), h.state, std::span<T>(out), T(1),
                        ctx_for(1, t));
      }
    }
  }
  CHECK(scope.count() == 0);
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("compressor: payload size is exact and bounded", C, size_contract) {
  const C c = contract_traits<C>::make();
  static_assert(ecopt::Compressor<C, float> && ecopt::Compressor<C, double>);
  for (const std::size_t d : sizes) {
    CAPTURE(d);
    harness<C, double> h(c, d);
    for (int input = 0; input < 2; ++input) {
      const auto x = input == 0 ? random_vector<double>(d, d) : std::vector<double>(d, 0.0);
      const std::uint64_t bits = h.encode(x, ctx_for(1, 0));
      if constexpr (ecopt::FixedSizePayload<C>) CHECK(bits == c.bits(d));
      CHECK(bits <= c.max_bits(d));
      CHECK(h.payload.size() == (bits + 7) / 8);
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(size_contract, ecopt::all_compressors);

TEST_CASE_TEMPLATE_DEFINE("compressor: payload is a function of (seed, round, rank)", C,
                          determinism_contract) {
  const C c = contract_traits<C>::make();
  constexpr std::size_t d = 1000;
  const auto x = random_vector<double>(d, 11);
  harness<C, double> a(c, d);
  harness<C, double> b(c, d);
  for (std::uint64_t round = 0; round < 3; ++round) {
    const auto ctx = ctx_for(42, round, 2);
    a.encode(x, ctx);
    b.encode(x, ctx);
    CHECK(a.payload == b.payload);
    const auto first = a.payload;
    a.encode(x, ctx);  // a used state must not change the result
    CHECK(a.payload == first);
  }
  if (is_randomized(c, d)) {
    a.encode(x, ctx_for(0, 0));
    const auto base = a.payload;
    bool differs = false;
    for (std::uint64_t seed = 1; seed <= 8 && !differs; ++seed) {
      a.encode(x, ctx_for(seed, 0));
      differs = a.payload != base;
    }
    CHECK(differs);
  }
}
TEST_CASE_TEMPLATE_APPLY(determinism_contract, ecopt::all_compressors);

TEST_CASE_TEMPLATE_DEFINE("compressor: decode_add adds scale * C(x)", C, decode_add_contract) {
  const C c = contract_traits<C>::make();
  for (const std::size_t d : {std::size_t{1}, std::size_t{7}, std::size_t{1000}}) {
    CAPTURE(d);
    check_decode_adds_scaled<C, float>(c, d);
    check_decode_adds_scaled<C, double>(c, d);
  }

  SUBCASE("a float payload decodes to the same values as float and as double") {
    constexpr std::size_t d = 300;
    harness<C, float> hf(c, d);
    harness<C, double> hd(c, d);
    const auto x = random_vector<float>(d, 12);
    const auto ctx = ctx_for(5, 1, 3);
    hf.encode(x, ctx);
    std::vector<float> of(d, 0.0f);
    std::vector<double> od(d, 0.0);
    hf.decode_add(hf.payload, of, 1.0f, ctx);
    hd.decode_add(hf.payload, od, 1.0, ctx);
    for (std::size_t j = 0; j < d; ++j) {
      REQUIRE(od[j] == doctest::Approx(static_cast<double>(of[j])).epsilon(1e-6));
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(decode_add_contract, ecopt::all_compressors);

TEST_CASE_TEMPLATE_DEFINE("compressor: declared unbiasedness and variance", C, unbiased_contract) {
  const C c = contract_traits<C>::make();
  {
    constexpr std::size_t d = 1000;
    constexpr std::size_t n = 400;
    const double omega = c.omega(d);
    CHECK(omega >= 0);
    const auto x = random_vector<double>(d, 21);
    const double xx = squared_norm<double>(x);
    harness<C, double> h(c, d);
    std::vector<double> sum(d, 0.0);
    std::vector<double> cx(d);
    double err_sum = 0;
    double err_max = 0;
    for (std::uint64_t t = 0; t < n; ++t) {
      const auto ctx = ctx_for(77, t, 1);
      h.encode(x, ctx);
      std::fill(cx.begin(), cx.end(), 0.0);
      h.decode_add(h.payload, cx, 1.0, ctx);
      h.decode_add(h.payload, sum, 1.0, ctx);
      const double e = squared_distance<double>(cx, x);
      err_sum += e;
      err_max = std::max(err_max, e);
    }
    // E||mean - x||^2 = E||C(x) - x||^2 / n <= omega ||x||^2 / n; a sum over
    // d = 1000 coordinates concentrates, so 4 times its mean is far in the tail.
    std::vector<double> mean(d);
    for (std::size_t j = 0; j < d; ++j) mean[j] = sum[j] / static_cast<double>(n);
    CHECK(squared_distance<double>(mean, x) <=
          4.0 * omega * xx / static_cast<double>(n) + float32_slack * xx);
    // Variance: the empirical mean of ||C(x) - x||^2 within a Hoeffding margin.
    CHECK(err_sum / static_cast<double>(n) <=
          omega * xx + hoeffding_margin(err_max, n) + float32_slack * xx);
  }
}
TEST_CASE_TEMPLATE_APPLY(unbiased_contract, ecopt::test::unbiased_compressors);

TEST_CASE_TEMPLATE_DEFINE("compressor: declared contraction", C, contraction_contract) {
  const C c = contract_traits<C>::make();
  {
    constexpr std::size_t d = 1000;
    const double delta = c.delta(d);
    CHECK(delta > 0);
    CHECK(delta <= 1);
    std::vector<std::vector<double>> inputs;
    inputs.push_back(random_vector<double>(d, 31));
    std::vector<double> equal(d);  // all magnitudes equal: every tie-break matters
    for (std::size_t j = 0; j < d; ++j) equal[j] = j % 2 ? -1.5 : 1.5;
    inputs.push_back(equal);
    std::vector<double> spike(d, 0.0);
    spike[d / 3] = -1e3;
    inputs.push_back(spike);
    std::vector<double> spike_on_noise = random_vector<double>(d, 32);
    spike_on_noise[d - 1] = 50.0;
    inputs.push_back(spike_on_noise);
    inputs.emplace_back(d, 0.0);
    constexpr std::size_t n = 200;
    harness<C, double> h(c, d);
    for (std::size_t which = 0; which < inputs.size(); ++which) {
      CAPTURE(which);
      const auto& x = inputs[which];
      const double xx = squared_norm<double>(x);
      double err_sum = 0;
      double err_max = 0;
      for (std::uint64_t seed = 0; seed < n; ++seed) {
        const auto cx = h.apply(x, ctx_for(seed, 3, 1));
        const double e = squared_distance<double>(cx, x);
        err_sum += e;
        err_max = std::max(err_max, e);
      }
      CHECK(err_sum / static_cast<double>(n) <=
            (1.0 - delta) * xx + hoeffding_margin(err_max, n) + float32_slack * xx);
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(contraction_contract, ecopt::test::contractive_compressors);

TEST_CASE_TEMPLATE_DEFINE("compressor: the zero vector decodes to zero", C, zero_contract) {
  const C c = contract_traits<C>::make();
  for (const std::size_t d : sizes) {
    CAPTURE(d);
    check_zero_vector<C, float>(c, d);
    check_zero_vector<C, double>(c, d);
  }
}
TEST_CASE_TEMPLATE_APPLY(zero_contract, ecopt::all_compressors);

TEST_CASE_TEMPLATE_DEFINE("compressor: corrupt payloads throw decode_error", C, corrupt_contract) {
  const C c = contract_traits<C>::make();
  for (const std::size_t d :
       {std::size_t{1}, std::size_t{3}, std::size_t{64}, std::size_t{1000}, std::size_t{4097}}) {
    CAPTURE(d);
    harness<C, double> h(c, d);
    const auto ctx = ctx_for(2, 4, 1);
    h.encode(random_vector<double>(d, 41), ctx);
    const std::vector<std::byte> good = h.payload;
    std::vector<double> out(d, 0.0);
    REQUIRE_NOTHROW(h.decode_add(good, out, 1.0, ctx));

    const std::vector<double> before = out;
    std::vector<std::byte> p = good;
    p.pop_back();
    CHECK_THROWS_AS(h.decode_add(p, out, 1.0, ctx), ecopt::decode_error);
    CHECK_THROWS_AS(h.decode_add({}, out, 1.0, ctx), ecopt::decode_error);
    p = good;
    p.push_back(std::byte{0xa5});
    CHECK_THROWS_AS(h.decode_add(p, out, 1.0, ctx), ecopt::decode_error);
    // A fixed-size payload's length is checked before the output is touched.
    if constexpr (ecopt::FixedSizePayload<C>) CHECK(out == before);
    if (h.bits % 8 != 0) {  // a set padding bit is a trailing bit
      p = good;
      p.back() |= std::byte{0x80};
      CHECK_THROWS_AS(h.decode_add(p, out, 1.0, ctx), ecopt::decode_error);
    }

    // Fuzz: random bytes, and bit flips of the good payload. Every try either
    // throws decode_error or adds finite values; anything else is a failure.
    auto rng = ecopt::counter_rng::stream(d, ecopt::stream_purpose::test, 1, 0);
    std::size_t rejected = 0;
    constexpr int tries = 300;
    for (int t = 0; t < tries; ++t) {
      if (t % 2 == 0) {
        p.resize(static_cast<std::size_t>(rng.below(good.size() + 9)));
        if (t % 4 == 0) p.resize(good.size());  // right length, random content
        for (auto& byte : p) byte = static_cast<std::byte>(rng.below(256));
      } else {
        p = good;
        const int flips = 1 + static_cast<int>(rng.below(4));
        for (int f = 0; f < flips; ++f) {
          p[rng.below(p.size())] ^= static_cast<std::byte>(1u << rng.below(8));
        }
      }
      std::fill(out.begin(), out.end(), 0.0);
      try {
        h.decode_add(p, out, 1.0, ctx);
      } catch (const ecopt::decode_error&) {
        ++rejected;
        continue;
      }
      REQUIRE(std::all_of(out.begin(), out.end(), [](double v) { return std::isfinite(v); }));
    }
    CHECK(rejected > 0);
  }
}
TEST_CASE_TEMPLATE_APPLY(corrupt_contract, ecopt::all_compressors);

TEST_CASE_TEMPLATE_DEFINE("compressor: dimension mismatch is an invalid_argument", C,
                          dimension_contract) {
  const C c = contract_traits<C>::make();
  constexpr std::size_t d = 64;
  harness<C, float> h(c, d);
  const auto ctx = ctx_for(1, 1);
  const auto longer = random_vector<float>(d + 1, 1);
  const auto shorter = random_vector<float>(d - 1, 1);
  CHECK_THROWS_AS(h.encode(longer, ctx), ecopt::invalid_argument);
  CHECK_THROWS_AS(h.encode(shorter, ctx), ecopt::invalid_argument);
  h.encode(random_vector<float>(d, 2), ctx);
  std::vector<float> out(d - 1, 0.0f);
  CHECK_THROWS_AS(h.decode_add(h.payload, out, 1.0f, ctx), ecopt::invalid_argument);
  out.resize(d + 1);
  CHECK_THROWS_AS(h.decode_add(h.payload, out, 1.0f, ctx), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)c.template make_state<float>(0), ecopt::invalid_argument);
  if constexpr (ecopt::SummableCompressor<C, float>) {
    if (c.summable()) {
      std::vector<float> buf(c.summable_size(d) + 1);
      const auto x = random_vector<float>(d, 3);
      CHECK_THROWS_AS(
          c.encode_summable(std::span<const float>(x), h.state, std::span<float>(buf), ctx),
          ecopt::invalid_argument);
      CHECK_THROWS_AS(
          c.decode_summed(std::span<const float>(buf), h.state, std::span<float>(out), 1.0f, ctx),
          ecopt::invalid_argument);
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(dimension_contract, ecopt::all_compressors);

TEST_CASE_TEMPLATE_DEFINE("compressor: no heap allocation after warm-up", C, allocation_contract) {
  const C c = contract_traits<C>::make();
  for (const std::size_t d : {std::size_t{1}, std::size_t{1000}, std::size_t{4097}}) {
    CAPTURE(d);
    check_no_allocation<C, float>(c, d);
    check_no_allocation<C, double>(c, d);
  }
}
TEST_CASE_TEMPLATE_APPLY(allocation_contract, ecopt::all_compressors);

TEST_CASE_TEMPLATE_DEFINE("compressor: summable payloads add in compressed form", C,
                          summable_contract) {
  const C c = contract_traits<C>::make();
  if constexpr (ecopt::SummableCompressor<C, double>) {
    if (c.summable()) {
      constexpr std::size_t d = 1000;
      const std::size_t m = c.summable_size(d);
      if constexpr (ecopt::FixedSizePayload<C>)
        CHECK(32 * static_cast<std::uint64_t>(m) == c.bits(d));
      harness<C, double> h(c, d);
      std::vector<float> buf(m);
      std::vector<float> summed(m, 0.0f);
      std::vector<double> by_payload(d, 0.0);
      const double scale = 0.5;
      for (int rank = 0; rank < 3; ++rank) {
        const auto ctx = ctx_for(9, 6, rank);
        const auto x = random_vector<double>(d, 50 + static_cast<std::uint64_t>(rank));
        c.encode_summable(std::span<const double>(x), h.state, std::span<float>(buf), ctx);
        for (std::size_t i = 0; i < m; ++i) summed[i] += buf[i];
        h.encode(x, ctx);
        h.decode_add(h.payload, by_payload, scale, ctx);
      }
      std::vector<double> by_sum(d, 0.0);
      c.decode_summed(std::span<const float>(summed), h.state, std::span<double>(by_sum), scale,
                      ctx_for(9, 6, 0));
      for (std::size_t j = 0; j < d; ++j) {
        REQUIRE(by_sum[j] == doctest::Approx(by_payload[j]).epsilon(1e-5).scale(1.0));
      }
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(summable_contract, ecopt::all_compressors);

}  // namespace compressor_contracts_test
