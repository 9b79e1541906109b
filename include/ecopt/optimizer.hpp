#pragma once
// The Optimizer concept: the update rule applied to the aggregated direction.
//
//   double learning_rate(std::uint64_t step) const   -- step size of a step
//   apply(x, direction, S&, ctx)                      -- x <- update(x, direction)
// Every rank applies the same aggregate to the same x, so all ranks keep equal
// iterates without sending the model. State is made by make_state<T>(dim).
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

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

}  // namespace ecopt
