// Per-compressor checks beyond the shared contracts (tests/contracts).
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "contracts/contract_examples.hpp"
#include "ecopt/compressors/all.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace compressors_test {

namespace {

using ecopt::round_context;
using ecopt::test::harness;
using ecopt::test::random_vector;

/// The top-k definition: sort by (|x| descending, index ascending), keep k, list increasing.
template <class T>
std::vector<std::uint32_t> brute_force_top_k(const std::vector<T>& x, std::size_t k) {
  std::vector<std::uint32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    const T ma = std::fabs(x[a]);
    const T mb = std::fabs(x[b]);
    return ma != mb ? ma > mb : a < b;
  });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

/// Inputs that stress the selection: ties, zeros, equal top bits, tiny and huge values.
template <class T>
std::vector<T> selection_input(std::size_t d, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 1);
  std::vector<T> x(d);
  const auto kind = seed % 6;
  for (std::size_t j = 0; j < d; ++j) {
    const double u = rng.normal();
    switch (kind) {
      case 0:
        x[j] = static_cast<T>(u);
        break;
      case 1:
        x[j] = static_cast<T>(std::round(2 * u));  // few distinct magnitudes
        break;
      case 2:
        x[j] = rng.below(4) == 0 ? static_cast<T>(u) : T(0);
        break;  // mostly zeros
      case 3:   // equal top bits: differences in the lowest mantissa bits only
        x[j] = std::nextafter(T(1), T(2));
        for (auto steps = rng.below(5); steps > 0; --steps) x[j] = std::nextafter(x[j], T(2));
        if (rng.below(2)) x[j] = -x[j];
        break;
      case 4:
        x[j] = static_cast<T>(u * std::pow(10.0, static_cast<double>(rng.below(60)) - 30));
        break;
      default:
        x[j] = (j % 3 == 0) ? T(-0.0) : static_cast<T>(j % 7);
        break;
    }
  }
  return x;
}

std::string error_message_of(auto&& f) {
  try {
    f();
  } catch (const ecopt::error& e) {
    return e.what();
  }
  return {};
}

/// A payload written by hand.
template <class F>
std::vector<std::byte> handmade(F&& fill) {
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  fill(w);
  w.finish();
  return buf;
}

}  // namespace

TEST_CASE_TEMPLATE("top_k keeps exactly the brute-force set, lower index first on ties", T, float,
                   double) {
  const round_context ctx{};
  for (std::uint64_t trial = 0; trial < 240; ++trial) {
    auto rng = ecopt::counter_rng::stream(trial, ecopt::stream_purpose::test, 0, 2);
    const std::size_t d = trial % 40 == 0 ? 20000 : 1 + static_cast<std::size_t>(rng.below(700));
    const std::size_t k = 1 + static_cast<std::size_t>(rng.below(d));
    CAPTURE(trial);
    CAPTURE(d);
    CAPTURE(k);
    const auto x = selection_input<T>(d, trial);
    const ecopt::top_k c{.k = k};
    harness<ecopt::top_k, T> h(c, d);
    const auto out = h.apply(x, ctx);
    const auto expected = brute_force_top_k(x, k);
    REQUIRE(h.state.chosen == expected);
    std::vector<T> dense(d, T(0));
    for (const auto j : expected) dense[j] = static_cast<T>(static_cast<float>(x[j]));
    REQUIRE(out == dense);
  }
}

TEST_CASE("top_k kept(): ratio rounding, k override and clamping") {
  CHECK(ecopt::top_k{}.kept(1000) == 10);
  CHECK(ecopt::top_k{}.kept(10) == 1);  // round(0.1) = 0 -> at least one
  CHECK(ecopt::top_k{.ratio = 0.25}.kept(10) == 3);
  CHECK(ecopt::top_k{.ratio = 1.0}.kept(7) == 7);
  CHECK(ecopt::top_k{.k = 5}.kept(1000) == 5);
  CHECK(ecopt::top_k{.k = 5000}.kept(1000) == 1000);
  CHECK(ecopt::top_k{.ratio = 0.1}.delta(1000) == doctest::Approx(0.1));
}

