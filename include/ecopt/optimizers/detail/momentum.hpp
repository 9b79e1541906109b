#pragma once
// The shared body of the two momentum optimizers (heavy_ball.hpp, nesterov.hpp):
// same fields, same state, one line of difference in the step.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "ecopt/detail/span_checks.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt::detail {

enum class momentum_kind { heavy_ball, nesterov };

template <momentum_kind Kind>
struct momentum_optimizer {
  static constexpr std::string_view name =
      Kind == momentum_kind::nesterov ? "nesterov" : "heavy_ball";

  double lr = 0.01;
  double momentum = 0.9;
  double lr_decay = 0;

  void validate() const {
    require_positive(name, "lr", lr);
    require_in_range(name, "momentum", momentum, 0, 1);
    require_in_range(name, "lr_decay", lr_decay, 0, 1e300);
  }

  template <class T>
  struct state {
    std::vector<T> velocity;
    template <class Archive>
    void persist(Archive& a) {
      a("velocity", velocity);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    return state<T>{std::vector<T>(dim, T(0))};
  }

  [[nodiscard]] double learning_rate(std::uint64_t step) const noexcept {
    return decayed_step_size(lr, lr_decay, step);
  }

  template <class T>
  void apply(std::span<T> x, std::span<const T> direction, state<T>& s,
             const round_context& ctx) const {
    const std::size_t d = s.velocity.size();
    require_size(name, "x", x.size(), d);
    require_size(name, "direction", direction.size(), d);
    const T gamma = static_cast<T>(learning_rate(ctx.round));
    const T beta = static_cast<T>(momentum);
    T* v = s.velocity.data();
    for (std::size_t j = 0; j < d; ++j) {
      v[j] = beta * v[j] + direction[j];
      if constexpr (Kind == momentum_kind::nesterov) {
        x[j] -= gamma * (direction[j] + beta * v[j]);
      } else {
        x[j] -= gamma * v[j];
      }
    }
  }

  /// The step before its size (SplitsStepSize): the same velocity update as
  /// apply, and u = direction + beta v (Nesterov) or v (heavy ball).
  template <class T>
  void update_direction(std::span<const T> direction, std::span<T> update, state<T>& s,
                        const round_context&) const {
    const std::size_t d = s.velocity.size();
    require_size(name, "direction", direction.size(), d);
    require_size(name, "update", update.size(), d);
    const T beta = static_cast<T>(momentum);
    T* v = s.velocity.data();
    for (std::size_t j = 0; j < d; ++j) {
      v[j] = beta * v[j] + direction[j];
      if constexpr (Kind == momentum_kind::nesterov) {
        update[j] = direction[j] + beta * v[j];
      } else {
        update[j] = v[j];
      }
    }
  }
};

}  // namespace ecopt::detail
