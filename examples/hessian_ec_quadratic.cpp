// Reproduction R1 of Hessian-aided error compensation (Khirirat, Magnusson,
// Johansson 2021, arXiv:1909.10327): on least squares with condition number
// 1e3, compressed gradient descent with a deterministic bounded-error
// compressor, and the four choices of the memory's propagation matrix A:
//   none (A = 0), error_feedback (A = I), hessian_aided (A = I - gamma H),
//   diagonal_hessian (A = I - gamma diag H).
// Grid rounding with step Delta errs by at most eps = Delta sqrt(d) / 2 per
// vector. With Hessian-aided compensation the virtual iterate x - gamma e runs
// exact gradient descent, so ||x_k - x*|| <= rho^k ||x_0 - x*|| + gamma eps;
// the worst-case floors of the others are eps / mu (none) and about
// gamma (1 + kappa) eps (error feedback). The second table has a diagonal
// Hessian, where the diagonal variant is exact too.
//
// Usage: hessian_ec_quadratic [steps [grid_step [gamma_times_L]]]
//        (defaults 20000, 0.01, 1: the step size gamma = 1/L)
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "ecopt/ecopt.hpp"
#include "ecopt/problems/conditioned_least_squares.hpp"

namespace {

/// The quadratic, recording ||x - x*|| at every gradient the solver asks for.
struct tracked_quadratic {
  using scalar_type = double;
  ecopt::quadratic<double> inner;
  const Eigen::VectorXd* optimum;
  std::vector<double>* distances;

  [[nodiscard]] std::size_t dim() const { return inner.dim(); }
  double loss(const Eigen::Ref<const Eigen::VectorXd>& x) { return inner.loss(x); }
  void gradient(const Eigen::Ref<const Eigen::VectorXd>& x, Eigen::Ref<Eigen::VectorXd> g) {
    inner.gradient(x, g);
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>& x,
                           Eigen::Ref<Eigen::VectorXd> g, ecopt::counter_rng& rng) {
    distances->push_back((x - *optimum).norm());
    inner.stochastic_gradient(x, g, rng);
  }
  void hessian(const Eigen::Ref<const Eigen::VectorXd>& x, Eigen::Ref<Eigen::MatrixXd> h) {
    inner.hessian(x, h);
  }
  void hessian_vector(const Eigen::Ref<const Eigen::VectorXd>& x,
                      const Eigen::Ref<const Eigen::VectorXd>& v, Eigen::Ref<Eigen::VectorXd> out) {
    inner.hessian_vector(x, v, out);
  }
  void hessian_diagonal(const Eigen::Ref<const Eigen::VectorXd>& x,
                        Eigen::Ref<Eigen::VectorXd> out) {
    inner.hessian_diagonal(x, out);
  }
};

struct outcome {
  double final_error = 0;  ///< ||x_T - x*||
  double floor = 0;        ///< max ||x_t - x*|| over the last fifth of the run
  double bits_per_step = 0;
};

template <class Compensator>
outcome run(const ecopt::conditioned_least_squares& s, const Compensator& compensator, double gamma,
            double grid_step, std::uint64_t steps) {
  const ecopt::solver solver{ecopt::grid_rounding{.step = grid_step}, compensator,
                             ecopt::sgd{.lr = gamma}};
  return ecopt::run_threads(1, [&](ecopt::thread_transport& t) {
    std::vector<double> distances;
    distances.reserve(steps);
    tracked_quadratic problem{ecopt::quadratic<double>(s.hessian, s.linear_term), &s.optimum,
                              &distances};
    Eigen::VectorXd x = Eigen::VectorXd::Zero(s.linear_term.size());
    const auto report = solver.run(t, problem, x, {.steps = steps});
    outcome o;
    o.final_error = (x - s.optimum).norm();
    o.floor = *std::max_element(distances.end() - static_cast<std::ptrdiff_t>(steps / 5),
                                distances.end());
    o.floor = std::max(o.floor, o.final_error);
    o.bits_per_step = static_cast<double>(report.payload_bits) / static_cast<double>(steps);
    return o;
  })[0];
}

void table(const char* title, const ecopt::conditioned_least_squares& s, std::uint64_t steps,
           double grid_step, double gamma_times_l) {
  const std::size_t d = s.dim();
  const double gamma = gamma_times_l / s.l;
  const double kappa = s.l / s.mu;
  const double eps = ecopt::grid_rounding{.step = grid_step}.max_error(d);
  const double rho = std::max(std::abs(1.0 - gamma * s.mu), std::abs(1.0 - gamma * s.l));
  const double transient = std::pow(rho, static_cast<double>(steps)) * s.optimum.norm();
  std::printf("\n%s\n", title);
  std::printf(
      "d = %zu, kappa = %.0f, gamma = %.3g/L = %.3g, grid step %.3g, eps = %.4g, "
      "%llu steps\n",
      d, kappa, gamma_times_l, gamma, grid_step, eps, static_cast<unsigned long long>(steps));
  std::printf(
      "bounds: gamma eps = %.3g (+ rho^T ||x0 - x*|| = %.2g); worst cases "
      "gamma (1 + kappa) eps = %.3g, eps / mu = %.3g\n",
      gamma * eps, transient, gamma * (1 + kappa) * eps, eps / s.mu);
  std::printf("%-28s %14s %16s %14s %10s\n", "compensator", "||x_T - x*||", "last-20% max",
              "/ (gamma eps)", "bits/step");
  auto row = [&](const char* name, const outcome& o) {
    std::printf("%-28s %14.3e %16.3e %14.2f %10.0f\n", name, o.final_error, o.floor,
                o.floor / (gamma * eps), o.bits_per_step);
  };
  row("none (A = 0)", run(s, ecopt::no_compensation{}, gamma, grid_step, steps));
  row("error_feedback (A = I)", run(s, ecopt::error_feedback{}, gamma, grid_step, steps));
  row("hessian_aided (full H)",
      run(s, ecopt::hessian_aided{.refresh_every = 0}, gamma, grid_step, steps));
  row("hessian_aided (H-vector)",
      run(s, ecopt::hessian_aided{.source = ecopt::curvature_source::hessian_vector}, gamma,
          grid_step, steps));
  row("diagonal_hessian",
      run(s, ecopt::diagonal_hessian{.refresh_every = 0}, gamma, grid_step, steps));
}

}  // namespace

