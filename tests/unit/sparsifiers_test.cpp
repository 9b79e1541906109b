// Sparsifiers: the shared index-set coding (compressors/detail/index_coding.hpp),
// top_k's selection on large and tied inputs, threshold_top_k (DGC's sampled
// threshold) and chain<A, B>.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "contracts/contract_examples.hpp"
#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressors/chain.hpp"
#include "ecopt/compressors/detail/index_coding.hpp"
#include "ecopt/compressors/qsgd.hpp"
#include "ecopt/compressors/rand_k.hpp"
#include "ecopt/compressors/scaled_sign.hpp"
#include "ecopt/compressors/threshold_top_k.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace sparsifiers_test {

namespace {

using ecopt::round_context;
using ecopt::detail::index_code;
using ecopt::detail::index_plan;
using ecopt::test::harness;
using ecopt::test::random_vector;
using ecopt::test::squared_distance;
using ecopt::test::squared_norm;
using indices = std::vector<std::uint32_t>;

/// The top-k definition: sort by (|x| descending, index ascending), keep k, list increasing.
template <class T>
indices brute_force_top_k(const std::vector<T>& x, std::size_t k) {
  indices order(x.size());
  std::iota(order.begin(), order.end(), 0u);
  const auto key = [&](std::uint32_t j) { return ecopt::detail::magnitude_key(x[j]); };
  std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    return key(a) != key(b) ? key(a) > key(b) : a < b;
  });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

/// A random subset of [0, d): each index with probability p.
indices random_set(std::size_t d, double p, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 7, 0);
  indices s;
  for (std::size_t j = 0; j < d; ++j) {
    if (rng.uniform() < p) s.push_back(static_cast<std::uint32_t>(j));
  }
  return s;
}

/// Runs of `run` consecutive indices starting every `period`.
indices runs(std::size_t d, std::size_t run, std::size_t period, std::size_t offset = 0) {
  indices s;
  for (std::size_t base = offset; base < d; base += period) {
    for (std::size_t i = 0; i < run && base + i < d; ++i)
      s.push_back(static_cast<std::uint32_t>(base + i));
  }
  return s;
}

/// Each code's size on a set, computed independently of the encoder (tag included).
struct code_costs {
  std::uint64_t fixed, rice, gamma, bitmap;
  unsigned rice_param;
};
code_costs costs_of(const indices& s, std::size_t d) {
  const auto k = static_cast<std::uint64_t>(s.size());
  code_costs c{};
  c.fixed = 2 + k * ecopt::bits_for(d);
  c.bitmap = 2 + d;
  c.gamma = 2;
  std::vector<std::uint64_t> gaps;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const std::uint64_t g = i == 0 ? s[0] : s[i] - s[i - 1] - 1;
    gaps.push_back(g);
    c.gamma += 2 * static_cast<std::uint64_t>(std::bit_width(g + 1)) - 1;
  }
  c.rice = std::numeric_limits<std::uint64_t>::max();
  for (unsigned b = 0; b < 32; ++b) {
    std::uint64_t bits = 2 + 5 + k * (1 + b);
    for (const auto g : gaps) bits += g >> b;
    if (bits < c.rice) {
      c.rice = bits;
      c.rice_param = b;
    }
  }
  return c;
}

/// Writes the set with `plan` followed by a 13-bit trailer; reads it back and
/// checks the set, the bit count and that the decoder stopped at the trailer.
void check_round_trip(const indices& s, std::size_t d, const index_plan& plan) {
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  w.write(1, 3);  // start unaligned
  const std::uint64_t bits = ecopt::detail::write_indices(w, s, d, plan);
  w.write(0x1abc, 13);
  w.finish();
  CHECK(w.bits() == 3 + bits + 13);
  ecopt::bit_reader r(buf);
  CHECK(r.read(3, "lead") == 1);
  indices back(s.size(), 0xdeadbeef);
  ecopt::detail::read_indices(r, d, back, "test");
  CHECK(r.position() == 3 + bits);
  CHECK(r.read(13, "trailer") == 0x1abc);
  CHECK(back == s);
}

template <class F>
std::string error_message_of(F&& f) {
  try {
    f();
  } catch (const ecopt::error& e) {
    return e.what();
  }
  return {};
}

