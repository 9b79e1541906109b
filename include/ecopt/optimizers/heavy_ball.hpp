#pragma once
// Heavy-ball momentum (Polyak 1964) on the aggregated direction:
//   v <- beta * v + direction,   x <- x - gamma_t * v.
// Every rank applies it to the same aggregate, so the momentum buffers agree.
// Fields: lr, momentum (beta in [0, 1)), lr_decay (gamma_t = lr / (1 + lr_decay * t)).
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/detail/momentum.hpp"

namespace ecopt {

using heavy_ball = detail::momentum_optimizer<detail::momentum_kind::heavy_ball>;

static_assert(SplitsStepSize<heavy_ball, float> && SplitsStepSize<heavy_ball, double>);

}  // namespace ecopt
