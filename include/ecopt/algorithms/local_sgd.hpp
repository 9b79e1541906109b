#pragma once
// Local SGD (periodic model averaging; Stich 2019, arXiv:1805.09767; Lin et
// al. 2020, arXiv:1808.07217): each worker takes H steps of the inner
// optimizer on its own model, then the workers average their progress and
// restart from the averaged model. Any compressor and compensator apply to
// the averaged progress (sparsified / quantized local SGD with error feedback,
// Basu et al. 2019, arXiv:1906.02367): a period costs one exchange, so the
// bits are those of synchronous SGD divided by H.
//
//   x_i <- x_0;  H times: x_i <- x_i - gamma u_i   (u_i: the optimizer's update)
//   p_i = sum of the u_i (in units of gamma, algorithms/detail/local_steps.hpp)
//   x_0 <- x_0 - outer_lr * gamma * mean_i(p_i);  x_i <- x_0
//
// outer_lr is the outer step of Woodworth et al.'s inner/outer form
// (arXiv:2002.07839): 1 is plain averaging. With H = 1 and plain SGD this is
// synchronous SGD bit for bit (a test), compressed or not.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "ecopt/algorithms/detail/local_steps.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/schedule.hpp"

namespace ecopt {

struct local_sgd {
  static constexpr std::string_view name = "local_sgd";

  std::uint64_t period = 8;  ///< H: local steps between averages
  double outer_lr = 1;       ///< step along the averaged progress (1: plain averaging)
  local_momentum momentum_buffers = local_momentum::keep;

  void validate() const {
    detail::require_period(name, period);
    detail::require_positive(name, "outer_lr", outer_lr);
  }

  template <class T>
  using state = detail::local_steps_state<T>;

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
    if (detail::local_step(r, s, period)) average(r, s);
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
    const double gamma = detail::exchange_progress(r, s, period);
    const T step = static_cast<T>(outer_lr * gamma);
    const std::span<T> x = r.x();
    for (std::size_t j = 0; j < x.size(); ++j) {
      s.anchor[j] -= step * s.mean[j];
      x[j] = s.anchor[j];
    }
    detail::settle_momentum<T>(r, momentum_buffers);
  }
};

static_assert(Schedule<local_sgd, float> && Schedule<local_sgd, double>);

}  // namespace ecopt