/// Inputs that stress a selection at large d: ties, zeros, orders that fool a
/// strided sample, equal top bits.
template <class T>
std::vector<T> hard_input(std::size_t d, int kind, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 3, 0);
  std::vector<T> x(d);
  for (std::size_t j = 0; j < d; ++j) {
    const double u = rng.normal();
    switch (kind) {
      case 0:  // gaussian
        x[j] = static_cast<T>(u);
        break;
      case 1:  // few distinct magnitudes: big tie at the threshold
        x[j] = static_cast<T>(std::round(2 * u));
        break;
      case 2:  // mostly zeros: fewer nonzeros than k at small ratios
        x[j] = rng.below(200) == 0 ? static_cast<T>(u) : T(0);
        break;
      case 3:  // all magnitudes equal
        x[j] = j % 2 ? T(-0.75) : T(0.75);
        break;
      case 4:  // increasing magnitudes: the top k is one block at the end
        x[j] = static_cast<T>(static_cast<double>(j) * 1e-3);
        break;
      case 5:  // large only where top_k's strided sample (8 of every 64 at d = 2^17) never looks
        x[j] = static_cast<T>((j % 64) >= 8 ? 10 + u : u * 1e-3);
        break;
      case 6:  // differences only in the lowest mantissa bits
        x[j] = static_cast<T>(1);
        for (auto steps = rng.below(4); steps > 0; --steps) x[j] = std::nextafter(x[j], T(2));
        break;
      default:  // wide dynamic range, both signs, some exact zeros
        x[j] = rng.below(10) == 0
                   ? T(0)
                   : static_cast<T>(u * std::pow(10.0, static_cast<double>(rng.below(40)) - 20));
        break;
    }
  }
  return x;
}

}  // namespace

// ---------------------------------------------------------------- index coding

TEST_CASE("index coding: every code round-trips, unaligned, and stops at its end") {
  struct example {
    indices set;
    std::size_t d;
  };
  std::vector<example> examples = {
      {{0}, 1},  // k = d: implied, nothing written
      {{}, 10},
      {{5}, 6},
      {{0}, 2},
      {{0, 1, 2, 3}, 4},
      {{0, 63, 64, 127, 128}, 200},
      {{1000}, 1001},
      {{3, 100000}, 100001},  // a long Rice unary run at small parameters
      {{7, 2000000000u}, 4294967295u},
      {{4294967294u}, 4294967295u},  // gamma's longest code (63 bits)
  };
  for (std::uint64_t seed = 0; seed < 6; ++seed) {
    examples.push_back({random_set(3000, 0.003 * static_cast<double>(seed + 1), seed), 3000});
    examples.push_back({random_set(777, 0.5, seed), 777});
    examples.push_back({runs(5000, 1 + seed * 3, 97 + seed * 50, seed), 5000});
  }
  for (const auto& ex : examples) {
    const auto& set = ex.set;
    const std::size_t d = ex.d;
    CAPTURE(d);
    CAPTURE(set.size());
    const index_plan best = ecopt::detail::plan_indices(set, d);
    check_round_trip(set, d, best);
    if (ecopt::detail::index_set_implied(set.size(), d)) {
      CHECK(ecopt::detail::exact_index_bits(set, d) == 0);
      continue;
    }
    CHECK(best.bits == ecopt::detail::exact_index_bits(set, d));
    CHECK(best.bits <= ecopt::detail::index_bits_bound(set.size(), d));
    // Forced codes decode too (the bitmap only where d is small).
    check_round_trip(set, d, {index_code::fixed, 0, 0});
    check_round_trip(set, d, {index_code::gamma, 0, 0});
    for (const unsigned b : {0u, 3u, 17u, 31u}) {
      if ((set.back() >> b) > 100000) continue;  // keep the unary runs to ~12 KiB
      check_round_trip(set, d, {index_code::rice, b, 0});
    }
    if (d <= 100000) check_round_trip(set, d, {index_code::bitmap, 0, 0});
  }
}

