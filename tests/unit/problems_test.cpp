// Tests of the problems: gradients and Hessians against finite differences,
// unbiased minibatch gradients, minimizers, label handling, accuracy,
// dimension and option errors, sharding, and no allocation on the hot path
// (operator new, and Eigen's std::malloc through support/eigen_heap_counter.hpp).
#include "support/eigen_heap_counter.hpp"  // first: it instruments Eigen

#include <doctest/doctest.h>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/problems/least_squares.hpp"
#include "ecopt/problems/logistic_regression.hpp"
#include "ecopt/problems/quadratic.hpp"
#include "ecopt/problems/shard.hpp"
#include "ecopt/problems/softmax_regression.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace problems_test {

namespace {

using ecopt::matrix_t;
using ecopt::vector_t;
using ecopt::test::eigen_heap_counting_active;
using ecopt::test::eigen_heap_scope;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

ecopt::counter_rng test_rng(std::uint64_t seed) {
  return ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
}

MatrixXd random_matrix(Index rows, Index cols, std::uint64_t seed) {
  auto rng = test_rng(seed);
  MatrixXd a(rows, cols);
  for (Index j = 0; j < cols; ++j) {
    for (Index i = 0; i < rows; ++i) a(i, j) = rng.normal();
  }
  return a;
}

VectorXd random_vector(Index n, std::uint64_t seed) { return random_matrix(n, 1, seed); }

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

/// The message of the invalid_argument that f throws ("" if none).
template <class F>
std::string invalid_message(F&& f) {
  try {
    f();
  } catch (const ecopt::invalid_argument& e) {
    return e.what();
  }
  return "";
}

/// Central finite differences of p.loss.
template <class P>
VectorXd numeric_gradient(P& p, const VectorXd& x, double h = 1e-5) {
  VectorXd g(x.size());
  VectorXd y = x;
  for (Index i = 0; i < x.size(); ++i) {
    y[i] = x[i] + h;
    const double fp = p.loss(y);
    y[i] = x[i] - h;
    const double fm = p.loss(y);
    y[i] = x[i];
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

/// Central finite differences of p.gradient (one column per coordinate).
template <class P>
MatrixXd numeric_hessian(P& p, const VectorXd& x, double h = 1e-5) {
  const Index d = x.size();
  MatrixXd hess(d, d);
  VectorXd y = x;
  VectorXd gp(d);
  VectorXd gm(d);
  for (Index j = 0; j < d; ++j) {
    y[j] = x[j] + h;
    p.gradient(y, gp);
    y[j] = x[j] - h;
    p.gradient(y, gm);
    y[j] = x[j];
    hess.col(j) = (gp - gm) / (2 * h);
  }
  return hess;
}

double relative_error(const MatrixXd& a, const MatrixXd& b) {
  return (a - b).norm() / std::max(1.0, b.norm());
}

/// The gradient against finite differences of the loss.
template <class P>
void check_gradient(P& p, const VectorXd& x) {
  VectorXd g(x.size());
  p.gradient(x, g);
  CHECK(g.allFinite());
  CHECK(relative_error(g, numeric_gradient(p, x)) < 1e-7);
}

/// Hessian against finite differences of the gradient, and hessian_vector and
/// hessian_diagonal against the Hessian.
template <class P>
void check_hessian(P& p, const VectorXd& x) {
  const auto d = static_cast<Index>(p.dim());
  MatrixXd h(d, d);
  p.hessian(x, h);
  CHECK(relative_error(h, numeric_hessian(p, x)) < 1e-7);
  CHECK(relative_error(h, h.transpose()) < 1e-14);
  const VectorXd v = random_vector(d, 99);
  VectorXd hv(d);
  p.hessian_vector(x, v, hv);
  CHECK(relative_error(hv, h * v) < 1e-12);
  VectorXd diag(d);
  p.hessian_diagonal(x, diag);
  CHECK(relative_error(diag, h.diagonal()) < 1e-12);
}

/// The mean of many minibatch gradients approaches the full gradient: every
/// coordinate within 5 standard errors (estimated from the draws themselves).
template <class P>
void check_unbiased(P& p, const VectorXd& x, int draws = 4000) {
  const auto d = static_cast<Index>(p.dim());
  VectorXd full(d);
  p.gradient(x, full);
  VectorXd g(d);
  VectorXd sum = VectorXd::Zero(d);
  VectorXd sum_sq = VectorXd::Zero(d);
  auto rng = ecopt::counter_rng::stream(7, ecopt::stream_purpose::sampling, 0, 0);
  for (int k = 0; k < draws; ++k) {
    p.stochastic_gradient(x, g, rng);
    sum += g;
    sum_sq += g.cwiseAbs2();
  }
  const VectorXd mean = sum / draws;
  const VectorXd var = (sum_sq / draws - mean.cwiseAbs2()).cwiseMax(0.0);
  const VectorXd stderr_ = (var / draws).cwiseSqrt();
  for (Index i = 0; i < d; ++i) {
    CHECK(std::abs(mean[i] - full[i]) <= 5 * stderr_[i] + 1e-12);
  }
  // and the noise is real: the draws are not all equal to the full gradient
  CHECK(var.sum() > 0);
}

/// The same seed gives the same minibatch gradient; the stream advances.
template <class P>
void check_deterministic(P& p, const VectorXd& x) {
  const auto d = static_cast<Index>(p.dim());
  VectorXd g1(d);
  VectorXd g2(d);
  VectorXd g3(d);
  auto r1 = test_rng(5);
  auto r2 = test_rng(5);
  p.stochastic_gradient(x, g1, r1);
  p.stochastic_gradient(x, g2, r2);
  CHECK(g1 == g2);
  p.stochastic_gradient(x, g3, r1);
  CHECK(g1 != g3);
}

/// Wrong sizes of x and g are invalid_argument naming dim().
template <class P>
void check_dimension_errors(P& p) {
  const auto d = static_cast<Index>(p.dim());
  VectorXd good(d);
  good.setZero();
  VectorXd bad(d + 1);
  bad.setZero();
  VectorXd out(d);
  auto rng = test_rng(1);
  CHECK_THROWS_AS(p.loss(bad), ecopt::invalid_argument);
  CHECK_THROWS_AS(p.gradient(bad, out), ecopt::invalid_argument);
  CHECK_THROWS_AS(p.gradient(good, bad), ecopt::invalid_argument);
  CHECK_THROWS_AS(p.stochastic_gradient(bad, out, rng), ecopt::invalid_argument);
  CHECK_THROWS_AS(p.stochastic_gradient(good, bad, rng), ecopt::invalid_argument);
  CHECK(contains(invalid_message([&] { p.gradient(good, bad); }), "dim()"));
  if constexpr (ecopt::HasHessian<P>) {
    MatrixXd h(d, d + 1);
    CHECK_THROWS_AS(p.hessian(good, h), ecopt::invalid_argument);
    CHECK_THROWS_AS(p.hessian_vector(good, bad, out), ecopt::invalid_argument);
    CHECK_THROWS_AS(p.hessian_diagonal(good, bad), ecopt::invalid_argument);
  }
}

/// No heap allocation (operator new or Eigen's malloc) in stochastic_gradient
/// after the first call.
template <class P>
void check_no_allocation(P& p, const VectorXd& x) {
  VectorXd g(static_cast<Index>(p.dim()));
  auto rng = test_rng(3);
  p.stochastic_gradient(x, g, rng);  // warm-up
  const bool counting = eigen_heap_counting_active();
  std::uint64_t news = 0;
  std::uint64_t mallocs = 0;
  {
    const eigen_heap_scope eigen_scope;
    const ecopt::test::allocation_scope scope;
    for (int k = 0; k < 5; ++k) p.stochastic_gradient(x, g, rng);
    news = scope.count();
    mallocs = eigen_scope.count();
  }
  CHECK(news == 0);
  if (counting) CHECK(mallocs == 0);
}

// A labelled toy problem: d features, m samples.
struct toy_data {
  MatrixXd features;
  VectorXd targets;
  VectorXd signs;           // -1/+1
  Eigen::VectorXi classes;  // in [0, 4)
};

toy_data make_toy(Index d, Index m, std::uint64_t seed) {
  toy_data t;
  t.features = random_matrix(d, m, seed);
  const VectorXd w = random_vector(d, seed + 1);
  const VectorXd noise = random_vector(m, seed + 2);
  t.targets = t.features.transpose() * w + 0.1 * noise;
  t.signs.resize(m);
  t.classes.resize(m);
  for (Index i = 0; i < m; ++i) {
    t.signs[i] = (t.targets[i] + 0.5 * noise[i] >= 0) ? 1.0 : -1.0;
    t.classes[i] = static_cast<int>((static_cast<std::uint64_t>(i) * 7919U + seed) % 4);
  }
  return t;
}

static_assert(ecopt::Problem<ecopt::quadratic<>>);
static_assert(ecopt::HasHessian<ecopt::quadratic<>>);
static_assert(ecopt::HasHessianVectorProduct<ecopt::quadratic<>>);
static_assert(ecopt::HasHessianDiagonal<ecopt::quadratic<>>);
static_assert(ecopt::Problem<ecopt::least_squares<>>);
static_assert(ecopt::HasHessian<ecopt::least_squares<float>>);
static_assert(ecopt::HasHessianVectorProduct<ecopt::least_squares<>>);
static_assert(ecopt::HasHessianDiagonal<ecopt::least_squares<>>);
static_assert(ecopt::Problem<ecopt::logistic_regression<>>);
static_assert(ecopt::HasHessian<ecopt::logistic_regression<float>>);
static_assert(ecopt::HasHessianVectorProduct<ecopt::logistic_regression<>>);
static_assert(ecopt::HasHessianDiagonal<ecopt::logistic_regression<>>);
static_assert(ecopt::Problem<ecopt::softmax_regression<>>);
static_assert(ecopt::Problem<ecopt::softmax_regression<float>>);
static_assert(!ecopt::HasHessian<ecopt::softmax_regression<>>);
static_assert(std::is_same_v<ecopt::problem_scalar_t<ecopt::least_squares<float>>, float>);

// The problems keep views: a temporary Matrix cannot be bound (it would dangle),
// row-major and mismatched scalar types are rejected at compile time.
static_assert(ecopt::detail::matrix_view_source<const MatrixXd&, double>);
static_assert(ecopt::detail::matrix_view_source<MatrixXd&, double>);
static_assert(!ecopt::detail::matrix_view_source<MatrixXd, double>);
static_assert(!ecopt::detail::matrix_view_source<MatrixXd&&, double>);
static_assert(ecopt::detail::matrix_view_source<
              decltype(std::declval<const MatrixXd&>().middleCols(0, 1)), double>);
static_assert(ecopt::detail::matrix_view_source<Eigen::Map<const MatrixXd>, double>);
static_assert(!ecopt::detail::matrix_view_source<const Eigen::MatrixXf&, double>);
static_assert(
    !ecopt::detail::matrix_view_source<
        const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>&, double>);
static_assert(
    !ecopt::detail::matrix_view_source<decltype(std::declval<const MatrixXd&>() * 2.0), double>);

}  // namespace

TEST_SUITE_BEGIN("problems");

TEST_CASE("shard_range splits m samples into balanced contiguous shards") {
  for (std::size_t m = 0; m <= 40; ++m) {
    for (int world = 1; world <= 7; ++world) {
      std::size_t next = 0;
      std::size_t smallest = m + 1;
      std::size_t largest = 0;
      for (int rank = 0; rank < world; ++rank) {
        const ecopt::index_range r = ecopt::shard_range(m, rank, world);
        CHECK(r.begin == next);
        CHECK(r.end() == r.begin + r.count);
        next = r.end();
        smallest = std::min(smallest, r.count);
        largest = std::max(largest, r.count);
      }
      CHECK(next == m);
      CHECK(largest - smallest <= 1);
    }
  }
  CHECK(ecopt::shard_range(10, 0, 3) == ecopt::index_range{0, 4});
  CHECK(ecopt::shard_range(10, 1, 3) == ecopt::index_range{4, 3});
  CHECK(ecopt::shard_range(10, 2, 3) == ecopt::index_range{7, 3});
  CHECK_THROWS_AS((void)ecopt::shard_range(10, 0, 0), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)ecopt::shard_range(10, -1, 2), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)ecopt::shard_range(10, 2, 2), ecopt::invalid_argument);
  CHECK(contains(invalid_message([] { (void)ecopt::shard_range(10, 3, 2); }), "rank 3"));

