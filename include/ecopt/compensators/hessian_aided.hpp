#pragma once
// Hessian-aided error compensation: the memory is carried forward through
// A_k = I - gamma_k H(x_k) instead of the identity of plain error feedback.
//   v_k = g_k + (I - gamma_k H(x_k)) e_k,   q_k = C(v_k),   e_{k+1} = v_k - q_k
// Khirirat, Magnusson, Johansson 2021, arXiv:1909.10327.
//
// Why: with x~_k = x_k - gamma e_k (x moves by -gamma q_k), on a quadratic
// x~_{k+1} = x~_k - gamma grad f(x~_k): the virtual iterate runs exact gradient
// descent, so compression errors do not accumulate and ||x_k - x*|| <=
// rho^k ||x_0 - x*|| + gamma ||e_k||, one step's worth of compression error
// (gamma eps for a compressor with ||C(v) - v|| <= eps), independent of the
// condition number. Plain error feedback (A = I) leaves a term gamma^2 H e_k in
// that recursion, and no compensation leaves gamma (q_k - g_k).
//
// The memory is in gradient units; when the step size changes it is rescaled
// by gamma_old / gamma_new (`rescale_with_lr`), which keeps the identity exact
// under any schedule.
//
// Curvature: the solver calls observe_curvature(problem, x, state, ctx) before
// compensate, at the iterate the gradient was taken at (the same minibatch, for
// stochastic problems, would keep the identity sample by sample).
//  - curvature_source::hessian (default): H is evaluated into a d x d matrix
//    every `refresh_every` rounds (0: once, for constant Hessians such as
//    quadratics and least squares), and H e costs O(d^2) per round; memory
//    O(d^2). Needs the problem's hessian(x, H).
//  - curvature_source::hessian_vector: one problem.hessian_vector(x, e, out)
//    per round (O(nnz) for the data-fitting problems), O(d) memory. Needs
//    hessian_vector(x, v, out). refresh_every does not apply.
// Stability: A has spectrum in (-1, 1) iff 0 < gamma lambda < 2 for every
// eigenvalue lambda of H, i.e. gamma < 2/L on convex problems. Negative
// curvature (nonconvex f) or a larger step amplifies the memory; use
// diagonal_hessian, which clips, there.
// Several workers: each uses its own shard's Hessian H_i, which keeps the
// identity exact only when the H_i equal the global Hessian (identical
// shards); otherwise a term (gamma^2/n) sum_i (H - H_i) e_i remains.
#include <Eigen/Core>
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

/// Where hessian_aided takes the curvature from.
enum class curvature_source {
  hessian,         ///< the full Hessian, stored (d x d) and refreshed every refresh_every rounds
  hessian_vector,  ///< one Hessian-vector product H e per round, no d x d storage
};

struct hessian_aided {
  static constexpr std::string_view name = "hessian_aided";

  curvature_source source = curvature_source::hessian;
  /// Full-Hessian source: evaluate H every this many rounds (1 = every round,
  /// 0 = only at the first round, for problems whose Hessian is constant).
  std::uint64_t refresh_every = 1;
  /// Rescale the memory by gamma_old / gamma_new when the step size changes.
  bool rescale_with_lr = true;

  void validate() const {
    if (source != curvature_source::hessian && source != curvature_source::hessian_vector) {
      throw invalid_argument("hessian_aided: source is not a curvature_source value");
    }
  }

  template <class T>
  struct state {
    matrix_t<T> hessian;  ///< d x d for curvature_source::hessian, else empty
    vector_t<T> memory;   ///< e, in gradient units
    vector_t<T> product;  ///< H e at the observed iterate
    double last_lr = 0;
    std::uint64_t observations = 0;
    /// Set by observe_curvature, consumed by compensate.
    bool observed = false;
    template <class Archive>
    void persist(Archive& a) {
      a("hessian", hessian);
      a("memory", memory);
      a("product", product);
      a("last_lr", last_lr);
      a("observations", observations);
      a("observed", observed);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    const auto d = static_cast<Eigen::Index>(dim);
    const Eigen::Index n = source == curvature_source::hessian ? d : 0;
    return state<T>{
        matrix_t<T>::Zero(n, n), vector_t<T>::Zero(d), vector_t<T>::Zero(d), 0.0, 0, false};
  }

  template <Problem P>
  void observe_curvature(P& problem, const Eigen::Ref<const vector_t<problem_scalar_t<P>>>& x,
                         state<problem_scalar_t<P>>& s, const round_context& ctx) const {
    static_assert(HasHessian<P> || HasHessianVectorProduct<P>,
                  "hessian_aided needs a problem with hessian(x, H) or hessian_vector(x, v, out)");
    detail::require_size(name, "x", static_cast<std::size_t>(x.size()),
                         static_cast<std::size_t>(s.memory.size()));
    detail::rescale_memory(detail::whole_span(s.memory), s.last_lr, ctx.lr, rescale_with_lr);
    if (source == curvature_source::hessian) {
      if constexpr (HasHessian<P>) {
        if (detail::curvature_due(s.observations, refresh_every)) problem.hessian(x, s.hessian);
        s.product.noalias() = s.hessian * s.memory;
      } else {
        throw invalid_argument(
            "hessian_aided: source = curvature_source::hessian, but the problem has no "
            "hessian(x, H); use curvature_source::hessian_vector");
      }
    } else {
      if constexpr (HasHessianVectorProduct<P>) {
        problem.hessian_vector(x, s.memory, s.product);
      } else {
        throw invalid_argument(
            "hessian_aided: source = curvature_source::hessian_vector, but the problem has no "
            "hessian_vector(x, v, out); use curvature_source::hessian");
      }
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
    const T* e = s.memory.data();
    const T* he = s.product.data();
    for (std::size_t j = 0; j < d; ++j) p[j] = g[j] + (e[j] - gamma * he[j]);
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

static_assert(Compensator<hessian_aided, float> && Compensator<hessian_aided, double>);

}  // namespace ecopt
