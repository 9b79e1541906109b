#pragma once
// Nesterov momentum in the form used with stochastic gradients (Sutskever,
// Martens, Dahl, Hinton 2013):
//   v <- beta * v + direction,   x <- x - gamma_t * (direction + beta * v).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "ecopt/detail/span_checks.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct nesterov {
  static constexpr std::string_view name = "nesterov";

  double lr = 0.01;
  double momentum = 0.9;
  double lr_decay = 0;

  void validate() const {
    detail::require_positive(name, "lr", lr);
    detail::require_in_range(name, "momentum", momentum, 0, 1);
    detail::require_in_range(name, "lr_decay", lr_decay, 0, 1e300);
  }

  template <class T>
  struct state {
    std::vector<T> velocity;
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    return state<T>{std::vector<T>(dim, T(0))};
  }

  [[nodiscard]] double learning_rate(std::uint64_t step) const noexcept {
    return detail::decayed_step_size(lr, lr_decay, step);
  }

  template <class T>
  void apply(std::span<T> x, std::span<const T> direction, state<T>& s,
             const round_context& ctx) const {
    const std::size_t d = s.velocity.size();
    detail::require_size(name, "x", x.size(), d);
    detail::require_size(name, "direction", direction.size(), d);
    const T gamma = static_cast<T>(learning_rate(ctx.round));
    const T beta = static_cast<T>(momentum);
    T* v = s.velocity.data();
    for (std::size_t j = 0; j < d; ++j) {
      v[j] = beta * v[j] + direction[j];
      x[j] -= gamma * (direction[j] + beta * v[j]);
    }
  }
};

static_assert(Optimizer<nesterov, float> && Optimizer<nesterov, double>);

}  // namespace ecopt
