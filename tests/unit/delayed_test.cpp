// delayed_gradients: the bounded-staleness wrapper (Khirirat, Feyzmahdavian,
// Johansson 2018, arXiv:1806.06573) returns the wrapped gradient at the
// iterate of round k - tau_k, clamped to x_0 in the first rounds, keeps the
// loss undelayed, and allocates nothing per round.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/problems/delayed.hpp"
#include "ecopt/problems/quadratic.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace delayed_test {

namespace {

constexpr Eigen::Index dim = 6;

/// A random symmetric positive definite H = M M' + I and a random b.
struct random_quadratic_data {
  Eigen::MatrixXd h;
  Eigen::VectorXd b;

  explicit random_quadratic_data(std::uint64_t seed) : h(dim, dim), b(dim) {
    auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
    Eigen::MatrixXd m(dim, dim);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal();
    h = m * m.transpose() + Eigen::MatrixXd::Identity(dim, dim);
    for (Eigen::Index i = 0; i < dim; ++i) b[i] = rng.normal();
  }
};

/// The iterates x_0, x_1, ... a run would pass: random, so that no two are equal.
std::vector<Eigen::VectorXd> random_iterates(std::size_t count, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 1, 0);
  std::vector<Eigen::VectorXd> xs(count, Eigen::VectorXd(dim));
  for (auto& x : xs) {
    for (Eigen::Index i = 0; i < dim; ++i) x[i] = rng.normal();
  }
  return xs;
}

/// A problem without curvature members.
struct gradient_only {
  using scalar_type = double;
  std::size_t dim() const { return 2; }
  double loss(const Eigen::Ref<const Eigen::VectorXd>&) { return 0; }
  void gradient(const Eigen::Ref<const Eigen::VectorXd>&, Eigen::Ref<Eigen::VectorXd> g) {
    g.setZero();
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>&, Eigen::Ref<Eigen::VectorXd> g,
                           ecopt::counter_rng&) {
    g.setZero();
  }
};

using delayed_quadratic = ecopt::delayed_gradients<ecopt::quadratic<double>>;
static_assert(ecopt::Problem<delayed_quadratic>);
static_assert(
    ecopt::Problem<ecopt::delayed_gradients<ecopt::quadratic<float>, ecopt::uniform_delay>>);
static_assert(ecopt::HasHessian<delayed_quadratic>);
static_assert(ecopt::HasHessianVectorProduct<delayed_quadratic>);
static_assert(ecopt::HasHessianDiagonal<delayed_quadratic>);
static_assert(ecopt::Problem<ecopt::delayed_gradients<gradient_only>>);
static_assert(!ecopt::HasHessian<ecopt::delayed_gradients<gradient_only>>);
static_assert(!ecopt::HasHessianDiagonal<ecopt::delayed_gradients<gradient_only>>);

}  // namespace

TEST_CASE("delayed_gradients with tau = 0 is the wrapped problem, stochastic draws included") {
  const random_quadratic_data data(1);
  const auto xs = random_iterates(12, 2);
  auto check_identical = [&](auto delay) {
    ecopt::quadratic<double> plain(data.h, data.b, {.noise = 0.5});
    ecopt::delayed_gradients wrapped(ecopt::quadratic<double>(data.h, data.b, {.noise = 0.5}),
                                     delay);
    Eigen::VectorXd g(dim), expected(dim);
    for (std::size_t k = 0; k < xs.size(); ++k) {
      auto rng_a = ecopt::counter_rng::stream(7, ecopt::stream_purpose::sampling, 0, k);
      auto rng_b = rng_a;
      wrapped.stochastic_gradient(xs[k], g, rng_a);
      plain.stochastic_gradient(xs[k], expected, rng_b);
      CHECK(g == expected);
      CHECK(rng_a() == rng_b());  // the rng was used exactly as the wrapped problem uses it
      wrapped.gradient(xs[k], g);
      plain.gradient(xs[k], expected);
      CHECK(g == expected);
      CHECK(wrapped.loss(xs[k]) == plain.loss(xs[k]));
      CHECK(wrapped.last_delay() == 0);
    }
    CHECK(wrapped.rounds() == 2 * xs.size());
  };
  check_identical(ecopt::fixed_delay{.tau = 0});
  check_identical(ecopt::uniform_delay{.tau = 0, .seed = 3});
}

