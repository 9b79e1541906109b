#pragma once
// The residual memory e shared by the error-compensating policies
// (error_feedback, hessian_aided, diagonal_hessian): its rescaling when the step
// size changes, its update e = p - C(p), and the bookkeeping of the curvature
// observations that hessian_aided and diagonal_hessian need before compensate.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"

namespace ecopt::detail {

/// All entries of a contiguous vector (std::vector or an Eigen vector).
template <class V>
[[nodiscard]] auto whole_span(V& v) noexcept {
  return std::span(v.data(), static_cast<std::size_t>(v.size()));
}

/// A memory kept in gradient units applies what was dropped at step gamma_old
/// with the current step; multiplying it by gamma_old / gamma_new keeps the
/// parameter-unit residual gamma e unchanged (EF-SGD, Karimireddy et al. 2019,
/// arXiv:1901.09847). Records lr as the step size of the memory.
template <class T>
void rescale_memory(std::span<T> memory, double& last_lr, double lr, bool enabled) noexcept {
  if (enabled && last_lr > 0 && lr > 0 && lr != last_lr) {
    const T factor = static_cast<T>(last_lr / lr);
    for (T& e : memory) e *= factor;
  }
  last_lr = lr;
}

/// e = p - sent: what compression dropped this round, after checking the sizes.
template <class T>
void store_residual(std::string_view who, std::span<const T> p, std::span<const T> sent,
                    std::span<T> memory) {
  const std::size_t d = memory.size();
  require_size(who, "compressed input", p.size(), d);
  require_size(who, "decoded message", sent.size(), d);
  for (std::size_t j = 0; j < d; ++j) memory[j] = p[j] - sent[j];
}

/// Whether the curvature is due for evaluation at this observation: always at
/// the first, then every refresh_every (0: never again, for constant Hessians).
[[nodiscard]] inline bool curvature_due(std::uint64_t observations,
                                        std::uint64_t refresh_every) noexcept {
  return observations == 0 || (refresh_every > 0 && observations % refresh_every == 0);
}

/// Checks compensate's arguments for a curvature-using policy and consumes the
/// round's observation: compensate without observe_curvature would carry the
/// memory through a stale (or zero) curvature without notice.
inline void begin_curvature_compensation(std::string_view who, std::size_t g_size,
                                         std::size_t p_size, std::size_t d, bool& observed) {
  require_size(who, "direction", g_size, d);
  require_size(who, "output", p_size, d);
  if (!observed) {
    throw invalid_argument(std::string(who) +
                           ": compensate was called without observe_curvature(problem, x, "
                           "state, ctx) for this round; the caller must call it first "
                           "(UsesCurvature)");
  }
  observed = false;
}

}  // namespace ecopt::detail
