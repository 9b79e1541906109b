#pragma once
// SlowMo (Wang, Tantia, Ballas, Rabbat 2019, arXiv:1910.00643): local SGD
// whose averages take a step of a slow, outer momentum. Every tau inner steps
// (checked against fairscale's SlowMo, papers.md section 15.2):
//
//   x_avg = mean_i(x_i)
//   u <- beta u + (x_0 - x_avg) / gamma_t        (gamma_t: the current step size)
//   x_0 <- x_0 - alpha gamma_t u;  x_i <- x_0
//
// (x_0 - x_avg) / gamma_t is the workers' averaged progress in the units of a
// gradient, what local_sgd exchanges (algorithms/detail/local_steps.hpp), so
// it travels through any compressor and compensator. The paper's defaults:
// alpha = 1, beta in [0.4, 0.8]; beta = 0 with alpha = 1 is local SGD, bit for
// bit (a test); BMUF is the same rule (block momentum beta, block step alpha).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "ecopt/algorithms/detail/local_steps.hpp"
#include "ecopt/algorithms/detail/slow_momentum.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/schedule.hpp"

namespace ecopt {

struct slowmo {
  static constexpr std::string_view name = "slowmo";

  std::uint64_t period = 12;   ///< tau: inner steps between averages
  double slow_lr = 1;          ///< alpha
  double slow_momentum = 0.5;  ///< beta, in [0, 1)
  local_momentum momentum_buffers = local_momentum::keep;

  void validate() const {
    detail::require_period(name, period);
    detail::require_positive(name, "slow_lr", slow_lr);
    detail::require_in_range(name, "slow_momentum", slow_momentum, 0, 1);
  }

  template <class T>
  struct state : detail::local_steps_state<T> {
    std::vector<T> slow_velocity;  ///< u
    explicit state(std::size_t dim) : detail::local_steps_state<T>(dim), slow_velocity(dim) {}
    template <class Archive>
    void persist(Archive& a) {
      detail::local_steps_state<T>::persist(a);
      a("slow_velocity", slow_velocity);
    }
  };

  template <class T, class C>
  [[nodiscard]] state<T> make_state(std::size_t dim, const C&) const {
    return state<T>(dim);
  }

  template <class T>
  void begin(std::span<const T> x, state<T>& s) const {
    std::copy(x.begin(), x.end(), s.anchor.begin());
  }

  template <class T, class Round>
  void step(Round& r, state<T>& s) const {
    if (detail::local_step<T>(r, s, period)) average(r, s);
  }

  template <class T, class Round>
  void finish(Round& r, state<T>& s) const {
    if (s.steps_in_period > 0) average(r, s);
  }

  template <class T>
  [[nodiscard]] std::span<const T> evaluation_point(std::span<const T>, const state<T>& s) const {
    return std::span<const T>(s.anchor);
  }

 private:
  template <class T, class Round>
  void average(Round& r, state<T>& s) const {
    const double gamma = detail::exchange_progress<T>(r, s, period);
    detail::slow_momentum_step(std::span<T>(s.anchor), std::span<T>(s.slow_velocity),
                               std::span<const T>(s.mean), slow_momentum, slow_lr * gamma);
    const std::span<T> x = r.x();
    std::copy(s.anchor.begin(), s.anchor.end(), x.begin());
    detail::settle_momentum<T>(r, momentum_buffers);
  }
};

static_assert(Schedule<slowmo, float> && Schedule<slowmo, double>);

}  // namespace ecopt