TEST_CASE("index coding: the encoder picks the cheapest code, with the best Rice parameter") {
  SUBCASE("dense sets go as a bitmap") {
    const auto s = random_set(1000, 0.5, 1);
    const auto plan = ecopt::detail::plan_indices(s, 1000);
    CHECK(plan.code == index_code::bitmap);
    CHECK(plan.bits == 2 + 1000);
  }
  SUBCASE("clustered sets go as gamma gaps") {
    const auto s = runs(100000, 40, 5000);  // 20 runs of 40
    const auto plan = ecopt::detail::plan_indices(s, 100000);
    CHECK(plan.code == index_code::gamma);
    CHECK(plan.bits < s.size() * 2);  // about one bit per index
  }
  SUBCASE("sparse random sets go as Rice gaps") {
    const auto s = random_set(1 << 20, 0.01, 2);
    const auto plan = ecopt::detail::plan_indices(s, 1 << 20);
    CHECK(plan.code == index_code::rice);
    // log2(1/p) + ~1.5 bits per index, far below the 20-bit fixed width.
    CHECK(static_cast<double>(plan.bits) / static_cast<double>(s.size()) < 9.0);
  }
  SUBCASE("a few spread-out indices go fixed width") {
    const indices s{0, 500, 999};
    const auto plan = ecopt::detail::plan_indices(s, 1000);
    CHECK(plan.code == index_code::fixed);
    CHECK(plan.bits == 2 + 3 * 10);
  }
  SUBCASE("the choice is the minimum of the independently computed costs") {
    for (std::uint64_t seed = 0; seed < 40; ++seed) {
      CAPTURE(seed);
      auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 9, 0);
      const std::size_t d = 2 + static_cast<std::size_t>(rng.below(50000));
      indices s = seed % 3 == 0 ? runs(d, 1 + rng.below(20), 20 + rng.below(2000), rng.below(10))
                                : random_set(d, std::pow(10.0, -rng.uniform() * 3.5), seed);
      if (s.empty() || s.size() == d) continue;
      CAPTURE(d);
      CAPTURE(s.size());
      const auto c = costs_of(s, d);
      const auto plan = ecopt::detail::plan_indices(s, d);
      CHECK(plan.bits == std::min({c.fixed, c.rice, c.gamma, c.bitmap}));
      if (plan.code == index_code::rice) CHECK(plan.bits == c.rice);
      CHECK(c.rice >= plan.bits);
      check_round_trip(s, d, plan);
    }
  }
}

TEST_CASE("index coding: index_bits_bound bounds every set, including the worst ones") {
  for (const std::size_t d : {std::size_t{2}, std::size_t{64}, std::size_t{1000},
                              std::size_t{65536}, std::size_t{1000003}}) {
    for (const double p : {0.0001, 0.003, 0.01, 0.1, 0.3, 0.6, 0.99}) {
      const auto k =
          std::clamp<std::size_t>(static_cast<std::size_t>(p * static_cast<double>(d)), 1, d - 1);
      CAPTURE(d);
      CAPTURE(k);
      const std::uint64_t bound = ecopt::detail::index_bits_bound(k, d);
      CHECK(bound <= 2 + std::min<std::uint64_t>(k * ecopt::bits_for(d), d));
      // Evenly spread (the Rice worst case), packed at either end, random.
      indices even(k);
      for (std::size_t i = 0; i < k; ++i) even[i] = static_cast<std::uint32_t>(i * d / k);
      indices tail(k);
      std::iota(tail.begin(), tail.end(), static_cast<std::uint32_t>(d - k));
      indices head(k);
      std::iota(head.begin(), head.end(), 0u);
      for (const auto& s : {even, tail, head}) {
        CHECK(ecopt::detail::exact_index_bits(s, d) <= bound);
      }
    }
  }
  CHECK(ecopt::detail::index_bits_bound(5, 5) == 0);
  CHECK(ecopt::detail::index_bits_bound(0, 5) == 0);
}

