#pragma once
// Overlap-Local-SGD (Wang, Liang, Joshi 2020, arXiv:2002.09539): local SGD
// whose averaging travels while the workers keep computing. Every tau steps
// each worker pulls its model toward an anchor z and sends its contribution
// to the next anchor; the average arrives one period later, so a period
// costs max(compute, communication) instead of their sum (checked against
// the authors' OverlapLocalSGD optimizer, papers.md section 15.3):
//
//   every step:       x_i <- optimizer step on x_i   (no communication)
//   every tau steps:  z <- the average started at the previous boundary
//                     x_i <- (1 - alpha) x_i + alpha z          (pull, alpha ~ 0.2)
//                     beta = 0: c_i = x_i
//                     beta > 0: m_i <- beta m_i + (z - x_i) / gamma,  c_i = z - gamma m_i
//                               (m_i = (z - x_i) / gamma at the first boundary)
//                     start averaging c_i in the background -> the next z
//
// The workers' models are never replaced, only pulled. What travels is
// c_i - z, the contribution relative to the anchor every worker shares, so
// the run's compressor and error feedback apply to a quantity that shrinks
// as the workers agree (a model itself never does); the next anchor is z
// plus its mean. The averaging runs on the run's background channel
// (background_channel.hpp): a communication thread on threads, TCP and MPI,
// modelled overlap on simulated_transport. The run ends with an exact
// average of the workers' models, so every rank returns the same x. With
// alpha = 0 there is no pull: each worker runs SGD alone (a test).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "ecopt/algorithms/detail/local_steps.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/schedule.hpp"

namespace ecopt {

struct overlap_local_sgd {
  static constexpr std::string_view name = "overlap_local_sgd";
  /// The workers hold different models: the run's loss is evaluated at their mean.
  static constexpr bool evaluates_average = true;

  std::uint64_t period = 12;   ///< tau: local steps between boundaries
  double pull = 0.2;           ///< alpha in [0, 1]: how far a boundary pulls x toward z
  double anchor_momentum = 0;  ///< beta in [0, 1): momentum of the contributions

  void validate() const {
    detail::require_period(name, period);
    detail::require_in_range(name, "pull", pull, 0, 1.0000001);
    detail::require_in_range(name, "anchor_momentum", anchor_momentum, 0, 1);
  }

  template <class T>
  struct state {
    std::vector<T> anchor;        ///< z: the anchor in use
    std::vector<T> base;          ///< the anchor the travelling contributions are relative to
    std::vector<T> contribution;  ///< c_i - base, travelling
    std::vector<T> mean;          ///< its mean over workers, written in the background
    std::vector<T> velocity;      ///< m_i (anchor_momentum > 0)
    std::uint64_t boundaries = 0;
    /// What a checkpoint carries; the solver lands a travelling average
    /// first, so `mean` holds it.
    template <class Archive>
    void persist(Archive& a) {
      a("anchor", anchor);
      a("base", base);
      a("contribution", contribution);
      a("mean", mean);
      a("velocity", velocity);
      a("boundaries", boundaries);
    }
  };

  template <class T, class C>
  [[nodiscard]] state<T> make_state(std::size_t dim, const C&) const {
    state<T> s{std::vector<T>(dim),
               std::vector<T>(dim),
               std::vector<T>(dim),
               std::vector<T>(dim),
               std::vector<T>(anchor_momentum > 0 ? dim : 0),
               0};
    return s;
  }

  template <class T>
  void begin(std::span<const T> x, state<T>& s) const {
    std::copy(x.begin(), x.end(), s.anchor.begin());
  }

  template <class T, class Round>
  void step(Round& r, state<T>& s) const {
    r.apply(r.x(), r.gradient());
    if ((r.step() + 1) % period == 0) boundary(r, s);
  }

  template <class T, class Round>
  void finish(Round& r, state<T>& s) const {
    r.settle_background();
    if (r.world() > 1) r.average(r.x());
    std::copy(r.x().begin(), r.x().end(), s.anchor.begin());
  }

  /// This worker's model; the solver evaluates the mean of them (evaluates_average).
  template <class T>
  [[nodiscard]] std::span<const T> evaluation_point(std::span<const T> x, const state<T>&) const {
    return x;
  }

 private:
  template <class T, class Round>
  void boundary(Round& r, state<T>& s) const {
    const std::span<T> x = r.x();
    const std::size_t d = x.size();
    // The solver may have settled the exchange already (before an evaluation).
    if (s.boundaries > 0) {
      r.settle_background();
      for (std::size_t j = 0; j < d; ++j) s.anchor[j] = s.base[j] + s.mean[j];
    }
    if (pull > 0) {
      const T keep = static_cast<T>(1 - pull);
      const T take = static_cast<T>(pull);
      for (std::size_t j = 0; j < d; ++j) x[j] = keep * x[j] + take * s.anchor[j];
    }
    const double gamma = r.learning_rate(r.step());
    if (anchor_momentum > 0) {
      const T inv_gamma = static_cast<T>(1 / gamma);
      const T g = static_cast<T>(gamma);
      const T beta = s.boundaries == 0 ? T(0) : static_cast<T>(anchor_momentum);
      for (std::size_t j = 0; j < d; ++j) {
        s.velocity[j] = beta * s.velocity[j] + (s.anchor[j] - x[j]) * inv_gamma;
        // c_i - z = -gamma m_i
        s.contribution[j] = -g * s.velocity[j];
      }
    } else {
      for (std::size_t j = 0; j < d; ++j) s.contribution[j] = x[j] - s.anchor[j];
    }
    std::copy(s.anchor.begin(), s.anchor.end(), s.base.begin());
    r.exchange_in_background(std::span<const T>(s.contribution), std::span<T>(s.mean),
                             r.step() / period, gamma);
    ++s.boundaries;
  }
};

static_assert(Schedule<overlap_local_sgd, float> && Schedule<overlap_local_sgd, double>);

}  // namespace ecopt
