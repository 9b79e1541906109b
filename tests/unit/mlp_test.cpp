// Tests of the one-hidden-layer perceptron problem (problems/mlp.hpp): the
// parameter layout, backpropagation against central finite differences (ReLU
// and tanh, with and without l2), the zero-point saddle, initial_point's
// scaling, descent under gradient descent, unbiased and deterministic
// minibatch gradients, float against double, argument errors, and no heap
// allocation (operator new or Eigen's malloc) on the hot path.
#include "support/eigen_heap_counter.hpp"  // first: it instruments Eigen

#include <doctest/doctest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/problems/mlp.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace mlp_test {

namespace {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

static_assert(ecopt::Problem<ecopt::mlp<>>);
static_assert(ecopt::Problem<ecopt::mlp<float>>);
static_assert(!ecopt::HasHessian<ecopt::mlp<>>);

ecopt::counter_rng test_rng(std::uint64_t seed) {
  return ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
}

MatrixXd random_matrix(Index rows, Index cols, std::uint64_t seed) {
  auto rng = test_rng(seed);
  MatrixXd a(rows, cols);
  for (Index i = 0; i < a.size(); ++i) a.data()[i] = rng.normal();
  return a;
}

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

/// Samples with labels a random two-layer tanh teacher assigns (argmax of its
/// outputs): a non-linear task the student can fit.
struct teacher_data {
  MatrixXd features;
  Eigen::VectorXi labels;
};

teacher_data make_teacher_data(Index d, Index m, int classes, std::uint64_t seed) {
  teacher_data t;
  t.features = random_matrix(d, m, seed);
  const MatrixXd w1 = random_matrix(8, d, seed + 1);
  const MatrixXd w2 = random_matrix(classes, 8, seed + 2);
  const MatrixXd out = w2 * (w1 * t.features).array().tanh().matrix();
  t.labels.resize(m);
  for (Index i = 0; i < m; ++i) out.col(i).maxCoeff(&t.labels[i]);
  return t;
}

/// Central finite differences of p.loss.
template <class P>
VectorXd numeric_gradient(P& p, const VectorXd& x, double h = 1e-6) {
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

const ecopt::mlp_activation activations[] = {ecopt::mlp_activation::relu,
                                             ecopt::mlp_activation::tanh};

}  // namespace

TEST_SUITE_BEGIN("problems");

TEST_CASE("mlp: parameter layout and dimension") {
  const teacher_data t = make_teacher_data(5, 30, 3, 1);
  const ecopt::mlp p(t.features, t.labels, 3, {.hidden = 7});
  static_assert(std::is_same_v<std::remove_const_t<decltype(p)>, ecopt::mlp<double>>);
  const ecopt::mlp_layout at = p.layout();
  CHECK(at.w1 == 0);
  CHECK(at.b1 == 7 * 5);
  CHECK(at.w2 == 7 * 6);
  CHECK(at.b2 == 7 * 6 + 3 * 7);
  CHECK(at.dim == 7 * 6 + 3 * 8);
  CHECK(p.dim() == at.dim);
  CHECK(p.features_dim() == 5);
  CHECK(p.hidden() == 7);
  CHECK(p.classes() == 3);
  CHECK(p.samples() == 30);

  // 784-64-10, the Fashion-MNIST network of examples/topk_memory.cpp
  const Eigen::MatrixXf images = Eigen::MatrixXf::Zero(784, 2);
  const std::vector<int> labels = {0, 9};
  const ecopt::mlp<float> big(images, std::span<const int>(labels), 10, {.hidden = 64});
  CHECK(big.dim() == 50890);
}

TEST_CASE("mlp: the loss against a direct formula") {
  const teacher_data t = make_teacher_data(4, 25, 3, 2);
  for (const auto activation : activations) {
    CAPTURE(static_cast<int>(activation));
    ecopt::mlp p(t.features, t.labels, 3, {.hidden = 6, .activation = activation, .l2 = 0.2});
    const VectorXd x = random_matrix(static_cast<Index>(p.dim()), 1, 3);
    const ecopt::mlp_layout at = p.layout();
    const Eigen::Map<const MatrixXd> w1(x.data(), 6, 4);
    const Eigen::Map<const VectorXd> b1(x.data() + at.b1, 6);
    const Eigen::Map<const MatrixXd> w2(x.data() + at.w2, 3, 6);
    const Eigen::Map<const VectorXd> b2(x.data() + at.b2, 3);
    double sum = 0;
    for (Index i = 0; i < 25; ++i) {
      VectorXd u = w1 * t.features.col(i) + b1;
      const VectorXd h = activation == ecopt::mlp_activation::relu
                             ? VectorXd(u.cwiseMax(0.0))
                             : VectorXd(u.array().tanh().matrix());
      const VectorXd z = w2 * h + b2;
      sum += std::log(z.array().exp().sum()) - z[t.labels[i]];
    }
    const double expected = sum / 25 + 0.1 * (w1.squaredNorm() + w2.squaredNorm());
    CHECK(p.loss(x) == doctest::Approx(expected).epsilon(1e-12));
  }
}

TEST_CASE("mlp: the gradient matches central finite differences of the loss") {
  // m = 1100 > chunk_columns, so the chunked full-shard pass is covered.
  const teacher_data t = make_teacher_data(5, 1100, 4, 4);
  for (const auto activation : activations) {
    for (const double l2 : {0.0, 0.3}) {
      CAPTURE(static_cast<int>(activation));
      CAPTURE(l2);
      ecopt::mlp p(t.features, t.labels, 4, {.hidden = 7, .activation = activation, .l2 = l2});
      // A random point, not a critical one; biases nonzero too.
      const VectorXd x = 0.7 * random_matrix(static_cast<Index>(p.dim()), 1, 5);
      VectorXd g(x.size());
      p.gradient(x, g);
      REQUIRE(g.allFinite());
      const VectorXd numeric = numeric_gradient(p, x);
      // ReLU kinks: no pre-activation of these fixed draws lies within the
      // finite-difference step of 0, so the loss is smooth around x.
      CHECK((g - numeric).norm() / numeric.norm() < 1e-7);
      CHECK(numeric.norm() > 1e-3);
    }
  }
}

TEST_CASE("mlp: zero is a saddle of the weights; initial_point breaks it") {
  const teacher_data t = make_teacher_data(6, 200, 3, 6);
  ecopt::mlp p(t.features, t.labels, 3, {.hidden = 5});
  const ecopt::mlp_layout at = p.layout();
  const auto d = static_cast<Index>(p.dim());
  VectorXd g(d);
  p.gradient(VectorXd::Zero(d), g);
  // Only b2 has a gradient at zero: softmax(0) - onehot, averaged.
  CHECK(g.head(static_cast<Index>(at.b2)).norm() == 0.0);
  CHECK(g.tail(3).norm() > 0.0);
  const VectorXd x = p.initial_point(9);
  p.gradient(x, g);
  CHECK(g.segment(static_cast<Index>(at.w1), static_cast<Index>(at.b1 - at.w1)).norm() > 1e-3);
  CHECK(g.segment(static_cast<Index>(at.w2), static_cast<Index>(at.b2 - at.w2)).norm() > 1e-3);
}

TEST_CASE("mlp: initial_point is deterministic per seed, with He / Glorot scaling") {
  const Eigen::MatrixXd features = random_matrix(400, 2, 7);
  const std::vector<int> labels = {0, 1};
  for (const auto activation : activations) {
    CAPTURE(static_cast<int>(activation));
    const ecopt::mlp p(features, std::span<const int>(labels), 10,
                       {.hidden = 100, .activation = activation});
    const ecopt::mlp_layout at = p.layout();
    const VectorXd x = p.initial_point(11);
    CHECK(x == p.initial_point(11));
    CHECK(x != p.initial_point(12));
    auto block = [&](std::size_t begin, std::size_t end) {
      return x.segment(static_cast<Index>(begin), static_cast<Index>(end - begin));
    };
    CHECK(block(at.b1, at.w2).norm() == 0.0);
    CHECK(block(at.b2, at.dim).norm() == 0.0);
    // Sample standard deviations against the scales: 40000 and 1000 draws,
    // relative standard errors about 0.35% and 2.2%, so 2% and 10% are > 4 sigma.
    auto sample_std = [](const auto& v) {
      return std::sqrt(v.squaredNorm() / static_cast<double>(v.size()));
    };
    const double first =
        activation == ecopt::mlp_activation::relu ? std::sqrt(2.0 / 400) : std::sqrt(2.0 / 500);
    CHECK(sample_std(block(at.w1, at.b1)) == doctest::Approx(first).epsilon(0.02));
    CHECK(sample_std(block(at.w2, at.b2)) == doctest::Approx(std::sqrt(2.0 / 110)).epsilon(0.1));
    // the float problem draws the same point, rounded
    const Eigen::MatrixXf features_f = features.cast<float>();
    const ecopt::mlp<float> pf(features_f, std::span<const int>(labels), 10,
                               {.hidden = 100, .activation = activation});
    CHECK((pf.initial_point(11).cast<double>() - x).cwiseAbs().maxCoeff() < 1e-7);
  }
}

TEST_CASE("mlp: gradient descent from initial_point fits a teacher's labels") {
  const teacher_data t = make_teacher_data(6, 300, 3, 8);
  for (const auto activation : activations) {
    CAPTURE(static_cast<int>(activation));
    ecopt::mlp p(t.features, t.labels, 3, {.hidden = 16, .activation = activation, .l2 = 1e-4});
    VectorXd x = p.initial_point(13);
    VectorXd g(x.size());
    const double start = p.loss(x);
    const double start_accuracy = p.accuracy(x);
    double previous = start;
    int increases = 0;
    for (int k = 0; k < 300; ++k) {
      p.gradient(x, g);
      x -= 0.2 * g;
      const double now = p.loss(x);
      increases += now > previous ? 1 : 0;
      previous = now;
    }
    CHECK(increases == 0);  // a small enough step for plain descent
    CHECK(previous < 0.5 * start);
    CHECK(p.accuracy(x) > 0.85);
    CHECK(p.accuracy(x) > start_accuracy + 0.2);
  }
}

TEST_CASE("mlp: minibatch gradients are unbiased and deterministic per seed") {
  const teacher_data t = make_teacher_data(4, 60, 3, 14);
  for (const auto activation : activations) {
    CAPTURE(static_cast<int>(activation));
    ecopt::mlp p(t.features, t.labels, 3,
                 {.hidden = 5, .activation = activation, .l2 = 0.05, .batch_size = 4});
    const auto d = static_cast<Index>(p.dim());
    const VectorXd x = p.initial_point(15) + 0.1 * random_matrix(d, 1, 16);
    VectorXd full(d);
    p.gradient(x, full);
    VectorXd g(d);
    VectorXd sum = VectorXd::Zero(d);
    VectorXd sum_sq = VectorXd::Zero(d);
    auto rng = ecopt::counter_rng::stream(7, ecopt::stream_purpose::sampling, 0, 0);
    constexpr int draws = 6000;
    for (int k = 0; k < draws; ++k) {
      p.stochastic_gradient(x, g, rng);
      sum += g;
      sum_sq += g.cwiseAbs2();
    }
    const VectorXd mean = sum / draws;
    const VectorXd var = (sum_sq / draws - mean.cwiseAbs2()).cwiseMax(0.0);
    const VectorXd standard_error = (var / draws).cwiseSqrt();
    // Every coordinate within 5 standard errors (d = 43 coordinates; a
    // Gaussian 5-sigma miss has probability below 6e-7 each).
    int misses = 0;
    for (Index i = 0; i < d; ++i) {
      misses += std::abs(mean[i] - full[i]) <= 5 * standard_error[i] + 1e-12 ? 0 : 1;
    }
    CHECK(misses == 0);
    CHECK(var.sum() > 1e-4);  // and the draws are really noisy

    // the same stream gives the same minibatch; the stream advances
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
}

TEST_CASE("mlp: float matches double") {
  const teacher_data t = make_teacher_data(8, 700, 4, 17);
  const Eigen::MatrixXf features_f = t.features.cast<float>();
  ecopt::mlp pd(t.features, t.labels, 4, {.hidden = 9, .l2 = 0.01});
  ecopt::mlp pf(features_f, t.labels, 4, {.hidden = 9, .l2 = 0.01});
  static_assert(std::is_same_v<decltype(pf), ecopt::mlp<float>>);
  const Eigen::VectorXf xf = pf.initial_point(18);
  const VectorXd xd = xf.cast<double>();
  Eigen::VectorXf gf(xf.size());
  VectorXd gd(xd.size());
  pf.gradient(xf, gf);
  pd.gradient(xd, gd);
  CHECK((gf.cast<double>() - gd).norm() / gd.norm() < 1e-5);
  CHECK(pf.loss(xf) == doctest::Approx(pd.loss(xd)).epsilon(1e-5));
  CHECK(pf.accuracy(xf) == pd.accuracy(xd));
}

TEST_CASE("mlp: wrong sizes and bad options throw invalid_argument naming the culprit") {
  const teacher_data t = make_teacher_data(4, 20, 3, 19);
  ecopt::mlp p(t.features, t.labels, 3, {.hidden = 5});
  const auto d = static_cast<Index>(p.dim());
  VectorXd good = VectorXd::Zero(d);
  VectorXd bad = VectorXd::Zero(d + 1);
  VectorXd out(d);
  auto rng = test_rng(1);
  CHECK_THROWS_AS(p.loss(bad), ecopt::invalid_argument);
  CHECK_THROWS_AS(p.gradient(bad, out), ecopt::invalid_argument);
  CHECK_THROWS_AS(p.gradient(good, bad), ecopt::invalid_argument);
  CHECK_THROWS_AS(p.stochastic_gradient(bad, out, rng), ecopt::invalid_argument);
  CHECK_THROWS_AS(p.stochastic_gradient(good, bad, rng), ecopt::invalid_argument);
  CHECK_THROWS_AS(p.initial_point(1, bad), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)p.accuracy(bad), ecopt::invalid_argument);
  CHECK(contains(invalid_message([&] { p.gradient(good, bad); }), "dim()"));
  CHECK(contains(invalid_message([&] { p.stochastic_gradient(bad, out, rng); }),
                 "mlp::stochastic_gradient"));
  // held-out data with the wrong number of features or labels
  const MatrixXd wrong_rows = MatrixXd::Zero(5, 3);
  const std::vector<int> three = {0, 1, 2};
  CHECK(contains(invalid_message([&] { (void)p.accuracy(good, wrong_rows, three); }), "features"));
  CHECK(contains(
      invalid_message([&] { (void)p.accuracy(good, t.features, std::span<const int>(three)); }),
      "labels"));

  Eigen::VectorXi labels = t.labels;
  labels[7] = 3;
  CHECK(contains(invalid_message([&] { ecopt::mlp q(t.features, labels, 3); }), "sample 7"));
  CHECK(contains(invalid_message([&] { ecopt::mlp q(t.features, t.labels, 1); }), "classes"));
  CHECK(
      contains(invalid_message([&] { ecopt::mlp q(t.features, t.labels.head(19), 3); }), "labels"));
  CHECK(contains(invalid_message([&] { ecopt::mlp q(t.features, t.labels, 3, {.hidden = 0}); }),
                 "mlp_options.hidden"));
  CHECK(contains(invalid_message([&] { ecopt::mlp q(t.features, t.labels, 3, {.batch_size = 0}); }),
                 "mlp_options.batch_size"));
  CHECK(contains(invalid_message([&] { ecopt::mlp q(t.features, t.labels, 3, {.l2 = -1}); }),
                 "mlp_options.l2"));
  CHECK(contains(invalid_message([&] {
                   ecopt::mlp q(t.features, t.labels, 3,
                                {.activation = static_cast<ecopt::mlp_activation>(7)});
                 }),
                 "mlp_options.activation"));
  const MatrixXd empty(4, 0);
  CHECK(contains(
      invalid_message([&] { ecopt::mlp q(empty, std::span<const int>(three).first(0), 3); }),
      "no samples"));
}

TEST_CASE("mlp: no heap allocation after construction and the first call") {
  const teacher_data t = make_teacher_data(30, 700, 5, 20);
  const Eigen::MatrixXf features_f = t.features.cast<float>();
  auto check = [&](auto& p) {
    using vector = std::remove_cvref_t<decltype(p.initial_point(0))>;
    const vector x = p.initial_point(21);
    vector g(x.size());
    auto rng = test_rng(3);
    p.stochastic_gradient(x, g, rng);  // warm-up
    const bool counting = ecopt::test::eigen_heap_counting_active();
    std::uint64_t news = 0;
    std::uint64_t mallocs = 0;
    double sink = 0;
    {
      const ecopt::test::eigen_heap_scope eigen_scope;
      const ecopt::test::allocation_scope scope;
      for (int k = 0; k < 5; ++k) p.stochastic_gradient(x, g, rng);
      sink += static_cast<double>(g.norm());
      p.gradient(x, g);
      sink += p.loss(x) + p.accuracy(x) + static_cast<double>(g.norm());
      news = scope.count();
      mallocs = eigen_scope.count();
    }
    CHECK(std::isfinite(sink));
    CHECK(news == 0);
    if (counting) CHECK(mallocs == 0);
  };
  ecopt::mlp pd(t.features, t.labels, 5, {.hidden = 40, .batch_size = 64});
  check(pd);
  ecopt::mlp pf(features_f, t.labels, 5,
                {.hidden = 40, .activation = ecopt::mlp_activation::tanh, .batch_size = 64});
  check(pf);
}

TEST_SUITE_END();

}  // namespace mlp_test
