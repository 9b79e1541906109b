#pragma once
// Error feedback (memory): each worker adds what compression dropped last time
// to its next message, so nothing is lost, only delayed.
//   p_t = g_t + e_t,   e_{t+1} = p_t - C(p_t)
// Seide et al. 2014 (1-bit SGD); Stich, Cordonnier, Jaggi 2018, arXiv:1809.07599;
// Karimireddy, Rebjock, Stich, Jaggi 2019, arXiv:1901.09847.
//
// Two conventions, which agree while the step size is constant:
//  - EF-SGD (Karimireddy et al.; `ef_sgd`, the default, rescale_with_lr = true):
//    the memory is in parameter units, p_t = gamma_t g_t + e_t, so what was
//    dropped is later applied with the step size it was computed for. Stored in
//    gradient units and rescaled by gamma_old / gamma_new when the step changes
//    (exact for positively homogeneous compressors, C(a x) = a C(x), a > 0:
//    top_k, scaled_sign, rand_k).
//  - classic memory (`classic_error_feedback`, rescale_with_lr = false): the
//    memory is in gradient units and never rescaled (DGC, PyTorch-style
//    communication hooks). Under a decaying step, a residual dropped early is
//    applied later with a smaller step than the one it was computed for.
// The compensator tests check each convention's conservation law.
#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "ecopt/compensator.hpp"
#include "ecopt/compensators/detail/memory.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct error_feedback {
  static constexpr std::string_view name = "error_feedback";

  /// Rescale the memory by gamma_old / gamma_new when the step size changes:
  /// true = parameter-unit memory (EF-SGD), false = classic gradient-unit memory.
  bool rescale_with_lr = true;

  template <class T>
  struct state {
    std::vector<T> memory;
    double last_lr = 0;
    template <class Archive>
    void persist(Archive& a) {
      a("memory", memory);
      a("last_lr", last_lr);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    return state<T>{std::vector<T>(dim, T(0)), 0.0};
  }

  template <class T>
  void compensate(std::span<const T> g, state<T>& s, std::span<T> p,
                  const round_context& ctx) const {
    const std::size_t d = s.memory.size();
    detail::require_size(name, "direction", g.size(), d);
    detail::require_size(name, "output", p.size(), d);
    detail::rescale_memory(detail::whole_span(s.memory), s.last_lr, ctx.lr, rescale_with_lr);
    const T* e = s.memory.data();
    for (std::size_t j = 0; j < d; ++j) p[j] = g[j] + e[j];
  }

  template <class T>
  void update(std::span<const T> p, std::span<const T> sent, state<T>& s,
              const round_context&) const {
    detail::store_residual(name, p, sent, detail::whole_span(s.memory));
  }

  /// The current memory (for observers and tests).
  template <class T>
  [[nodiscard]] static std::span<const T> memory(const state<T>& s) noexcept {
    return s.memory;
  }
};

/// EF-SGD: parameter-unit memory (Karimireddy et al. 2019, arXiv:1901.09847).
inline constexpr error_feedback ef_sgd{.rescale_with_lr = true};
/// Classic memory in gradient units, not rescaled when the step size changes.
inline constexpr error_feedback classic_error_feedback{.rescale_with_lr = false};

static_assert(Compensator<error_feedback, float> && Compensator<error_feedback, double>);

}  // namespace ecopt
