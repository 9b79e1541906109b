// Hessian-aided error compensation (Khirirat, Magnusson, Johansson 2021,
// arXiv:1909.10327), checked against its exact laws on quadratics:
//  - the virtual iterate x - gamma e runs exact gradient descent (hessian_aided
//    always; diagonal_hessian when H is diagonal), under any step-size schedule;
//  - reproduction R1 at test size: with a bounded-error compressor (grid
//    rounding, ||C(v) - v|| <= eps) each choice of the memory's propagation
//    matrix A stays within its hard error bound, gamma eps for A = I - gamma H,
//    and the floors order as none >> error feedback > Hessian-aided.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "ecopt/ecopt.hpp"
#include "ecopt/problems/conditioned_least_squares.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace hessian_ec_test {

namespace {

/// A least-squares instance (f(x) = 1/2 x'Hx - b'x in normal form) whose Hessian
/// has the given eigenvalues, in a random orthonormal basis or the standard one
/// (diagonal H), with m = 3d samples.
ecopt::conditioned_least_squares spectrum_quadratic(const Eigen::VectorXd& eigenvalues,
                                                    bool rotated, std::uint64_t seed) {
  return ecopt::make_conditioned_least_squares(
      eigenvalues, {.samples = static_cast<std::size_t>(3 * eigenvalues.size()),
                    .rotate = rotated,
                    .seed = seed});
}

Eigen::VectorXd log_spaced(Eigen::Index d, double condition) {
  return ecopt::log_spaced_spectrum(static_cast<std::size_t>(d), condition);
}

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
  Eigen::VectorXd x;
  double final_error = 0;
  double tail_max = 0;  ///< max ||x_t - x*|| over the last fifth of the run, and at the end
};

template <class Compensator>
outcome run_grid(const ecopt::conditioned_least_squares& q, const Compensator& compensator,
                 double gamma, double grid_step, std::uint64_t steps) {
  const ecopt::solver solver{ecopt::grid_rounding{.step = grid_step}, compensator,
                             ecopt::sgd{.lr = gamma}};
  return ecopt::run_threads(1, [&](ecopt::thread_transport& t) {
    std::vector<double> distances;
    distances.reserve(steps);
    tracked_quadratic problem{ecopt::quadratic<double>(q.hessian, q.linear_term), &q.optimum,
                              &distances};
    outcome o;
    o.x = Eigen::VectorXd::Zero(q.linear_term.size());
    solver.run(t, problem, o.x, {.steps = steps});
    o.final_error = (o.x - q.optimum).norm();
    o.tail_max = std::max(
        o.final_error, *std::max_element(distances.end() - static_cast<std::ptrdiff_t>(steps / 5),
                                         distances.end()));
    return o;
  })[0];
}

/// Drives a compensator by hand on a quadratic with a grid-rounding channel and
/// a step-size schedule; returns max_k ||(x_k - gamma_{k-1} e_k) - y_k||, where
/// y_k is exact gradient descent from the same start with the same schedule.
template <class Compensator>
double virtual_iterate_gap(const ecopt::conditioned_least_squares& q, const Compensator& comp,
                           std::uint64_t steps) {
  const auto d = static_cast<std::size_t>(q.linear_term.size());
  ecopt::quadratic<double> problem(q.hessian, q.linear_term);
  const ecopt::grid_rounding grid{.step = 0.05};
  auto grid_state = grid.make_state<double>(d);
  std::vector<std::byte> payload;
  auto s = comp.template make_state<double>(d);
  Eigen::VectorXd x = Eigen::VectorXd::Zero(static_cast<Eigen::Index>(d));
  Eigen::VectorXd y = x;  // exact gradient descent
  Eigen::VectorXd g(x.size()), gy(x.size());
  std::vector<double> p(d), sent(d);
  double gap = 0;
  for (std::uint64_t k = 0; k < steps; ++k) {
    // A decaying, then constant schedule below 1/L: the rescaled memory keeps the law exact.
    const double gamma =
        (0.9 / q.l) / (1.0 + 0.05 * static_cast<double>(std::min<std::uint64_t>(k, 30)));
    const ecopt::round_context ctx{.round = k, .lr = gamma};
    problem.gradient(x, g);
    if constexpr (ecopt::UsesCurvature<Compensator, ecopt::quadratic<double>>) {
      comp.observe_curvature(problem, x, s, ctx);
    }
    comp.compensate(std::span<const double>(g.data(), d), s, std::span<double>(p), ctx);
    ecopt::bit_writer w(payload);
    grid.encode(std::span<const double>(p), grid_state, w, ctx);
    w.finish();
    std::fill(sent.begin(), sent.end(), 0.0);
    ecopt::bit_reader r(payload);
    grid.decode_add(r, grid_state, std::span<double>(sent), 1.0, ctx);
    comp.update(std::span<const double>(p), std::span<const double>(sent), s, ctx);
    for (std::size_t j = 0; j < d; ++j) x[static_cast<Eigen::Index>(j)] -= gamma * sent[j];
    problem.gradient(y, gy);
    y -= gamma * gy;
    const auto e = Compensator::memory(s);
    Eigen::VectorXd virtual_x = x;
    for (std::size_t j = 0; j < d; ++j) virtual_x[static_cast<Eigen::Index>(j)] -= gamma * e[j];
    gap = std::max(gap, (virtual_x - y).norm());
  }
  return gap;
}

}  // namespace

