// The stochastic quantisers and sign compressors: qsgd, terngrad, natural,
// dq_sgd, sign, scaled_sign. Exact payload sizes, unbiasedness and variance
// against the declared omega with fixed seeds, edge values (zeros, subnormals,
// huge, NaN), corrupt payloads, and DQ-SGD's level rule on constructed inputs.
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "contracts/contract_examples.hpp"
#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/dq_sgd.hpp"
#include "ecopt/compressors/natural.hpp"
#include "ecopt/compressors/qsgd.hpp"
#include "ecopt/compressors/scaled_sign.hpp"
#include "ecopt/compressors/sign.hpp"
#include "ecopt/compressors/terngrad.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace quantizers_test {

namespace {

using ecopt::round_context;

using ecopt::test::harness;
using ecopt::test::random_vector;
using ecopt::test::squared_distance;
using ecopt::test::squared_norm;

template <class F>
std::vector<std::byte> handmade(F&& f) {
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  f(w);
  w.finish();
  return buf;
}

template <class F>
std::string error_text(F&& f) {
  try {
    f();
  } catch (const ecopt::error& e) {
    return e.what();
  }
  return {};
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

/// Empirical mean and mean squared error of C(x) over `rounds` seeds, checked
/// against unbiasedness (per coordinate, `sd_bound[j]` bounds one draw's
/// standard deviation; 6 standard deviations of the mean) and the declared
/// omega (a one-sided margin of 6 standard errors of the mean squared error).
template <class C, class T>
void check_unbiased(const C& c, std::span<const T> x, double omega, std::size_t rounds,
                    const std::vector<double>& sd_bound) {
  const std::size_t d = x.size();
  harness<C, T> h(c, d);
  std::vector<double> mean(d, 0.0);
  std::vector<double> errs;
  for (std::uint64_t t = 0; t < rounds; ++t) {
    const auto cx = h.apply(x, {.seed = 99, .round = t, .rank = 1, .world = 2, .lr = 0.1});
    for (std::size_t j = 0; j < d; ++j) mean[j] += static_cast<double>(cx[j]);
    errs.push_back(squared_distance<T>(cx, x));
  }
  bool unbiased = true;
  for (std::size_t j = 0; j < d; ++j) {
    const double m = mean[j] / static_cast<double>(rounds);
    const double tol = 6 * sd_bound[j] / std::sqrt(static_cast<double>(rounds)) +
                       1e-6 * std::fabs(static_cast<double>(x[j]));
    if (std::fabs(m - static_cast<double>(x[j])) > tol) {
      unbiased = false;
      CAPTURE(j);
      CAPTURE(m);
      CHECK(std::fabs(m - static_cast<double>(x[j])) <= tol);
    }
  }
  CHECK(unbiased);
  double e_mean = 0;
  for (const double e : errs) e_mean += e / static_cast<double>(rounds);
  double e_var = 0;
  for (const double e : errs) e_var += (e - e_mean) * (e - e_mean) / static_cast<double>(rounds);
  const double xx = squared_norm<T>(x);
  CHECK(e_mean <= omega * xx + 6 * std::sqrt(e_var / static_cast<double>(rounds)) + 1e-12 * xx);
}

}  // namespace

// ---------------------------------------------------------------- qsgd

TEST_CASE("qsgd: unbiased within omega on the float, double and tiny-norm paths") {
  // s <= 255 rounds in float lanes, larger s and subnormal-scale norms in double.
  struct setup {
    std::uint32_t s;
    std::size_t bucket;
    double magnitude;
  };
  for (const setup c : {setup{1, 0, 1.0}, setup{4, 16, 1.0}, setup{255, 0, 1.0}, setup{300, 0, 1.0},
                        setup{3, 0, 1e-41}, setup{4, 0, 1e30}}) {
    CAPTURE(c.s);
    CAPTURE(c.magnitude);
    const ecopt::qsgd q{.levels = c.s, .bucket_size = c.bucket};
    constexpr std::size_t d = 48;
    auto x = random_vector<float>(d, 5);
    for (auto& v : x) v = static_cast<float>(v * c.magnitude);
    std::vector<double> sd(d);
    const std::size_t b = q.bucket(d);
    for (std::size_t j = 0; j < d; ++j) {
      const auto xb = std::span<const float>(x).subspan(j / b * b, std::min(b, d - j / b * b));
      sd[j] = std::sqrt(squared_norm<float>(xb)) / (2.0 * c.s);  // a rounding step is norm / s
    }
    check_unbiased(q, std::span<const float>(x), q.omega(d), 3000, sd);
  }
}

TEST_CASE("qsgd: float and double inputs of the same values give the same payload") {
  // Float input takes the SSE2 paths (whole blocks drawn, rounded and packed in
  // registers when a bucket covers them), double input the portable loops: the
  // payloads must agree bit for bit, for every field width class.
  for (const std::uint32_t s : {1u, 2u, 4u, 7u, 60u, 100u, 255u, 1000u}) {
    for (const std::size_t bucket : {std::size_t{0}, std::size_t{100}, std::size_t{500}}) {
      for (const std::size_t d : {std::size_t{777}, std::size_t{1536}}) {
        CAPTURE(s);
        CAPTURE(bucket);
        CAPTURE(d);
        const ecopt::qsgd q{.levels = s, .bucket_size = bucket};
        const auto xf = random_vector<float>(d, 6);
        const std::vector<double> xd(xf.begin(), xf.end());
        harness<ecopt::qsgd, float> f(q, d);
        harness<ecopt::qsgd, double> g(q, d);
        const round_context ctx{.seed = 3, .round = 9};
        CHECK(f.encode(xf, ctx) == q.bits(d));
        g.encode(xd, ctx);
        CHECK(f.payload == g.payload);
      }
    }
  }
}

TEST_CASE("terngrad and natural: float and double inputs of the same values agree") {
  constexpr std::size_t d = 1000;
  auto xf = random_vector<float>(d, 16);
  xf[5] = 1e-40f;  // a subnormal for natural's special codes
  xf[6] = 0.0f;
  const std::vector<double> xd(xf.begin(), xf.end());
  const round_context ctx{.seed = 8, .round = 1};
  for (const std::size_t bucket : {std::size_t{0}, std::size_t{64}, std::size_t{333}}) {
    CAPTURE(bucket);
    harness<ecopt::terngrad, float> f(ecopt::terngrad{.bucket_size = bucket}, d);
    harness<ecopt::terngrad, double> g(ecopt::terngrad{.bucket_size = bucket}, d);
    f.encode(xf, ctx);
    g.encode(xd, ctx);
    CHECK(f.payload == g.payload);
  }
  harness<ecopt::natural, float> f(ecopt::natural{}, d);
  harness<ecopt::natural, double> g(ecopt::natural{}, d);
  f.encode(xf, ctx);
  g.encode(xd, ctx);
  CHECK(f.payload == g.payload);
}

TEST_CASE("qsgd: a single coordinate is its own norm; zero buckets send level 0") {
  harness<ecopt::qsgd, float> h(ecopt::qsgd{.levels = 3, .bucket_size = 2}, 5);
  const std::vector<float> x{0.0f, -0.0f, -2.5f, 0.0f, 7.0f};
  const auto out = h.apply(x, {});
  CHECK(out == std::vector<float>{0.0f, 0.0f, -2.5f, 0.0f, 7.0f});
  CHECK_FALSE(std::signbit(out[1]));
  CHECK(h.bits == 3 * 32 + 5 * 3);
}

// ---------------------------------------------------------------- terngrad

TEST_CASE("terngrad: exact size for every d mod 5, bucket scales and ternary values") {
  for (std::size_t d = 1; d <= 23; ++d) {
    for (const std::size_t bucket : {std::size_t{0}, std::size_t{4}}) {
      CAPTURE(d);
      CAPTURE(bucket);
      const ecopt::terngrad t{.bucket_size = bucket};
      const std::uint64_t tail[] = {0, 2, 4, 5, 7};
      CHECK(t.bits(d) == 32 * t.num_buckets(d) + 8 * (d / 5) + tail[d % 5]);
      harness<ecopt::terngrad, double> h(t, d);
      const auto x = random_vector<double>(d, d);
      const auto out = h.apply(x, {.seed = 1, .round = d});
      CHECK(h.bits == t.bits(d));
      CHECK(h.payload.size() == (h.bits + 7) / 8);
      const std::size_t b = t.bucket(d);
      for (std::size_t j = 0; j < d; ++j) {
        double m = 0;
        for (std::size_t i = j / b * b; i < std::min(d, j / b * b + b); ++i) {
          m = std::max(m, std::fabs(x[i]));
        }
        const auto scale = static_cast<double>(static_cast<float>(m));
        REQUIRE((out[j] == 0 || std::fabs(out[j]) == doctest::Approx(scale).epsilon(1e-7)));
        REQUIRE((out[j] == 0 || (out[j] < 0) == (x[j] < 0)));
      }
    }
  }
  CHECK(ecopt::terngrad{}.bits(1000) == 32 + 1600);
  CHECK(ecopt::terngrad{.bucket_size = 100}.omega(1000) == doctest::Approx(4.5));
  CHECK(ecopt::terngrad{}.omega(1) == 0.0);
}

TEST_CASE("terngrad: unbiased, and omega = (sqrt(b) - 1) / 2 is reached by its worst vector") {
  for (const std::size_t bucket : {std::size_t{0}, std::size_t{9}}) {
    CAPTURE(bucket);
    const ecopt::terngrad t{.bucket_size = bucket};
    constexpr std::size_t d = 81;
    const auto x = random_vector<float>(d, 7);
    std::vector<double> sd(d);
    const std::size_t b = t.bucket(d);
    for (std::size_t j = 0; j < d; ++j) {
      float m = 0;
      for (std::size_t i = j / b * b; i < j / b * b + b; ++i) m = std::max(m, std::fabs(x[i]));
      sd[j] = m / 2.0;  // a draw is 0 or +-m
    }
    check_unbiased(t, std::span<const float>(x), t.omega(d), 3000, sd);
  }
  // One coordinate at 1 and the rest at 1 / (1 + sqrt(b)): the error is
  // omega ||x||^2 exactly in expectation. Compare the empirical mean with it.
  constexpr std::size_t b = 64;
  std::vector<double> worst(b, 1.0 / (1.0 + 8.0));
  worst[17] = -1.0;
  const ecopt::terngrad t{};
  const double xx = squared_norm<double>(worst);
  harness<ecopt::terngrad, double> h(t, b);
  double e = 0;
  constexpr std::size_t rounds = 4000;
  for (std::uint64_t r = 0; r < rounds; ++r) {
    const auto cx = h.apply(worst, {.seed = 5, .round = r});
    e += squared_distance<double>(cx, worst) / rounds;
  }
  // Each draw's error is a sum of b - 1 independent terms in {t^2, (1 - t)^2}
  // with t = 1/9; its sd is below sqrt(b) (1 - t)^2 / 2 < 4.
  CHECK(t.omega(b) == doctest::Approx(3.5));
  CHECK(std::fabs(e - t.omega(b) * xx) <= 6 * 4.0 / std::sqrt(double(rounds)));
}

TEST_CASE("terngrad: zero buckets, huge values and non-finite input") {
  harness<ecopt::terngrad, float> h(ecopt::terngrad{.bucket_size = 3}, 9);
  const std::vector<float> x{0, 0, 0, 1, -1, 1, 3e38f, -3e38f, 0};
  const auto out = h.apply(x, {.seed = 2});
  CHECK(out == x);  // |x| = scale everywhere (or 0): exact
  CHECK(h.state.scales == std::vector<float>{0.0f, 1.0f, 3e38f});
  std::vector<float> bad = x;
  bad[4] = std::numeric_limits<float>::quiet_NaN();
  CHECK(contains(error_text([&] { h.encode(bad, {}); }), "bucket 1"));
  CHECK_THROWS_AS(h.encode(bad, {}), ecopt::numeric_error);
  bad[4] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(h.encode(bad, {}), ecopt::numeric_error);
  harness<ecopt::terngrad, double> g(ecopt::terngrad{}, 2);
  const std::vector<double> huge{1e300, 1.0};
  CHECK_THROWS_AS(g.encode(huge, {}), ecopt::numeric_error);
}

TEST_CASE("terngrad decoder rejects bad trit bytes, bad tails and bad scales") {
  const ecopt::terngrad t{};
  auto s = t.make_state<double>(7);
  std::vector<double> out(7, 0.0);
  const auto decode = [&](float scale, std::uint64_t byte, std::uint64_t tail) {
    const auto p = handmade([&](ecopt::bit_writer& w) {
      w.write_f32(scale);
      w.write(byte, 8);
      w.write(tail, 4);  // the last 2 trits
    });
    ecopt::bit_reader r(p);
    t.decode_add(r, s, std::span<double>(out), 1.0, {});
  };
  // 1 + 3 * 2 = trits (1, 2, 0, 0, 0): +s, -s; tail 2 + 3 * 1 = (2, 1): -s, +s.
  CHECK_NOTHROW(decode(2.0f, 7, 5));
  CHECK(out == std::vector<double>{2, -2, 0, 0, 0, -2, 2});
  CHECK(contains(error_text([&] { decode(2.0f, 243, 0); }), "243"));
  CHECK(contains(error_text([&] { decode(2.0f, 0, 9); }), "last 2 trits"));
  CHECK_THROWS_AS(decode(-1.0f, 0, 0), ecopt::decode_error);
  CHECK_THROWS_AS(decode(std::numeric_limits<float>::quiet_NaN(), 0, 0), ecopt::decode_error);
}

// ---------------------------------------------------------------- natural

TEST_CASE("natural: each value goes to a neighbouring power of two, unbiased, omega 1/8") {
  constexpr std::size_t d = 40;
  auto x = random_vector<float>(d, 8);
  x[3] = 0.0f;
  x[4] = -0.0f;
  x[5] = 4.0f;              // a power of two is sent exactly
  x[6] = -0.75f;            // 2^-1 or 2^0
  x[7] = 1e-40f;            // subnormal below 2^-127: 0 or 2^-127
  x[8] = 1.5f * 0x1p-127f;  // subnormal above 2^-127: 2^-127 or 2^-126
  x[9] = 1.9f * 0x1p126f;   // near the top: 2^126 or 2^127
  harness<ecopt::natural, float> h(ecopt::natural{}, d);
  std::vector<double> sd(d);
  for (std::size_t j = 0; j < d; ++j) {
    const double a = std::fabs(static_cast<double>(x[j]));
    sd[j] = a == 0 ? 0 : std::exp2(std::floor(std::log2(a))) / 2;  // the gap between neighbours
  }
  sd[7] = 0x1p-128;
  for (std::uint64_t r = 0; r < 200; ++r) {
    const auto out = h.apply(x, {.seed = 4, .round = r});
    CHECK(h.bits == 9 * d);
    for (std::size_t j = 0; j < d; ++j) {
      const double a = std::fabs(static_cast<double>(x[j]));
      const double v = std::fabs(static_cast<double>(out[j]));
      if (a == 0) {
        REQUIRE(out[j] == 0);
        REQUIRE_FALSE(std::signbit(out[j]));
        continue;
      }
      REQUIRE((std::signbit(out[j]) == std::signbit(x[j]) || v == 0));
      const double lo = j == 7 ? 0.0 : std::exp2(std::floor(std::log2(a)));
      const double hi = j == 7 ? 0x1p-127 : 2 * lo;
      REQUIRE((v == lo || v == hi || (v == a && a == lo)));
    }
  }
  std::vector<float> normal_x = x;  // omega holds for |x| >= 2^-127
  normal_x[7] = 0.5f;
  check_unbiased(ecopt::natural{}, std::span<const float>(normal_x), 0.125, 4000, sd);
  // The worst case |t| = 4/3 2^a: variance exactly t^2 / 8.
  const std::vector<double> worst(50, 4.0 / 3.0 * 0.25);
  harness<ecopt::natural, double> g(ecopt::natural{}, 50);
  double e = 0;
  for (std::uint64_t r = 0; r < 2000; ++r)
    e += squared_distance<double>(g.apply(worst, {.round = r}), worst);
  e /= 2000;
  // A draw's error sums 50 terms of at most (1/6)^2 each with sd below 1/72.
  CHECK(std::fabs(e - squared_norm<double>(worst) / 8) <=
        6 * std::sqrt(50.0) / 72 / std::sqrt(2000.0));
}

TEST_CASE("natural: rounding up happens with probability exactly m / 2^23") {
  // 1.25 = 2^0 (1 + 2^21 / 2^23): up (to 2) with probability 1/4.
  constexpr std::size_t d = 1000;
  const std::vector<float> x(d, 1.25f);
  harness<ecopt::natural, float> h(ecopt::natural{}, d);
  std::size_t ups = 0;
  constexpr std::uint64_t rounds = 200;
  for (std::uint64_t r = 0; r < rounds; ++r) {
    for (const float v : h.apply(x, {.seed = 12, .round = r})) ups += v == 2.0f ? 1 : 0;
  }
  const double n = static_cast<double>(d * rounds);
  CHECK(std::fabs(static_cast<double>(ups) / n - 0.25) <= 6 * std::sqrt(0.25 * 0.75 / n));
}

TEST_CASE("natural: out-of-range input throws numeric_error, doubles go through float32") {
  harness<ecopt::natural, float> h(ecopt::natural{}, 3);
  std::vector<float> x{1.0f, 0x1p127f, 2.0f};
  CHECK(contains(error_text([&] { h.encode(x, {}); }), "input[1]"));
  CHECK_THROWS_AS(h.encode(x, {}), ecopt::numeric_error);
  x[1] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(h.encode(x, {}), ecopt::numeric_error);
  x[1] = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(h.encode(x, {}), ecopt::numeric_error);
  x[1] = std::nextafter(0x1p127f, 0.0f);  // the largest value in range
  CHECK_NOTHROW(h.encode(x, {}));
  harness<ecopt::natural, double> g(ecopt::natural{}, 2);
  CHECK_THROWS_AS(g.encode(std::vector<double>{1e300, 1.0}, {}), ecopt::numeric_error);
  const auto tiny = g.apply(std::vector<double>{1e-300, -3.0}, {});
  CHECK(tiny[0] == 0.0);  // below float32's range: rounds to zero first
  CHECK((tiny[1] == -2.0 || tiny[1] == -4.0));
  CHECK(ecopt::natural::code_value(0) == 0.0);
  CHECK(ecopt::natural::code_value(1) == 0x1p-127);
  CHECK(ecopt::natural::code_value(255) == 0x1p127);
}

TEST_CASE("natural decoder rejects a negative zero code") {
  const ecopt::natural c{};
  auto s = c.make_state<float>(2);
  std::vector<float> out(2, 0.0f);
  const auto decode = [&](std::uint64_t signs, std::uint64_t c0, std::uint64_t c1) {
    const auto p = handmade([&](ecopt::bit_writer& w) {
      w.write(signs, 2);
      w.write(c0, 8);
      w.write(c1, 8);
    });
    ecopt::bit_reader r(p);
    c.decode_add(r, s, std::span<float>(out), 1.0f, {});
  };
  CHECK_NOTHROW(decode(0b10, 129, 130));  // 2^1, -2^2
  CHECK(out == std::vector<float>{2.0f, -4.0f});
  CHECK(contains(error_text([&] { decode(0b01, 0, 1); }), "zero"));
}

// ---------------------------------------------------------------- sign and scaled_sign

TEST_CASE("sign: +-scale per coordinate, sign(0) = +1, an all-zero vector stays zero") {
  harness<ecopt::sign, double> h(ecopt::sign{}, 5);
  const std::vector<double> x{3.0, -0.5, 0.0, -0.0, 1e-300};
  CHECK(h.apply(x, {}) == std::vector<double>{1, -1, 1, 1, 1});
  CHECK(h.bits == 6);
  const std::vector<double> zero(5, 0.0);
  CHECK(h.apply(zero, {}) == zero);
  std::vector<double> out(5, 0.0);
  h.encode(x, {});
  h.decode_add(h.payload, out, -0.25, {});  // a descent step of lr 0.25
  CHECK(out == std::vector<double>{-0.25, 0.25, -0.25, -0.25, -0.25});
  std::vector<double> bad = x;
  bad[3] = std::nan("");
  CHECK(contains(error_text([&] { h.encode(bad, {}); }), "input[3]"));
  CHECK_THROWS_AS(h.encode(bad, {}), ecopt::numeric_error);
  // A zero flag followed by set sign bits is corrupt.
  const auto p = handmade([](ecopt::bit_writer& w) {
    w.write(0, 1);
    w.write(0b100, 5);
  });
  CHECK_THROWS_AS(h.decode_add(p, out, 1.0, {}), ecopt::decode_error);
}

TEST_CASE("scaled_sign: per-bucket scales, achieved delta and the 1/b worst case") {
  const ecopt::scaled_sign c{.bucket_size = 3};
  harness<ecopt::scaled_sign, double> h(c, 7);
  const std::vector<double> x{3.0, -6.0, 0.0, 1.0, 1.0, -1.0, -8.0};
  const auto out = h.apply(x, {});
  CHECK(out == std::vector<double>{3, -3, 3, 1, 1, -1, -8});
  CHECK(h.bits == 7 + 3 * 32);
  CHECK(c.bits(7) == h.bits);
  CHECK(c.delta(7) == doctest::Approx(1.0 / 3));
  CHECK(c.achieved_delta(std::span<const double>(x)) ==
        doctest::Approx(1 - squared_distance<double>(out, x) / squared_norm<double>(x)));
  for (const std::size_t b : {std::size_t{1}, std::size_t{8}, std::size_t{100}}) {
    CAPTURE(b);
    const ecopt::scaled_sign cb{.bucket_size = b};
    constexpr std::size_t d = 200;
    const auto v = random_vector<double>(d, b);
    harness<ecopt::scaled_sign, double> g(cb, d);
    const auto cv = g.apply(v, {});
    const double achieved = cb.achieved_delta(std::span<const double>(v));
    CHECK(squared_distance<double>(cv, v) ==
          doctest::Approx((1 - achieved) * squared_norm<double>(v)).epsilon(1e-5));
    CHECK(achieved >= cb.delta(d));
    // One spike per bucket reaches the worst case.
    std::vector<double> spikes(d, 0.0);
    for (std::size_t j = 0; j < d; j += b) spikes[j] = 1.0 + static_cast<double>(j);
    CHECK(cb.achieved_delta(std::span<const double>(spikes)) ==
          doctest::Approx(cb.delta(d)).epsilon(1e-12));
  }
  CHECK(ecopt::scaled_sign{}.bits(10) == 42);  // the default: one scale
}

// ---------------------------------------------------------------- dq_sgd

TEST_CASE("dq_sgd: the level rule on constructed inputs") {
  const ecopt::dq_sgd q{.horizon = 100, .error_budget = 0.5, .smoothness = 2.0};
  // s^2 = T L eta^2 d rho^(T-1-t) G^2 / (8 n E) = 100 * 2 * 0.01 * 50 * 1 * G2 / (8 * 2 * 0.5)
  //     = 12.5 G2.
  const round_context ctx{.round = 3, .world = 2, .lr = 0.1};
  CHECK(q.levels_for(2.0, 50, ctx) == 5);       // sqrt(25) = 5 exactly
  CHECK(q.levels_for(2.1, 50, ctx) == 6);       // sqrt(26.25) rounds up
  CHECK(q.levels_for(8.0, 50, ctx) == 10);      // proportional to the norm
  CHECK(q.levels_for(0.0, 50, ctx) == 1);       // clamped to min_levels
  CHECK(q.levels_for(1e30, 50, ctx) == 32767);  // clamped to max_levels
  CHECK(q.levels_for(2.0, 50, {.round = 3, .world = 2, .lr = 0.0}) == 1);
  CHECK(q.levels_for(2.0, 50, {.round = 3, .world = 8, .lr = 0.1}) == 3);  // sqrt(6.25) -> 3
  CHECK_THROWS_AS((void)q.levels_for(2.0, 50, {.lr = std::nan("")}), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)q.levels_for(2.0, 50, {.lr = -0.1}), ecopt::invalid_argument);
  const ecopt::dq_sgd clamped{
      .horizon = 100, .error_budget = 0.5, .smoothness = 2.0, .min_levels = 7, .max_levels = 8};
  CHECK(clamped.levels_for(2.0, 50, ctx) == 7);
  CHECK(clamped.levels_for(8.0, 50, ctx) == 8);