  const MatrixXd a = random_matrix(3, 10, 1);
  const auto cols = ecopt::shard_columns(a, 1, 3);
  CHECK(cols.cols() == 3);
  CHECK(cols.data() == a.data() + 12);
  const VectorXd y = random_vector(10, 2);
  const auto seg = ecopt::shard_segment(y, 2, 3);
  CHECK(seg.size() == 3);
  CHECK(seg.data() == y.data() + 7);
  const std::vector<int> labels(10, 1);
  const auto part = ecopt::shard_segment(std::span<const int>(labels), 0, 3);
  CHECK(part.size() == 4);
  CHECK(part.data() == labels.data());
}

TEST_CASE("quadratic: gradient, Hessian, minimizer and spectrum") {
  const Index d = 6;
  const MatrixXd m = random_matrix(d, d, 11);
  const MatrixXd h = m * m.transpose() / static_cast<double>(d) + MatrixXd::Identity(d, d);
  const MatrixXd hs = 0.5 * (h + h.transpose());  // exactly symmetric
  const VectorXd b = random_vector(d, 12);
  const VectorXd x = random_vector(d, 13);

  ecopt::quadratic q(hs, b);
  static_assert(std::is_same_v<decltype(q), ecopt::quadratic<double>>);
  CHECK(q.dim() == static_cast<std::size_t>(d));
  CHECK(q.loss(x) == doctest::Approx(0.5 * x.dot(hs * x) - b.dot(x)));
  check_gradient(q, x);
  check_hessian(q, x);
  check_dimension_errors(q);

  // no noise: the stochastic gradient is the gradient
  VectorXd g(d);
  VectorXd sg(d);
  auto rng = test_rng(1);
  q.gradient(x, g);
  q.stochastic_gradient(x, sg, rng);
  CHECK(sg == g);

  const VectorXd xs = q.minimizer();
  q.gradient(xs, g);
  CHECK(g.norm() < 1e-10 * b.norm());

  const Eigen::SelfAdjointEigenSolver<MatrixXd> es(hs);
  CHECK(q.smoothness() == doctest::Approx(es.eigenvalues().maxCoeff()));
  CHECK(q.strong_convexity() == doctest::Approx(es.eigenvalues().minCoeff()));
  const VectorXd diag_values = (VectorXd(3) << 1.0, 2.0, 5.0).finished();
  const MatrixXd diag = diag_values.asDiagonal();
  ecopt::quadratic qd(diag, VectorXd::Ones(3));
  CHECK(qd.smoothness() == doctest::Approx(5.0));
  CHECK(qd.strong_convexity() == doctest::Approx(1.0));
  CHECK(qd.minimizer().isApprox((VectorXd(3) << 1.0, 0.5, 0.2).finished()));

  SUBCASE("noise makes an unbiased stochastic gradient") {
    ecopt::quadratic noisy(hs, b, {.noise = 0.5});
    check_unbiased(noisy, x);
    check_deterministic(noisy, x);
    check_no_allocation(noisy, x);
  }
  SUBCASE("invalid arguments") {
    MatrixXd asym = hs;
    asym(0, 1) += 1.0;
    CHECK(contains(invalid_message([&] { ecopt::quadratic bad(asym, b); }), "not symmetric"));
    const MatrixXd rect(3, 4);
    CHECK(contains(invalid_message([&] { ecopt::quadratic bad(rect, VectorXd(3)); }), "square"));
    CHECK(contains(invalid_message([&] { ecopt::quadratic bad(hs, VectorXd(d + 1)); }), "b"));
    CHECK(contains(invalid_message([&] { ecopt::quadratic bad(hs, b, {.noise = -1}); }),
                   "quadratic_options.noise"));
    MatrixXd indefinite = MatrixXd::Identity(2, 2);
    indefinite(1, 1) = -1;
    ecopt::quadratic saddle(indefinite, VectorXd::Ones(2));
    CHECK_THROWS_AS((void)saddle.minimizer(), ecopt::numeric_error);
    CHECK(saddle.strong_convexity() == doctest::Approx(-1.0));
  }
}