TEST_CASE("index coding: corrupt or truncated streams throw decode_error") {
  const std::size_t d = 5000;
  const auto set = random_set(d, 0.01, 4);
  const auto clustered = runs(d, 30, 700);
  for (const auto& s : {set, clustered}) {
    for (const auto code :
         {index_code::fixed, index_code::rice, index_code::gamma, index_code::bitmap}) {
      CAPTURE(static_cast<int>(code));
      const index_plan plan{code, 4, 0};
      std::vector<std::byte> buf;
      ecopt::bit_writer w(buf);
      const std::uint64_t bits = ecopt::detail::write_indices(w, s, d, plan);
      w.finish();
      // Every shorter payload (whole bytes dropped): the reader must run out and say so.
      REQUIRE(buf.size() == (bits + 7) / 8);
      for (std::size_t bytes = 0; bytes < buf.size(); ++bytes) {
        const std::vector<std::byte> p(buf.begin(),
                                       buf.begin() + static_cast<std::ptrdiff_t>(bytes));
        ecopt::bit_reader r(p);
        indices back(s.size());
        CHECK_THROWS_AS(ecopt::detail::read_indices(r, d, back, "test"), ecopt::decode_error);
      }
      // Bit flips: rejected, or a valid strictly increasing set below d.
      auto rng = ecopt::counter_rng::stream(static_cast<std::uint64_t>(code),
                                            ecopt::stream_purpose::test, 4, 0);
      std::size_t rejected = 0;
      for (int t = 0; t < 300; ++t) {
        auto p = buf;
        for (int f = 0; f < 1 + t % 3; ++f) {
          p[rng.below(p.size())] ^= static_cast<std::byte>(1u << rng.below(8));
        }
        ecopt::bit_reader r(p);
        indices back(s.size());
        try {
          ecopt::detail::read_indices(r, d, back, "test");
        } catch (const ecopt::decode_error&) {
          ++rejected;
          continue;
        }
        bool valid = back.back() < d;
        for (std::size_t i = 1; i < back.size(); ++i) valid = valid && back[i - 1] < back[i];
        REQUIRE(valid);
      }
      CHECK(rejected > 0);
    }
  }

  const auto decode = [](std::size_t n, std::size_t dd, auto&& fill) {
    std::vector<std::byte> buf;
    ecopt::bit_writer w(buf);
    fill(w);
    w.finish();
    ecopt::bit_reader r(buf);
    indices back(n);
    ecopt::detail::read_indices(r, dd, back, "test");
    return back;
  };
  // Fixed width: out of range, not increasing.
  CHECK(error_message_of([&] {
          decode(2, 50, [](ecopt::bit_writer& w) {
            w.write(0, 2);
            w.write(3, 6);
            w.write(50, 6);
          });
        }).find("out of range") != std::string::npos);
  CHECK(error_message_of([&] {
          decode(2, 50, [](ecopt::bit_writer& w) {
            w.write(0, 2);
            w.write(7, 6);
            w.write(7, 6);
          });
        }).find("does not increase") != std::string::npos);
  // Rice: a gap past d, and an endless unary run, stop at d, not at the end of memory.
  CHECK_THROWS_AS(decode(2, 50,
                         [](ecopt::bit_writer& w) {
                           w.write(1, 2);
                           w.write(2, 5);      // b = 2
                           w.write(0b001, 3);  // gap 0: "1" then 00
                           w.write(0, 13);     // 13 zeros: quotient 13 -> gap >= 52
                           w.write(1, 1);
                           w.write(0, 2);
                         }),
                  ecopt::decode_error);
  CHECK(error_message_of([&] {
          decode(1, 1000, [](ecopt::bit_writer& w) {
            w.write(1, 2);
            w.write(0, 5);
            for (int i = 0; i < 100; ++i) w.write(0, 64);
          });
        }).find("past d") != std::string::npos);
  // Gamma: more than 32 leading zeros, and a gap past d.
  CHECK_THROWS_AS(decode(1, 1000,
                         [](ecopt::bit_writer& w) {
                           w.write(2, 2);
                           w.write(0, 40);
                           w.write(1, 1);
                         }),
                  ecopt::decode_error);
  CHECK_THROWS_AS(decode(1, 7,
                         [](ecopt::bit_writer& w) {
                           w.write(2, 2);
                           w.write(0b1000, 4);  // 3 zeros then the one: g + 1 in [8, 16)
                           w.write(0, 3);
                         }),
                  ecopt::decode_error);
  // Bitmap with the wrong number of set bits.
  CHECK_THROWS_AS(decode(3, 10,
                         [](ecopt::bit_writer& w) {
                           w.write(3, 2);
                           w.write(0b11, 10);
                         }),
                  ecopt::decode_error);
  CHECK_THROWS_AS(decode(1, 10,
                         [](ecopt::bit_writer& w) {
                           w.write(3, 2);
                           w.write(0b11, 10);
                         }),
                  ecopt::decode_error);
  // Caller errors are invalid_argument.
  CHECK_THROWS_AS((void)ecopt::detail::plan_indices(indices{3, 3}, 10), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)ecopt::detail::plan_indices(indices{3, 10}, 10), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)ecopt::detail::plan_indices(indices{1, 2, 3}, 2), ecopt::invalid_argument);
  CHECK_THROWS_AS(decode(3, 2, [](ecopt::bit_writer&) {}), ecopt::invalid_argument);
}

TEST_CASE("index coding: encode and decode do not allocate") {
  const std::size_t d = 100000;
  const std::vector<indices> sets = {random_set(d, 0.01, 5), runs(d, 50, 3000),
                                     random_set(d, 0.6, 6), indices{17, 99999}};
  std::vector<std::byte> buf;
  buf.reserve(d / 8 + 64);
  indices back(d);
  ecopt::test::allocation_scope scope;
  for (const auto& s : sets) {
    ecopt::bit_writer w(buf);
    ecopt::detail::write_indices(w, s, d);
    w.finish();
    ecopt::bit_reader r(buf);
    ecopt::detail::read_indices(r, d, std::span<std::uint32_t>(back.data(), s.size()), "test");
  }
  CHECK(scope.count() == 0);
}

// ---------------------------------------------------------------------- top_k