TEST_CASE("the virtual iterate x - gamma e runs exact gradient descent with Hessian-aided memory") {
  const auto rotated = spectrum_quadratic(log_spaced(20, 50.0), true, 3);
  const auto diagonal = spectrum_quadratic(log_spaced(20, 50.0), false, 3);
  constexpr std::uint64_t steps = 200;
  // Gradient descent moves x by O(||x*||) = O(1); rounding by 0.05 is far from exact, so
  // only the law, not the compressor, can make these gaps vanish.
  const double full = virtual_iterate_gap(rotated, ecopt::hessian_aided{}, steps);
  const double products = virtual_iterate_gap(
      rotated, ecopt::hessian_aided{.source = ecopt::curvature_source::hessian_vector}, steps);
  const double diag_on_diagonal = virtual_iterate_gap(diagonal, ecopt::diagonal_hessian{}, steps);
  const double diag_on_rotated = virtual_iterate_gap(rotated, ecopt::diagonal_hessian{}, steps);
  const double ef = virtual_iterate_gap(rotated, ecopt::error_feedback{}, steps);
  const double once = virtual_iterate_gap(rotated, ecopt::hessian_aided{.refresh_every = 0}, steps);
  MESSAGE("virtual-iterate gaps: hessian ", full, ", H-vector ", products, ", diagonal (H diag) ",
          diag_on_diagonal, ", diagonal (H rotated) ", diag_on_rotated, ", error feedback ", ef);
  CHECK(full < 1e-12);
  CHECK(products < 1e-12);
  CHECK(once < 1e-12);  // the Hessian of a quadratic is constant
  CHECK(diag_on_diagonal < 1e-12);
  CHECK(diag_on_rotated > 1e-4);
  CHECK(ef > 1e-4);
}