TEST_CASE("least_squares: gradient, Hessian, minibatch, minimizer") {
  const toy_data t = make_toy(5, 40, 21);
  const VectorXd x = random_vector(5, 22);
  ecopt::least_squares p(t.features, t.targets, {.l2 = 0.1, .batch_size = 8});
  static_assert(std::is_same_v<decltype(p), ecopt::least_squares<double>>);
  CHECK(p.dim() == 5);
  CHECK(p.samples() == 40);
  const VectorXd r = t.features.transpose() * x - t.targets;
  CHECK(p.loss(x) == doctest::Approx(r.squaredNorm() / 80.0 + 0.05 * x.squaredNorm()));
  check_gradient(p, x);
  check_hessian(p, x);
  check_unbiased(p, x);
  check_deterministic(p, x);
  check_dimension_errors(p);
  check_no_allocation(p, x);

  VectorXd g(5);
  const VectorXd xs = p.minimizer();
  p.gradient(xs, g);
  CHECK(g.norm() < 1e-12);

  SUBCASE("the minibatch samples rng.below(m) with replacement") {
    ecopt::least_squares one(t.features, t.targets, {.l2 = 0.1, .batch_size = 1});
    auto rng = test_rng(8);
    auto copy = rng;
    one.stochastic_gradient(x, g, rng);
    const auto i = static_cast<Index>(copy.below(40));
    const VectorXd a = t.features.col(i);
    const VectorXd expected = (a.dot(x) - t.targets[i]) * a + 0.1 * x;
    CHECK(relative_error(g, expected) < 1e-14);
    CHECK(rng() == copy());  // exactly one draw per sample
  }
  SUBCASE("a singular system still gives a minimizer") {
    const MatrixXd wide = random_matrix(6, 3, 23);  // m < d, l2 = 0
    const VectorXd y = random_vector(3, 24);
    ecopt::least_squares s(wide, y);
    VectorXd gs(6);
    s.gradient(s.minimizer(), gs);
    CHECK(gs.norm() < 1e-10);
  }
  SUBCASE("the problem views the caller's data") {
    MatrixXd a = t.features;
    ecopt::least_squares v(a, t.targets);
    const double before = v.loss(x);
    a *= 2.0;
    CHECK(v.loss(x) != doctest::Approx(before));
    // a shard is a block of the same memory
    ecopt::least_squares shard(ecopt::shard_columns(a, 1, 4),
                               ecopt::shard_segment(t.targets, 1, 4));
    CHECK(shard.samples() == 10);
  }
  SUBCASE("float") {
    const Eigen::MatrixXf af = t.features.cast<float>();
    const Eigen::VectorXf yf = t.targets.cast<float>();
    ecopt::least_squares pf(af, yf, {.l2 = 0.1f});
    static_assert(std::is_same_v<decltype(pf), ecopt::least_squares<float>>);
    Eigen::VectorXf gf(5);
    pf.gradient(x.cast<float>(), gf);
    VectorXd gd(5);
    p.gradient(x, gd);
    CHECK(relative_error(gf.cast<double>(), gd) < 1e-5);
  }
  SUBCASE("invalid arguments") {
    CHECK(contains(
        invalid_message([&] { ecopt::least_squares b(t.features, t.targets, {.l2 = -1}); }),
        "least_squares_options.l2"));
    CHECK(contains(
        invalid_message([&] { ecopt::least_squares b(t.features, t.targets, {.batch_size = 0}); }),
        "least_squares_options.batch_size"));
    CHECK(contains(invalid_message([&] { ecopt::least_squares b(t.features, VectorXd(39)); }),
                   "targets"));
    const MatrixXd empty(5, 0);
    CHECK(contains(invalid_message([&] { ecopt::least_squares b(empty, VectorXd(0)); }),
                   "no samples"));
  }
}