TEST_CASE_TEMPLATE("top_k keeps the brute-force set at large d: sampled path and fallbacks", T,
                   float, double) {
  const std::size_t d = std::size_t{1} << 17;
  for (int kind = 0; kind < 8; ++kind) {
    for (const std::size_t k : {std::size_t{1}, std::size_t{37}, d / 100, d / 10, d / 2, d - 1}) {
      CAPTURE(kind);
      CAPTURE(k);
      const auto x = hard_input<T>(d, kind, static_cast<std::uint64_t>(kind) * 31 + k);
      const ecopt::top_k c{.k = k};
      harness<ecopt::top_k, T> h(c, d);
      const auto out = h.apply(x, {});
      const auto expected = brute_force_top_k(x, k);
      REQUIRE(h.state.chosen == expected);
      std::vector<T> dense(d, T(0));
      for (const auto j : expected) dense[j] = static_cast<T>(static_cast<float>(x[j]));
      REQUIRE(out == dense);
      CHECK(h.bits == ecopt::detail::exact_index_bits(expected, d) + 32 * k);
    }
  }
}

TEST_CASE_TEMPLATE("top_k refuses non-finite inputs with numeric_error", T, float, double) {
  const std::size_t d = std::size_t{1} << 16;
  for (const std::size_t at : {std::size_t{0}, std::size_t{12345}, d - 1}) {
    for (const T bad : {std::numeric_limits<T>::quiet_NaN(), -std::numeric_limits<T>::infinity()}) {
      auto x = random_vector<T>(d, at);
      x[at] = bad;
      harness<ecopt::top_k, T> h(ecopt::top_k{}, d);
      CHECK(error_message_of([&] { h.encode(x, {}); }).find(std::to_string(at)) !=
            std::string::npos);
      CHECK_THROWS_AS(h.encode(x, {}), ecopt::numeric_error);
    }
  }
  harness<ecopt::top_k, double> h(ecopt::top_k{.k = 1}, 3);
  const std::vector<double> huge{1.0, 1e300, 2.0};  // beyond float32
  CHECK_THROWS_AS(h.encode(huge, {}), ecopt::numeric_error);
}

TEST_CASE("top_k: no allocation after warm-up at large d") {
  const std::size_t d = std::size_t{1} << 17;
  harness<ecopt::top_k, float> h(ecopt::top_k{}, d);
  const auto x = random_vector<float>(d, 1);
  const auto ties = hard_input<float>(d, 2, 1);  // the histogram fallback
  std::vector<float> out(d, 0.0f);
  h.encode(x, {});
  h.decode_add(h.payload, out, 1.0f, {});
  ecopt::test::allocation_scope scope;
  for (const auto* in : {&x, &ties}) {
    h.encode(*in, {});
    h.decode_add(h.payload, out, 1.0f, {});
  }
  CHECK(scope.count() == 0);
}

// ------------------------------------------------------------ threshold_top_k

TEST_CASE_TEMPLATE("threshold_top_k keeps a top set of k to max_kept entries", T, float, double) {
  struct config {
    std::size_t d;
    double ratio, sample_ratio;
  };
  for (const config cf :
       {config{1000, 0.1, 0.2}, config{1000, 0.01, 0.01}, config{std::size_t{1} << 16, 0.01, 0.01},
        config{std::size_t{1} << 16, 0.001, 0.05}, config{50, 0.5, 1.0}}) {
    const ecopt::threshold_top_k c{.ratio = cf.ratio, .sample_ratio = cf.sample_ratio};
    const std::size_t d = cf.d;
    CAPTURE(d);
    CAPTURE(cf.ratio);
    const std::size_t k = c.kept(d);
    const std::size_t most = c.max_kept(d);
    CHECK(most == std::min(d, static_cast<std::size_t>(std::ceil(1.3 * static_cast<double>(k)))));
    CHECK(c.delta(d) == doctest::Approx(static_cast<double>(k) / static_cast<double>(d)));
    harness<ecopt::threshold_top_k, T> h(c, d);
    for (int kind = 0; kind < 8; ++kind) {
      for (std::uint64_t round = 0; round < 4; ++round) {
        CAPTURE(kind);
        CAPTURE(round);
        const auto x = hard_input<T>(d, kind, round);
        const round_context ctx{.seed = 11, .round = round, .rank = 2};
        const auto out = h.apply(x, ctx);
        const std::size_t n = h.state.count;
        REQUIRE(n >= k);
        REQUIRE(n <= most);
        const auto expected = brute_force_top_k(x, n);  // the n largest, ties kept whole
        REQUIRE(indices(h.state.chosen.begin(),
                        h.state.chosen.begin() + static_cast<std::ptrdiff_t>(n)) == expected);
        std::vector<T> dense(d, T(0));
        for (const auto j : expected) dense[j] = static_cast<T>(static_cast<float>(x[j]));
        REQUIRE(out == dense);
        CHECK(h.bits <= c.max_bits(d));
        CHECK(h.bits == c.count_bits(d) + ecopt::detail::exact_index_bits(expected, d) + 32 * n);
      }
    }
  }
}