int main(int argc, char** argv) try {
  std::uint64_t steps = 20000;
  double grid_step = 1e-2;
  double gamma_times_l = 1.0;
  ecopt_examples::command_line cli(
      "hessian_ec_quadratic",
      "Hessian-aided error compensation on an ill-conditioned quadratic (R1)");
  cli.option("--steps", steps, "steps of each run (>= 5)")
      .option("--grid-step", grid_step, "step of the rounding grid (> 0)")
      .option("--gamma-times-L", gamma_times_l, "step size times the smoothness L, in (0, 2)");
  if (!cli.parse(argc, argv)) return 0;
  if (steps < 5 || !(grid_step > 0) || !(gamma_times_l > 0 && gamma_times_l < 2)) {
    std::fprintf(stderr,
                 "hessian_ec_quadratic: --steps >= 5, --grid-step > 0, --gamma-times-L in "
                 "(0, 2)\n");
    return 2;
  }
  // d = 50, eigenvalues log-spaced over [1, 1e3] (condition number 1e3), m = 4d samples.
  const Eigen::VectorXd eigenvalues = ecopt::log_spaced_spectrum(50, 1e3);
  table("Table 1: least squares, Hessian in a random orthonormal basis",
        ecopt::make_conditioned_least_squares(eigenvalues,
                                              {.samples = 200, .rotate = true, .seed = 1}),
        steps, grid_step, gamma_times_l);
  table("Table 2: the same spectrum, diagonal Hessian",
        ecopt::make_conditioned_least_squares(eigenvalues,
                                              {.samples = 200, .rotate = false, .seed = 1}),
        steps, grid_step, gamma_times_l);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "hessian_ec_quadratic: %s\n", e.what());
  return 2;
}
