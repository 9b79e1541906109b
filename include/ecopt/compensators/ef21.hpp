#pragma once
// EF21: every worker keeps an estimate g_i of its own gradient and sends only
// a compressed correction to it; the optimizer applies the mean estimate.
//   c_i = C(grad_i - g_i),   g_i <- g_i + c_i,   g <- g + mean_i c_i   (= mean_i g_i)
// Richtarik, Sokolov, Fatkhullin 2021, arXiv:2106.05203.
//
// In the solver's terms: compensate emits p = grad_i - g_i, update adds this
// worker's own decoded C(p) to g_i, and reconstruct adds the mean of all ranks'
// decoded payloads to the running global estimate g and hands g to the
// optimizer. Every rank receives the same mean, so every rank keeps the same g
// (the paper's server copy): 2d values of state per worker.
//
// g_i starts at 0, so the first message is C(grad_i(x_0)), the paper's
// initialisation g_i^0 = C(grad f_i(x^0)).
//
// Why it is not error feedback: the memory here is an estimate of the
// gradient, not of what was dropped. At the optimum the corrections vanish once
// g_i = grad f_i(x*), even when the workers' gradients there are far from zero,
// so EF21 reaches the exact optimum with a constant step and any contractive
// compressor, where error feedback stalls at a step-size-dependent distance.
// The estimate is in gradient units, so step-size schedules need no rescaling.
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/compensator.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct ef21 {
  static constexpr std::string_view name = "ef21";

  template <class T>
  struct state {
    std::vector<T> local;   ///< g_i, this worker's gradient estimate
    std::vector<T> global;  ///< g, the mean of all workers' estimates
    /// Set by update and cleared by reconstruct: a caller that never calls
    /// reconstruct would apply the corrections instead of g.
    bool awaiting_reconstruct = false;
    template <class Archive>
    void persist(Archive& a) {
      a("local", local);
      a("global", global);
      a("awaiting_reconstruct", awaiting_reconstruct);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    return state<T>{std::vector<T>(dim, T(0)), std::vector<T>(dim, T(0)), false};
  }

  /// The paper's step-size bound for smooth nonconvex f:
  /// gamma <= 1 / (L + L_tilde sqrt(beta / theta)), theta = 1 - sqrt(1 - alpha),
  /// beta = (1 - alpha) / theta, with alpha the compressor's contraction (delta),
  /// L the smoothness of f and L_tilde = sqrt(mean_i L_i^2).
  [[nodiscard]] static double theory_step_size(double l, double l_tilde, double alpha) {
    if (!(l > 0) || !std::isfinite(l)) {
      throw invalid_argument("ef21::theory_step_size: L must be positive and finite, got " +
                             std::to_string(l));
    }
    if (!(l_tilde >= 0) || !std::isfinite(l_tilde)) {
      throw invalid_argument("ef21::theory_step_size: L_tilde must be finite and >= 0, got " +
                             std::to_string(l_tilde));
    }
    if (!(alpha > 0 && alpha <= 1)) {
      throw invalid_argument("ef21::theory_step_size: alpha must be in (0, 1], got " +
                             std::to_string(alpha));
    }
    const double theta = 1.0 - std::sqrt(1.0 - alpha);
    const double beta = (1.0 - alpha) / theta;
    return 1.0 / (l + l_tilde * std::sqrt(beta / theta));
  }

  template <class T>
  void compensate(std::span<const T> g, state<T>& s, std::span<T> p, const round_context&) const {
    const std::size_t d = s.local.size();
    detail::require_size(name, "direction", g.size(), d);
    detail::require_size(name, "output", p.size(), d);
    if (s.awaiting_reconstruct) {
      throw invalid_argument(
          "ef21: reconstruct was not called after the last update; the caller must apply the "
          "direction from reconstruct (ReconstructsDirection), not the mean of the payloads");
    }
    const T* gi = s.local.data();
    for (std::size_t j = 0; j < d; ++j) p[j] = g[j] - gi[j];
  }

  template <class T>
  void update(std::span<const T> p, std::span<const T> sent, state<T>& s,
              const round_context&) const {
    const std::size_t d = s.local.size();
    detail::require_size(name, "compressed input", p.size(), d);
    detail::require_size(name, "decoded message", sent.size(), d);
    T* gi = s.local.data();
    for (std::size_t j = 0; j < d; ++j) gi[j] += sent[j];
    s.awaiting_reconstruct = true;
  }

  template <class T>
  void reconstruct(std::span<const T> mean_sent, state<T>& s, std::span<T> direction,
                   const round_context&) const {
    const std::size_t d = s.global.size();
    detail::require_size(name, "mean of the payloads", mean_sent.size(), d);
    detail::require_size(name, "reconstructed direction", direction.size(), d);
    T* g = s.global.data();
    for (std::size_t j = 0; j < d; ++j) {
      g[j] += mean_sent[j];
      direction[j] = g[j];
    }
    s.awaiting_reconstruct = false;
  }

  /// This worker's estimate g_i (for observers and tests).
  template <class T>
  [[nodiscard]] static std::span<const T> local_estimate(const state<T>& s) noexcept {
    return s.local;
  }
  /// The global estimate g, the direction applied last round.
  template <class T>
  [[nodiscard]] static std::span<const T> global_estimate(const state<T>& s) noexcept {
    return s.global;
  }
};

static_assert(Compensator<ef21, float> && Compensator<ef21, double>);
static_assert(ReconstructsDirection<ef21, float> && ReconstructsDirection<ef21, double>);

}  // namespace ecopt
