#pragma once
// No error compensation: what compression drops is lost.
#include <cstddef>
#include <span>
#include <string_view>

#include "ecopt/compensator.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct no_compensation {
  static constexpr std::string_view name = "none";

  struct state {
    std::size_t dim = 0;
    /// Nothing is carried from round to round (checkpoint.hpp).
    template <class Archive>
    void persist(Archive&) {}
  };

  template <class T>
  [[nodiscard]] state make_state(std::size_t dim) const {
    return state{dim};
  }

  template <class T>
  void compensate(std::span<const T> g, state& s, std::span<T> p, const round_context&) const {
    detail::require_size(name, "direction", g.size(), s.dim);
    detail::require_size(name, "output", p.size(), s.dim);
    for (std::size_t j = 0; j < s.dim; ++j) p[j] = g[j];
  }

  template <class T>
  void update(std::span<const T>, std::span<const T>, state&, const round_context&) const {}
};

static_assert(Compensator<no_compensation, float> && Compensator<no_compensation, double>);

}  // namespace ecopt