TEST_CASE("R1 at test size: error floors with a bounded-error compressor") {
  // Least squares, d = 30, condition number 100, gamma = 1/L, grid rounding.
  const auto q = spectrum_quadratic(log_spaced(30, 100.0), true, 1);
  const double gamma = 1.0 / q.l;
  const double grid_step = 1e-2;
  const double eps = ecopt::grid_rounding{.step = grid_step}.max_error(30);
  constexpr std::uint64_t steps = 4000;
  // rho = 1 - gamma mu: the transient rho^T ||x0 - x*|| is below 1e-15 here.
  const double transient =
      std::pow(1.0 - gamma * q.mu, static_cast<double>(steps)) * q.optimum.norm();
  REQUIRE(transient < 1e-15);
  const double slack = 1e-12;

  const auto none = run_grid(q, ecopt::no_compensation{}, gamma, grid_step, steps);
  const auto ef = run_grid(q, ecopt::error_feedback{}, gamma, grid_step, steps);
  const auto hessian =
      run_grid(q, ecopt::hessian_aided{.refresh_every = 0}, gamma, grid_step, steps);
  const auto products =
      run_grid(q, ecopt::hessian_aided{.source = ecopt::curvature_source::hessian_vector}, gamma,
               grid_step, steps);
  const auto diag = run_grid(q, ecopt::diagonal_hessian{}, gamma, grid_step, steps);
  const double off_diagonal =
      (q.hessian - Eigen::MatrixXd(q.hessian.diagonal().asDiagonal())).norm();
  MESSAGE("gamma eps = ", gamma * eps, "; tail max: none ", none.tail_max, ", error feedback ",
          ef.tail_max, ", hessian ", hessian.tail_max, ", H-vector ", products.tail_max,
          ", diagonal ", diag.tail_max);

  // The hard bounds (all derived from the virtual-iterate recursions, with ||e|| <= eps):
  CHECK(hessian.tail_max <= gamma * eps + transient + slack);
  CHECK(products.tail_max <= gamma * eps + transient + slack);
  CHECK(ef.tail_max <= gamma * (1.0 + q.l / q.mu) * eps + transient + slack);
  CHECK(none.tail_max <= eps / q.mu + transient + slack);
  // The Frobenius norm bounds the spectral norm of H - D.
  CHECK(diag.tail_max <= gamma * eps * (1.0 + off_diagonal / q.mu) + transient + slack);

  // The ordering, observed on this seed with margin: without memory the iterate stalls
  // where every gradient coordinate rounds to zero; error feedback's floor lies above
  // the Hessian-aided one.
  CHECK(none.tail_max > 20 * hessian.tail_max);
  CHECK(ef.tail_max > 1.2 * hessian.tail_max);
  // The two curvature sources compute the same products.
  CHECK((hessian.x - products.x).norm() <= 1e-9 * q.optimum.norm());
}

TEST_CASE("R1 at test size, diagonal Hessian: the diagonal variant is the Hessian-aided method") {
  const auto q = spectrum_quadratic(log_spaced(30, 100.0), false, 2);
  const double gamma = 1.0 / q.l;
  const double grid_step = 1e-2;
  const double eps = ecopt::grid_rounding{.step = grid_step}.max_error(30);
  constexpr std::uint64_t steps = 4000;
  const auto hessian = run_grid(q, ecopt::hessian_aided{}, gamma, grid_step, steps);
  const auto diag = run_grid(q, ecopt::diagonal_hessian{}, gamma, grid_step, steps);
  const auto none = run_grid(q, ecopt::no_compensation{}, gamma, grid_step, steps);
  MESSAGE("gamma eps = ", gamma * eps, "; hessian ", hessian.final_error, ", diagonal ",
          diag.final_error, ", none ", none.final_error);
  CHECK(diag.tail_max <= gamma * eps + 1e-12);
  CHECK((diag.x - hessian.x).norm() <= 1e-9 * q.optimum.norm());
  CHECK(none.tail_max > 20 * diag.tail_max);
}

TEST_CASE("a diagonal with gamma D_jj beyond the cap is clipped, and negative curvature to 0") {
  // One coordinate per case: p = g + (1 - clip(gamma D, 0, cap)) e, with e = 1 from a round
  // that sent nothing.
  struct diagonal_problem {
    using scalar_type = double;
    Eigen::Vector3d diag{50.0, -4.0, 2.0};
    std::size_t dim() const { return 3; }
    double loss(const Eigen::Ref<const Eigen::VectorXd>&) { return 0; }
    void gradient(const Eigen::Ref<const Eigen::VectorXd>&, Eigen::Ref<Eigen::VectorXd> g) {
      g.setZero();
    }
    void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>&,
                             Eigen::Ref<Eigen::VectorXd> g, ecopt::counter_rng&) {
      g.setZero();
    }
    void hessian_diagonal(const Eigen::Ref<const Eigen::VectorXd>&,
                          Eigen::Ref<Eigen::VectorXd> out) {
      out = diag;
    }
  };
  diagonal_problem problem;
  const Eigen::VectorXd x = Eigen::VectorXd::Zero(3);
  const ecopt::round_context ctx{.lr = 0.1};
  for (const double cap : {1.0, 1.5}) {
    const ecopt::diagonal_hessian comp{.max_scaled_curvature = cap};
    auto s = comp.make_state<double>(3);
    const std::vector<double> ones(3, 1.0), zero(3, 0.0);
    std::vector<double> p(3);
    comp.observe_curvature(problem, x, s, ctx);
    comp.compensate(std::span<const double>(ones), s, std::span<double>(p), ctx);
    comp.update(std::span<const double>(p), std::span<const double>(zero), s, ctx);  // e = 1
    comp.observe_curvature(problem, x, s, ctx);
    comp.compensate(std::span<const double>(zero), s, std::span<double>(p), ctx);
    CHECK(p[0] == doctest::Approx(1.0 - cap));  // gamma D = 5, clipped to the cap
    CHECK(p[1] == doctest::Approx(1.0));        // negative curvature: memory kept as is
    CHECK(p[2] == doctest::Approx(0.8));        // gamma D = 0.2
  }
}

