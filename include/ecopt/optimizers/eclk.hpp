#pragma once
// ECLK, error-compensated loopless Katyusha (Qian, Richtarik, Zhang 2021,
// arXiv:2010.00091), on the loopless Katyusha of Kovalev, Horvath, Richtarik
// 2019 (arXiv:1901.08689). Run it as solver<C, error_feedback, eclk>: the
// compensator keeps each rank's memory e, so what is sent is C(d_k + e).
//
// Every rank keeps z, the snapshot w and u = grad f(w), the gradient of the
// GLOBAL objective f = (1/n) sum_ranks f_rank at w. The solver's x is y, the
// output iterate that the solver evaluates. Round k (theta3 = 1 - theta1 - theta2):
//   gradient hook:  x_k = theta1 z + theta2 w + theta3 y                 (the query point)
//                   d_k = (1/b) sum_{i in B} [grad f_i(x_k) - grad f_i(w)]  (this rank's shard)
//   exchange:       a = mean over ranks of the compensated, compressed d_k
//   apply:          z' = (lr mu x_k + z - lr (a + u)) / (1 + lr mu)
//                   y' = x_k + theta1 (z' - z)
//                   w' = y (the OLD y) with probability p, by a coin every rank draws alike
//   next hook, after a new w:  u = mean over ranks of grad f_rank(w), sent uncompressed.
// Only the difference d_k is compressed: it vanishes as x_k and w approach x*,
// so the compression error does too, even when the shards differ and
// grad f_rank(x*) != 0 (compressing the whole estimator would leave an error
// floor, the obstacle EC-SGD-DIANA removes with shifts). The exact snapshot
// gradient costs one dense allreduce with probability p per round.
// This is our reading of the paper's Algorithm 1 (arXiv:2010.00091; the
// algorithm box was not re-read when this was written, see
// shared/papers.md section 4): lr = eta / L in Kovalev et al.'s notation, the
// memory in parameter units (step-size aware; the step is constant, so
// error_feedback's two conventions agree).
//
// Fields: lr (the z step, eta / L), mu (strong convexity), theta1, theta2
// (theta1 + theta2 <= 1), p (snapshot probability), batch_size (b). eclk::from
// derives them from L, mu, the compressor's delta and p. Needs a FiniteSumProblem.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/detail/gradient_hook.hpp"
#include "ecopt/optimizers/detail/loopless_snapshot.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct eclk {
  static constexpr std::string_view name = "eclk";

  double lr = 0.01;            ///< step of the z-update (eta / L)
  double mu = 0;               ///< strong convexity constant of f
  double theta1 = 0.5;         ///< weight of z in the query point
  double theta2 = 0.5;         ///< weight of the snapshot w in the query point
  double p = 0.1;              ///< probability of a new snapshot per round
  std::size_t batch_size = 1;  ///< samples per rank per round

  /// A heuristic, not the paper's rule: Qian, Richtarik, Zhang state ECLK's
  /// step with delta-dependent constants we could not check, so this takes
  /// the parameters of L-Katyusha's theorem (Kovalev et al. 2019): with
  /// sigma = mu / L,
  ///   theta1 = min(sqrt(2 sigma / (3 p)), 1/2),  theta2 = 1/2,
  ///   eta = theta2 / ((1 + theta2) theta1) = 1 / (3 theta1),  lr = eta / L,
  /// taken at the compressed smoothness L / delta: error feedback delays what
  /// a delta-contraction drops by about 1/delta rounds, and a gradient that
  /// late is stable at a step about delta times the uncompressed one
  /// [derived; the paper's exact delta-dependent constants were not checked].
  /// delta = 1 (no compression) gives L-Katyusha. L: smoothness of the sample
  /// functions (of the minibatch estimator), mu: strong convexity of f, delta
  /// in (0, 1], p in (0, 1] (about batch_size / samples per rank).
  [[nodiscard]] static eclk from(double L, double mu, double delta, double p,
                                 std::size_t batch_size = 1) {
    detail::require_positive(name, "L", L);
    detail::require_positive(name, "mu", mu);
    if (!(mu <= L)) {
      throw invalid_argument("eclk::from: mu = " + std::to_string(mu) +
                             " exceeds the smoothness L = " + std::to_string(L));
    }
    detail::require_probability(name, "delta", delta);
    detail::require_probability(name, "p", p);
    const double smoothness = L / delta;
    const double sigma = mu / smoothness;
    const double theta1 = std::min(std::sqrt(2.0 * sigma / (3.0 * p)), 0.5);
    const double theta2 = 0.5;
    const double eta = theta2 / ((1.0 + theta2) * theta1);
    return eclk{.lr = eta / smoothness,
                .mu = mu,
                .theta1 = theta1,
                .theta2 = theta2,
                .p = p,
                .batch_size = batch_size};
  }

  void validate() const {
    detail::require_positive(name, "lr", lr);
    detail::require_in_range(name, "mu", mu, 0, 1e300);
    if (!(theta1 > 0 && theta2 >= 0 && theta1 + theta2 <= 1)) {
      throw invalid_argument("eclk: theta1 = " + std::to_string(theta1) +
                             " and theta2 = " + std::to_string(theta2) +
                             " must satisfy theta1 > 0, theta2 >= 0, theta1 + theta2 <= 1");
    }
    detail::require_probability(name, "p", p);
    detail::require_batch(name, batch_size);
  }

  template <class T>
  struct state {
    vector_t<T> z;
    vector_t<T> query;                      ///< x_k of this round
    detail::loopless_snapshot<T> snapshot;  ///< w and u = grad f(w) of the global objective
    bool taken = false;                     ///< the gradient hook ran this round
    template <class Archive>
    void persist(Archive& a) {
      a("z", z);
      a("query", query);
      a.nest("snapshot", snapshot);
      a("taken", taken);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    const auto d = static_cast<Eigen::Index>(dim);
    state<T> s;
    s.z = vector_t<T>::Zero(d);
    s.query = vector_t<T>::Zero(d);
    s.snapshot = detail::loopless_snapshot<T>::zeros(dim, batch_size);
    return s;
  }

  [[nodiscard]] double learning_rate(std::uint64_t) const noexcept { return lr; }

  template <Problem P>
  void gradient(P& problem, const Eigen::Ref<const vector_t<problem_scalar_t<P>>>& y,
                Eigen::Ref<vector_t<problem_scalar_t<P>>> g, state<problem_scalar_t<P>>& s,
                counter_rng& sampler, const round_context&,
                const uncompressed_mean<problem_scalar_t<P>>& mean) const {
    using T = problem_scalar_t<P>;
    static_assert(FiniteSumProblem<P>,
                  "eclk needs a FiniteSumProblem (samples() and sample_gradient)");
    const auto d = static_cast<std::size_t>(s.z.size());
    detail::require_size(name, "x", static_cast<std::size_t>(y.size()), d);
    detail::require_size(name, "g", static_cast<std::size_t>(g.size()), d);
    if (s.snapshot.start(y)) s.z = y;  // x_0 = y_0 = z_0 = w_0
    // When due, every rank's coin agreed, so every rank is here this round.
    s.snapshot.refresh(problem, mean);
    const T t1 = static_cast<T>(theta1);
    const T t2 = static_cast<T>(theta2);
    const T t3 = T(1) - t1 - t2;
    s.query = t1 * s.z + t2 * s.snapshot.point + t3 * y;
    s.snapshot.sample_gradients(problem, sampler, s.query, g);
    g -= s.snapshot.at_point;
    s.taken = true;
  }

  /// y <- y' from the mean of the ranks' compressed differences (see the header).
  template <class T>
  void apply(std::span<T> y, std::span<const T> direction, state<T>& s,
             const round_context& ctx) const {
    const auto d = static_cast<std::size_t>(s.z.size());
    detail::require_size(name, "x", y.size(), d);
    detail::require_size(name, "direction", direction.size(), d);
    detail::consume_gradient_hook(name, s.taken);
    const T step = static_cast<T>(lr);
    const T pull = static_cast<T>(lr * mu);
    const T shrink = T(1) / (T(1) + pull);
    const T t1 = static_cast<T>(theta1);
    s.snapshot.flip(ctx, p, y);  // w <- the old y, with probability p
    T* z = s.z.data();
    const T* q = s.query.data();
    const T* u = s.snapshot.gradient.data();
    for (std::size_t j = 0; j < d; ++j) {
      const T z_next = (pull * q[j] + z[j] - step * (direction[j] + u[j])) * shrink;
      const T y_next = q[j] + t1 * (z_next - z[j]);
      z[j] = z_next;
      y[j] = y_next;
    }
  }
};

static_assert(Optimizer<eclk, float> && Optimizer<eclk, double>);

}  // namespace ecopt
