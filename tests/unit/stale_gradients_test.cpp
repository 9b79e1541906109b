// Guard test of reproduction 5 (examples/stale_gradients.cpp): compressed
// gradient descent with bounded delays, x_{k+1} = x_k - gamma Q(grad f(x_{k - tau_k})),
// Khirirat, Feyzmahdavian, Johansson 2018, arXiv:1806.06573. With the step of
// optimizers/delayed_step_size.hpp, on least squares with condition number 20:
//  - every tau in {0, 1, 4, 16} (fixed and uniform delays) reaches the target
//    within the rule's guaranteed iteration count;
//  - the iterations grow with tau and, at equal tau, with omega (with margins);
//  - a step that ignores the delay diverges at tau = 16, and the fixed-delay
//    stability limit 2 sin(pi / (4 tau + 2)) / L separates convergence from divergence.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <vector>

#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/compressors/rand_k.hpp"
#include "ecopt/optimizers/delayed_step_size.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problems/conditioned_least_squares.hpp"
#include "ecopt/problems/delayed.hpp"
#include "ecopt/problems/quadratic.hpp"
#include "ecopt/run_report.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace stale_gradients_test {

namespace {

constexpr std::size_t taus[] = {0, 1, 4, 16};
constexpr double target_gap = 1e-4;  // stop at f(x_k) - f* <= 1e-4 (f(x_0) - f*)

struct instance {
  ecopt::conditioned_least_squares data;
  double f_star = 0;
  double initial_gap = 0;

  instance()
      : data(ecopt::make_conditioned_least_squares(ecopt::log_spaced_spectrum(20, 20.0),
                                                   {.samples = 80, .rotate = true, .seed = 3})) {
    f_star = ecopt::quadratic<double>(data.hessian, data.linear_term).loss(data.optimum);
    initial_gap = -f_star;  // x_0 = 0 and f(0) = 0
  }
};

struct reach_or_diverge {
  double target = 0;
  double ceiling = 0;
  ecopt::observer_action on_eval(const ecopt::progress& p) const noexcept {
    return p.loss <= target || !(p.loss < ceiling) ? ecopt::observer_action::stop
                                                   : ecopt::observer_action::proceed;
  }
};

struct outcome {
  bool reached = false;
  std::uint64_t iterations = 0;
};

template <class Compressor, class Delay>
outcome run(const instance& s, const Compressor& compressor, const Delay& delay, double gamma,
            std::uint64_t max_steps) {
  const ecopt::solver solver{compressor, ecopt::no_compensation{}, ecopt::sgd{.lr = gamma}};
  return ecopt::run_threads(1, [&](ecopt::thread_transport& t) {
    ecopt::delayed_gradients problem(ecopt::quadratic<double>(s.data.hessian, s.data.linear_term),
                                     delay);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(s.data.linear_term.size());
    const reach_or_diverge stop{.target = s.f_star + target_gap * s.initial_gap,
                                .ceiling = s.f_star + 1e4 * s.initial_gap};
    const auto report =
        solver.run(t, problem, x, {.steps = max_steps, .seed = 1, .eval_every = 1}, stop);
    return outcome{report.final_loss() <= stop.target, report.steps};
  })[0];
}

/// Iterations with the rule's step for every tau, with uniform and fixed
/// delays; checks that each run reaches the target within the guaranteed count.
template <class Compressor>
void sweep(const instance& s, const Compressor& compressor, std::vector<double>& uniform,
           std::vector<double>& fixed) {
  const double omega = compressor.omega(s.data.dim());
  for (const std::size_t tau : taus) {
    const auto rule = ecopt::unbiased_delayed_step(s.data.l, s.data.mu, tau, omega);
    const std::uint64_t bound = rule.iterations(target_gap);
    const outcome u =
        run(s, compressor, ecopt::uniform_delay{.tau = tau, .seed = 2}, rule.step, 2 * bound);
    const outcome f = run(s, compressor, ecopt::fixed_delay{.tau = tau}, rule.step, 2 * bound);
    CAPTURE(omega);
    CAPTURE(tau);
    CAPTURE(bound);
    CAPTURE(u.iterations);
    CAPTURE(f.iterations);
    CHECK(u.reached);
    CHECK(f.reached);
    // The bound holds in expectation; single runs sit well inside it (at about
    // 0.35 of it on this instance), so it is asserted per run.
    CHECK(u.iterations <= bound);
    CHECK(f.iterations <= bound);
    uniform.push_back(static_cast<double>(u.iterations));
    fixed.push_back(static_cast<double>(f.iterations));
  }
}

}  // namespace