TEST_CASE(
    "with a fixed delay of 3 the gradient is the wrapped gradient at the iterate 3 calls ago") {
  const random_quadratic_data data(4);
  const auto xs = random_iterates(20, 5);
  ecopt::quadratic<double> plain(data.h, data.b, {.noise = 0.25});
  ecopt::delayed_gradients wrapped(ecopt::quadratic<double>(data.h, data.b, {.noise = 0.25}),
                                   ecopt::fixed_delay{.tau = 3});
  CHECK(wrapped.max_delay() == 3);
  Eigen::VectorXd g(dim), expected(dim);
  for (std::size_t k = 0; k < xs.size(); ++k) {
    // Even calls are full gradients, odd calls stochastic ones: both count as rounds.
    // In the first 3 rounds the oldest iterate recorded is x_0, so x_0 is used.
    const std::size_t source = k < 3 ? 0 : k - 3;
    if (k % 2 == 0) {
      wrapped.gradient(xs[k], g);
      plain.gradient(xs[source], expected);
    } else {
      auto rng_a = ecopt::counter_rng::stream(9, ecopt::stream_purpose::sampling, 0, k);
      auto rng_b = rng_a;
      wrapped.stochastic_gradient(xs[k], g, rng_a);
      plain.stochastic_gradient(xs[source], expected, rng_b);
    }
    CAPTURE(k);
    CHECK(g == expected);
    CHECK(wrapped.last_delay() == std::min<std::size_t>(k, 3));
    CHECK(wrapped.rounds() == k + 1);
    // The loss is not delayed: it is the wrapped loss at the current iterate.
    CHECK(wrapped.loss(xs[k]) == plain.loss(xs[k]));
  }
  // The gradient really changes with the iterate, so the equalities above pin the delay.
  plain.gradient(xs[0], g);
  plain.gradient(xs[1], expected);
  CHECK((g - expected).norm() > 0.1);

  // reset() forgets the history: the next round is round 0 again and uses its own iterate.
  wrapped.reset();
  wrapped.gradient(xs[7], g);
  plain.gradient(xs[7], expected);
  CHECK(g == expected);
  CHECK(wrapped.rounds() == 1);
}

TEST_CASE("the first tau calls use the oldest available iterate, x_0") {
  const random_quadratic_data data(6);
  const auto xs = random_iterates(8, 7);
  ecopt::quadratic<double> plain(data.h, data.b);
  ecopt::delayed_gradients wrapped(ecopt::quadratic<double>(data.h, data.b),
                                   ecopt::fixed_delay{.tau = 5});
  Eigen::VectorXd g(dim), at_x0(dim), expected(dim);
  plain.gradient(xs[0], at_x0);
  for (std::size_t k = 0; k <= 5; ++k) {
    wrapped.gradient(xs[k], g);
    CAPTURE(k);
    CHECK(g == at_x0);
    CHECK(wrapped.last_delay() == k);  // the staleness actually served: min(tau, k)
  }
  wrapped.gradient(xs[6], g);
  plain.gradient(xs[1], expected);
  CHECK(g == expected);
  CHECK(wrapped.last_delay() == 5);
}

TEST_CASE("uniform delays stay in [0, tau], cover it evenly, and are reproducible per stream") {
  const random_quadratic_data data(8);
  constexpr std::size_t tau = 4;
  constexpr std::size_t rounds = 2000;
  const auto xs = random_iterates(rounds, 9);
  ecopt::quadratic<double> plain(data.h, data.b);
  ecopt::delayed_gradients wrapped(ecopt::quadratic<double>(data.h, data.b),
                                   ecopt::uniform_delay{.tau = tau, .seed = 11, .stream = 0});
  ecopt::delayed_gradients same(ecopt::quadratic<double>(data.h, data.b),
                                ecopt::uniform_delay{.tau = tau, .seed = 11, .stream = 0});
  ecopt::delayed_gradients other(ecopt::quadratic<double>(data.h, data.b),
                                 ecopt::uniform_delay{.tau = tau, .seed = 11, .stream = 1});
  std::vector<std::size_t> counts(tau + 1, 0);
  std::size_t mismatches = 0, differs_from_other_stream = 0, out_of_range = 0;
  Eigen::VectorXd g(dim), g_same(dim), g_other(dim), expected(dim);
  for (std::size_t k = 0; k < rounds; ++k) {
    wrapped.gradient(xs[k], g);
    same.gradient(xs[k], g_same);
    other.gradient(xs[k], g_other);
    const std::size_t delay = wrapped.last_delay();
    if (delay > std::min(tau, k)) ++out_of_range;
    plain.gradient(xs[k - std::min(delay, k)], expected);
    if (g != expected || g_same != g) ++mismatches;
    if (other.last_delay() != delay) ++differs_from_other_stream;
    if (k >= tau) ++counts[delay];
  }
  CHECK(out_of_range == 0);
  CHECK(mismatches == 0);
  // Each of the 5 values has probability 1/5: 399 expected per value, standard
  // deviation 18; 300 is 5.5 deviations below.
  for (std::size_t v = 0; v <= tau; ++v) {
    CAPTURE(v);
    CHECK(counts[v] >= 300);
  }
  // Independent streams agree with probability 1/5 per round: about 1600 disagreements.
  CHECK(differs_from_other_stream > 1200);
}