TEST_CASE("logistic_regression: gradient, Hessian, labels, accuracy, stability") {
  const toy_data t = make_toy(4, 60, 31);
  const VectorXd x = random_vector(4, 32);
  ecopt::logistic_regression p(t.features, t.signs, {.l2 = 0.01, .batch_size = 4});
  double expected = 0;
  for (Index i = 0; i < 60; ++i) {
    expected += std::log1p(std::exp(-t.signs[i] * t.features.col(i).dot(x)));
  }
  CHECK(p.loss(x) == doctest::Approx(expected / 60 + 0.005 * x.squaredNorm()));
  check_gradient(p, x);
  check_hessian(p, x);
  check_unbiased(p, x);
  check_deterministic(p, x);
  check_dimension_errors(p);
  check_no_allocation(p, x);

  SUBCASE("0/1 labels are mapped to -1/+1") {
    const Eigen::VectorXi zero_one = (t.signs.array() > 0).cast<int>();
    ecopt::logistic_regression q(t.features, zero_one, {.l2 = 0.01});
    CHECK(q.labels() == t.signs);
    CHECK(q.loss(x) == p.loss(x));
  }
  SUBCASE("bad labels name the sample") {
    VectorXd bad = t.signs;
    bad[3] = 2;
    const std::string m1 = invalid_message([&] { ecopt::logistic_regression q(t.features, bad); });
    CHECK(contains(m1, "sample 3"));
    VectorXd mixed = t.signs;
    mixed[0] = -1;
    mixed[5] = 0;
    const std::string m2 =
        invalid_message([&] { ecopt::logistic_regression q(t.features, mixed); });
    CHECK(contains(m2, "sample 5"));
    CHECK(contains(m2, "sample 0"));
    CHECK(contains(invalid_message([&] { ecopt::logistic_regression q(t.features, VectorXd(3)); }),
                   "labels"));
  }
  SUBCASE("no overflow for huge margins") {
    const VectorXd big = 1e4 * x;
    VectorXd g(4);
    CHECK(std::isfinite(p.loss(big)));
    CHECK(p.loss(big) > 0);
    p.gradient(big, g);
    CHECK(g.allFinite());
    MatrixXd h(4, 4);
    p.hessian(big, h);
    CHECK(h.allFinite());
  }
  SUBCASE("accuracy on a separable set") {
    const VectorXd w = random_vector(4, 33);
    VectorXd labels(60);
    for (Index i = 0; i < 60; ++i) labels[i] = t.features.col(i).dot(w) > 0 ? 1.0 : -1.0;
    CHECK(ecopt::logistic_regression<>::accuracy(w, t.features, labels) == 1.0);
    CHECK(ecopt::logistic_regression<>::accuracy(VectorXd(-w), t.features, labels) == 0.0);
    // gradient descent on the separable set reaches accuracy 1
    ecopt::logistic_regression sep(t.features, labels);
    VectorXd z = VectorXd::Zero(4);
    VectorXd g(4);
    for (int k = 0; k < 300; ++k) {
      sep.gradient(z, g);
      z -= 2.0 * g;
    }
    CHECK(sep.accuracy(z) == 1.0);
    const Eigen::VectorXi zero_one = (labels.array() > 0).cast<int>();
    CHECK(ecopt::logistic_regression<>::accuracy(z, t.features, zero_one) == 1.0);
    CHECK_THROWS_AS((void)ecopt::logistic_regression<>::accuracy(VectorXd(3), t.features, labels),
                    ecopt::invalid_argument);
  }
}

