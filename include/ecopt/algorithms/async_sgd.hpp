#pragma once
// Asynchronous SGD with bounded staleness, a server schedule of
// parameter_server (parameter_server.hpp): the server applies each worker's
// compressed update as it arrives, x <- x - gamma_k Q(g(x_{k - tau_k})), and
// sends that worker the new model. tau_k, the staleness, is measured: the
// number of model versions between the one the gradient was taken at and the
// one it is applied to (server_counts::staleness is its histogram). Updates
// with tau_k > max_staleness are dropped and counted; their worker gets the
// current model (and, with error feedback, keeps the dropped update in its
// memory: server_worker.hpp).
//
// The step accounts for the delay (delay_rule):
//  * bound: gamma / (1 + max_staleness) for every update, the rule of
//    Khirirat, Feyzmahdavian, Johansson 2018 (arXiv:1806.06573), with which
//    compressed gradient descent converges for any delays up to the bound
//    (optimizers/delayed_step_size.hpp has the constants);
//  * per_update: gamma / (1 + tau_k), each update damped by its own measured
//    staleness (Zhang, Gupta, Lian, Liu 2016, "Staleness-aware async-SGD",
//    arXiv:1511.05950): faster when most delays are well below the bound;
//  * blind: gamma, as if there were no delay (the baseline that diverges).
// gamma is the optimizer's step size; the rule scales the direction the
// optimizer is given.
//
// Several servers each holding a shard of the model is the way this scales;
// the messages carry the model version per server, so a shard is a server
// with its own version counter (not built yet: one server holds the model).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/algorithms/detail/server_messages.hpp"
#include "ecopt/error.hpp"

namespace ecopt {

enum class delay_rule { bound, per_update, blind };

struct async_sgd {
  static constexpr std::string_view name = "async_sgd";

  std::uint64_t max_staleness = 16;  ///< tau: older updates are dropped
  delay_rule step_rule = delay_rule::bound;

  void validate() const {
    if (max_staleness > (std::uint64_t{1} << 40)) {
      throw invalid_argument("async_sgd: max_staleness " + std::to_string(max_staleness) +
                             " is not a bound (at most 2^40)");
    }
  }

  template <class T>
  struct state {
    std::vector<T> update;
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim, int) const {
    return state<T>{std::vector<T>(dim)};
  }

  /// The factor of the optimizer's step for an update of staleness `tau`.
  [[nodiscard]] double step_scale(std::uint64_t tau) const noexcept {
    switch (step_rule) {
      case delay_rule::bound:
        return 1.0 / (1.0 + static_cast<double>(max_staleness));
      case delay_rule::per_update:
        return 1.0 / (1.0 + static_cast<double>(tau));
      case delay_rule::blind:
        break;
    }
    return 1.0;
  }

  template <class T, class Round>
  void serve(Round& r, state<T>& s) const {
    for (int w = 0; w < r.workers(); ++w) r.publish(w, update_fate::none);
    while (!r.finished()) {
      const auto u = r.take();
      if (u.staleness > max_staleness) {
        r.drop(u, true);
        continue;
      }
      std::fill(s.update.begin(), s.update.end(), T(0));
      r.decode_add(u, std::span<T>(s.update), T(1));
      r.step(std::span<const T>(s.update), 1, 1, static_cast<T>(step_scale(u.staleness)));
      r.publish(u.worker, update_fate::applied);
    }
  }
};

}  // namespace ecopt
