#pragma once
// SlowMo's outer step (Wang, Tantia, Ballas, Rabbat 2019, arXiv:1910.00643),
// shared by its local-SGD base (slowmo.hpp) and its gossip base
// (stochastic_gradient_push.hpp): given the averaged pseudo-gradient
// p = (x_0 - x_avg) / gamma,
//   u <- beta u + p,   x_0 <- x_0 - alpha gamma u.
#include <algorithm>
#include <cstddef>
#include <span>

namespace ecopt::detail {

template <class T>
void slow_momentum_step(std::span<T> anchor, std::span<T> velocity, std::span<const T> pseudo,
                        double beta, double alpha_gamma) {
  if (beta == 0) {
    // Not 0 * u + p: beta = 0 is local SGD to the sign of zero.
    std::copy(pseudo.begin(), pseudo.end(), velocity.begin());
  } else {
    const T b = static_cast<T>(beta);
    for (std::size_t j = 0; j < velocity.size(); ++j) velocity[j] = b * velocity[j] + pseudo[j];
  }
  const T step = static_cast<T>(alpha_gamma);
  for (std::size_t j = 0; j < anchor.size(); ++j) anchor[j] -= step * velocity[j];
}

}  // namespace ecopt::detail