  // Strongly convex: rho = 1 - 0.1 * 2 = 0.8, weight 0.8^(T-1-t), so s_t grows
  // geometrically with t and reaches the flat value at the last round.
  const ecopt::dq_sgd sc{
      .horizon = 100, .error_budget = 0.5, .smoothness = 2.0, .strong_convexity = 2.0};
  CHECK(sc.levels_for(2.0, 50, {.round = 99, .world = 2, .lr = 0.1}) == 5);
  CHECK(sc.levels_for(2.0, 50, {.round = 500, .world = 2, .lr = 0.1}) == 5);  // past T: weight 1
  // t = 97: 25 * 0.8^2 = 16 -> 4; t = 95: 25 * 0.8^4 = 10.24 -> ceil(3.2) = 4; t = 91: 4.19 -> 3.
  CHECK(sc.levels_for(2.0, 50, {.round = 97, .world = 2, .lr = 0.1}) == 4);
  CHECK(sc.levels_for(2.0, 50, {.round = 91, .world = 2, .lr = 0.1}) == 3);
  std::uint32_t prev = 0;
  for (std::uint64_t t = 0; t < 100; ++t) {
    const std::uint32_t s = sc.levels_for(1e4, 50, {.round = t, .world = 2, .lr = 0.1});
    REQUIRE(s >= prev);
    prev = s;
  }
}

