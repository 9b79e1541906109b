#pragma once
// Accelerated (minibatch) SGD: the AC-SA method (Lan 2012, Math. Programming
// 133; Ghadimi and Lan 2012, SIAM J. Optim. 22(4)), in the form Woodworth, Patel,
// Srebro 2020 (arXiv:2006.04735) compare with minibatch and local SGD: every
// round, all ranks' stochastic gradients at the same point x^md are averaged.
// With r = t + 1 for round t, beta_r = (r + 1) / 2 and gamma_r = (r + 1) lr / 2:
//   gradient hook:  x^md = x_r / beta_r + (1 - 1/beta_r) x^ag_r
//                   g = problem.stochastic_gradient(x^md)
//   apply:          x_{r+1}    = x_r - gamma_r * (mean over ranks of g)
//                   x^ag_{r+1} = x_{r+1} / beta_r + (1 - 1/beta_r) x^ag_r
// The solver's x is x^ag (the output, evaluated and returned); x_r and x^md
// live in the state. beta_1 = 1, so the first round is a plain gradient step.
//
// Fields: lr (gamma; Ghadimi and Lan take gamma <= 1/(2L), which keeps
// L gamma_r <= beta_r for every r), restart_every (0: never; else the schedule
// restarts from x_r = x^ag every that many rounds, the multi-stage form for
// strongly convex f, with stages of order sqrt(L / mu) rounds). This is the
// convex (mu = 0) schedule; gamma_r grows, so with noisy gradients choose lr
// for the horizon (Ghadimi and Lan's known-horizon step).
#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/detail/gradient_hook.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct accelerated_sgd {
  static constexpr std::string_view name = "accelerated_sgd";

  double lr = 0.01;                 ///< gamma: gamma_r = (r + 1) gamma / 2
  std::uint64_t restart_every = 0;  ///< rounds per stage; 0 = a single stage

  void validate() const { detail::require_positive(name, "lr", lr); }

  template <class T>
  struct state {
    vector_t<T> aggressive;  ///< x_r
    vector_t<T> query;       ///< x^md of this round
    bool started = false;
    bool taken = false;  ///< the gradient hook ran this round
    template <class Archive>
    void persist(Archive& a) {
      a("aggressive", aggressive);
      a("query", query);
      a("started", started);
      a("taken", taken);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    const auto d = static_cast<Eigen::Index>(dim);
    state<T> s;
    s.aggressive = vector_t<T>::Zero(d);
    s.query = vector_t<T>::Zero(d);
    return s;
  }

  /// Round t's position in its stage.
  [[nodiscard]] std::uint64_t stage_round(std::uint64_t step) const noexcept {
    return restart_every > 0 ? step % restart_every : step;
  }

  /// beta_r for round t (r = stage round + 1).
  [[nodiscard]] double beta(std::uint64_t step) const noexcept {
    return (static_cast<double>(stage_round(step)) + 2.0) / 2.0;
  }

  /// gamma_r = (r + 1) lr / 2 = beta_r * lr.
  [[nodiscard]] double learning_rate(std::uint64_t step) const noexcept { return beta(step) * lr; }

  template <Problem P>
  void gradient(P& problem, const Eigen::Ref<const vector_t<problem_scalar_t<P>>>& x_ag,
                Eigen::Ref<vector_t<problem_scalar_t<P>>> g, state<problem_scalar_t<P>>& s,
                counter_rng& sampler, const round_context& ctx,
                const uncompressed_mean<problem_scalar_t<P>>&) const {
    using T = problem_scalar_t<P>;
    const auto d = static_cast<std::size_t>(s.query.size());
    detail::require_size(name, "x", static_cast<std::size_t>(x_ag.size()), d);
    detail::require_size(name, "g", static_cast<std::size_t>(g.size()), d);
    if (!s.started || stage_round(ctx.round) == 0) {  // a stage starts from x_1 = x^ag_1
      s.aggressive = x_ag;
      s.started = true;
    }
    const T inv_beta = static_cast<T>(1.0 / beta(ctx.round));
    s.query = inv_beta * s.aggressive + (T(1) - inv_beta) * x_ag;
    problem.stochastic_gradient(s.query, g, sampler);
    s.taken = true;
  }

  template <class T>
  void apply(std::span<T> x_ag, std::span<const T> direction, state<T>& s,
             const round_context& ctx) const {
    const auto d = static_cast<std::size_t>(s.query.size());
    detail::require_size(name, "x", x_ag.size(), d);
    detail::require_size(name, "direction", direction.size(), d);
    detail::consume_gradient_hook(name, s.taken);
    const T gamma = static_cast<T>(learning_rate(ctx.round));
    const T inv_beta = static_cast<T>(1.0 / beta(ctx.round));
    T* xr = s.aggressive.data();
    for (std::size_t j = 0; j < d; ++j) {
      xr[j] -= gamma * direction[j];
      x_ag[j] = inv_beta * xr[j] + (T(1) - inv_beta) * x_ag[j];
    }
  }
};

static_assert(Optimizer<accelerated_sgd, float> && Optimizer<accelerated_sgd, double>);

}  // namespace ecopt