TEST_CASE("top_k payload: the coded index set, then 32 bits per kept value") {
  CHECK(ecopt::top_k{.k = 1}.max_bits(1) == 32);  // k = d: the set is implied, no index bits
  CHECK(ecopt::top_k{.k = 7}.max_bits(7) == 7 * 32);
  for (const std::size_t k : {std::size_t{1}, std::size_t{10}, std::size_t{11}, std::size_t{64}}) {
    CAPTURE(k);
    const ecopt::top_k c{.k = k};
    harness<ecopt::top_k, double> h(c, 64);
    const auto x = random_vector<double>(64, k);
    const auto out = h.apply(x, {});
    const auto expected = brute_force_top_k(x, k);
    CHECK(h.bits == ecopt::detail::exact_index_bits(expected, 64) + 32 * k);
    CHECK(h.bits <= c.max_bits(64));
    for (const auto j : expected) CHECK(out[j] == static_cast<double>(static_cast<float>(x[j])));
  }
}

TEST_CASE("top_k decoder rejects bad index sets") {
  const round_context ctx{};
  std::vector<double> out(50, 0.0);
  {
    const ecopt::top_k c{.k = 2};  // d = 50: tag 0, two 6-bit indices
    auto s = c.make_state<double>(50);
    const auto decode = [&](std::uint64_t i0, std::uint64_t i1, float v = 1.0f) {
      const auto p = handmade([&](ecopt::bit_writer& w) {
        w.write(0, 2);
        w.write(i0, 6);
        w.write(i1, 6);
        w.write_f32(v);
        w.write_f32(v);
      });
      ecopt::bit_reader r(p);
      c.decode_add(r, s, std::span<double>(out), 1.0, ctx);
    };
    CHECK_NOTHROW(decode(3, 49));
    CHECK(out[3] == 1.0);
    CHECK(out[49] == 1.0);
    CHECK(error_message_of([&] { decode(3, 50); }).find("out of range") != std::string::npos);
    CHECK(error_message_of([&] { decode(7, 7); }).find("does not increase") != std::string::npos);
    CHECK_THROWS_AS(decode(9, 2), ecopt::decode_error);
    CHECK_THROWS_AS(decode(1, 2, std::numeric_limits<float>::quiet_NaN()), ecopt::decode_error);
    CHECK_THROWS_AS(decode(1, 2, std::numeric_limits<float>::infinity()), ecopt::decode_error);
  }
  {
    const ecopt::top_k c{.k = 11};  // d = 64: tag 3, a bitmap with exactly 11 set bits
    auto s = c.make_state<double>(64);
    std::vector<double> o(64, 0.0);
    const auto decode = [&](std::uint64_t bitmap) {
      const auto p = handmade([&](ecopt::bit_writer& w) {
        w.write(3, 2);
        w.write(bitmap, 64);
        for (int i = 0; i < 11; ++i) w.write_f32(2.0f);
      });
      ecopt::bit_reader r(p);
      c.decode_add(r, s, std::span<double>(o), 1.0, ctx);
    };
    CHECK_NOTHROW(decode(0x7ff));
    CHECK_THROWS_AS(decode(0x3ff), ecopt::decode_error);  // 10 set bits
    CHECK_THROWS_AS(decode(0xfff), ecopt::decode_error);  // 12 set bits
  }
}

TEST_CASE("policies validate their fields by name") {
  CHECK(error_message_of([] { ecopt::top_k{.ratio = 0}.validate(); }).find("ratio") !=
        std::string::npos);
  CHECK_THROWS_AS(ecopt::top_k{.ratio = 1.5}.validate(), ecopt::invalid_argument);
  CHECK_THROWS_AS(ecopt::top_k{.ratio = std::nan("")}.validate(), ecopt::invalid_argument);
  CHECK_THROWS_AS(ecopt::rand_k{.ratio = -0.1}.validate(), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)ecopt::rand_k_unscaled{.ratio = 2}.make_state<float>(10),
                  ecopt::invalid_argument);
  CHECK(error_message_of([] { ecopt::qsgd{.levels = 0}.validate(); }).find("levels") !=
        std::string::npos);
  CHECK_NOTHROW(ecopt::qsgd{.levels = 255, .bucket_size = 512}.validate());
  CHECK(error_message_of([] { (void)ecopt::no_compression{}.make_state<float>(0); }).find("dim") !=
        std::string::npos);
  // A dimension mismatch names what was expected.
  const ecopt::top_k c{};
  auto s = c.make_state<float>(10);
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  std::vector<float> x(11);
  const auto msg = error_message_of([&] { c.encode(std::span<const float>(x), s, w, {}); });
  CHECK(msg.find("11") != std::string::npos);
  CHECK(msg.find("expected 10") != std::string::npos);
}

