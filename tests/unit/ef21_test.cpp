// EF21 in the solver (Richtarik, Sokolov, Fatkhullin 2021, arXiv:2106.05203):
// on heterogeneous least-squares shards, top_k with EF21 reaches the exact
// optimum with a constant step, where top_k alone stalls and error feedback
// stays in a step-size-sized neighbourhood.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cstdint>
#include <optional>
#include <vector>

#include "ecopt/ecopt.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace ef21_test {

namespace {

/// Least squares over `world` contiguous shards of one data set, each shard in
/// its normal form f_i(x) = 1/2 x'H_i x - b_i'x (+ const), H_i = A_i A_i'/m_i,
/// b_i = A_i y_i / m_i: the shards' full gradients, exactly. The shards differ
/// (each has its own feature scaling and target offset), so at the optimum of
/// the mean every local gradient is far from zero.
struct sharded_least_squares {
  std::vector<Eigen::MatrixXd> h;
  std::vector<Eigen::VectorXd> b;
  Eigen::VectorXd optimum;
  double smoothness = 0;       ///< L of f = mean f_i
  double mean_smoothness = 0;  ///< L_tilde = sqrt(mean L_i^2)

  sharded_least_squares(Eigen::Index d, int world, Eigen::Index per_worker, std::uint64_t seed) {
    auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
    Eigen::MatrixXd hsum = Eigen::MatrixXd::Zero(d, d);
    Eigen::VectorXd bsum = Eigen::VectorXd::Zero(d);
    Eigen::VectorXd truth(d);
    for (Eigen::Index j = 0; j < d; ++j) truth[j] = rng.normal();
    double l2sum = 0;
    for (int r = 0; r < world; ++r) {
      Eigen::MatrixXd a(d, per_worker);
      for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = rng.normal();
      a.row(r % d) *= 2.0;  // a different direction of high curvature per shard
      Eigen::VectorXd y = a.transpose() * truth;
      for (Eigen::Index i = 0; i < y.size(); ++i) y[i] += 0.5 * rng.normal() + 2.0 * r;
      h.push_back(a * a.transpose() / static_cast<double>(per_worker));
      b.push_back(a * y / static_cast<double>(per_worker));
      hsum += h.back();
      bsum += b.back();
      const double li =
          Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(h.back()).eigenvalues().maxCoeff();
      l2sum += li * li;
    }
    hsum /= world;
    bsum /= world;
    optimum = hsum.ldlt().solve(bsum);
    smoothness = Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(hsum).eigenvalues().maxCoeff();
    mean_smoothness = std::sqrt(l2sum / world);
  }

  [[nodiscard]] int world() const { return static_cast<int>(h.size()); }

  /// Every rank's final iterate.
  template <class Solver, class... Observers>
  std::vector<Eigen::VectorXd> run(const Solver& s, std::uint64_t steps,
                                   Observers... observers) const {
    return ecopt::run_threads(world(), [&](ecopt::thread_transport& t) {
      const auto r = static_cast<std::size_t>(t.rank());
      ecopt::quadratic<double> p(h[r], b[r]);
      Eigen::VectorXd x = Eigen::VectorXd::Zero(optimum.size());
      s.run(t, p, x, {.steps = steps}, observers...);
      return x;
    });
  }

  template <class Solver>
  double error(const Solver& s, std::uint64_t steps) const {
    return (run(s, steps)[0] - optimum).norm() / optimum.norm();
  }
};

}  // namespace

TEST_CASE("EF21 with top_k reaches the exact optimum with a constant step; top_k alone does not") {
  const sharded_least_squares f(30, 4, 60, 21);
  const ecopt::top_k topk{.ratio = 0.1};
  // The theory step for alpha = k/d, times 4 (the authors' experiments use multiples of it).
  const double gamma =
      4.0 * ecopt::ef21::theory_step_size(f.smoothness, f.mean_smoothness, topk.delta(30));
  constexpr std::uint64_t steps = 3000;
  const double ef21 = f.error(ecopt::solver{topk, ecopt::ef21{}, ecopt::sgd{.lr = gamma}}, steps);
  const double none =
      f.error(ecopt::solver{topk, ecopt::no_compensation{}, ecopt::sgd{.lr = gamma}}, steps);
  const double ef =
      f.error(ecopt::solver{topk, ecopt::error_feedback{}, ecopt::sgd{.lr = gamma}}, steps);
  MESSAGE("relative error after ", steps, " steps at gamma = ", gamma, ": ef21 ", ef21,
          ", error feedback ", ef, ", none ", none);
  CHECK(ef21 < 1e-8);
  CHECK(none > 0.05);
  CHECK(ef > 100 * ef21);
}

TEST_CASE("EF21 with a lossless compressor is distributed gradient descent") {
  const sharded_least_squares f(12, 3, 40, 5);
  const double gamma = 1.0 / f.smoothness;
  const auto ef21 =
      f.run(ecopt::solver{ecopt::no_compression{}, ecopt::ef21{}, ecopt::sgd{.lr = gamma}}, 40);
  const auto gd = f.run(
      ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = gamma}},
      40);
  // Values travel as float32 in both runs, rounded at different points.
  CHECK((ef21[0] - gd[0]).norm() <= 1e-5 * gd[0].norm());
}

TEST_CASE("EF21 through an allreduce (shared-seed rand_k): ranks agree bitwise and converge") {
  const sharded_least_squares f(20, 3, 50, 8);
  const ecopt::rand_k_unscaled randk{.ratio = 0.25};
  const double gamma = ecopt::ef21::theory_step_size(f.smoothness, f.mean_smoothness, 0.25);
  const auto xs = f.run(ecopt::solver{randk, ecopt::ef21{}, ecopt::sgd{.lr = 2 * gamma}}, 3000);
  CHECK(xs[1] == xs[0]);
  CHECK(xs[2] == xs[0]);
  CHECK((xs[0] - f.optimum).norm() / f.optimum.norm() < 1e-6);
}

TEST_CASE("EF21 in a steady-state solver round does not allocate") {
  const sharded_least_squares f(16, 2, 30, 3);
  struct allocation_probe {
    std::uint64_t* at_end;
    std::optional<ecopt::test::allocation_scope> scope;
    void on_step(const ecopt::progress& p) {
      if (p.step == 5) scope.emplace();
      if (p.step == 30) *at_end = scope->count();
    }
  };
  std::vector<std::uint64_t> counts(2, 1);
  ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
    const auto r = static_cast<std::size_t>(t.rank());
    ecopt::quadratic<double> p(f.h[r], f.b[r]);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(16);
    const ecopt::solver s{ecopt::top_k{.ratio = 0.25}, ecopt::ef21{}, ecopt::sgd{.lr = 0.01}};
    s.run(t, p, x, {.steps = 30}, allocation_probe{&counts[r], {}});
  });
  CHECK(counts[0] == 0);
  CHECK(counts[1] == 0);
}

}  // namespace ef21_test
