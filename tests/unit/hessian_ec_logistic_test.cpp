// Hessian-aided error compensation (Khirirat, Magnusson, Johansson 2021,
// arXiv:1909.10327) on l2-regularized logistic regression: reproduction R2 at
// test size (examples/hessian_ec_logistic.cpp prints the full tables).
// Gradient descent with compressed full gradients; the measure is the mean of
// f - f* over the last 20% of the rounds (the error-feedback floor oscillates,
// so a single final value is noisy).
//  - The claim, where the paper's accuracy results place it: one node and a
//    bounded-error compressor (grid rounding). The Hessian-aided floor is below
//    half the error-feedback floor, which is below half the floor without
//    memory; the diagonal variant matches the full Hessian when the features
//    are axis-aligned (H nearly diagonal) and lies between it and error
//    feedback when they are not.
//  - heart_scale with 4 workers and top-1 sparsification: every memory beats
//    no compensation by 10x. Between the memories there is no stable order
//    there (the example's tables): with heterogeneous shards the memories hold
//    a persistent part, which error feedback cancels exactly at a fixed point
//    while A = I - gamma H_i leaves grad f(x) = gamma (1/n) sum_i H_i e_i.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <utility>
#include <vector>

#include "ecopt/compensators/diagonal_hessian.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compensators/hessian_aided.hpp"
#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressors/grid_rounding.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/data/libsvm.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problems/full_batch.hpp"
#include "ecopt/problems/logistic_regression.hpp"
#include "ecopt/problems/shard.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace hessian_ec_logistic_test {

namespace {

/// Features d x m (one sample per column) and +-1 labels.
struct instance {
  Eigen::MatrixXd a;
  Eigen::VectorXd y;
  double l2 = 0;
};

/// Gaussian features with covariance U diag(s^2) U' (U a random rotation or the
/// identity, the s_j log-spaced so that the covariance has the given condition
/// number) and labels drawn from a logistic model.
instance synthetic_instance(Eigen::Index d, Eigen::Index m, double condition, double l2,
                            std::uint64_t seed, bool rotated) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
  auto gaussian = [&](Eigen::Index rows, Eigen::Index cols) {
    Eigen::MatrixXd g(rows, cols);
    for (Eigen::Index i = 0; i < g.size(); ++i) g.data()[i] = rng.normal();
    return g;
  };
  const Eigen::MatrixXd q = gaussian(d, d);  // drawn either way: the same stream after it
  const Eigen::MatrixXd u =
      rotated ? Eigen::MatrixXd(Eigen::HouseholderQR<Eigen::MatrixXd>(q).householderQ())
              : Eigen::MatrixXd::Identity(d, d);
  Eigen::VectorXd s(d);
  for (Eigen::Index j = 0; j < d; ++j) {
    s[j] = std::pow(condition, -0.5 * static_cast<double>(j) / static_cast<double>(d - 1));
  }
  instance out;
  out.a = u * s.asDiagonal() * gaussian(d, m);
  // A model of comparable margin along every direction of the features.
  const Eigen::VectorXd w = u * (s.cwiseInverse().asDiagonal() * gaussian(d, 1)) *
                            (2.0 / std::sqrt(static_cast<double>(d)));
  out.y.resize(m);
  for (Eigen::Index i = 0; i < m; ++i) {
    const double p = 1.0 / (1.0 + std::exp(-out.a.col(i).dot(w)));
    out.y[i] = rng.uniform() < p ? 1.0 : -1.0;
  }
  out.l2 = l2;
  return out;
}

ecopt::logistic_regression<double> shard_problem(const instance& data, int rank, int world) {
  return ecopt::logistic_regression<double>(ecopt::shard_columns(data.a, rank, world),
                                            ecopt::shard_segment(data.y, rank, world),
                                            {.l2 = data.l2});
}

/// The step 1/L, L = lambda_max((1/n) sum_i A_i A_i' / (4 m_i)) + l2 bounding
/// the curvature of f = (1/n) sum_i f_i, and f* by Newton's method.
struct reference {
  double gamma = 0;
  double f_star = 0;
  double grad_norm = 0;
};

reference solve_reference(const instance& data, int world) {
  const Eigen::Index d = data.a.rows();
  std::vector<ecopt::logistic_regression<double>> shards;
  Eigen::MatrixXd bound = Eigen::MatrixXd::Zero(d, d);
  for (int r = 0; r < world; ++r) {
    shards.push_back(shard_problem(data, r, world));
    const auto block = ecopt::shard_columns(data.a, r, world);
    bound += block * block.transpose() / (4.0 * static_cast<double>(block.cols()) * world);
  }
  reference out;
  out.gamma =
      1.0 /
      (Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(bound).eigenvalues().maxCoeff() + data.l2);
  // Undamped Newton from 0 converges on these well-regularized instances; the
  // gradient norm checked below confirms it.
  Eigen::VectorXd x = Eigen::VectorXd::Zero(d), g(d), gi(d);
  Eigen::MatrixXd h(d, d), hi(d, d);
  for (int it = 0; it < 30; ++it) {
    g.setZero();
    h.setZero();
    for (auto& p : shards) {
      p.gradient(x, gi);
      p.hessian(x, hi);
      g += gi / world;
      h += hi / world;
    }
    out.grad_norm = g.norm();
    if (out.grad_norm < 1e-14) break;
    x -= h.ldlt().solve(g);
  }
  for (auto& p : shards) out.f_star += p.loss(x) / world;
  return out;
}