TEST_CASE("softmax_regression: loss, gradient with and without bias, accuracy") {
  const toy_data t = make_toy(3, 50, 41);
  const int classes = 4;
  for (const bool bias : {true, false}) {
    CAPTURE(bias);
    ecopt::softmax_regression p(t.features, t.classes, classes,
                                {.l2 = 0.05, .batch_size = 5, .bias = bias});
    static_assert(std::is_same_v<decltype(p), ecopt::softmax_regression<double>>);
    const auto d = static_cast<Index>(p.dim());
    CHECK(d == classes * (3 + (bias ? 1 : 0)));
    CHECK(p.loss(VectorXd::Zero(d)) == doctest::Approx(std::log(4.0)));
    const VectorXd x = random_vector(d, 42);
    check_gradient(p, x);
    check_unbiased(p, x);
    check_deterministic(p, x);
    check_dimension_errors(p);
    check_no_allocation(p, x);
  }

  SUBCASE("the loss against a direct formula; the bias is not regularised") {
    ecopt::softmax_regression p(t.features, t.classes, classes, {.l2 = 0.3});
    const VectorXd x = random_vector(16, 43);
    const Eigen::Map<const MatrixXd> w(x.data(), 4, 4);
    double sum = 0;
    for (Index i = 0; i < 50; ++i) {
      const VectorXd z = w.leftCols(3) * t.features.col(i) + w.col(3);
      sum += std::log(z.array().exp().sum()) - z[t.classes[i]];
    }
    CHECK(p.loss(x) == doctest::Approx(sum / 50 + 0.15 * w.leftCols(3).squaredNorm()));
  }
  SUBCASE("stable for huge logits") {
    ecopt::softmax_regression p(t.features, t.classes, classes);
    const VectorXd x = 1e4 * random_vector(16, 44);
    VectorXd g(16);
    CHECK(std::isfinite(p.loss(x)));
    p.gradient(x, g);
    CHECK(g.allFinite());
  }
  SUBCASE("accuracy on separable clusters") {
    // class k is a tight cluster around mean k; the nearest-mean classifier
    // W = means, b = -|mean|^2 / 2 is exact.
    const MatrixXd means = 10 * random_matrix(3, classes, 45);
    const MatrixXd noise = random_matrix(3, 200, 46);
    MatrixXd a(3, 200);
    std::vector<int> labels(200);
    for (Index i = 0; i < 200; ++i) {
      labels[static_cast<std::size_t>(i)] = static_cast<int>(i % classes);
      a.col(i) = means.col(i % classes) + 0.01 * noise.col(i);
    }
    VectorXd x(classes * 4);
    Eigen::Map<MatrixXd> w(x.data(), classes, 4);
    w.leftCols(3) = means.transpose();
    w.col(3) = -0.5 * means.colwise().squaredNorm().transpose();
    CHECK(ecopt::softmax_regression<>::accuracy(x, a, labels, classes) == 1.0);
    CHECK(ecopt::softmax_regression<>::accuracy(VectorXd(-x), a, labels, classes) < 0.5);
    // the member version evaluates held-out data with the problem's scratch
    ecopt::softmax_regression p(a.leftCols(100), std::span<const int>(labels).first(100), classes);
    CHECK(p.accuracy(x) == 1.0);
    const bool counting = eigen_heap_counting_active();
    double held_out = 0;
    std::uint64_t news = 0;
    std::uint64_t mallocs = 0;
    {
      const eigen_heap_scope eigen_scope;
      const ecopt::test::allocation_scope scope;
      held_out = p.accuracy(x, a.rightCols(100), std::span<const int>(labels).last(100));
      news = scope.count();
      mallocs = eigen_scope.count();
    }
    CHECK(news == 0);
    if (counting) CHECK(mallocs == 0);
    CHECK(held_out == 1.0);
    // training by gradient descent separates them too
    VectorXd z = VectorXd::Zero(classes * 4);
    VectorXd g(classes * 4);
    for (int k = 0; k < 200; ++k) {
      p.gradient(z, g);
      z -= 0.05 * g;
    }
    CHECK(p.accuracy(z, a, labels) == 1.0);
  }
  SUBCASE("invalid arguments") {
    Eigen::VectorXi bad = t.classes;
    bad[7] = 4;
    const std::string m1 =
        invalid_message([&] { ecopt::softmax_regression q(t.features, bad, classes); });
    CHECK(contains(m1, "sample 7"));
    bad[7] = -1;
    CHECK(contains(invalid_message([&] { ecopt::softmax_regression q(t.features, bad, classes); }),
                   "sample 7"));
    CHECK(contains(invalid_message([&] { ecopt::softmax_regression q(t.features, t.classes, 1); }),
                   "classes"));
    CHECK(contains(invalid_message([&] {
                     ecopt::softmax_regression q(t.features, t.classes, classes, {.batch_size = 0});
                   }),
                   "softmax_regression_options.batch_size"));
    CHECK(contains(invalid_message([&] {
                     ecopt::softmax_regression q(t.features, t.classes.head(49), classes);
                   }),
                   "labels"));
    CHECK_THROWS_AS(
        (void)ecopt::softmax_regression<>::accuracy(VectorXd(15), t.features, t.classes, classes),
        ecopt::invalid_argument);
  }
}

