#pragma once
// Calls on a run's observers (observers.hpp): each hook is optional and found
// with `requires`, so an observer implements only what it needs. Shared by
// solver::run and parameter_server::run.
#include <concepts>

#include "ecopt/checkpoint.hpp"
#include "ecopt/run_report.hpp"

namespace ecopt {

namespace detail {

template <class Observer>
void notify_step(Observer& o, const progress& p) {
  if constexpr (requires { o.on_step(p); }) o.on_step(p);
}

template <class Observer>
void notify_checkpoint(Observer& o, const checkpoint& c, const progress& p) {
  if constexpr (requires { o.on_checkpoint(c, p); }) o.on_checkpoint(c, p);
}

/// Returns true when the observer asks to stop.
template <class Observer>
bool notify_eval(Observer& o, const progress& p) {
  if constexpr (requires {
                  { o.on_eval(p) } -> std::same_as<observer_action>;
                }) {
    return o.on_eval(p) == observer_action::stop;
  } else if constexpr (requires { o.on_eval(p); }) {
    o.on_eval(p);
  }
  return false;
}
}  // namespace detail

}  // namespace ecopt
