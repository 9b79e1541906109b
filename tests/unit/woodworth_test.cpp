// Woodworth, Patel, Srebro 2020 (arXiv:2002.07839) on a small instance, the
// guard of examples/woodworth_comparison: at equal rounds R and samples K per
// worker and round, local SGD beats minibatch SGD when the workers' objectives
// agree (p = 1) and loses when they differ (p = 0: its local steps drift to
// each worker's own optimum); minibatch SGD does not care; accelerated
// minibatch SGD (AC-SA) is at least as good as minibatch SGD. Each method's
// step size is the best of a small grid, as in the paper's experiments.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ecopt/ecopt.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace woodworth_test {

namespace {

constexpr int workers = 8;
constexpr Eigen::Index size = 4;

/// Worker m's quadratic, mixed with the mean of all workers' by a fraction p:
///   f_m = (1 - p) q_m + p (1/M) sum_j q_j,   q_j(x) = 1/2 (x - c_j)' H_j (x - c_j),
/// H_j diagonal. Coordinate 0 is easy and shared; coordinate 1 is flat
/// (curvature 0.02) and shared, so that R rounds of minibatch SGD are too few
/// and K R local steps are not; coordinates 2 and 3 are steep on half of the
/// workers and flat on the others, with their optima on opposite sides, so
/// that local steps drift to each worker's own optimum. A sample's gradient
/// adds N(0, sigma^2 I) noise; a batch of b samples averages b of them.
struct mixed_quadratic {
  using scalar_type = double;
  Eigen::MatrixXd h;   // this worker's mixed Hessian
  Eigen::VectorXd hc;  // H c of the mix, so that grad = H x - hc
  std::size_t batch = 1;
  double sigma = 0.3;

  static Eigen::VectorXd curvature(int j) {
    const double steep = j % 2 == 0 ? 1.0 : 0.1;
    Eigen::VectorXd d(size);
    d << 1.0, 0.02, steep, 1.1 - steep;
    return d;
  }
  static Eigen::VectorXd centre(int j) {
    const double side = j % 2 == 0 ? 3.0 : -3.0;
    Eigen::VectorXd c(size);
    c << std::sin(1.7 * double(j)), 5.0, side, -side;
    return c;
  }

  mixed_quadratic(int rank, double p, std::size_t b) : batch(b) {
    Eigen::VectorXd own = curvature(rank), pooled = Eigen::VectorXd::Zero(size);
    Eigen::VectorXd own_hc = own.cwiseProduct(centre(rank)), pooled_hc = pooled;
    for (int j = 0; j < workers; ++j) {
      pooled += curvature(j) / workers;
      pooled_hc += curvature(j).cwiseProduct(centre(j)) / workers;
    }
    h = ((1 - p) * own + p * pooled).asDiagonal();
    hc = (1 - p) * own_hc + p * pooled_hc;
  }
  [[nodiscard]] std::size_t dim() const { return size; }
  /// Up to a constant: 1/2 x'Hx - x'Hc.
  double loss(const Eigen::Ref<const Eigen::VectorXd>& x) { return 0.5 * x.dot(h * x) - x.dot(hc); }
  void gradient(const Eigen::Ref<const Eigen::VectorXd>& x, Eigen::Ref<Eigen::VectorXd> g) {
    g = h * x - hc;
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>& x,
                           Eigen::Ref<Eigen::VectorXd> g, ecopt::counter_rng& rng) {
    g = h * x - hc;
    const double scale = sigma / std::sqrt(static_cast<double>(batch));
    for (Eigen::Index i = 0; i < size; ++i) g[i] += scale * rng.normal();
  }
};

/// min of the mean objective (the same for every p: mixing keeps the mean).
double optimum() {
  Eigen::VectorXd h = Eigen::VectorXd::Zero(size), hc = h;
  for (int j = 0; j < workers; ++j) {
    h += mixed_quadratic::curvature(j) / workers;
    hc += mixed_quadratic::curvature(j).cwiseProduct(mixed_quadratic::centre(j)) / workers;
  }
  const Eigen::VectorXd x = hc.cwiseQuotient(h);
  return 0.5 * x.dot(h.cwiseProduct(x)) - x.dot(hc);
}

/// F(x) - F* at the end of the best run over the step-size grid.
template <class Make>
double best_gap(double p, std::size_t batch, std::uint64_t steps, Make make) {
  double best = std::numeric_limits<double>::infinity();
  for (const double lr : {0.1, 0.2, 0.4, 0.8, 1.6}) {
    const auto solver = make(lr);
    const auto finals = ecopt::run_threads(workers, [&](ecopt::thread_transport& t) {
      mixed_quadratic problem(t.rank(), p, batch);
      Eigen::VectorXd x = Eigen::VectorXd::Zero(size);
      return solver.run(t, problem, x, {.steps = steps, .seed = 5, .check_finite = false})
          .final_loss();
    });
    if (std::isfinite(finals[0])) best = std::min(best, finals[0] - optimum());
  }
  return best;
}

struct gaps {
  double minibatch, local, accelerated;
};

gaps compare(double p, std::uint64_t k, std::uint64_t r) {
  const ecopt::no_compression dense;
  const ecopt::no_compensation none;
  return {
      best_gap(p, k, r,
               [&](double lr) {
                 return ecopt::solver{dense, none, ecopt::sgd{.lr = lr}};
               }),
      best_gap(
          p, 1, r * k,
          [&](double lr) {
            return ecopt::solver{dense, none, ecopt::sgd{.lr = lr}, ecopt::local_sgd{.period = k}};
          }),
      best_gap(p, k, r, [&](double lr) {
        return ecopt::solver{dense, none, ecopt::accelerated_sgd{.lr = lr}};
      })};
}

}  // namespace

TEST_CASE("minibatch vs local vs accelerated minibatch SGD under heterogeneity (small)") {
  const std::uint64_t k = 25, r = 25;
  const gaps homogeneous = compare(1.0, k, r);
  const gaps heterogeneous = compare(0.0, k, r);
  CAPTURE(homogeneous.minibatch);
  CAPTURE(homogeneous.local);
  CAPTURE(homogeneous.accelerated);
  CAPTURE(heterogeneous.minibatch);
  CAPTURE(heterogeneous.local);
  CAPTURE(heterogeneous.accelerated);
  // Minibatch SGD sees the same mean gradient whatever p (only its noise
  // differs, and not here): its error barely moves.
  CHECK(std::max(homogeneous.minibatch, heterogeneous.minibatch) <
        1.5 * std::min(homogeneous.minibatch, heterogeneous.minibatch));
  CHECK(homogeneous.local <= 0.8 * homogeneous.minibatch);
  CHECK(heterogeneous.local >= 1.5 * heterogeneous.minibatch);
  CHECK(heterogeneous.accelerated <= heterogeneous.minibatch);
}

}  // namespace woodworth_test