TEST_CASE("the Eigen heap counter sees a plain GEMM allocate its blocks") {
  // The counter is not vacuous: an untiled GEMM this size packs its blocks on
  // the heap (they exceed EIGEN_STACK_ALLOCATION_LIMIT), the tiled one does not.
  const MatrixXd w = random_matrix(100, 785, 53);
  const MatrixXd xb = random_matrix(785, 256, 54);
  MatrixXd z(100, 256);
  if (!eigen_heap_counting_active()) return;
  std::uint64_t plain = 0;
  std::uint64_t tiled = 0;
  {
    const eigen_heap_scope scope;
    z.noalias() = w * xb;
    plain = scope.count();
  }
  const MatrixXd expected = z;
  {
    const eigen_heap_scope scope;
    z.setZero();
    ecopt::detail::gemm_accumulate(z, w, xb);
    tiled = scope.count();
  }
  CHECK(plain > 0);
  CHECK(tiled == 0);
  CHECK(relative_error(z, expected) < 1e-14);
}

TEST_CASE("softmax_regression at Fashion-MNIST sizes does not allocate") {
  // d = 784, 10 classes: the minibatch GEMMs, the chunked full gradient and the
  // loss stay off the heap after construction.
  const MatrixXd a = random_matrix(784, 1100, 51);
  Eigen::VectorXi labels(1100);
  for (Index i = 0; i < 1100; ++i) labels[i] = static_cast<int>(i % 10);
  for (const std::size_t batch : {std::size_t{32}, std::size_t{256}}) {
    CAPTURE(batch);
    ecopt::softmax_regression p(a, labels, 10, {.l2 = 1e-4, .batch_size = batch});
    const VectorXd x = 0.01 * random_vector(static_cast<Index>(p.dim()), 52);
    VectorXd g(static_cast<Index>(p.dim()));
    VectorXd g_full(static_cast<Index>(p.dim()));
    auto rng = test_rng(4);
    p.stochastic_gradient(x, g, rng);
    const bool counting = eigen_heap_counting_active();
    double loss = 0;
    std::uint64_t news = 0;
    std::uint64_t mallocs = 0;
    {
      const eigen_heap_scope eigen_scope;
      const ecopt::test::allocation_scope scope;
      p.stochastic_gradient(x, g, rng);
      p.gradient(x, g_full);
      loss = p.loss(x);
      news = scope.count();
      mallocs = eigen_scope.count();
    }
    CHECK(news == 0);
    if (counting) CHECK(mallocs == 0);
    CHECK(std::isfinite(loss));
    CHECK(g.allFinite());
  }
}

