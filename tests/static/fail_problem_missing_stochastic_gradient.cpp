// Compile-fail test: a problem without stochastic_gradient is not a Problem,
// and the diagnostic quotes the unsatisfied requirement.
// ECOPT_EXPECT_DIAGNOSTIC: p\.stochastic_gradient\(x, g, rng\)[^ ]* (is|would be) invalid
#include <Eigen/Core>
#include <cstddef>

#include "ecopt/counter_rng.hpp"
#include "ecopt/problem.hpp"

namespace {
using cref = Eigen::Ref<const ecopt::vector_t<double>>;
using ref = Eigen::Ref<ecopt::vector_t<double>>;

struct problem_missing_stochastic_gradient {
  using scalar_type = double;
  std::size_t dim() const { return 1; }
  double loss(cref) { return 0; }
  void gradient(cref, ref) {}
#ifdef ECOPT_STATIC_CONTROL
  void stochastic_gradient(cref, ref, ecopt::counter_rng&) {}
#endif
};

template <ecopt::Problem P>
int use_problem(P&) {
  return 0;
}
}  // namespace

int compile_fail_probe() {
  problem_missing_stochastic_gradient p;
  return use_problem(p);
}
