// TernGrad's two options from the paper (Wen et al. 2017): gradient clipping to
// c sigma per bucket, and the scale shared across workers (max over ranks, one
// allreduce_max in aggregate). Clipping: the scale, saturation beyond it, and
// unbiasedness for the clipped vector; sharing: every rank's payload carries
// the max scale, the sum is the sum of the decoded payloads, a non-finite input
// on one rank makes every rank throw, and without sharing aggregate is the
// plain allgather bit for bit.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "contracts/contract_examples.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/compressors/terngrad.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transports/thread_transport.hpp"

namespace terngrad_options_test {

namespace {

using ecopt::round_context;
using ecopt::terngrad;
using ecopt::test::harness;

double standard_deviation(const std::vector<double>& x) {
  double mean = 0;
  for (const double v : x) mean += v / static_cast<double>(x.size());
  double var = 0;
  for (const double v : x) var += (v - mean) * (v - mean) / static_cast<double>(x.size());
  return std::sqrt(var);
}

/// Rank r's input: magnitudes growing with r, so the ranks' scales differ.
std::vector<double> rank_input(int rank, std::size_t d) {
  std::vector<double> x(d);
  for (std::size_t j = 0; j < d; ++j) {
    x[j] = std::sin(0.7 * static_cast<double>(j) + rank) * (1.0 + rank);
  }
  return x;
}

struct rank_result {
  std::vector<float> scales;
  std::vector<double> own, sum, own_input;
  std::uint64_t bits = 0;
};

/// One aggregate on `world` threads; rank r encodes rank_input(r, d).
std::vector<rank_result> run_aggregate(const terngrad& t, int world, std::size_t d,
                                       std::uint64_t round) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& tr) {
    const auto x = rank_input(tr.rank(), d);
    auto s = t.make_state<double>(d);
    ecopt::collective_workspace ws;
    rank_result r;
    r.own.assign(d, 0.0);
    r.sum.assign(d, 0.0);
    const round_context ctx{.seed = 5, .round = round, .rank = tr.rank(), .world = world};
    r.bits = t.aggregate(tr, std::span<const double>(x), s, std::span<double>(r.own),
                         std::span<double>(r.sum), ws, ctx);
    // Every rank's own scales, recomputed: what the max was taken over.
    auto mine = t.make_state<double>(d);
    t.own_scales(std::span<const double>(x), mine);
    r.scales = mine.scales;
    r.own_input = x;
    return r;
  });
}

}  // namespace

TEST_CASE("terngrad clip_sigmas: the scale is min(max |x|, c sigma) and C(x) estimates clip(x)") {
  constexpr std::size_t d = 40;
  std::vector<double> x(d);
  for (std::size_t j = 0; j < d; ++j) x[j] = 0.1 * std::cos(static_cast<double>(j));
  x[7] = 5.0;  // an outlier far beyond 2.5 sigma
  x[19] = -4.0;
  const terngrad clipped{.clip_sigmas = 2.5};
  const double bound = 2.5 * standard_deviation(x);
  REQUIRE(bound < 4.0);
  harness<terngrad, double> h(clipped, d);
  std::vector<double> mean(d, 0.0);
  constexpr int rounds = 4000;
  for (int t = 0; t < rounds; ++t) {
    const auto out = h.apply(x, {.seed = 3, .round = static_cast<std::uint64_t>(t)});
    const double scale = static_cast<double>(h.state.scales[0]);
    REQUIRE(scale == doctest::Approx(bound).epsilon(1e-6));
    // Beyond the scale a coordinate saturates: +-scale with probability 1.
    REQUIRE(out[7] == scale);
    REQUIRE(out[19] == -scale);
    for (std::size_t j = 0; j < d; ++j) {
      REQUIRE((out[j] == 0 || std::fabs(out[j]) == scale));
      mean[j] += out[j] / rounds;
    }
  }
  // Unbiased for the clipped vector: 6 standard deviations of the mean of a
  // {0, +-scale} draw (at most scale / 2 each).
  const double tol = 6 * (bound / 2) / std::sqrt(static_cast<double>(rounds));
  for (std::size_t j = 0; j < d; ++j) {
    CAPTURE(j);
    CHECK(std::fabs(mean[j] - std::clamp(x[j], -bound, bound)) <= tol);
  }
}

TEST_CASE("terngrad clip_sigmas: per bucket, off at 0, and bad values named") {
  const std::vector<double> x = {1, 1, 1, 1, 9, 0.1, -0.2, 0.3, -0.1, 0.2};
  harness<terngrad, double> off(terngrad{.bucket_size = 5}, x.size());
  harness<terngrad, double> on(terngrad{.bucket_size = 5, .clip_sigmas = 1.0}, x.size());
  off.encode(x, {.seed = 1});
  on.encode(x, {.seed = 1});
  CHECK(off.state.scales[0] == 9.0f);
  // Bucket 0 is {1, 1, 1, 1, 9}: mean 2.6, sigma 3.2.
  CHECK(static_cast<double>(on.state.scales[0]) == doctest::Approx(3.2).epsilon(1e-6));
  // Bucket 1: sigma (about 0.19) is below max |x| = 0.3.
  std::vector<double> b1(x.begin() + 5, x.end());
  CHECK(static_cast<double>(on.state.scales[1]) ==
        doctest::Approx(std::min(0.3, standard_deviation(b1))).epsilon(1e-6));
  // clip_sigmas = 0 is the unclipped quantiser, payload for payload.
  harness<terngrad, double> zero(terngrad{.bucket_size = 5, .clip_sigmas = 0}, x.size());
  zero.encode(x, {.seed = 1});
  CHECK(zero.payload == off.payload);
  for (const double bad : {-1.0, std::numeric_limits<double>::quiet_NaN(), HUGE_VAL}) {
    CAPTURE(bad);
    std::string what;
    try {
      (void)terngrad{.clip_sigmas = bad}.make_state<float>(4);
    } catch (const ecopt::invalid_argument& e) {
      what = e.what();
    }
    CHECK(what.find("clip_sigmas") != std::string::npos);
  }
}

