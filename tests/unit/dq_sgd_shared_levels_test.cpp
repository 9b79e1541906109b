// DQ-SGD with share_levels: every rank quantises with the same s_t (from the
// mean over ranks of ||g_i||^2) and the same bucket norms (max over ranks), so
// every decoded payload is an integer number of levels of one shared step per
// bucket (payloads sum in compressed form). Also: unbiased for the sum, the
// bits of the two allreduces counted, a non-finite input on one rank fails every
// rank, and without share_levels aggregate is the plain allgather bit for bit.
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
#include "ecopt/compressors/detail/stochastic_levels.hpp"
#include "ecopt/compressors/dq_sgd.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transports/thread_transport.hpp"

namespace dq_sgd_shared_levels_test {

namespace {

using ecopt::dq_sgd;
using ecopt::round_context;

/// Rank r's input: magnitudes growing with r, so the ranks' norms differ.
std::vector<double> rank_input(int rank, std::size_t d) {
  std::vector<double> x(d);
  for (std::size_t j = 0; j < d; ++j) {
    x[j] = std::cos(1.3 * static_cast<double>(j) + rank) * (1.0 + 2.0 * rank);
  }
  return x;
}

double squared_norm(const std::vector<double>& x, std::size_t begin, std::size_t end) {
  double s = 0;
  for (std::size_t j = begin; j < end; ++j) s += x[j] * x[j];
  return s;
}

struct rank_result {
  std::vector<double> own, sum;
  std::uint32_t levels = 0;
  std::uint64_t bits = 0;
};

round_context context(int rank, int world, std::uint64_t round) {
  return {.seed = 11, .round = round, .rank = rank, .world = world, .lr = 0.05};
}

std::vector<rank_result> run_aggregate(const dq_sgd& q, int world, std::size_t d,
                                       std::uint64_t round) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& tr) {
    const auto x = rank_input(tr.rank(), d);
    auto s = q.make_state<double>(d);
    ecopt::collective_workspace ws;
    rank_result r;
    r.own.assign(d, 0.0);
    r.sum.assign(d, 0.0);
    r.bits = q.aggregate(tr, std::span<const double>(x), s, std::span<double>(r.own),
                         std::span<double>(r.sum), ws, context(tr.rank(), world, round));
    r.levels = s.last_levels;
    return r;
  });
}

}  // namespace

TEST_CASE("dq_sgd share_levels: one s_t and one norm per bucket on every rank") {
  constexpr int world = 3;
  constexpr std::size_t d = 30;
  for (const std::size_t bucket : {std::size_t{0}, std::size_t{8}}) {
    CAPTURE(bucket);
    const dq_sgd q{
        .horizon = 50, .error_budget = 1e-3, .bucket_size = bucket, .share_levels = true};
    const auto out = run_aggregate(q, world, d, 7);
    const std::size_t b = q.bucket(d);
    const std::size_t buckets = q.num_buckets(d);
    double mean_squared = 0;
    std::vector<double> shared_norm(buckets, 0.0);
    for (int r = 0; r < world; ++r) {
      const auto x = rank_input(r, d);
      mean_squared += squared_norm(x, 0, d) / world;
      for (std::size_t k = 0; k < buckets; ++k) {
        const double n = static_cast<double>(ecopt::detail::round_up_to_float(
            std::sqrt(squared_norm(x, k * b, std::min(d, k * b + b)))));
        shared_norm[k] = std::max(shared_norm[k], n);
      }
    }
    const std::uint32_t s = q.levels_for(mean_squared, d, context(0, world, 7));
    REQUIRE(s > 1);
    REQUIRE(s < q.max_levels);
    std::vector<double> total(d, 0.0);
    for (const auto& r : out) {
      CHECK(r.levels == s);
      CHECK(r.bits == q.bits_at(s, d) + 32 * (1 + buckets));
      for (std::size_t j = 0; j < d; ++j) {
        // A whole number of levels of the shared step norm / s.
        const double steps = r.own[j] / (shared_norm[j / b] / s);
        REQUIRE(std::fabs(steps - std::round(steps)) < 1e-9);
        REQUIRE(std::fabs(steps) <= s);
        total[j] += r.own[j];
      }
    }
    for (const auto& r : out) CHECK(r.sum == total);
  }
}