TEST_CASE("with the delay-aware step, iterations grow with tau and with omega") {
  const instance s;
  REQUIRE(s.data.condition() == doctest::Approx(20.0));
  std::vector<double> dense_u, dense_f, rand5_u, rand5_f, rand2_u, rand2_f;
  sweep(s, ecopt::no_compression{}, dense_u, dense_f);  // omega = 0
  sweep(s, ecopt::rand_k{.k = 5}, rand5_u, rand5_f);    // omega = 3
  sweep(s, ecopt::rand_k{.k = 2}, rand2_u, rand2_f);    // omega = 9
  MESSAGE("iterations, uniform delays, tau = 0, 1, 4, 16: dense ", dense_u[0], " ", dense_u[1], " ",
          dense_u[2], " ", dense_u[3], "; rand_k k=5 ", rand5_u[0], " ", rand5_u[1], " ",
          rand5_u[2], " ", rand5_u[3], "; rand_k k=2 ", rand2_u[0], " ", rand2_u[1], " ",
          rand2_u[2], " ", rand2_u[3]);

  // Monotone in tau: the step shrinks like 1/(1 + tau), by x2, x2.5 and x3.4
  // between consecutive taus (observed: x2.0, x2.5, x3.4); at least x1.5 each time.
  // Without the delays the step alone would do this too: the next test case is
  // the one that fails if the delays were not applied.
  for (const auto* series : {&dense_u, &dense_f, &rand5_u, &rand5_f, &rand2_u, &rand2_f}) {
    for (std::size_t i = 0; i + 1 < series->size(); ++i) {
      CAPTURE(i);
      CHECK((*series)[i + 1] >= 1.5 * (*series)[i]);
    }
  }
  // More iterations for larger omega at equal tau: 1 + omega grows x4, then x2.5
  // (observed: x3.9, x2.7 at tau = 0).
  for (std::size_t i = 0; i < std::size(taus); ++i) {
    CAPTURE(taus[i]);
    CHECK(rand5_u[i] >= 2.0 * dense_u[i]);
    CHECK(rand2_u[i] >= 1.5 * rand5_u[i]);
    CHECK(rand5_f[i] >= 2.0 * dense_f[i]);
    CHECK(rand2_f[i] >= 1.5 * rand5_f[i]);
  }
}

TEST_CASE("a step that ignores the delay diverges; the fixed-delay stability limit is sharp") {
  const instance s;
  const double l = s.data.l;
  const ecopt::no_compression dense{};
  // The tau = 0 rule, gamma = 1/(2L), is above the limit 2 sin(pi/66)/L = 0.095/L at tau = 16.
  const auto first = ecopt::unbiased_delayed_step(l, s.data.mu, 0, 0.0);
  const auto late = ecopt::unbiased_delayed_step(l, s.data.mu, 16, 0.0);
  const std::uint64_t cap = 2 * late.iterations(target_gap);
  CHECK(run(s, dense, ecopt::fixed_delay{.tau = 16}, late.step, cap).reached);
  CHECK_FALSE(run(s, dense, ecopt::fixed_delay{.tau = 16}, first.step, cap).reached);

  // z_{k+1} = z_k - a z_{k-tau} is stable iff 0 < a < 2 sin(pi / (4 tau + 2)): the
  // top eigen-component converges 10% below the limit and diverges 10% above it.
  for (const std::size_t tau : {std::size_t{1}, std::size_t{4}}) {
    const double limit = 2.0 * std::sin(std::numbers::pi / (4.0 * static_cast<double>(tau) + 2.0));
    const std::uint64_t steps =
        2 * ecopt::unbiased_delayed_step(l, s.data.mu, tau, 0.0).iterations(target_gap);
    CAPTURE(tau);
    CHECK(run(s, dense, ecopt::fixed_delay{.tau = tau}, 0.9 * limit / l, steps).reached);
    CHECK_FALSE(run(s, dense, ecopt::fixed_delay{.tau = tau}, 1.1 * limit / l, steps).reached);
  }
}

}  // namespace stale_gradients_test
