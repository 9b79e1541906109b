#pragma once
// straggler_model: how long each worker computes each step, for experiments
// and tests with slow and irregular workers (the setting of synchronous SGD
// with backup workers, Chen, Pan, Monga, Bengio, Jozefowicz 2016,
// arXiv:1604.00981, and of asynchronous SGD). A step of rank r takes
//
//   base_seconds * factor(r) * m,
//
// factor(r) = the factor listed for r in slow_ranks (else 1), and m drawn per
// (rank, step) from the tail: none (m = 1), exponential (m = 1 + E with E of
// mean tail, a shifted exponential, the model of Chen et al.'s Figure 2 fit),
// or log-normal (m = exp(tail Z - tail^2 / 2), mean 1, heavy for tail >= 1).
// The draws are counter-based: the same (seed, rank, step) gives the same time
// on every run and machine.
//
// Two ways to spend the time, wrapped around a problem's stochastic_gradient
// (with_compute_time): modelled_compute charges it to a simulated_transport's
// clock (modelled time, no waiting), injected_delay sleeps it (real runs on
// threads or over TCP).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"

namespace ecopt {

enum class compute_tail { none, exponential, log_normal };

struct slow_rank {
  int rank = 0;
  double factor = 1;  ///< its steps take this many times the base
};

struct straggler_model {
  static constexpr std::string_view name = "straggler_model";

  double base_seconds = 0.01;
  compute_tail tail_kind = compute_tail::none;
  double tail = 0;  ///< exponential: mean of the extra multiple; log-normal: sigma
  std::vector<slow_rank> slow_ranks{};
  std::uint64_t seed = 0;

  void validate() const {
    auto bad = [](const std::string& what) { return invalid_argument("straggler_model: " + what); };
    if (!(base_seconds >= 0) || !std::isfinite(base_seconds)) {
      throw bad("base_seconds must be finite and >= 0, got " + std::to_string(base_seconds));
    }
    if (!(tail >= 0) || !std::isfinite(tail)) {
      throw bad("tail must be finite and >= 0, got " + std::to_string(tail));
    }
    for (const slow_rank& s : slow_ranks) {
      if (s.rank < 0) throw bad("slow rank " + std::to_string(s.rank) + " is negative");
      if (!(s.factor > 0) || !std::isfinite(s.factor)) {
        throw bad("the factor of slow rank " + std::to_string(s.rank) +
                  " must be finite and > 0, got " + std::to_string(s.factor));
      }
    }
  }

  /// factor(rank): the listed factor, else 1.
  [[nodiscard]] double factor(int rank) const noexcept {
    for (const slow_rank& s : slow_ranks) {
      if (s.rank == rank) return s.factor;
    }
    return 1;
  }

  /// The compute time of `rank` at `step`.
  [[nodiscard]] double seconds(int rank, std::uint64_t step) const {
    return base_seconds * factor(rank) * multiple(rank, step);
  }

  /// E[seconds(rank, step)].
  [[nodiscard]] double mean_seconds(int rank) const noexcept {
    const double m = tail_kind == compute_tail::exponential ? 1 + tail : 1;
    return base_seconds * factor(rank) * m;
  }

  /// E[the k-th smallest of the step times of ranks 0 .. workers-1] (k = workers:
  /// the slowest, what a synchronous step waits for; k = N of N + b: a step
  /// with b backup workers), by `draws` simulated steps (deterministic).
  [[nodiscard]] double expected_kth_fastest(int workers, int k, std::uint64_t draws = 20000) const {
    if (workers < 1 || k < 1 || k > workers) {
      throw invalid_argument(
          "straggler_model::expected_kth_fastest: k must be in [1, workers], got k = " +
          std::to_string(k) + " of " + std::to_string(workers));
    }
    std::vector<double> times(static_cast<std::size_t>(workers));
    double sum = 0;
    for (std::uint64_t d = 0; d < draws; ++d) {
      for (int r = 0; r < workers; ++r) {
        // Steps far past any run's, so the estimate does not reuse a run's draws.
        times[static_cast<std::size_t>(r)] = seconds(r, (std::uint64_t{1} << 62) + d);
      }
      std::nth_element(times.begin(), times.begin() + (k - 1), times.end());
      sum += times[static_cast<std::size_t>(k - 1)];
    }
    return sum / static_cast<double>(draws);
  }

 private:
  [[nodiscard]] double multiple(int rank, std::uint64_t step) const {
    if (tail_kind == compute_tail::none || tail == 0) return 1;
    counter_rng rng = counter_rng::stream(seed, stream_purpose::stragglers,
                                          static_cast<std::uint64_t>(rank), step);
    if (tail_kind == compute_tail::exponential) {
      // 1 - u is in (0, 1]: the logarithm is finite.
      return 1 - tail * std::log(1 - rng.uniform());
    }
    return std::exp(tail * rng.normal() - 0.5 * tail * tail);
  }
};

/// Spends a step's compute time on a simulated_transport's modelled clock.
template <class SimulatedTransport>
struct modelled_compute {
  SimulatedTransport* transport;
  void operator()(double seconds) const { transport->charge_compute(seconds); }
};

/// Spends a step's compute time by sleeping (runs in real time).
struct injected_delay {
  void operator()(double seconds) const {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  }
};

/// A problem whose stochastic gradients take the model's time for `rank`,
/// spent by `spend` (modelled_compute or injected_delay). The k-th call is
/// step k. Holds a reference: `inner` must outlive it.
template <Problem P, class Spend>
class with_compute_time {
 public:
  using scalar_type = problem_scalar_t<P>;
  using vector = vector_t<scalar_type>;

  with_compute_time(P& inner, straggler_model model, int rank, Spend spend)
      : inner_(inner), model_(std::move(model)), rank_(rank), spend_(std::move(spend)) {
    model_.validate();
  }

  [[nodiscard]] std::size_t dim() const { return inner_.dim(); }
  double loss(const Eigen::Ref<const vector>& x) { return inner_.loss(x); }
  void gradient(const Eigen::Ref<const vector>& x, Eigen::Ref<vector> g) { inner_.gradient(x, g); }
  void stochastic_gradient(const Eigen::Ref<const vector>& x, Eigen::Ref<vector> g,
                           counter_rng& rng) {
    inner_.stochastic_gradient(x, g, rng);
    spend_(model_.seconds(rank_, calls_++));
  }
  /// Steps taken so far.
  [[nodiscard]] std::uint64_t steps() const noexcept { return calls_; }

 private:
  P& inner_;
  straggler_model model_;
  int rank_;
  Spend spend_;
  std::uint64_t calls_ = 0;
};

}  // namespace ecopt