TEST_CASE("threshold_top_k: the sample sets the threshold, from the sender's private stream") {
  const std::size_t d = std::size_t{1} << 16;
  const ecopt::threshold_top_k c{};  // k = 655, up to 852, 655 samples
  const auto x = random_vector<float>(d, 3);
  harness<ecopt::threshold_top_k, float> h(c, d);
  harness<ecopt::threshold_top_k, float> g(c, d);
  std::size_t by_threshold = 0;
  double count_sum = 0;
  std::vector<std::size_t> counts;
  constexpr int rounds = 200;
  for (std::uint64_t round = 0; round < rounds; ++round) {
    const round_context ctx{.seed = 5, .round = round, .rank = 1};
    h.encode(x, ctx);
    g.encode(x, ctx);
    REQUIRE(h.payload == g.payload);  // a function of (seed, rank, round)
    by_threshold += h.state.used_threshold ? 1 : 0;
    count_sum += static_cast<double>(h.state.count);
    counts.push_back(h.state.count);
  }
  // m p = 6.55 sampled entries are expected above the k-th largest; the rank-8
  // sample threshold passes about d Gamma(8)/m entries, in [k, 1.3 k] with
  // probability about 0.3; the other rounds fall back to the exact top k.
  CHECK(by_threshold > rounds / 10);
  CHECK(by_threshold < rounds * 6 / 10);
  std::sort(counts.begin(), counts.end());
  CHECK(counts.front() < counts.back());  // the count varies with the round's draws
  const double mean = count_sum / rounds;
  CHECK(mean > 655);
  CHECK(mean < 852);

  // A 1 % sample of a large vector hits [k, 1.3 k] nearly always: at d = 2^22
  // the rank is 479, so the count's relative sd is about 1/sqrt(479) = 4.6 %,
  // and [k, 1.3 k] spans -2.7 to +3 sd around the aim.
  const std::size_t big = std::size_t{1} << 22;
  const auto y = random_vector<float>(big, 4);
  harness<ecopt::threshold_top_k, float> b(c, big);
  std::size_t hits = 0;
  for (std::uint64_t round = 0; round < 10; ++round) {
    b.encode(y, {.seed = 8, .round = round});
    hits += b.state.used_threshold ? 1 : 0;
  }
  CHECK(hits >= 8);

  // Different ranks draw different samples.
  h.encode(x, {.seed = 5, .round = 0, .rank = 0});
  const auto rank0 = h.payload;
  bool differs = false;
  for (int rank = 1; rank < 40 && !differs; ++rank) {
    h.encode(x, {.seed = 5, .round = 0, .rank = rank});
    differs = h.payload != rank0;
  }
  CHECK(differs);
}

TEST_CASE("threshold_top_k: validation and corrupt counts") {
  CHECK(error_message_of([] {
          ecopt::threshold_top_k{.sample_ratio = 0}.validate();
        }).find("sample_ratio") != std::string::npos);
  CHECK(error_message_of([] {
          ecopt::threshold_top_k{.max_factor = 0.9}.validate();
        }).find("max_factor") != std::string::npos);
  CHECK_THROWS_AS(ecopt::threshold_top_k{.ratio = 2}.validate(), ecopt::invalid_argument);
  CHECK_THROWS_AS(ecopt::threshold_top_k{.max_factor = std::nan("")}.validate(),
                  ecopt::invalid_argument);

  const ecopt::threshold_top_k c{.k = 10};  // d = 100: up to 13 kept, 2 count bits
  REQUIRE(c.count_bits(100) == 2);
  auto s = c.make_state<double>(100);
  std::vector<double> out(100, 0.0);
  const auto decode = [&](std::uint64_t extra) {
    std::vector<std::byte> buf;
    ecopt::bit_writer w(buf);
    w.write(extra, 2);
    indices idx(10 + extra);
    std::iota(idx.begin(), idx.end(), 0u);
    ecopt::detail::write_indices(w, idx, 100);
    for (std::size_t i = 0; i < idx.size(); ++i) w.write_f32(1.0f);
    w.finish();
    ecopt::bit_reader r(buf);
    c.decode_add(r, s, std::span<double>(out), 1.0, {});
  };
  CHECK_NOTHROW(decode(3));
  CHECK(out[12] == 1.0);
  const ecopt::threshold_top_k narrow{.k = 10, .max_factor = 1.2};  // up to 12: 3 is invalid
  REQUIRE(narrow.count_bits(100) == 2);
  auto t = narrow.make_state<double>(100);
  CHECK(error_message_of([&] {
          std::vector<std::byte> buf;
          ecopt::bit_writer w(buf);
          w.write(3, 2);
          w.write(0, 62);
          w.finish();
          ecopt::bit_reader r(buf);
          narrow.decode_add(r, t, std::span<double>(out), 1.0, {});
        }).find("exceeds max_kept") != std::string::npos);

  for (const double bad : {std::nan(""), -std::numeric_limits<double>::infinity(), 1e300}) {
    harness<ecopt::threshold_top_k, double> g(ecopt::threshold_top_k{.k = 5}, 100);
    auto x = random_vector<double>(100, 2);
    x[42] = bad;
    CHECK(error_message_of([&] { g.encode(x, {}); }).find("input[42]") != std::string::npos);
    CHECK_THROWS_AS(g.encode(x, {}), ecopt::numeric_error);
  }

  const ecopt::threshold_top_k tight{.k = 10, .max_factor = 1.0};  // no count field
  CHECK(tight.count_bits(100) == 0);
  harness<ecopt::threshold_top_k, double> h(tight, 100);
  const auto x = random_vector<double>(100, 1);
  h.apply(x, {});
  CHECK(h.state.count == 10);
}

