#pragma once
// The snapshot of the loopless variance-reduced methods, L-SVRG and
// L-Katyusha (Kovalev, Horvath, Richtarik 2019, arXiv:1901.08689), shared by
// ec_lsvrg and eclk: the reference point w, the full gradient at w, and the
// minibatch gradient at w that the estimator subtracts. Instead of an outer
// loop, each round a coin replaces w with the iterate before the step, with
// probability p; the full gradient at the new w is then due, and the next
// round's gradient hook computes it. The coin is shared_coin, equal on every
// rank, so w stays equal on all ranks. All memory is sized by zeros(): no
// allocation per round.
#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "ecopt/counter_rng.hpp"
#include "ecopt/optimizers/detail/gradient_hook.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt::detail {

template <class T>
struct loopless_snapshot {
  vector_t<T> point;               ///< w
  vector_t<T> gradient;            ///< the full gradient at w
  vector_t<T> at_point;            ///< scratch: the round's minibatch gradient at w
  std::vector<std::size_t> batch;  ///< the round's sample indices
  std::uint64_t refreshes = 0;     ///< full gradients at w computed so far
  bool started = false;
  bool due = false;  ///< the coin replaced w: its full gradient is due

  /// w, its full gradient and the coin's bookkeeping (the batch is per round).
  template <class Archive>
  void persist(Archive& a) {
    a("point", point);
    a("gradient", gradient);
    a("refreshes", refreshes);
    a("started", started);
    a("due", due);
  }

  /// Zero vectors of size dim and a batch of batch_size indices.
  [[nodiscard]] static loopless_snapshot zeros(std::size_t dim, std::size_t batch_size) {
    const auto d = static_cast<Eigen::Index>(dim);
    loopless_snapshot s;
    s.point = vector_t<T>::Zero(d);
    s.gradient = vector_t<T>::Zero(d);
    s.at_point = vector_t<T>::Zero(d);
    s.batch.assign(batch_size, 0);
    return s;
  }

  /// In the first round only: w = x, with its full gradient due. Returns
  /// whether this was the first round.
  template <class X>
  bool start(const X& x) {
    if (started) return false;
    point = x;
    started = true;
    due = true;
    return true;
  }

  /// When due: gradient = problem's full gradient at w, then reduce(gradient)
  /// (in place, e.g. the mean over ranks).
  template <class P, class Reduce>
  void refresh(P& problem, Reduce&& reduce) {
    if (!due) return;
    problem.gradient(point, gradient);
    reduce(std::span<T>(gradient.data(), static_cast<std::size_t>(gradient.size())));
    due = false;
    ++refreshes;
  }
  template <class P>
  void refresh(P& problem) {
    refresh(problem, [](std::span<T>) {});
  }

  /// Draws the round's minibatch B; g = the sample gradient over B at x,
  /// at_point = the sample gradient over B at w.
  template <class P, class X>
  void sample_gradients(P& problem, counter_rng& sampler, const X& x, Eigen::Ref<vector_t<T>> g) {
    draw_samples(sampler, problem.samples(), batch);
    problem.sample_gradient(x, batch, g);
    problem.sample_gradient(point, batch, at_point);
  }

  /// The round's coin, tossed by apply before it moves x: with probability p,
  /// w <- x (the iterate before this round's step), its full gradient due.
  void flip(const round_context& ctx, double p, std::span<const T> x) {
    if (!shared_coin(ctx.seed, ctx.round, p)) return;
    T* w = point.data();
    for (std::size_t j = 0; j < x.size(); ++j) w[j] = x[j];
    due = true;
  }
};

}  // namespace ecopt::detail
