#pragma once
// (Minibatch) stochastic gradient descent on the aggregated direction:
//   x <- x - gamma_t * direction,  gamma_t = lr / (1 + lr_decay * t).
// With full gradients (batch = shard) this is distributed gradient descent.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "ecopt/detail/span_checks.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct sgd {
  static constexpr std::string_view name = "sgd";

  double lr = 0.01;
  double lr_decay = 0;

  void validate() const {
    detail::require_positive(name, "lr", lr);
    detail::require_in_range(name, "lr_decay", lr_decay, 0, 1e300);
  }

  struct state {
    std::size_t dim = 0;
    /// Nothing is carried from round to round (checkpoint.hpp).
    template <class Archive>
    void persist(Archive&) {}
  };

  template <class T>
  [[nodiscard]] state make_state(std::size_t dim) const {
    return state{dim};
  }

  [[nodiscard]] double learning_rate(std::uint64_t step) const noexcept {
    return detail::decayed_step_size(lr, lr_decay, step);
  }

  template <class T>
  void apply(std::span<T> x, std::span<const T> direction, state& s,
             const round_context& ctx) const {
    detail::require_size(name, "x", x.size(), s.dim);
    detail::require_size(name, "direction", direction.size(), s.dim);
    const T gamma = static_cast<T>(learning_rate(ctx.round));
    for (std::size_t j = 0; j < s.dim; ++j) x[j] -= gamma * direction[j];
  }

  /// The step before its size (SplitsStepSize): the direction itself.
  template <class T>
  void update_direction(std::span<const T> direction, std::span<T> update, state& s,
                        const round_context&) const {
    detail::require_size(name, "direction", direction.size(), s.dim);
    detail::require_size(name, "update", update.size(), s.dim);
    std::copy(direction.begin(), direction.end(), update.begin());
  }
};

static_assert(SplitsStepSize<sgd, float> && SplitsStepSize<sgd, double>);

}  // namespace ecopt