TEST_CASE("dq_sgd share_levels: unbiased for the sum of the ranks' inputs") {
  constexpr int world = 2;
  constexpr std::size_t d = 5;
  const dq_sgd q{.horizon = 10, .error_budget = 10.0, .share_levels = true};
  std::vector<double> mean(d, 0.0);
  constexpr int rounds = 500;
  double largest_norm = 0;
  for (int r = 0; r < world; ++r) {
    largest_norm = std::max(largest_norm, std::sqrt(squared_norm(rank_input(r, d), 0, d)));
  }
  for (int round = 0; round < rounds; ++round) {
    const auto out = run_aggregate(q, world, d, static_cast<std::uint64_t>(round));
    REQUIRE(out[0].levels == 1);  // the coarsest rounding: the strongest test of bias
    for (std::size_t j = 0; j < d; ++j) mean[j] += out[1].sum[j] / rounds;
  }
  const auto x0 = rank_input(0, d);
  const auto x1 = rank_input(1, d);
  // Two draws, each of standard deviation at most half the shared norm.
  const double tol = 6 * largest_norm / std::sqrt(static_cast<double>(rounds));
  for (std::size_t j = 0; j < d; ++j) {
    CAPTURE(j);
    CHECK(std::fabs(mean[j] - (x0[j] + x1[j])) <= tol);
  }
}

TEST_CASE("dq_sgd aggregate without share_levels is the plain allgather, bit for bit") {
  constexpr int world = 3;
  constexpr std::size_t d = 21;
  const dq_sgd q{.horizon = 50, .error_budget = 1e-3, .bucket_size = 6};
  const auto out = run_aggregate(q, world, d, 3);
  std::vector<double> total(d, 0.0);
  for (int r = 0; r < world; ++r) {
    ecopt::test::harness<dq_sgd, double> h(q, d);
    const auto cx = h.apply(rank_input(r, d), context(r, world, 3));
    CHECK(out[static_cast<std::size_t>(r)].own == cx);
    CHECK(out[static_cast<std::size_t>(r)].bits == h.bits);
    for (std::size_t j = 0; j < d; ++j) total[j] += cx[j];
  }
  for (const auto& r : out) CHECK(r.sum == total);
}

TEST_CASE("dq_sgd share_levels: a non-finite input on one rank fails every rank, none waits") {
  constexpr int world = 3;
  constexpr std::size_t d = 9;
  const dq_sgd q{.share_levels = true};
  const auto failures = ecopt::run_threads(world, [&](ecopt::thread_transport& tr) {
    auto x = rank_input(tr.rank(), d);
    if (tr.rank() == 2) x[4] = std::numeric_limits<double>::infinity();
    auto s = q.make_state<double>(d);
    ecopt::collective_workspace ws;
    std::vector<double> own(d), sum(d);
    try {
      (void)q.aggregate(tr, std::span<const double>(x), s, std::span<double>(own),
                        std::span<double>(sum), ws, context(tr.rank(), world, 0));
    } catch (const ecopt::numeric_error& e) {
      return std::string(e.what());
    }
    return std::string();
  });
  for (const auto& what : failures) CHECK(what.find("not a finite float32") != std::string::npos);
}

TEST_CASE("dq_sgd share_levels: a state made without it is refused by name") {
  constexpr std::size_t d = 4;
  const auto what = ecopt::run_threads(1, [&](ecopt::thread_transport& tr) {
    auto s = dq_sgd{}.make_state<double>(d);
    const std::vector<double> x(d, 1.0);
    std::vector<double> own(d), sum(d);
    ecopt::collective_workspace ws;
    try {
      (void)dq_sgd{.share_levels = true}.aggregate(tr, std::span<const double>(x), s,
                                                   std::span<double>(own), std::span<double>(sum),
                                                   ws, context(0, 1, 0));
    } catch (const ecopt::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  });
  CHECK(what[0].find("share_levels") != std::string::npos);
}

}  // namespace dq_sgd_shared_levels_test