TEST_CASE("delayed_gradients rejects wrong dimensions and oversized delay bounds") {
  const random_quadratic_data data(10);
  ecopt::delayed_gradients wrapped(ecopt::quadratic<double>(data.h, data.b),
                                   ecopt::fixed_delay{.tau = 2});
  Eigen::VectorXd x = Eigen::VectorXd::Zero(dim), g(dim);
  Eigen::VectorXd long_x = Eigen::VectorXd::Zero(dim + 1), short_g(dim - 1);
  ecopt::counter_rng rng(1);
  CHECK_THROWS_AS(wrapped.gradient(long_x, g), ecopt::invalid_argument);
  CHECK_THROWS_AS(wrapped.gradient(x, short_g), ecopt::invalid_argument);
  CHECK_THROWS_AS(wrapped.stochastic_gradient(long_x, g, rng), ecopt::invalid_argument);
  CHECK_THROWS_AS(wrapped.stochastic_gradient(x, short_g, rng), ecopt::invalid_argument);
  CHECK_THROWS_AS(static_cast<void>(wrapped.loss(long_x)), ecopt::invalid_argument);
  CHECK(wrapped.rounds() == 0);  // a rejected call records nothing
  CHECK_THROWS_WITH_AS(wrapped.gradient(long_x, g),
                       doctest::Contains("delayed_gradients::gradient: x has size 7"),
                       ecopt::invalid_argument);

  CHECK_THROWS_AS(ecopt::delayed_gradients(ecopt::quadratic<double>(data.h, data.b),
                                           ecopt::fixed_delay{.tau = std::size_t{1} << 21}),
                  ecopt::invalid_argument);
  CHECK_THROWS_AS(ecopt::delayed_gradients(ecopt::quadratic<double>(data.h, data.b),
                                           ecopt::uniform_delay{.tau = std::size_t{1} << 21}),
                  ecopt::invalid_argument);
}

TEST_CASE("the curvature members are forwarded undelayed") {
  const random_quadratic_data data(12);
  ecopt::delayed_gradients wrapped(ecopt::quadratic<double>(data.h, data.b),
                                   ecopt::fixed_delay{.tau = 2});
  const auto xs = random_iterates(2, 13);
  Eigen::MatrixXd h(dim, dim);
  Eigen::VectorXd hv(dim), diag(dim);
  wrapped.hessian(xs[0], h);
  wrapped.hessian_vector(xs[0], xs[1], hv);
  wrapped.hessian_diagonal(xs[0], diag);
  CHECK(h == data.h);
  CHECK((hv - data.h * xs[1]).norm() <= 1e-12 * hv.norm());
  CHECK(diag == data.h.diagonal());
  CHECK(wrapped.rounds() == 0);  // curvature calls are not rounds
}

TEST_CASE("delayed_gradients does not allocate after construction") {
  const random_quadratic_data data(14);
  const auto xs = random_iterates(64, 15);
  ecopt::delayed_gradients fixed(ecopt::quadratic<double>(data.h, data.b, {.noise = 0.1}),
                                 ecopt::fixed_delay{.tau = 16});
  ecopt::delayed_gradients uniform(ecopt::quadratic<double>(data.h, data.b, {.noise = 0.1}),
                                   ecopt::uniform_delay{.tau = 16, .seed = 1});
  Eigen::VectorXd g(dim);
  double sink = 0;
  std::uint64_t allocations = 1;
  {
    const ecopt::test::allocation_scope scope;
    for (std::size_t k = 0; k < xs.size(); ++k) {
      auto rng = ecopt::counter_rng::stream(1, ecopt::stream_purpose::sampling, 0, k);
      fixed.stochastic_gradient(xs[k], g, rng);
      sink += g[0];
      uniform.stochastic_gradient(xs[k], g, rng);
      sink += g[0];
      uniform.gradient(xs[k], g);
      sink += g[0] + uniform.loss(xs[k]);
    }
    allocations = scope.count();
  }
  CHECK(std::isfinite(sink));
  CHECK(allocations == 0);
}

}  // namespace delayed_test
