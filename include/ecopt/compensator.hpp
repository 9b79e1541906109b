#pragma once
// The Compensator concept: what a worker remembers of what compression dropped.
//
// Per round, with g the worker's direction and S its state:
//   compensate(g, S&, p, ctx)      -- p is what the compressor is given (e.g. g + e)
//   update(p, sent, S&, ctx)       -- sent is the worker's own decoded C(p)
// State is made once by make_state<T>(dim); neither call allocates.
//
// Optional hooks, found with `requires`; a solver that runs a compensator
// calls them when present (the compensators that need them throw when a
// caller skips them, rather than compute a silently wrong step):
//   observe_curvature(problem, x, S&, ctx)   -- before compensate, with the worker's
//        problem and the iterate its gradient was taken at (Hessian-aided compensation)
//   reconstruct(mean_sent, S&, direction, ctx) -- after the exchange, with the mean of
//        all ranks' decoded payloads; writes the direction the optimizer applies
//        instead of that mean (EF21's running estimate). Every rank sees the same
//        mean, so every rank reconstructs the same direction.
#include <concepts>
#include <cstddef>
#include <span>
#include <utility>

#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

template <class E, class T>
concept MakesCompensatorState = requires(const E& e, std::size_t dim) {
  e.template make_state<T>(dim);
};

template <class E, class T>
requires MakesCompensatorState<E, T>
using compensator_state_t =
    decltype(std::declval<const E&>().template make_state<T>(std::size_t{}));

template <class E, class T>
concept CompensatesDirection = MakesCompensatorState<E, T> &&
    requires(const E& e, compensator_state_t<E, T>& s, std::span<const T> g, std::span<T> p,
             const round_context& ctx) {
  e.compensate(g, s, p, ctx);
};

template <class E, class T>
concept UpdatesMemory = MakesCompensatorState<E, T> &&
    requires(const E& e, compensator_state_t<E, T>& s, std::span<const T> p,
             std::span<const T> sent, const round_context& ctx) {
  e.update(p, sent, s, ctx);
};

template <class E, class T = float>
concept Compensator = std::floating_point<T> && std::copy_constructible<E> &&
    MakesCompensatorState<E, T> && CompensatesDirection<E, T> && UpdatesMemory<E, T>;

/// Compensators whose optimizer input is not the mean of the payloads (EF21).
template <class E, class T>
concept ReconstructsDirection = MakesCompensatorState<E, T> &&
    requires(const E& e, compensator_state_t<E, T>& s, std::span<const T> mean_sent,
             std::span<T> direction, const round_context& ctx) {
  e.reconstruct(mean_sent, s, direction, ctx);
};

/// Compensators that read the worker's problem at the current iterate (its
/// Hessian, Hessian-vector products or Hessian diagonal). The member itself
/// static_asserts that the problem has what it needs.
template <class E, class P>
concept UsesCurvature = Problem<P> && MakesCompensatorState<E, problem_scalar_t<P>> &&
    requires(const E& e, P& problem, const Eigen::Ref<const vector_t<problem_scalar_t<P>>>& x,
             compensator_state_t<E, problem_scalar_t<P>>& s, const round_context& ctx) {
  e.observe_curvature(problem, x, s, ctx);
};

}  // namespace ecopt
