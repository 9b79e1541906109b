#pragma once
// Momentum and error accumulation kept on each worker, with "momentum
// stopping": Sketched SGD's worker side (Ivkin, Rothchild, Ullah, Braverman,
// Stoica, Arora 2019, arXiv:1903.04488; the worker update of the authors' code,
// dhroth/sketchedsgd, read for the facts).
//   u_t = rho u_{t-1} + g_t           (momentum, on the worker)
//   v_t = v_{t-1} + u_t,  p_t = v_t   (error accumulation; p_t is sketched)
//   after the exchange: v_t -= C(p_t); u_t[j] = 0 where C(p_t)[j] != 0
// The coordinates a round updates leave both the error (v minus what was sent,
// which is the paper's v[j] = 0 up to the float32 rounding of what was sent)
// and the momentum there, so a coordinate's momentum does not keep pushing it
// after its accumulated value has been applied.
//
// Why a compensator: ecopt's earlier composition, count_sketch + error_feedback
// with the optimizer's momentum (heavy_ball{.momentum = rho}), applies momentum
// to the aggregate after the exchange ("global momentum"); it is the paper's
// method only at rho = 0. The paper's form is count_sketch +
// momentum_error_feedback{.momentum = rho} + sgd (no momentum in the optimizer). At momentum = 0 it
// is error_feedback with the same rescale_with_lr, bit for bit. The support is read from this
// rank's own decoded message (nonzero entries), as the authors' code reads it from the update: a
// selected coordinate whose value is exactly 0 keeps its momentum. Small tensors (biases) go dense
// with per_block's small-block rule.
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/compensator.hpp"
#include "ecopt/compensators/detail/memory.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct momentum_error_feedback {
  static constexpr std::string_view name = "momentum_error_feedback";

  double momentum = 0.9;  ///< rho in [0, 1): the worker's momentum (the paper's 0.9)
  /// Rescale the error accumulation by gamma_old / gamma_new when the step size
  /// changes, as error_feedback does (the momentum is a gradient and is not).
  bool rescale_with_lr = true;

  void validate() const {
    if (!(momentum >= 0 && momentum < 1)) {
      throw invalid_argument("momentum_error_feedback: momentum = " + std::to_string(momentum) +
                             " must be in [0, 1)");
    }
  }

  template <class T>
  struct state {
    std::vector<T> velocity;  ///< u: the worker's momentum
    std::vector<T> memory;    ///< v: the error accumulation (what was not yet sent)
    double last_lr = 0;
    template <class Archive>
    void persist(Archive& a) {
      a("velocity", velocity);
      a("memory", memory);
      a("last_lr", last_lr);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    return state<T>{std::vector<T>(dim, T(0)), std::vector<T>(dim, T(0)), 0.0};
  }

  template <class T>
  void compensate(std::span<const T> g, state<T>& s, std::span<T> p,
                  const round_context& ctx) const {
    const std::size_t d = s.memory.size();
    detail::require_size(name, "direction", g.size(), d);
    detail::require_size(name, "output", p.size(), d);
    detail::rescale_memory(detail::whole_span(s.memory), s.last_lr, ctx.lr, rescale_with_lr);
    const auto rho = static_cast<T>(momentum);
    T* u = s.velocity.data();
    const T* v = s.memory.data();
    // At rho = 0, u = g bit for bit (no 0 * u term), so p is error_feedback's g + e.
    for (std::size_t j = 0; j < d; ++j) {
      u[j] = momentum == 0 ? g[j] : rho * u[j] + g[j];
      p[j] = u[j] + v[j];
    }
  }

  template <class T>
  void update(std::span<const T> p, std::span<const T> sent, state<T>& s,
              const round_context&) const {
    detail::store_residual(name, p, sent, detail::whole_span(s.memory));
    T* u = s.velocity.data();
    for (std::size_t j = 0; j < sent.size(); ++j) {
      if (sent[j] != T(0)) u[j] = T(0);  // momentum stopping
    }
  }

  /// The current error accumulation and momentum (for observers and tests).
  template <class T>
  [[nodiscard]] static std::span<const T> memory(const state<T>& s) noexcept {
    return s.memory;
  }
  template <class T>
  [[nodiscard]] static std::span<const T> velocity(const state<T>& s) noexcept {
    return s.velocity;
  }
};

static_assert(Compensator<momentum_error_feedback, float> &&
              Compensator<momentum_error_feedback, double>);

}  // namespace ecopt