TEST_CASE("dq_sgd: the payload carries s_t; the state records it by round") {
  const ecopt::dq_sgd q{.horizon = 10, .error_budget = 1.0};
  constexpr std::size_t d = 300;
  harness<ecopt::dq_sgd, float> h(q, d);
  ecopt::dq_sgd::state<float> fresh = q.make_state<float>(d);  // a receiver's own state
  CHECK(h.state.levels_by_round.size() == 10);
  for (std::uint64_t t = 0; t < 12; ++t) {
    auto x = random_vector<float>(d, t);
    for (auto& v : x) v *= static_cast<float>(t + 1);  // growing norms: growing s_t
    const round_context ctx{.seed = 1, .round = t, .world = 4, .lr = 0.05};
    const std::uint32_t s = q.levels_for(squared_norm<float>(x), d, ctx);
    CHECK(h.encode(x, ctx) == q.bits_at(s, d));
    CHECK(h.bits <= q.max_bits(d));
    CHECK(h.state.last_levels == s);
    if (t < 10) CHECK(h.state.levels_by_round[t] == s);
    ecopt::bit_reader r(h.payload);
    CHECK(r.read(16, "levels") == s);
    std::vector<float> out(d, 0.0f);
    ecopt::bit_reader r2(h.payload);
    q.decode_add(r2, fresh, std::span<float>(out), 1.0f, ctx);
    CHECK(fresh.last_levels == 0);  // decoding does not touch the encoder's record
    // Every value is norm * level / s with level <= s.
    const double norm = std::sqrt(squared_norm<float>(x));
    for (std::size_t j = 0; j < d; ++j) {
      const double level = std::fabs(out[j]) / norm * s;
      REQUIRE(std::fabs(level - std::round(level)) < 1e-3);
      REQUIRE(level <= s + 1e-3);
    }
  }
  CHECK(std::is_sorted(h.state.levels_by_round.begin(), h.state.levels_by_round.end()));
  CHECK(h.state.levels_by_round.back() > h.state.levels_by_round.front());
  const ecopt::dq_sgd quiet{.record_levels = false};
  CHECK(quiet.make_state<double>(4).levels_by_round.empty());
}