// ----------------------------------------------------------------------- chain

TEST_CASE("chain: name, bits and payload are the parts'") {
  using tq = ecopt::chain<ecopt::top_k, ecopt::qsgd>;
  CHECK(tq::name == "chain<top_k, qsgd>");
  CHECK(ecopt::chain<ecopt::top_k, ecopt::scaled_sign>::name == "chain<top_k, scaled_sign>");
  const tq c{.first = {.ratio = 0.05}, .second = {.levels = 8}};
  constexpr std::size_t d = 3000;
  const std::size_t k = c.kept(d);
  REQUIRE(k == 150);
  CHECK(c.max_bits(d) == ecopt::detail::index_bits_bound(k, d) + c.second.bits(k));
  harness<tq, double> h(c, d);
  const auto x = random_vector<double>(d, 2);
  const round_context ctx{.seed = 3, .round = 4, .rank = 1};
  const auto out = h.apply(x, ctx);
  const auto set = brute_force_top_k(x, k);
  CHECK(h.bits == ecopt::detail::exact_index_bits(set, d) + c.second.bits(k));

  // By hand: the set, then qsgd on the kept values in the remixed context.
  std::vector<double> kept(k);
  for (std::size_t i = 0; i < k; ++i) kept[i] = x[set[i]];
  harness<ecopt::qsgd, double> q(c.second, k);
  const auto qy = q.apply(kept, ecopt::detail::stage_context(ctx));
  const double scale = 1.0 / (1.0 + c.second.omega(k));
  CHECK(c.stage_scale(d) == doctest::Approx(scale));
  std::vector<double> expected(d, 0.0);
  for (std::size_t i = 0; i < k; ++i) expected[set[i]] = scale * qy[i];
  for (std::size_t j = 0; j < d; ++j)
    REQUIRE(out[j] == doctest::Approx(expected[j]).epsilon(1e-12));
}