TEST_CASE("qsgd: field widths, bucket count and exact size") {
  CHECK(ecopt::qsgd{.levels = 1}.level_bits() == 1);
  CHECK(ecopt::qsgd{.levels = 3}.level_bits() == 2);
  CHECK(ecopt::qsgd{.levels = 4}.level_bits() == 3);
  CHECK(ecopt::qsgd{.levels = 7}.level_bits() == 3);
  CHECK(ecopt::qsgd{.levels = 8}.level_bits() == 4);
  const ecopt::qsgd c{.levels = 4, .bucket_size = 4};
  CHECK(c.num_buckets(10) == 3);
  CHECK(c.bits(10) == 3 * 32 + 10 * 4);
  CHECK(ecopt::qsgd{}.num_buckets(10) == 1);
  CHECK(ecopt::qsgd{.bucket_size = 100}.num_buckets(10) == 1);
  CHECK(ecopt::qsgd{}.omega(1000) == doctest::Approx(std::sqrt(1000.0) / 4));
  CHECK(ecopt::qsgd{.levels = 4, .bucket_size = 8}.omega(1000) == doctest::Approx(0.5));
  harness<ecopt::qsgd, double> h(c, 10);
  const auto x = random_vector<double>(10, 1);
  h.encode(x, {});
  CHECK(h.bits == c.bits(10));
}

TEST_CASE("qsgd: each value is its bucket norm times a neighbouring level over s") {
  // levels 5 uses 32-bit fixed-point rounding, 5000 the 64-bit path.
  for (const std::uint32_t s : {5u, 5000u}) {
    CAPTURE(s);
    const ecopt::qsgd c{.levels = s, .bucket_size = 7};
    constexpr std::size_t d = 40;
    const auto x = random_vector<double>(d, 2);
    harness<ecopt::qsgd, double> h(c, d);
    std::vector<double> mean(d, 0.0);
    constexpr int rounds = 2000;
    for (std::uint64_t round = 0; round < rounds; ++round) {
      const auto out = h.apply(x, {.seed = 4, .round = round});
      bool ok = true;
      for (std::size_t b0 = 0; b0 < d; b0 += 7) {
        double sq = 0;
        for (std::size_t j = b0; j < std::min(d, b0 + 7); ++j) sq += x[j] * x[j];
        const double norm = std::sqrt(sq);
        for (std::size_t j = b0; j < std::min(d, b0 + 7); ++j) {
          const double r = s * std::fabs(x[j]) / norm;
          const double level = std::fabs(out[j]) / norm * s;
          ok = ok && std::fabs(level - std::round(level)) < 1e-6 * s;
          ok = ok && level >= std::floor(r) - 1e-6 * s && level <= std::ceil(r) + 1e-6 * s;
          ok = ok && (out[j] == 0 || (out[j] < 0) == (x[j] < 0));
          mean[j] += out[j] / rounds;
        }
      }
      REQUIRE(ok);
    }
    // Unbiased per coordinate: each value's rounding has sd <= norm/(2s); 6 sd of the mean.
    for (std::size_t j = 0; j < d; ++j) {
      double sq = 0;
      for (std::size_t i = j / 7 * 7; i < std::min(d, j / 7 * 7 + 7); ++i) sq += x[i] * x[i];
      CHECK(std::fabs(mean[j] - x[j]) <= 6 * std::sqrt(sq) / (2.0 * s) / std::sqrt(rounds) + 1e-6);
    }
  }
  // A lone coordinate is its own norm: level s, decoded exactly.
  harness<ecopt::qsgd, float> one(ecopt::qsgd{}, 1);
  const std::vector<float> v{-3.25f};
  CHECK(one.apply(v, {})[0] == -3.25f);
}

