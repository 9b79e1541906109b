#pragma once
// The synchronous schedule (the solver's default): every step, every worker's
// gradient goes through the exchange and every worker applies the same mean
// direction, so the workers' models never differ. Minibatch SGD in the terms
// of Woodworth et al. 2020 (arXiv:2002.07839); the other schedules reduce to
// it in their trivial settings (local SGD with H = 1, SlowMo with beta = 0,
// alpha = 1 and H = 1), bit for bit.
#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "ecopt/schedule.hpp"

namespace ecopt {

struct synchronous {
  static constexpr std::string_view name = "synchronous";

  template <class T>
  struct state {
    std::vector<T> mean;
    template <class Archive>
    void persist(Archive&) {}  // scratch only
  };

  template <class T, class C>
  [[nodiscard]] state<T> make_state(std::size_t dim, const C&) const {
    return state<T>{std::vector<T>(dim)};
  }

  template <class T>
  void begin(std::span<const T>, state<T>&) const {}

  template <class T, class Round>
  void step(Round& r, state<T>& s) const {
    const std::span<T> mean(s.mean);
    const double lr = r.learning_rate(r.step());
    r.observe_curvature(r.x(), r.step(), lr);
    r.exchange(r.gradient(), mean, r.step(), lr);
    r.apply(r.x(), mean);
  }

  template <class T, class Round>
  void finish(Round&, state<T>&) const {}

  template <class T>
  [[nodiscard]] std::span<const T> evaluation_point(std::span<const T> x, const state<T>&) const {
    return x;
  }
};

static_assert(Schedule<synchronous, float> && Schedule<synchronous, double>);

}  // namespace ecopt
