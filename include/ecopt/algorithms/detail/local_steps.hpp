#pragma once
// What local SGD and SlowMo share: H optimizer steps on the worker's own model
// between exchanges, and the exchange of the progress made since the last
// average.
//
// The progress is kept in the units of a gradient, p = sum_k (gamma_k /
// gamma_ref) u_k, where u_k is the optimizer's step before its size
// (SplitsStepSize) and gamma_ref the step size of the step that closes the
// period; the model moved by gamma_ref p, up to rounding. Exchanging p, not
// the model or its difference to the anchor, is what makes the trivial
// setting exact: after one SGD step p is the gradient itself, so local SGD
// with H = 1 sends what synchronous SGD sends and steps as it does, bit for
// bit, with any compressor and compensator. It is also the pseudo-gradient
// (x_0 - x_avg) / gamma of SlowMo (Wang et al. 2019, arXiv:1910.00643), to
// which a compressor with error feedback applies as to a gradient (the
// compressed local SGD of Basu et al. 2019, arXiv:1906.02367).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/optimizer.hpp"

namespace ecopt {

/// What happens to the inner optimizer's momentum buffers when the models are
/// averaged (SlowMo's variants; fairscale keeps them).
enum class local_momentum {
  keep,     ///< each worker keeps its own buffer
  reset,    ///< zeroed at every average
  average,  ///< averaged like the models (one more dense allreduce, charged)
};

namespace detail {

template <class T>
struct local_steps_state {
  std::vector<T> anchor;    ///< the last averaged model (x_0)
  std::vector<T> progress;  ///< p, see the header comment
  std::vector<T> update;    ///< this step's u
  std::vector<T> mean;      ///< the exchanged mean of p
  std::uint64_t steps_in_period = 0;

  explicit local_steps_state(std::size_t dim)
      : anchor(dim), progress(dim), update(dim), mean(dim) {}

  /// What a checkpoint carries (update and mean are rewritten before use).
  template <class Archive>
  void persist(Archive& a) {
    a("anchor", anchor);
    a("progress", progress);
    a("steps_in_period", steps_in_period);
  }
};

inline void require_period(std::string_view who, std::uint64_t period) {
  if (period == 0) {
    throw invalid_argument(std::string(who) + ": period must be at least 1 step, got 0");
  }
}

/// The step that closes the period holding `step` (the run's last step at most).
[[nodiscard]] inline std::uint64_t period_end(std::uint64_t step, std::uint64_t period,
                                              std::uint64_t total_steps) {
  const std::uint64_t end = (step / period) * period + period - 1;
  return total_steps > 0 ? std::min(end, total_steps - 1) : end;
}

/// One local optimizer step on r.x() with r.gradient(); true when it closes
/// the period (the caller then exchanges).
template <class T, class Round>
bool local_step(Round& r, local_steps_state<T>& s, std::uint64_t period) {
  static_assert(SplitsStepSize<typename Round::optimizer_type, T>,
                "local steps need an optimizer whose step is a step size times an update "
                "direction (SplitsStepSize: sgd, heavy_ball, nesterov)");
  const std::uint64_t step = r.step();
  const std::span<T> u(s.update);
  r.update_direction(r.gradient(), u);
  const T gamma = static_cast<T>(r.learning_rate(step));
  const std::span<T> x = r.x();
  for (std::size_t j = 0; j < x.size(); ++j) x[j] -= gamma * u[j];
  const double reference = r.learning_rate(period_end(step, period, r.total_steps()));
  const double ratio = r.learning_rate(step) / reference;
  if (s.steps_in_period == 0) {
    // A copy, not 0 + u: the first step's progress is u to the sign of zero.
    if (ratio == 1.0) {
      std::copy(u.begin(), u.end(), s.progress.begin());
    } else {
      const T scale = static_cast<T>(ratio);
      for (std::size_t j = 0; j < u.size(); ++j) s.progress[j] = scale * u[j];
    }
  } else if (ratio == 1.0) {
    for (std::size_t j = 0; j < u.size(); ++j) s.progress[j] += u[j];
  } else {
    const T scale = static_cast<T>(ratio);
    for (std::size_t j = 0; j < u.size(); ++j) s.progress[j] += scale * u[j];
  }
  ++s.steps_in_period;
  return (step + 1) % period == 0;
}

/// The compressed mean of the workers' progress into s.mean; returns the
/// step size the progress is measured in (gamma_ref). Call it on every rank at
/// the same step: at a period's end, or from finish with a partial period.
template <class T, class Round>
double exchange_progress(Round& r, local_steps_state<T>& s, std::uint64_t period) {
  const std::uint64_t step = r.step();
  const double reference = r.learning_rate(period_end(step, period, r.total_steps()));
  r.observe_curvature(std::span<const T>(s.anchor), step / period, reference);
  r.exchange(std::span<const T>(s.progress), std::span<T>(s.mean), step / period, reference);
  s.steps_in_period = 0;
  return reference;
}

/// The inner optimizer's momentum buffer, when its state has one.
template <class State>
concept HasVelocity = requires(State& s) {
  s.velocity.data();
};

/// After the models are averaged: the inner optimizer's buffers as `policy` says.
template <class T, class Round>
void settle_momentum(Round& r, local_momentum policy) {
  auto& state = r.optimizer_state();
  if (policy == local_momentum::keep) return;
  if constexpr (HasVelocity<std::remove_cvref_t<decltype(state)>>) {
    if (policy == local_momentum::reset) {
      std::fill(state.velocity.begin(), state.velocity.end(), T(0));
    } else {
      r.average(std::span<T>(state.velocity.data(), state.velocity.size()));
    }
  }
}

}  // namespace detail
}  // namespace ecopt