TEST_CASE("qsgd decoder rejects levels beyond s and bad norms") {
  const ecopt::qsgd c{.levels = 4};  // one bucket, 4-bit fields
  auto s = c.make_state<double>(2);
  std::vector<double> out(2, 0.0);
  const auto decode = [&](float norm, std::uint64_t f0, std::uint64_t f1) {
    const auto p = handmade([&](ecopt::bit_writer& w) {
      w.write_f32(norm);
      w.write(f0, 4);
      w.write(f1, 4);
    });
    ecopt::bit_reader r(p);
    c.decode_add(r, s, std::span<double>(out), 1.0, {});
  };
  CHECK_NOTHROW(decode(2.0f, 4 << 1, (3 << 1) | 1));
  CHECK(out[0] == 2.0);
  CHECK(out[1] == -1.5);
  CHECK(error_message_of([&] { decode(2.0f, 5 << 1, 0); }).find("level") != std::string::npos);
  CHECK_THROWS_AS(decode(-1.0f, 0, 0), ecopt::decode_error);
  CHECK_THROWS_AS(decode(std::numeric_limits<float>::quiet_NaN(), 0, 0), ecopt::decode_error);
  CHECK_THROWS_AS(decode(std::numeric_limits<float>::infinity(), 0, 0), ecopt::decode_error);
}

TEST_CASE("qsgd refuses inputs whose norm is not a finite float32") {
  harness<ecopt::qsgd, double> h(ecopt::qsgd{}, 3);
  const std::vector<double> x{1.0, std::nan(""), 2.0};
  CHECK_THROWS_AS(h.encode(x, {}), ecopt::numeric_error);
  const std::vector<double> huge{1e300, 1.0, 1.0};
  CHECK_THROWS_AS(h.encode(huge, {}), ecopt::numeric_error);
}

TEST_CASE("scaled_sign: scale ||x||_1/d, sign(0) = +, and delta_of") {
  harness<ecopt::scaled_sign, double> h(ecopt::scaled_sign{}, 4);
  const std::vector<double> x{3.0, -4.0, 0.0, -0.0};
  const auto out = h.apply(x, {});
  CHECK(out == std::vector<double>{1.75, -1.75, 1.75, 1.75});
  CHECK(h.bits == 36);

  const std::vector<double> y{3.0, -4.0};
  CHECK(ecopt::scaled_sign::delta_of(std::span<const double>(y)) == doctest::Approx(49.0 / 50.0));
  const std::vector<double> zero(5, 0.0);
  CHECK(ecopt::scaled_sign::delta_of(std::span<const double>(zero)) == 1.0);
  CHECK(ecopt::scaled_sign{}.delta(8) == 0.125);

  // ||C(x) - x||^2 = (1 - delta_of(x)) ||x||^2 exactly, up to the float32 scale.
  for (std::uint64_t seed = 0; seed < 10; ++seed) {
    constexpr std::size_t d = 257;
    harness<ecopt::scaled_sign, double> g(ecopt::scaled_sign{}, d);
    auto v = random_vector<double>(d, seed);
    if (seed % 2) v[seed] = 100.0;  // far from equal magnitudes
    const auto cv = g.apply(v, {});
    const double xx = ecopt::test::squared_norm<double>(v);
    CHECK(ecopt::test::squared_distance<double>(cv, v) ==
          doctest::Approx((1 - ecopt::scaled_sign::delta_of(std::span<const double>(v))) * xx)
              .epsilon(1e-5));
  }
}