TEST_CASE("chain: delta = delta_A / (1 + omega_B) holds, and is tight for top_k then rand_k") {
  // rand_k has E||B(y)||^2 = (1 + omega) ||y||^2 exactly, so with c = 1/(1 + omega)
  // E||C(x) - x||^2 = ||x||^2 - c ||y||^2 for every x; equal magnitudes make
  // ||y||^2 = (k/d) ||x||^2, where the bound (1 - delta) ||x||^2 is met exactly.
  using tr = ecopt::chain<ecopt::top_k, ecopt::rand_k>;
  const tr c{.first = {.ratio = 0.2}, .second = {.ratio = 0.25, .shared_seed = false}};
  constexpr std::size_t d = 500;
  const std::size_t k = c.kept(d);  // 100, of which rand_k keeps 25: omega_B = 3
  CHECK(c.delta(d) == doctest::Approx(0.2 / 4.0));
  std::vector<double> equal(d);
  for (std::size_t j = 0; j < d; ++j) equal[j] = j % 3 ? 2.0 : -2.0;
  for (const auto& x : {equal, random_vector<double>(d, 5)}) {
    const double xx = squared_norm<double>(x);
    const auto set = brute_force_top_k(x, k);
    double yy = 0;
    for (const auto j : set) yy += x[j] * x[j];
    harness<tr, double> h(c, d);
    constexpr int n = 400;
    double sum = 0;
    double sum_sq = 0;
    std::vector<double> mean(d, 0.0);
    for (std::uint64_t round = 0; round < n; ++round) {
      const auto cx = h.apply(x, {.seed = 1, .round = round, .rank = 3});
      const double e = squared_distance<double>(cx, x);
      sum += e;
      sum_sq += e * e;
      for (std::size_t j = 0; j < d; ++j) mean[j] += cx[j] / n;
    }
    const double avg = sum / n;
    const double sd = std::sqrt(std::max(0.0, sum_sq / n - avg * avg));
    CHECK(std::fabs(avg - (xx - yy / 4)) <= 5 * sd / std::sqrt(double(n)) + 1e-9 * xx);
    CHECK(avg <= (1 - c.delta(d)) * xx + 5 * sd / std::sqrt(double(n)) + 1e-9 * xx);
    // E C(x) is x on the kept set over 1 + omega_B: each kept coordinate is x_j
    // w.p. 1/4 and 0 otherwise, so its mean has sd |x_j| sqrt(3)/4/sqrt(n).
    std::vector<double> expected(d, 0.0);
    for (const auto j : set) expected[j] = x[j] / 4.0;
    for (std::size_t j = 0; j < d; ++j) {
      REQUIRE(std::fabs(mean[j] - expected[j]) <=
              6 * std::fabs(x[j]) * std::sqrt(3.0) / 4.0 / std::sqrt(double(n)) + 1e-12);
    }
  }
  CHECK(tr{.first = {.ratio = 0.2}, .second = {.ratio = 0.25}}.delta(d) == doctest::Approx(0.05));

  // top_k then qsgd: within its declared delta on average (Hoeffding, 1e-4).
  using tq = ecopt::chain<ecopt::top_k, ecopt::qsgd>;
  const tq q{.first = {.ratio = 0.3}, .second = {.levels = 1}};
  const auto y = random_vector<double>(d, 6);
  const double yy = squared_norm<double>(y);
  harness<tq, double> g(q, d);
  constexpr int n = 400;
  double err = 0;
  double err_max = 0;
  for (std::uint64_t round = 0; round < n; ++round) {
    const double e = squared_distance<double>(g.apply(y, {.seed = 2, .round = round}), y);
    err += e;
    err_max = std::max(err_max, e);
  }
  CHECK(err / n <= (1 - q.delta(d)) * yy + err_max * std::sqrt(std::log(1e4) / (2.0 * n)));
}

TEST_CASE("chain: a contractive second stage multiplies the deltas, unscaled") {
  using ts = ecopt::chain<ecopt::top_k, ecopt::scaled_sign>;
  const ts c{.first = {.ratio = 0.1}};
  constexpr std::size_t d = 1000;
  CHECK(c.delta(d) == doctest::Approx(0.1 * (1.0 / 100)));
  CHECK(c.stage_scale(d) == 1.0);
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    const auto x = random_vector<double>(d, seed);
    harness<ts, double> h(c, d);
    const auto cx = h.apply(x, {});
    const double xx = squared_norm<double>(x);
    CHECK(squared_distance<double>(cx, x) <= (1 - c.delta(d)) * xx * (1 + 1e-9));
    // The kept entries share one magnitude: the mean |x_j| over the top 100.
    const auto set = brute_force_top_k(x, 100);
    double l1 = 0;
    for (const auto j : set) l1 += std::fabs(x[j]);
    for (const auto j : set) {
      REQUIRE(cx[j] == doctest::Approx(std::copysign(l1 / 100, x[j])).epsilon(1e-6));
    }
  }
}

TEST_CASE("chain: corrupt payloads leave the output untouched; non-finite input refused") {
  using tq = ecopt::chain<ecopt::top_k, ecopt::qsgd>;
  const tq c{.first = {.ratio = 0.1}};
  constexpr std::size_t d = 400;
  harness<tq, float> h(c, d);
  const auto x = random_vector<float>(d, 1);
  h.encode(x, {.seed = 1});
  std::vector<float> out(d, 1.0f);
  const auto before = out;
  auto p = h.payload;
  p.pop_back();
  CHECK_THROWS_AS(h.decode_add(p, out, 1.0f, {.seed = 1}), ecopt::decode_error);
  CHECK(out == before);
  p = h.payload;
  p.push_back(std::byte{1});
  CHECK_THROWS_AS(h.decode_add(p, out, 1.0f, {.seed = 1}), ecopt::decode_error);
  CHECK(out == before);

  auto bad = x;
  bad[7] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(h.encode(bad, {}), ecopt::numeric_error);
  CHECK_THROWS_AS((void)tq{.first = {.ratio = 0}}.make_state<float>(10), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)tq{.second = {.levels = 0}}.make_state<float>(10), ecopt::invalid_argument);
}

}  // namespace sparsifiers_test
