#pragma once
// Loopless SVRG (L-SVRG: Kovalev, Horvath, Richtarik 2019, arXiv:1901.08689)
// as the optimizer of error-compensated training: solver<C, error_feedback,
// ec_lsvrg> is EC-LSVRG (Gorbunov, Kovalev, Makarenko, Richtarik 2020,
// arXiv:2010.12292); with no compression it is distributed L-SVRG.
//
// Through the gradient hook (optimizer.hpp), each rank's direction is the
// variance-reduced estimator over its own shard f = (1/m) sum_i f_i,
//   g = (1/b) sum_{i in B} [grad f_i(x) - grad f_i(w)] + grad f(w),
// B a minibatch of b samples drawn with replacement, w the snapshot. Then
//   x <- x - lr * (mean over ranks of the compensated, compressed g),
//   w <- x (the iterate before this step) with probability p,
// by a coin every rank draws alike (detail::shared_coin), so w stays equal on
// all ranks; grad f(w) of the rank's shard is recomputed locally, without
// communication. The solver's x is the iterate itself.
//
// Fields: lr (step size; L-SVRG's theory takes 1/(6L) with L the sample
// functions' smoothness), p (snapshot probability, about batch_size / m),
// batch_size (b). Needs a FiniteSumProblem.
#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/detail/gradient_hook.hpp"
#include "ecopt/optimizers/detail/loopless_snapshot.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct ec_lsvrg {
  static constexpr std::string_view name = "ec_lsvrg";

  double lr = 0.01;            ///< step size
  double p = 0.1;              ///< probability of a new snapshot per round
  std::size_t batch_size = 1;  ///< samples per rank per round

  void validate() const {
    detail::require_positive(name, "lr", lr);
    detail::require_probability(name, "p", p);
    detail::require_batch(name, batch_size);
  }

  template <class T>
  struct state {
    detail::loopless_snapshot<T> snapshot;  ///< w and grad f(w) of this rank's shard
    bool taken = false;                     ///< the gradient hook ran this round
    template <class Archive>
    void persist(Archive& a) {
      a.nest("snapshot", snapshot);
      a("taken", taken);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    state<T> s;
    s.snapshot = detail::loopless_snapshot<T>::zeros(dim, batch_size);
    return s;
  }

  [[nodiscard]] double learning_rate(std::uint64_t) const noexcept { return lr; }

  template <Problem P>
  void gradient(P& problem, const Eigen::Ref<const vector_t<problem_scalar_t<P>>>& x,
                Eigen::Ref<vector_t<problem_scalar_t<P>>> g, state<problem_scalar_t<P>>& s,
                counter_rng& sampler, const round_context&,
                const uncompressed_mean<problem_scalar_t<P>>&) const {
    static_assert(FiniteSumProblem<P>,
                  "ec_lsvrg needs a FiniteSumProblem (samples() and sample_gradient)");
    const auto d = static_cast<std::size_t>(s.snapshot.point.size());
    detail::require_size(name, "x", static_cast<std::size_t>(x.size()), d);
    detail::require_size(name, "g", static_cast<std::size_t>(g.size()), d);
    s.snapshot.start(x);
    s.snapshot.refresh(problem);
    s.snapshot.sample_gradients(problem, sampler, x, g);
    g += s.snapshot.gradient - s.snapshot.at_point;
    s.taken = true;
  }

  template <class T>
  void apply(std::span<T> x, std::span<const T> direction, state<T>& s,
             const round_context& ctx) const {
    const auto d = static_cast<std::size_t>(s.snapshot.point.size());
    detail::require_size(name, "x", x.size(), d);
    detail::require_size(name, "direction", direction.size(), d);
    detail::consume_gradient_hook(name, s.taken);
    const T gamma = static_cast<T>(lr);
    s.snapshot.flip(ctx, p, x);  // w <- x before the step, with probability p
    for (std::size_t j = 0; j < d; ++j) x[j] -= gamma * direction[j];
  }
};

static_assert(Optimizer<ec_lsvrg, float> && Optimizer<ec_lsvrg, double>);

}  // namespace ecopt