TEST_CASE("scaled_sign decoder rejects negative or non-finite scales") {
  const ecopt::scaled_sign c{};
  auto s = c.make_state<float>(3);
  std::vector<float> out(3, 0.0f);
  const auto decode = [&](float scale) {
    const auto p = handmade([&](ecopt::bit_writer& w) {
      w.write_f32(scale);
      w.write(0b010, 3);
    });
    ecopt::bit_reader r(p);
    c.decode_add(r, s, std::span<float>(out), 2.0f, {});
  };
  CHECK_NOTHROW(decode(0.5f));
  CHECK(out == std::vector<float>{1.0f, -1.0f, 1.0f});
  CHECK_THROWS_AS(decode(-0.5f), ecopt::decode_error);
  CHECK_THROWS_AS(decode(std::numeric_limits<float>::quiet_NaN()), ecopt::decode_error);
  CHECK_THROWS_AS(decode(std::numeric_limits<float>::infinity()), ecopt::decode_error);
}

TEST_CASE_TEMPLATE("rand_k draws k distinct increasing indices, uniformly", C, ecopt::rand_k,
                   ecopt::rand_k_unscaled) {
  // k tiny against d (sorted list), mid (scan of the marks) and k > d/2 (the
  // dropped ones are drawn).
  struct dims {
    std::size_t d, k;
  };
  for (const dims dk : {dims{20, 1}, dims{20, 5}, dims{20, 15}, dims{20, 19}, dims{20, 20},
                        dims{5000, 1}, dims{5000, 2}, dims{5000, 15}, dims{5000, 2500},
                        dims{5000, 4999}, dims{100000, 10}, dims{100000, 40}}) {
    const std::size_t d = dk.d;
    const std::size_t k = dk.k;
    CAPTURE(d);
    CAPTURE(k);
    const C c{.k = k};
    auto s = c.template make_state<float>(d);
    std::vector<std::size_t> hits(d, 0);
    constexpr std::uint64_t rounds = 2000;
    for (std::uint64_t t = 0; t < rounds; ++t) {
      const auto idx = c.draw_indices(s, {.seed = 1, .round = t});
      REQUIRE(idx.size() == k);
      bool increasing = idx[k - 1] < d;
      for (std::size_t i = 0; i < k; ++i) {
        if (i > 0) increasing = increasing && idx[i - 1] < idx[i];
        ++hits[idx[i]];
      }
      REQUIRE(increasing);
    }
    // Each index is kept with probability k/d (binomial counts). For d = 20 each
    // count is within 6 standard deviations; for any d the chi-square statistic
    // (mean below d; each term has variance 2 + (1 - 6pq)/(npq), the binomial
    // kurtosis) is within 6 of its standard deviations.
    const double p = static_cast<double>(k) / static_cast<double>(d);
    const double mean = p * rounds;
    const double var = rounds * p * (1 - p);
    if (k == d) {
      for (const auto h : hits) REQUIRE(h == rounds);
      continue;
    }
    double chi2 = 0;
    for (std::size_t j = 0; j < d; ++j) {
      const double e = static_cast<double>(hits[j]) - mean;
      if (d == 20) REQUIRE(std::fabs(e) <= 6 * std::sqrt(var));
      chi2 += e * e / var;
    }
    const double term_var = 2 + (1 - 6 * p * (1 - p)) / var;
    CHECK(chi2 <= static_cast<double>(d) + 6 * std::sqrt(term_var * static_cast<double>(d)));
  }
}

TEST_CASE("rand_k: shared indices are the same on every rank, private ones are not") {
  constexpr std::size_t d = 1000;
  const ecopt::rand_k shared{.ratio = 0.1};
  const ecopt::rand_k priv{.ratio = 0.1, .shared_seed = false};
  auto s = shared.make_state<double>(d);
  const auto a = [&](const ecopt::rand_k& c, int rank, std::uint64_t round) {
    const auto idx = c.draw_indices(s, {.seed = 8, .round = round, .rank = rank});
    return std::vector<std::uint32_t>(idx.begin(), idx.end());
  };
  CHECK(a(shared, 0, 3) == a(shared, 2, 3));
  CHECK(a(shared, 0, 3) != a(shared, 0, 4));
  CHECK(a(priv, 0, 3) != a(priv, 2, 3));
  CHECK(a(priv, 2, 3) == a(priv, 2, 3));
  CHECK(shared.summable());
  CHECK_FALSE(priv.summable());

  // The decoder regenerates the sender's private indices from the sender's context.
  harness<ecopt::rand_k, double> h(priv, d);
  const auto x = random_vector<double>(d, 3);
  const round_context sender{.seed = 8, .round = 3, .rank = 2};
  h.encode(x, sender);
  std::vector<double> out(d, 0.0);
  h.decode_add(h.payload, out, 1.0, sender);
  const auto idx = a(priv, 2, 3);
  std::vector<double> expected(d, 0.0);
  for (const auto j : idx) expected[j] = 10.0 * static_cast<double>(static_cast<float>(x[j]));
  for (std::size_t j = 0; j < d; ++j) CHECK(out[j] == doctest::Approx(expected[j]));

  std::vector<float> buf(100);
  CHECK_THROWS_AS(
      priv.encode_summable(std::span<const double>(x), h.state, std::span<float>(buf), sender),
      ecopt::invalid_argument);
}

