#pragma once
// Nesterov momentum in the form used with stochastic gradients (Sutskever,
// Martens, Dahl, Hinton 2013):
//   v <- beta * v + direction,   x <- x - gamma_t * (direction + beta * v).
// Fields: lr, momentum (beta in [0, 1)), lr_decay (gamma_t = lr / (1 + lr_decay * t)).
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/detail/momentum.hpp"

namespace ecopt {

using nesterov = detail::momentum_optimizer<detail::momentum_kind::nesterov>;

static_assert(SplitsStepSize<nesterov, float> && SplitsStepSize<nesterov, double>);

}  // namespace ecopt