/// The mean of f - f* over the evaluations in the last 20% of the rounds.
template <class Compressor, class Compensator>
double tail_suboptimality(const instance& data, const reference& ref, int world,
                          const Compressor& compressor, const Compensator& compensator,
                          std::uint64_t steps) {
  const ecopt::solver solver{compressor, compensator, ecopt::sgd{.lr = ref.gamma}};
  const auto reports = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    auto shard = shard_problem(data, t.rank(), t.size());
    ecopt::full_batch problem(shard);  // GD: the full local gradient every round
    Eigen::VectorXd x = Eigen::VectorXd::Zero(data.a.rows());
    return solver.run(t, problem, x, {.steps = steps, .eval_every = steps / 100});
  });
  const auto& history = reports[0].history;
  REQUIRE(history.size() == 101);  // step 0 and every steps / 100
  double sum = 0;
  int count = 0;
  for (std::size_t i = history.size() - 20; i < history.size(); ++i, ++count) {
    sum += history[i].loss - ref.f_star;
  }
  return sum / count;
}

struct floors {
  double none = 0, ef = 0, hessian = 0, diagonal = 0;
};

template <class Compressor>
floors run_all(const instance& data, int world, const Compressor& compressor, std::uint64_t steps) {
  const reference ref = solve_reference(data, world);
  REQUIRE(ref.grad_norm < 1e-12);
  floors out;
  out.none = tail_suboptimality(data, ref, world, compressor, ecopt::no_compensation{}, steps);
  out.ef = tail_suboptimality(data, ref, world, compressor, ecopt::error_feedback{}, steps);
  out.hessian = tail_suboptimality(
      data, ref, world, compressor,
      ecopt::hessian_aided{.source = ecopt::curvature_source::hessian_vector}, steps);
  out.diagonal = tail_suboptimality(data, ref, world, compressor, ecopt::diagonal_hessian{}, steps);
  MESSAGE("mean f - f* over the last 20%: none ", out.none, ", error feedback ", out.ef,
          ", hessian ", out.hessian, ", diagonal ", out.diagonal);
  return out;
}

Eigen::MatrixXd with_bias(const Eigen::MatrixXd& features) {
  Eigen::MatrixXd a(features.rows() + 1, features.cols());
  a.topRows(features.rows()) = features;
  a.row(features.rows()).setOnes();
  return a;
}

}  // namespace

TEST_CASE("R2 at test size: one node, grid rounding, synthetic logistic regression") {
  // d = 20, 400 samples, feature covariance of condition number 1e3, l2 = 3e-3:
  // f has condition number 60-80 at x*; gamma = 1/L, grid step 0.01.
  const ecopt::grid_rounding grid{.step = 0.01};
  constexpr std::uint64_t steps = 2000;

  SUBCASE("rotated features: hessian < 0.5 x error feedback < 0.5 x none") {
    const floors f = run_all(synthetic_instance(20, 400, 1e3, 3e-3, 1, true), 1, grid, steps);
    // Observed: none / EF = 69, EF / Hessian = 5.2, EF / diagonal = 2.5; over seeds 1-5
    // EF / Hessian is 5-14, and on this seed 3.0-5.5 (EF / diagonal 1.8-3.1) when
    // gamma L is 0.95-1.05 or the run 1500-2500 rounds long. The diagonal falls behind
    // the full Hessian here: its floor grows with ||H - D|| / mu, and these features
    // make H far from diagonal.
    CHECK(f.hessian > 0);
    CHECK(f.hessian < 0.5 * f.ef);
    CHECK(f.diagonal < 0.75 * f.ef);
    CHECK(f.ef < 0.5 * f.none);
  }
  SUBCASE("axis-aligned features: the diagonal variant matches the full Hessian") {
    const floors f = run_all(synthetic_instance(20, 400, 1e3, 3e-3, 1, false), 1, grid, steps);
    // Observed: diagonal / Hessian = 0.92 (0.92-1.0 over seeds 1-5), EF / diagonal = 1.7
    // (1.7-2.7 over seeds, 1.8-2.0 under the perturbations above), none / EF = 120.
    CHECK(f.diagonal > 0);
    CHECK(f.diagonal < 1.25 * f.hessian);
    CHECK(f.diagonal < 0.8 * f.ef);
    CHECK(f.ef < 0.5 * f.none);
  }
}

TEST_CASE("R2 at test size: heart_scale, when installed") {
  const std::filesystem::path path = "/usr/share/doc/liblinear-tools/examples/heart_scale";
  if (!std::filesystem::exists(path)) {
    MESSAGE("heart_scale not found at " << path.string() << "; skipped");
    return;
  }
  auto raw = ecopt::read_libsvm<double>(path);
  const instance data{with_bias(raw.features), std::move(raw.labels), 1e-3};
  REQUIRE(data.a.rows() == 14);

  SUBCASE("one node, grid rounding: the claimed order") {
    const floors f = run_all(data, 1, ecopt::grid_rounding{.step = 0.01}, 2000);
    // Observed: none / EF = 410, EF / Hessian = 4.4, EF / diagonal = 1.8.
    CHECK(f.hessian < 0.5 * f.ef);
    CHECK(f.diagonal < f.ef);
    CHECK(f.ef < 0.5 * f.none);
  }
  SUBCASE("4 workers, top-1 of 14: every memory removes the floor of plain compression") {
    const floors f = run_all(data, 4, ecopt::top_k{.k = 1}, 1500);
    // Observed: none 2.6e-2, the memories 5.4e-4 to 8.7e-4 (no stable order among them).
    CHECK(f.ef < 0.1 * f.none);
    CHECK(f.hessian < 0.1 * f.none);
    CHECK(f.diagonal < 0.1 * f.none);
  }
}

}  // namespace hessian_ec_logistic_test
