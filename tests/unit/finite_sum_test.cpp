// The finite-sum form of the data-fitting problems (FiniteSumProblem):
// sample gradients average to the full gradient, repeats count, bad index
// sets are named, and full_batch(problem) turns the stochastic gradient into
// the full one.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstddef>
#include <numeric>
#include <span>
#include <vector>

#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/problems/full_batch.hpp"
#include "ecopt/problems/least_squares.hpp"
#include "ecopt/problems/logistic_regression.hpp"
#include "ecopt/problems/quadratic.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace finite_sum_test {

namespace {

Eigen::MatrixXd gaussian(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
  Eigen::MatrixXd m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal();
  return m;
}

Eigen::VectorXd signs(Eigen::Index n, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 1, 0);
  Eigen::VectorXd y(n);
  for (Eigen::Index i = 0; i < n; ++i) y[i] = rng.uniform() < 0.5 ? -1.0 : 1.0;
  return y;
}

/// The laws every FiniteSumProblem keeps, checked on one problem at x.
template <class P>
void check_finite_sum_laws(P& problem, const Eigen::VectorXd& x) {
  static_assert(ecopt::FiniteSumProblem<P>);
  const std::size_t m = problem.samples();
  const auto d = static_cast<Eigen::Index>(problem.dim());
  Eigen::VectorXd full(d), one(d), mean_of_singles = Eigen::VectorXd::Zero(d), all(d);
  problem.gradient(x, full);

  // The mean of the m single-sample gradients is the full gradient (each f_i
  // carries the whole regulariser), and so is the gradient of the whole index set.
  for (std::size_t i = 0; i < m; ++i) {
    const std::size_t index[1] = {i};
    problem.sample_gradient(x, index, one);
    mean_of_singles += one / static_cast<double>(m);
  }
  CHECK((mean_of_singles - full).norm() <= 1e-12 * (1.0 + full.norm()));
  std::vector<std::size_t> every(m);
  std::iota(every.begin(), every.end(), std::size_t{0});
  problem.sample_gradient(x, every, all);
  CHECK((all - full).norm() <= 1e-12 * (1.0 + full.norm()));

  // Repeats count: {0, 0, 1} weighs sample 0 twice.
  Eigen::VectorXd g0(d), g1(d), repeated(d);
  const std::size_t zero[1] = {0}, first[1] = {1}, twice[3] = {0, 0, 1};
  problem.sample_gradient(x, zero, g0);
  problem.sample_gradient(x, first, g1);
  problem.sample_gradient(x, twice, repeated);
  CHECK((repeated - (2.0 * g0 + g1) / 3.0).norm() <= 1e-12 * (1.0 + repeated.norm()));

  // A minibatch gradient is a sample-gradient mean over the indices it drew.
  auto rng = ecopt::counter_rng::stream(9, ecopt::stream_purpose::sampling, 0, 0);
  auto replay = rng;
  Eigen::VectorXd stochastic(d), same(d);
  problem.stochastic_gradient(x, stochastic, rng);
  std::vector<std::size_t> drawn(problem.options().batch_size);
  for (auto& i : drawn) i = static_cast<std::size_t>(replay.below(m));
  problem.sample_gradient(x, drawn, same);
  CHECK((stochastic - same).norm() <= 1e-12 * (1.0 + same.norm()));

  // Bad index sets are named; no allocation on the good path.
  const std::size_t beyond[2] = {0, m};
  CHECK_THROWS_WITH_AS(problem.sample_gradient(x, beyond, one), doctest::Contains("indices[1]"),
                       ecopt::invalid_argument);
  CHECK_THROWS_WITH_AS(problem.sample_gradient(x, std::span<const std::size_t>(), one),
                       doctest::Contains("empty"), ecopt::invalid_argument);
  ecopt::test::allocation_scope scope;
  problem.sample_gradient(x, twice, repeated);
  CHECK(scope.count() == 0);
}

}  // namespace

TEST_CASE("logistic regression's sample gradients average to its full gradient") {
  const Eigen::MatrixXd a = gaussian(6, 30, 1);
  const Eigen::VectorXd y = signs(30, 2);
  ecopt::logistic_regression<double> problem(a, y, {.l2 = 0.3, .batch_size = 5});
  check_finite_sum_laws(problem, gaussian(6, 1, 3));
}

TEST_CASE("least squares' sample gradients average to its full gradient") {
  const Eigen::MatrixXd a = gaussian(5, 25, 4);
  const Eigen::VectorXd y = gaussian(25, 1, 5);
  ecopt::least_squares<double> problem(a, y, {.l2 = 0.2, .batch_size = 7});
  check_finite_sum_laws(problem, gaussian(5, 1, 6));
}

TEST_CASE("full_batch(problem) makes the stochastic gradient the full one") {
  const Eigen::MatrixXd a = gaussian(5, 40, 7);
  const Eigen::VectorXd y = gaussian(40, 1, 8);
  ecopt::least_squares<double> problem(a, y, {.l2 = 0.1, .batch_size = 3});
  ecopt::full_batch full(problem);
  static_assert(ecopt::FiniteSumProblem<decltype(full)> && ecopt::HasHessian<decltype(full)>);
  const Eigen::VectorXd x = gaussian(5, 1, 9);
  Eigen::VectorXd exact(5), got(5);
  problem.gradient(x, exact);
  auto rng = ecopt::counter_rng::stream(1, ecopt::stream_purpose::sampling, 0, 0);
  full.stochastic_gradient(x, got, rng);
  CHECK(got == exact);
  CHECK(full.loss(x) == problem.loss(x));
  CHECK(full.samples() == 40);

  // Problems without the finite-sum form stay without it behind the view.
  static_assert(!ecopt::FiniteSumProblem<ecopt::quadratic<double>>);
  static_assert(!ecopt::FiniteSumProblem<ecopt::full_batch<ecopt::quadratic<double>>>);
  static_assert(ecopt::Problem<ecopt::full_batch<ecopt::quadratic<double>>>);
}

}  // namespace finite_sum_test