TEST_CASE("the full Hessian is re-evaluated every refresh_every rounds") {
  struct counting_problem {
    using scalar_type = double;
    int evaluations = 0;
    std::size_t dim() const { return 2; }
    double loss(const Eigen::Ref<const Eigen::VectorXd>&) { return 0; }
    void gradient(const Eigen::Ref<const Eigen::VectorXd>&, Eigen::Ref<Eigen::VectorXd> g) {
      g.setZero();
    }
    void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>&,
                             Eigen::Ref<Eigen::VectorXd> g, ecopt::counter_rng&) {
      g.setZero();
    }
    void hessian(const Eigen::Ref<const Eigen::VectorXd>&, Eigen::Ref<Eigen::MatrixXd> h) {
      ++evaluations;
      h.setIdentity();
    }
    void hessian_diagonal(const Eigen::Ref<const Eigen::VectorXd>&,
                          Eigen::Ref<Eigen::VectorXd> out) {
      ++evaluations;
      out.setOnes();
    }
  };
  const Eigen::VectorXd x = Eigen::VectorXd::Zero(2);
  const std::vector<double> g(2, 1.0);
  std::vector<double> p(2);
  auto count = [&](const auto& comp) {
    counting_problem problem;
    auto s = comp.template make_state<double>(2);
    for (std::uint64_t k = 0; k < 10; ++k) {
      const ecopt::round_context ctx{.round = k, .lr = 0.1};
      comp.observe_curvature(problem, x, s, ctx);
      comp.compensate(std::span<const double>(g), s, std::span<double>(p), ctx);
      comp.update(std::span<const double>(p), std::span<const double>(p), s, ctx);
    }
    return problem.evaluations;
  };
  CHECK(count(ecopt::hessian_aided{}) == 10);
  CHECK(count(ecopt::hessian_aided{.refresh_every = 4}) == 3);  // rounds 0, 4, 8
  CHECK(count(ecopt::hessian_aided{.refresh_every = 0}) == 1);
  CHECK(count(ecopt::diagonal_hessian{.refresh_every = 3}) == 4);  // rounds 0, 3, 6, 9
  CHECK(count(ecopt::diagonal_hessian{.refresh_every = 0}) == 1);
}

TEST_CASE("a steady-state solver round with curvature compensation does not allocate") {
  const auto q = spectrum_quadratic(log_spaced(16, 10.0), true, 4);
  struct allocation_probe {
    std::uint64_t* at_end;
    std::optional<ecopt::test::allocation_scope> scope;
    void on_step(const ecopt::progress& p) {
      if (p.step == 5) scope.emplace();
      if (p.step == 30) *at_end = scope->count();
    }
  };
  auto allocations = [&](const auto& compensator) {
    std::uint64_t count = 1;
    const ecopt::solver s{ecopt::top_k{.ratio = 0.25}, compensator, ecopt::sgd{.lr = 0.05}};
    ecopt::run_threads(1, [&](ecopt::thread_transport& t) {
      ecopt::quadratic<double> p(q.hessian, q.linear_term);
      Eigen::VectorXd x = Eigen::VectorXd::Zero(16);
      s.run(t, p, x, {.steps = 30}, allocation_probe{&count, {}});
    });
    return count;
  };
  CHECK(allocations(ecopt::hessian_aided{}) == 0);
  CHECK(allocations(ecopt::hessian_aided{.source = ecopt::curvature_source::hessian_vector}) == 0);
  CHECK(allocations(ecopt::diagonal_hessian{}) == 0);
}

}  // namespace hessian_ec_test
