#pragma once
// A least-squares instance with a prescribed Hessian spectrum: the test bed of
// the reproductions, where mu, L and the optimum must be known exactly.
//
//   f(x) = 1/(2m) ||A'x - y||^2,   A = U diag(sqrt(m lambda)) V'   (d x m, a sample per column)
//
// so the Hessian A A'/m = U diag(lambda) U' has exactly the eigenvalues lambda.
// U is a random orthonormal basis (the Q factor of a Gaussian d x d matrix) or
// the identity (a diagonal Hessian); V is the m x d orthonormal Q factor of a
// Gaussian m x d matrix; y = A' x_true + noise * N(0, I_m), x_true ~ N(0, I_d).
// All draws come from counter_rng::stream(seed, test, 0, 0) in the order U
// (only when rotated), V, x_true, the noise, so an instance is a pure function
// of (lambda, options).
#include <Eigen/Core>
#include <Eigen/QR>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problems/least_squares.hpp"

namespace ecopt {

struct conditioned_least_squares_options {
  std::size_t samples = 0;  ///< m, the columns of A (>= d); 0 = 4 d
  bool rotate = true;       ///< random orthonormal eigenbasis; false: H is diagonal
  double noise = 0.1;       ///< standard deviation of the target noise (>= 0)
  std::uint64_t seed = 0;

  void validate() const {
    if (!(noise >= 0.0) || !std::isfinite(noise)) {
      throw invalid_argument(
          "conditioned_least_squares_options.noise must be finite and >= 0 (got " +
          std::to_string(noise) + ")");
    }
  }
};

/// The instance: the data (for least_squares) and its normal form
/// f(x) = 1/2 x'Hx - b'x + y'y/(2m) (for quadratic, whose gradients are exact).
struct conditioned_least_squares {
  Eigen::MatrixXd features;     ///< A, d x m, one sample per column
  Eigen::VectorXd targets;      ///< y, m
  Eigen::MatrixXd hessian;      ///< H = A A'/m
  Eigen::VectorXd linear_term;  ///< b = A y / m
  Eigen::VectorXd optimum;      ///< x*, the solution of H x = b
  double mu = 0;                ///< the smallest prescribed eigenvalue (strong convexity)
  double l = 0;                 ///< the largest prescribed eigenvalue (smoothness)

  [[nodiscard]] std::size_t dim() const noexcept {
    return static_cast<std::size_t>(linear_term.size());
  }
  [[nodiscard]] std::size_t samples() const noexcept {
    return static_cast<std::size_t>(targets.size());
  }
  [[nodiscard]] double condition() const noexcept { return l / mu; }
};

/// d eigenvalues log-spaced over [smallest, smallest * condition]: the j-th is
/// smallest * 10^(log10(condition) j / (d - 1)).
[[nodiscard]] inline Eigen::VectorXd log_spaced_spectrum(std::size_t d, double condition,
                                                         double smallest = 1.0) {
  if (d == 0) throw invalid_argument("log_spaced_spectrum: d must be positive");
  if (!(condition >= 1.0) || !std::isfinite(condition)) {
    throw invalid_argument(
        "log_spaced_spectrum: the condition number must be finite and >= 1 (got " +
        std::to_string(condition) + ")");
  }
  if (!(smallest > 0.0) || !std::isfinite(smallest)) {
    throw invalid_argument(
        "log_spaced_spectrum: the smallest eigenvalue must be finite and > 0 (got " +
        std::to_string(smallest) + ")");
  }
  Eigen::VectorXd e(static_cast<Eigen::Index>(d));
  if (d == 1) {
    e[0] = smallest;
    return e;
  }
  const double decades = std::log10(condition);
  for (std::size_t j = 0; j < d; ++j) {
    e[static_cast<Eigen::Index>(j)] =
        smallest * std::pow(10.0, decades * static_cast<double>(j) / static_cast<double>(d - 1));
  }
  return e;
}

/// The instance whose Hessian has the given eigenvalues (all finite and > 0).
/// A template only so that the QR factorisations and products below are compiled
/// in the programs that call it: as a plain inline function its body cost every
/// file that includes ecopt.hpp about 5 s of compile time.
template <class Eigenvalues>
[[nodiscard]] conditioned_least_squares make_conditioned_least_squares(
    const Eigen::MatrixBase<Eigenvalues>& eigenvalues,
    const conditioned_least_squares_options& options = {}) {
  options.validate();
  const Eigen::Index d = eigenvalues.size();
  if (d == 0) throw invalid_argument("make_conditioned_least_squares: no eigenvalues (d = 0)");
  for (Eigen::Index j = 0; j < d; ++j) {
    if (!(eigenvalues[j] > 0.0) || !std::isfinite(eigenvalues[j])) {
      throw invalid_argument("make_conditioned_least_squares: eigenvalue " + std::to_string(j) +
                             " is " + std::to_string(eigenvalues[j]) + ", expected finite and > 0");
    }
  }
  const Eigen::Index m = options.samples == 0 ? 4 * d : static_cast<Eigen::Index>(options.samples);
  if (m < d) {
    throw invalid_argument("make_conditioned_least_squares: samples = " + std::to_string(m) +
                           " is below d = " + std::to_string(d));
  }
  auto rng = counter_rng::stream(options.seed, stream_purpose::test, 0, 0);
  auto gaussian = [&](Eigen::Index rows, Eigen::Index cols) {
    Eigen::MatrixXd g(rows, cols);
    for (Eigen::Index i = 0; i < g.size(); ++i) g.data()[i] = rng.normal();
    return g;
  };
  Eigen::MatrixXd u = Eigen::MatrixXd::Identity(d, d);
  if (options.rotate) u = Eigen::HouseholderQR<Eigen::MatrixXd>(gaussian(d, d)).householderQ();
  const Eigen::MatrixXd v = Eigen::HouseholderQR<Eigen::MatrixXd>(gaussian(m, d)).householderQ() *
                            Eigen::MatrixXd::Identity(m, d);
  const Eigen::VectorXd s = (static_cast<double>(m) * eigenvalues).cwiseSqrt();

  conditioned_least_squares out;
  out.features = u * s.asDiagonal() * v.transpose();
  const Eigen::VectorXd truth = gaussian(d, 1);  // drawn before the noise: the order is part
  const Eigen::VectorXd noise = gaussian(m, 1);  // of the instance's definition
  out.targets = out.features.transpose() * truth + options.noise * noise;

  least_squares<double> problem(out.features, out.targets);
  out.hessian.resize(d, d);
  problem.hessian(Eigen::VectorXd::Zero(d), out.hessian);
  out.linear_term = out.features * out.targets / static_cast<double>(m);
  out.optimum = problem.minimizer();
  out.mu = eigenvalues.minCoeff();
  out.l = eigenvalues.maxCoeff();
  return out;
}

}  // namespace ecopt
