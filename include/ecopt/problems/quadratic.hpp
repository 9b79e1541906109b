#pragma once
// f(x) = 1/2 x'Hx - b'x with H symmetric: the test problem whose optimum,
// smoothness and strong convexity are known exactly.
#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/problems/shard.hpp"

namespace ecopt {

struct quadratic_options {
  /// Standard deviation of the Gaussian noise that stochastic_gradient adds
  /// to every coordinate (0 = stochastic_gradient is the exact gradient).
  double noise = 0;

  void validate() const {
    if (!(noise >= 0.0) || !std::isfinite(noise)) {
      throw invalid_argument("quadratic_options.noise must be finite and >= 0 (got " +
                             std::to_string(noise) + ")");
    }
  }
};

/// f(x) = 1/2 x'Hx - b'x. Keeps a view of H (the caller keeps it alive) and a
/// copy of b.
template <class T = double>
class quadratic {
 public:
  using scalar_type = T;

  /// H: d x d symmetric (checked up to a relative sqrt(epsilon)); b: d.
  template <detail::matrix_view_source<T> H>
  quadratic(H&& hessian, const Eigen::Ref<const vector_t<T>>& b, quadratic_options options = {})
      : h_(detail::make_view<T>(hessian, "quadratic")), b_(b), options_(options) {
    options_.validate();
    if (h_.rows() != h_.cols()) {
      throw invalid_argument("quadratic: the Hessian must be square (got " +
                             std::to_string(h_.rows()) + " x " + std::to_string(h_.cols()) + ")");
    }
    if (h_.rows() == 0) throw invalid_argument("quadratic: the Hessian is empty (d = 0)");
    detail::check_size(b_, dim(), "quadratic", "b", "the Hessian's order");
    check_symmetric();
    hx_.resize(h_.rows());
  }

  [[nodiscard]] std::size_t dim() const noexcept { return static_cast<std::size_t>(h_.rows()); }
  [[nodiscard]] const quadratic_options& options() const noexcept { return options_; }
  [[nodiscard]] const detail::const_matrix_view<T>& hessian_matrix() const noexcept { return h_; }
  [[nodiscard]] const vector_t<T>& linear_term() const noexcept { return b_; }

  double loss(const Eigen::Ref<const vector_t<T>>& x) {
    detail::check_size(x, dim(), "quadratic::loss", "x");
    hx_.noalias() = h_ * x;
    return static_cast<double>(T(0.5) * x.dot(hx_) - b_.dot(x));
  }

  void gradient(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<vector_t<T>> g) {
    detail::check_size(x, dim(), "quadratic::gradient", "x");
    detail::check_size(g, dim(), "quadratic::gradient", "g");
    g.noalias() = h_ * x;
    g -= b_;
  }

  /// The exact gradient plus noise * N(0, 1) per coordinate, drawn from rng.
  void stochastic_gradient(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<vector_t<T>> g,
                           counter_rng& rng) {
    detail::check_size(x, dim(), "quadratic::stochastic_gradient", "x");
    detail::check_size(g, dim(), "quadratic::stochastic_gradient", "g");
    g.noalias() = h_ * x;
    g -= b_;
    if (options_.noise > 0.0) {
      for (Eigen::Index i = 0; i < g.size(); ++i) {
        g[i] += static_cast<T>(options_.noise * rng.normal());
      }
    }
  }

  void hessian(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<matrix_t<T>> h) {
    detail::check_size(x, dim(), "quadratic::hessian", "x");
    detail::check_square(h, dim(), "quadratic::hessian", "h");
    h = h_;
  }

  void hessian_vector(const Eigen::Ref<const vector_t<T>>& x,
                      const Eigen::Ref<const vector_t<T>>& v, Eigen::Ref<vector_t<T>> out) {
    detail::check_size(x, dim(), "quadratic::hessian_vector", "x");
    detail::check_size(v, dim(), "quadratic::hessian_vector", "v");
    detail::check_size(out, dim(), "quadratic::hessian_vector", "out");
    out.noalias() = h_ * v;
  }

  void hessian_diagonal(const Eigen::Ref<const vector_t<T>>& x, Eigen::Ref<vector_t<T>> out) {
    detail::check_size(x, dim(), "quadratic::hessian_diagonal", "x");
    detail::check_size(out, dim(), "quadratic::hessian_diagonal", "out");
    out = h_.diagonal();
  }

  /// The solution of H x = b (LDLT). Throws numeric_error when the
  /// factorization fails (H singular or indefinite: no unique minimizer).
  [[nodiscard]] vector_t<T> minimizer() const {
    const Eigen::LDLT<matrix_t<T>> ldlt(h_);
    if (ldlt.info() != Eigen::Success || !ldlt.isPositive()) {
      throw numeric_error(
          "quadratic::minimizer: H is singular or not positive semidefinite (no unique minimizer)");
    }
    vector_t<T> x = ldlt.solve(b_);
    if (!x.allFinite()) throw numeric_error("quadratic::minimizer: H x = b has no finite solution");
    return x;
  }

  /// The largest eigenvalue of H (the smoothness constant L).
  [[nodiscard]] double smoothness() const { return eigenvalues().maxCoeff(); }
  /// The smallest eigenvalue of H (the strong convexity constant mu; <= 0 when
  /// f is not strongly convex).
  [[nodiscard]] double strong_convexity() const { return eigenvalues().minCoeff(); }

 private:
  [[nodiscard]] Eigen::VectorXd eigenvalues() const {
    const Eigen::SelfAdjointEigenSolver<matrix_t<T>> solver(h_, Eigen::EigenvaluesOnly);
    if (solver.info() != Eigen::Success) {
      throw numeric_error("quadratic: the eigenvalues of H did not converge");
    }
    return solver.eigenvalues().template cast<double>();
  }

  void check_symmetric() const {
    const T scale = std::max(T(1), h_.cwiseAbs().maxCoeff());
    const T tol = std::sqrt(std::numeric_limits<T>::epsilon()) * scale;
    for (Eigen::Index j = 0; j < h_.cols(); ++j) {
      for (Eigen::Index i = j + 1; i < h_.rows(); ++i) {
        if (!(std::abs(h_(i, j) - h_(j, i)) <= tol)) {
          throw invalid_argument("quadratic: the Hessian is not symmetric: H(" + std::to_string(i) +
                                 ", " + std::to_string(j) + ") != H(" + std::to_string(j) + ", " +
                                 std::to_string(i) + ")");
        }
      }
    }
  }

  detail::const_matrix_view<T> h_;
  vector_t<T> b_;
  quadratic_options options_;
  vector_t<T> hx_;
};

template <class H, class B>
quadratic(H&&, const B&, quadratic_options = {})
    -> quadratic<typename std::remove_cvref_t<H>::Scalar>;

}  // namespace ecopt
