// straggler_model (straggler_model.hpp): deterministic per (seed, rank, step),
// the tails' means and shapes, slow ranks, the order statistics a backup-worker
// step waits for, refused fields; and on a simulated_transport, a synchronous
// run's modelled time is the sum over steps of the slowest worker's time.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ecopt/ecopt.hpp"
#include "ecopt/straggler_model.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace straggler_model_test {

namespace {

double mean_of(const ecopt::straggler_model& m, int rank, std::uint64_t n) {
  double sum = 0;
  for (std::uint64_t s = 0; s < n; ++s) sum += m.seconds(rank, s);
  return sum / static_cast<double>(n);
}

}  // namespace

TEST_CASE("compute times are deterministic per (seed, rank, step), with the tails' means") {
  const ecopt::straggler_model plain{.base_seconds = 0.02,
                                     .slow_ranks = {{.rank = 3, .factor = 2.5}}};
  CHECK(plain.seconds(0, 7) == 0.02);
  CHECK(plain.seconds(3, 7) == doctest::Approx(0.05));
  CHECK(plain.mean_seconds(3) == doctest::Approx(0.05));

  const ecopt::straggler_model expo{
      .base_seconds = 0.01, .tail_kind = ecopt::compute_tail::exponential, .tail = 0.5, .seed = 4};
  CHECK(expo.seconds(1, 10) == expo.seconds(1, 10));
  CHECK(expo.seconds(1, 10) != expo.seconds(1, 11));
  CHECK(expo.seconds(1, 10) != expo.seconds(2, 10));
  const ecopt::straggler_model other_seed{
      .base_seconds = 0.01, .tail_kind = ecopt::compute_tail::exponential, .tail = 0.5, .seed = 5};
  CHECK(expo.seconds(1, 10) != other_seed.seconds(1, 10));
  // Shifted exponential: never below the base; mean base (1 + tail). With
  // 40,000 draws the sample mean's relative standard error is 0.5 %.
  double low = 1;
  for (std::uint64_t s = 0; s < 1000; ++s) low = std::min(low, expo.seconds(0, s));
  CHECK(low >= 0.01);
  CHECK(mean_of(expo, 0, 40000) == doctest::Approx(0.015).epsilon(0.02));

  // Log-normal: mean the base, median below it (a heavy right tail).
  const ecopt::straggler_model heavy{
      .base_seconds = 0.01, .tail_kind = ecopt::compute_tail::log_normal, .tail = 0.8, .seed = 4};
  CHECK(mean_of(heavy, 0, 40000) == doctest::Approx(0.01).epsilon(0.03));
  std::vector<double> draws;
  for (std::uint64_t s = 0; s < 20001; ++s) draws.push_back(heavy.seconds(2, s));
  std::nth_element(draws.begin(), draws.begin() + 10000, draws.end());
  CHECK(draws[10000] == doctest::Approx(0.01 * std::exp(-0.32)).epsilon(0.03));
}

TEST_CASE("the k-th fastest worker's expected time is what a step with backups waits for") {
  const ecopt::straggler_model plain{.base_seconds = 0.01,
                                     .slow_ranks = {{.rank = 1, .factor = 3}}};
  // Without a tail: the slowest of 4 is rank 1, the 3rd fastest is the base.
  CHECK(plain.expected_kth_fastest(4, 4, 10) == doctest::Approx(0.03));
  CHECK(plain.expected_kth_fastest(4, 3, 10) == doctest::Approx(0.01));
  // Exponential tails, i.i.d.: the k-th of n order statistic of Exp(mean t)
  // has mean t (1/n + 1/(n-1) + ... + 1/(n-k+1)).
  const ecopt::straggler_model expo{
      .base_seconds = 0.01, .tail_kind = ecopt::compute_tail::exponential, .tail = 1.0, .seed = 9};
  for (const int k : {1, 8, 16}) {
    CAPTURE(k);
    double harmonic = 0;
    for (int i = 0; i < k; ++i) harmonic += 1.0 / (16 - i);
    CHECK(expo.expected_kth_fastest(16, k) == doctest::Approx(0.01 * (1 + harmonic)).epsilon(0.02));
  }
  CHECK_THROWS_WITH_AS((void)expo.expected_kth_fastest(4, 5), doctest::Contains("k must be"),
                       ecopt::invalid_argument);
}

TEST_CASE("bad straggler fields are named") {
  auto refuse = [](const ecopt::straggler_model& m, const char* what) {
    CHECK_THROWS_WITH_AS(m.validate(), doctest::Contains(what), ecopt::invalid_argument);
  };
  refuse({.base_seconds = -1}, "base_seconds");
  refuse({.tail = std::nan("")}, "tail");
  refuse({.slow_ranks = {{.rank = 2, .factor = 0}}}, "slow rank 2");
  refuse({.slow_ranks = {{.rank = -1, .factor = 2}}}, "negative");
}

TEST_CASE("a synchronous step waits for the slowest worker, in modelled time") {
  const ecopt::straggler_model model{.base_seconds = 0.01,
                                     .tail_kind = ecopt::compute_tail::log_normal,
                                     .tail = 0.7,
                                     .slow_ranks = {{.rank = 2, .factor = 2}},
                                     .seed = 3};
  const Eigen::MatrixXd h = Eigen::MatrixXd::Identity(6, 6);
  const Eigen::VectorXd b = Eigen::VectorXd::Ones(6);
  constexpr std::uint64_t steps = 25;
  auto times = ecopt::run_threads(3, [&](ecopt::thread_transport& t) {
    // A free network: the clocks meet at every exchange, at the slowest.
    ecopt::simulated_transport sim(t, ecopt::network_model::uniform(0, 1e300));
    ecopt::quadratic<double> inner(h, b);
    ecopt::with_compute_time problem(inner, model, t.rank(), ecopt::modelled_compute{&sim});
    Eigen::VectorXd x = Eigen::VectorXd::Zero(6);
    const auto report = ecopt::solver{}.run(sim, problem, x, {.steps = steps});
    CHECK(problem.steps() == steps);
    return report.modelled_seconds;
  });
  double expected = 0;
  for (std::uint64_t s = 0; s < steps; ++s) {
    expected += std::max({model.seconds(0, s), model.seconds(1, s), model.seconds(2, s)});
  }
  for (const double t : times) CHECK(t == doctest::Approx(expected).epsilon(1e-9));
}

}  // namespace straggler_model_test