TEST_CASE("rand_k scales by d/k, rand_k_unscaled does not") {
  constexpr std::size_t d = 100;
  const auto x = random_vector<float>(d, 5);
  harness<ecopt::rand_k, float> scaled({.k = 20}, d);
  harness<ecopt::rand_k_unscaled, float> plain({.k = 20}, d);
  const round_context ctx{.seed = 1, .round = 2};
  const auto a = scaled.apply(x, ctx);
  const auto b = plain.apply(x, ctx);
  std::size_t kept = 0;
  for (std::size_t j = 0; j < d; ++j) {
    if (b[j] != 0) {
      ++kept;
      CHECK(b[j] == x[j]);
      CHECK(a[j] == doctest::Approx(5.0 * x[j]));
    } else {
      CHECK(a[j] == 0);
    }
  }
  CHECK(kept == 20);
  CHECK(ecopt::rand_k{.k = 20}.omega(d) == doctest::Approx(4.0));
  CHECK(ecopt::rand_k_unscaled{.k = 20}.delta(d) == doctest::Approx(0.2));
  CHECK(ecopt::rand_k{.k = 20}.bits(d) == 640);
}

TEST_CASE("rand_k rejects finite values that overflow once scaled by d/k") {
  // k = 1 of d = 100: a value of 1e37 is a finite float32, but 100 * 1e37 is not.
  constexpr std::size_t d = 100;
  const ecopt::rand_k c{.k = 1};
  const round_context sender{.seed = 3, .round = 1};
  const auto payload = handmade([](ecopt::bit_writer& w) { w.write_f32(1e37f); });
  auto sf = c.make_state<float>(d);
  std::vector<float> out(d, 0.0f);
  ecopt::bit_reader r(payload);
  CHECK_THROWS_WITH_AS(c.decode_add(r, sf, std::span<float>(out), 1.0f, sender),
                       doctest::Contains("not finite"), ecopt::decode_error);
  CHECK(std::all_of(out.begin(), out.end(), [](float v) { return v == 0.0f; }));
  const std::vector<float> summed{1e37f};
  CHECK_THROWS_WITH_AS(
      c.decode_summed(std::span<const float>(summed), sf, std::span<float>(out), 1.0f, sender),
      doctest::Contains("not finite"), ecopt::decode_error);
  // A double model holds the scaled value: nothing to reject there.
  auto sd = c.make_state<double>(d);
  std::vector<double> wide(d, 0.0);
  ecopt::bit_reader rd(payload);
  c.decode_add(rd, sd, std::span<double>(wide), 1.0, sender);
  CHECK(std::count(wide.begin(), wide.end(), 100.0 * double{1e37f}) == 1);
}

TEST_CASE("no_compression sends the float32 values") {
  harness<ecopt::no_compression, double> h({}, 3);
  const std::vector<double> x{0.1, -2.0, 1e-40};
  const auto out = h.apply(x, {});
  for (std::size_t j = 0; j < 3; ++j)
    CHECK(out[j] == static_cast<double>(static_cast<float>(x[j])));
  CHECK(h.bits == 96);
  CHECK(h.payload.size() == 12);
}

}  // namespace compressors_test
