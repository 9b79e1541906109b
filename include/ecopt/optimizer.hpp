#pragma once
// The Optimizer concept: the update rule applied to the aggregated direction.
//
//   double learning_rate(std::uint64_t step) const   -- step size of a step
//   apply(x, direction, S&, ctx)                      -- x <- update(x, direction)
// Every rank applies the same aggregate to the same x, so all ranks keep equal
// iterates without sending the model. State is made by make_state<T>(dim).
//
// Optional hook, found with `requires` (ProvidesGradient below); a solver that
// runs an optimizer calls it, when present, instead of problem.stochastic_gradient:
//   gradient(problem, x, g, S&, sampler, ctx, mean)
//     -- writes g, this rank's direction for the round (what the compensator and
//        compressor then see). The optimizer chooses the point and the estimator:
//        accelerated methods query a point other than x (AC-SA's x^md, Katyusha's
//        x^k), variance-reduced ones combine sample gradients at x and at a
//        snapshot (FiniteSumProblem). `mean` averages a vector over all ranks
//        without compression, for a quantity every rank must agree on exactly
//        (ECLK's snapshot gradient); its bits are charged to the run.
// The solver's x is then the optimizer's output iterate, the one the solver
// evaluates and returns (AC-SA's x^ag, Katyusha's y); the query point lives in
// the optimizer's state. Randomness shared by all ranks (snapshot coins) is drawn
// from counter_rng::stream(ctx.seed, stream_purpose::algorithm, 0, ctx.round),
// never from the rank's sampler. An optimizer with the hook throws from apply
// when the round's hook was not called, rather than take a silently wrong step.
#include <Eigen/Core>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>

#include "ecopt/counter_rng.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

template <class O, class T>
concept MakesOptimizerState = requires(const O& o, std::size_t dim) {
  o.template make_state<T>(dim);
};

template <class O, class T>
requires MakesOptimizerState<O, T>
using optimizer_state_t = decltype(std::declval<const O&>().template make_state<T>(std::size_t{}));

template <class O>
concept HasLearningRate = requires(const O& o, std::uint64_t step) {
  { o.learning_rate(step) } -> std::convertible_to<double>;
};

template <class O, class T>
concept AppliesDirection = MakesOptimizerState<O, T> &&
    requires(const O& o, optimizer_state_t<O, T>& s, std::span<T> x, std::span<const T> direction,
             const round_context& ctx) {
  o.apply(x, direction, s, ctx);
};

template <class O, class T = float>
concept Optimizer = std::floating_point<T> && std::copy_constructible<O> &&
    MakesOptimizerState<O, T> && HasLearningRate<O> && AppliesDirection<O, T>;

/// Optimizers whose step is x <- x - gamma_t * u with u computed from the
/// direction and the state alone (sgd, heavy_ball, nesterov):
///   update_direction(direction, u, S&, ctx) -- writes u and advances the state
///   exactly as apply would; apply(x, d) then equals x[j] -= gamma_t * u[j].
/// Schedules that take several local steps between exchanges (local SGD,
/// SlowMo: algorithms/) accumulate u in the units of a gradient, so that what
/// they exchange after one step is the gradient itself, bit for bit.
template <class O, class T>
concept SplitsStepSize = Optimizer<O, T> &&
    requires(const O& o, optimizer_state_t<O, T>& s, std::span<const T> direction,
             std::span<T> update, const round_context& ctx) {
  o.update_direction(direction, update, s, ctx);
};

template <class T>
class uncompressed_mean;

/// A callable that averages a span over the ranks (not an uncompressed_mean
/// itself, which is copied rather than wrapped).
template <class F, class T>
concept AveragesOverRanks =
    std::invocable<F&, std::span<T>> && !std::same_as<std::remove_cvref_t<F>, uncompressed_mean<T>>;

/// Replaces a span's values by their mean over all ranks, uncompressed and
/// bitwise identical on every rank. A non-owning reference to the caller's
/// callable (the solver's dense allreduce, which charges the bits): copy it
/// freely, use it only during the call it was given to.
template <class T>
class uncompressed_mean {
 public:
  template <AveragesOverRanks<T> F>
  explicit uncompressed_mean(F& average) noexcept
      : target_(const_cast<void*>(static_cast<const void*>(std::addressof(average)))),
        call_([](void* target, std::span<T> values) { (*static_cast<F*>(target))(values); }) {}

  /// The mean over a single rank: leaves the values as they are.
  [[nodiscard]] static uncompressed_mean single_rank() noexcept { return uncompressed_mean(); }

  void operator()(std::span<T> values) const { call_(target_, values); }

 private:
  uncompressed_mean() noexcept : target_(nullptr), call_([](void*, std::span<T>) {}) {}

  void* target_;
  void (*call_)(void*, std::span<T>);
};

/// Optimizers that compute the worker's direction themselves (see the header
/// comment). The member itself static_asserts what it needs of the problem
/// (FiniteSumProblem for the variance-reduced ones).
template <class O, class P>
concept ProvidesGradient = Problem<P> && MakesOptimizerState<O, problem_scalar_t<P>> &&
    requires(const O& o, P& problem, const Eigen::Ref<const vector_t<problem_scalar_t<P>>>& x,
             Eigen::Ref<vector_t<problem_scalar_t<P>>> g,
             optimizer_state_t<O, problem_scalar_t<P>>& s, counter_rng& sampler,
             const round_context& ctx, const uncompressed_mean<problem_scalar_t<P>>& mean) {
  o.gradient(problem, x, g, s, sampler, ctx, mean);
};

}  // namespace ecopt