TEST_CASE("dq_sgd: unbiased at the chosen levels; omega is the fewest-levels worst case") {
  const ecopt::dq_sgd q{.horizon = 50, .error_budget = 20.0, .min_levels = 2};
  constexpr std::size_t d = 64;
  const auto x = random_vector<double>(d, 3);
  const std::uint32_t s = q.levels_for(squared_norm<double>(x), d, {.world = 2, .lr = 0.1});
  CHECK(s >= 2);
  CHECK(s < 20);
  CHECK(q.omega(d) == doctest::Approx(std::min(64.0 / 4, 8.0 / 2)));
  CHECK(q.omega_at(s, d) <= q.omega(d));
  std::vector<double> sd(d, std::sqrt(squared_norm<double>(x)) / (2.0 * s));
  check_unbiased(q, std::span<const double>(x), q.omega_at(s, d), 3000, sd);
}

TEST_CASE("dq_sgd: corrupt level fields and bad fields are named") {
  const ecopt::dq_sgd q{.min_levels = 2, .max_levels = 100};
  auto s = q.make_state<double>(3);
  std::vector<double> out(3, 0.0);
  const auto decode = [&](std::uint64_t levels) {
    const auto p = handmade([&](ecopt::bit_writer& w) {
      w.write(levels, 16);
      w.write_f32(1.0f);
      w.write(0, 3 * (1 + ecopt::bits_for(levels + 1)));
    });
    ecopt::bit_reader r(p);
    q.decode_add(r, s, std::span<double>(out), 1.0, {});
  };
  CHECK_NOTHROW(decode(2));
  CHECK_NOTHROW(decode(100));
  CHECK(contains(error_text([&] { decode(1); }), "levels = 1"));
  CHECK_THROWS_AS(decode(101), ecopt::decode_error);
  CHECK_THROWS_AS(decode(0), ecopt::decode_error);
  CHECK(contains(error_text([] { ecopt::dq_sgd{.horizon = 0}.validate(); }), "horizon"));
  CHECK(contains(error_text([] { ecopt::dq_sgd{.error_budget = 0}.validate(); }), "error_budget"));
  CHECK(contains(error_text([] { ecopt::dq_sgd{.smoothness = -1}.validate(); }), "smoothness"));
  CHECK(contains(error_text([] { ecopt::dq_sgd{.strong_convexity = -1}.validate(); }),
                 "strong_convexity"));
  CHECK(contains(error_text([] { ecopt::dq_sgd{.max_levels = 40000}.validate(); }), "max_levels"));
  CHECK(contains(error_text([] { ecopt::dq_sgd{.min_levels = 0}.validate(); }), "min_levels"));
}

// ---------------------------------------------------------------- all of them

TEST_CASE_TEMPLATE("quantizers: no allocation after warm-up, at the speed-path sizes", C,
                   ecopt::qsgd, ecopt::terngrad, ecopt::natural, ecopt::dq_sgd, ecopt::sign,
                   ecopt::scaled_sign) {
  constexpr std::size_t d = 5000;  // several blocks and chunks, a ragged tail
  harness<C, float> h(C{}, d);
  const auto x = random_vector<float>(d, 1);
  std::vector<float> out(d, 0.0f);
  h.encode(x, {.lr = 0.1});
  h.decode_add(h.payload, out, 1.0f, {.lr = 0.1});
  ecopt::test::allocation_scope scope;
  for (std::uint64_t t = 1; t <= 3; ++t) {
    h.encode(x, {.round = t, .lr = 0.1});
    h.decode_add(h.payload, out, 1.0f, {.round = t, .lr = 0.1});
  }
  CHECK(scope.count() == 0);
}

}  // namespace quantizers_test
