#pragma once
// The Compensator concept: what a worker remembers of what compression dropped.
//
// Per round, with g the worker's direction and S its state:
//   compensate(g, S&, p, ctx)      -- p is what the compressor is given (e.g. g + e)
//   update(p, sent, S&, ctx)       -- sent is the worker's own decoded C(p)
// State is made once by make_state<T>(dim); neither call allocates.
#include <concepts>
#include <cstddef>
#include <span>
#include <utility>

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

}  // namespace ecopt
