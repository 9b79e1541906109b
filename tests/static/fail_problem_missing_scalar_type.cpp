// Compile-fail test: a problem without a scalar_type is not a Problem, and the
// diagnostic names the unsatisfied requirement.
// ECOPT_EXPECT_DIAGNOSTIC: (satisfaction of|because|does not satisfy) [^A-Za-z]*HasScalarType
#include <Eigen/Core>
#include <cstddef>

#include "ecopt/counter_rng.hpp"
#include "ecopt/problem.hpp"

namespace {
using cref = Eigen::Ref<const ecopt::vector_t<double>>;
using ref = Eigen::Ref<ecopt::vector_t<double>>;

struct problem_missing_scalar_type {
#ifdef ECOPT_STATIC_CONTROL
  using scalar_type = double;
#endif
  std::size_t dim() const { return 1; }
  double loss(cref) { return 0; }
  void gradient(cref, ref) {}
  void stochastic_gradient(cref, ref, ecopt::counter_rng&) {}
};

template <ecopt::Problem P>
int use_problem(P&) {
  return 0;
}
}  // namespace

int compile_fail_probe() {
  problem_missing_scalar_type p;
  return use_problem(p);
}
