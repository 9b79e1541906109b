#pragma once
// Diagonal-Hessian error compensation: hessian_aided with H replaced by its
// diagonal D, the cheap variant of Khirirat, Magnusson, Johansson 2021,
// arXiv:1909.10327:
//   v_k = g_k + (I - gamma_k D(x_k)) e_k,   q_k = C(v_k),   e_{k+1} = v_k - q_k
// O(d) memory and work per round, plus the problem's hessian_diagonal every
// `refresh_every` rounds (O(nnz) for the data-fitting problems).
//
// Accuracy: with x~_k = x_k - gamma e_k, on a quadratic
// x~_{k+1} = x~_k - gamma grad f(x~_k) - gamma^2 (H - D) e_k, so the method is
// exactly Hessian-aided (no accumulation of compression errors) when H is
// diagonal, and otherwise the off-diagonal part of H sets the error floor,
// about gamma eps (1 + ||H - D|| / mu).
//
// Stability: each coordinate's factor is 1 - clip(gamma D_jj, 0, max_scaled_curvature).
// Clipping at 0 keeps the memory from growing where the curvature is negative
// (nonconvex problems); the cap keeps |1 - gamma D_jj| < 1 when the step is
// too large for a coordinate. The default cap of 1 never flips the memory's
// sign and changes nothing while gamma <= 1/L (diagonal entries of a positive
// semidefinite H are at most L); caps up to 2 keep exactness for
// 1/L < gamma < 2/L at the price of oscillating memory.
// The memory is in gradient units, rescaled by gamma_old / gamma_new when the
// step size changes (`rescale_with_lr`).
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "ecopt/compensator.hpp"
#include "ecopt/compensators/detail/memory.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct diagonal_hessian {
  static constexpr std::string_view name = "diagonal_hessian";

  /// Evaluate the diagonal every this many rounds (1 = every round, 0 = only at
  /// the first round, for problems whose Hessian is constant).
  std::uint64_t refresh_every = 1;
  /// gamma * D_jj is clipped to [0, max_scaled_curvature]; must lie in (0, 2).
  double max_scaled_curvature = 1.0;
  /// Rescale the memory by gamma_old / gamma_new when the step size changes.
  bool rescale_with_lr = true;

  void validate() const {
    if (!(max_scaled_curvature > 0.0 && max_scaled_curvature < 2.0)) {
      throw invalid_argument(
          "diagonal_hessian: max_scaled_curvature = " + std::to_string(max_scaled_curvature) +
          " must be in (0, 2) for the memory to stay bounded");
    }
  }

  template <class T>
  struct state {
    vector_t<T> diagonal;  ///< D_jj at the last refresh
    vector_t<T> memory;    ///< e, in gradient units
    double last_lr = 0;
    std::uint64_t observations = 0;
    /// Set by observe_curvature, consumed by compensate.
    bool observed = false;
    template <class Archive>
    void persist(Archive& a) {
      a("diagonal", diagonal);
      a("memory", memory);
      a("last_lr", last_lr);
      a("observations", observations);
      a("observed", observed);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    const auto d = static_cast<Eigen::Index>(dim);
    return state<T>{vector_t<T>::Zero(d), vector_t<T>::Zero(d), 0.0, 0, false};
  }

  template <Problem P>
  void observe_curvature(P& problem, const Eigen::Ref<const vector_t<problem_scalar_t<P>>>& x,
                         state<problem_scalar_t<P>>& s, const round_context& ctx) const {
    static_assert(HasHessianDiagonal<P>,
                  "diagonal_hessian needs a problem with hessian_diagonal(x, out)");
    detail::require_size(name, "x", static_cast<std::size_t>(x.size()),
                         static_cast<std::size_t>(s.memory.size()));
    detail::rescale_memory(detail::whole_span(s.memory), s.last_lr, ctx.lr, rescale_with_lr);
    if (detail::curvature_due(s.observations, refresh_every)) {
      problem.hessian_diagonal(x, s.diagonal);
    }
    ++s.observations;
    s.observed = true;
  }

  template <class T>
  void compensate(std::span<const T> g, state<T>& s, std::span<T> p,
                  const round_context& ctx) const {
    const auto d = static_cast<std::size_t>(s.memory.size());
    detail::begin_curvature_compensation(name, g.size(), p.size(), d, s.observed);
    const auto gamma = static_cast<T>(ctx.lr);
    const auto cap = static_cast<T>(max_scaled_curvature);
    const T* e = s.memory.data();
    const T* h = s.diagonal.data();
    for (std::size_t j = 0; j < d; ++j) {
      // std::clamp would pass a NaN curvature through; this maps it to 0.
      const T scaled = gamma * h[j];
      const T clipped = scaled > T(0) ? std::min(scaled, cap) : T(0);
      p[j] = g[j] + (T(1) - clipped) * e[j];
    }
  }

  template <class T>
  void update(std::span<const T> p, std::span<const T> sent, state<T>& s,
              const round_context&) const {
    detail::store_residual(name, p, sent, detail::whole_span(s.memory));
  }

  /// The current memory e (for observers and tests).
  template <class T>
  [[nodiscard]] static std::span<const T> memory(const state<T>& s) noexcept {
    return {s.memory.data(), static_cast<std::size_t>(s.memory.size())};
  }
};

static_assert(Compensator<diagonal_hessian, float> && Compensator<diagonal_hessian, double>);

}  // namespace ecopt