TEST_CASE("terngrad share_scale: every payload carries the max scale over ranks") {
  constexpr int world = 3;
  constexpr std::size_t d = 23;
  for (const std::size_t bucket : {std::size_t{0}, std::size_t{5}}) {
    CAPTURE(bucket);
    const terngrad t{.bucket_size = bucket, .share_scale = true};
    const auto out = run_aggregate(t, world, d, 4);
    const std::size_t buckets = t.num_buckets(d);
    std::vector<float> shared(buckets, 0.0f);
    for (const auto& r : out) {
      for (std::size_t k = 0; k < buckets; ++k) shared[k] = std::max(shared[k], r.scales[k]);
    }
    // Rank 0's own scales are smaller than the shared ones (its input is the smallest).
    CHECK(out[0].scales[0] < shared[0]);
    std::vector<double> total(d, 0.0);
    for (const auto& r : out) {
      CHECK(r.bits == t.bits(d) + 32 * buckets);
      for (std::size_t j = 0; j < d; ++j) {
        const double scale = static_cast<double>(shared[j / t.bucket(d)]);
        REQUIRE((r.own[j] == 0 || std::fabs(r.own[j]) == scale));
        total[j] += r.own[j];
      }
    }
    for (const auto& r : out) CHECK(r.sum == total);
  }
}

TEST_CASE("terngrad share_scale: unbiased for the sum of the ranks' inputs") {
  constexpr int world = 2;
  constexpr std::size_t d = 6;
  const terngrad t{.share_scale = true};
  std::vector<double> mean(d, 0.0);
  constexpr int rounds = 600;
  for (int round = 0; round < rounds; ++round) {
    const auto out = run_aggregate(t, world, d, static_cast<std::uint64_t>(round));
    for (std::size_t j = 0; j < d; ++j) mean[j] += out[0].sum[j] / rounds;
  }
  const auto x0 = rank_input(0, d);
  const auto x1 = rank_input(1, d);
  double scale = 0;
  for (std::size_t j = 0; j < d; ++j) scale = std::max({scale, std::fabs(x0[j]), std::fabs(x1[j])});
  const double tol = 6 * scale / std::sqrt(static_cast<double>(rounds));  // two draws of sd <= s/2
  for (std::size_t j = 0; j < d; ++j) {
    CAPTURE(j);
    CHECK(std::fabs(mean[j] - (x0[j] + x1[j])) <= tol);
  }
}

TEST_CASE("terngrad aggregate without share_scale is the plain allgather, bit for bit") {
  constexpr int world = 3;
  constexpr std::size_t d = 17;
  const terngrad t{.bucket_size = 4, .clip_sigmas = 2.5};
  const auto out = run_aggregate(t, world, d, 9);
  std::vector<double> total(d, 0.0);
  for (int r = 0; r < world; ++r) {
    harness<terngrad, double> h(t, d);
    const auto cx = h.apply(rank_input(r, d), {.seed = 5, .round = 9, .rank = r, .world = world});
    CHECK(out[static_cast<std::size_t>(r)].own == cx);
    CHECK(out[static_cast<std::size_t>(r)].bits == t.bits(d));
    for (std::size_t j = 0; j < d; ++j) total[j] += cx[j];
  }
  for (const auto& r : out) CHECK(r.sum == total);
}

TEST_CASE("terngrad share_scale: a non-finite input on one rank fails every rank, none waits") {
  constexpr int world = 3;
  constexpr std::size_t d = 8;
  const terngrad t{.share_scale = true};
  const auto failures = ecopt::run_threads(world, [&](ecopt::thread_transport& tr) {
    auto x = rank_input(tr.rank(), d);
    if (tr.rank() == 1) x[3] = std::numeric_limits<double>::quiet_NaN();
    auto s = t.make_state<double>(d);
    ecopt::collective_workspace ws;
    std::vector<double> own(d), sum(d);
    const round_context ctx{.seed = 5, .round = 0, .rank = tr.rank(), .world = world};
    try {
      (void)t.aggregate(tr, std::span<const double>(x), s, std::span<double>(own),
                        std::span<double>(sum), ws, ctx);
    } catch (const ecopt::numeric_error& e) {
      return std::string(e.what());
    }
    return std::string();
  });
  for (const auto& what : failures) CHECK(what.find("not a finite float32") != std::string::npos);
}

}  // namespace terngrad_options_test