TEST_CASE("every problem works in float") {
  const toy_data t = make_toy(3, 30, 61);
  const Eigen::MatrixXf a = t.features.cast<float>();
  const Eigen::VectorXf signs = t.signs.cast<float>();
  const Eigen::MatrixXf h = Eigen::MatrixXf::Identity(3, 3) * 2.0F;
  auto rng = test_rng(9);

  ecopt::quadratic q(h, Eigen::VectorXf::Ones(3), {.noise = 0.1});
  ecopt::logistic_regression lr(a, signs, {.l2 = 0.1});
  ecopt::softmax_regression sm(a, t.classes, 4, {.l2 = 0.1});
  static_assert(std::is_same_v<decltype(sm), ecopt::softmax_regression<float>>);

  Eigen::VectorXf x = Eigen::VectorXf::Constant(3, 0.5F);
  Eigen::VectorXf g(3);
  Eigen::MatrixXf hess(3, 3);
  q.stochastic_gradient(x, g, rng);
  CHECK(q.minimizer().isApprox(Eigen::VectorXf::Constant(3, 0.5F)));
  CHECK(q.smoothness() == doctest::Approx(2.0));
  lr.gradient(x, g);
  lr.stochastic_gradient(x, g, rng);
  lr.hessian(x, hess);
  CHECK(hess.allFinite());
  CHECK(std::isfinite(lr.loss(x)));

  Eigen::VectorXf w = Eigen::VectorXf::Zero(static_cast<Index>(sm.dim()));
  Eigen::VectorXf gw(static_cast<Index>(sm.dim()));
  CHECK(sm.loss(w) == doctest::Approx(std::log(4.0)));
  sm.gradient(w, gw);
  Eigen::VectorXd gd(static_cast<Index>(sm.dim()));
  ecopt::softmax_regression smd(t.features, t.classes, 4, {.l2 = 0.1});
  smd.gradient(VectorXd::Zero(static_cast<Index>(sm.dim())), gd);
  CHECK(relative_error(gw.cast<double>(), gd) < 1e-5);
  sm.stochastic_gradient(w, gw, rng);
  CHECK(gw.allFinite());
  CHECK(sm.accuracy(w) >= 0.0);
}

TEST_SUITE_END();

}  // namespace problems_test
