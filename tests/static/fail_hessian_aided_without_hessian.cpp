// Compile-fail test: a solver with Hessian-aided compensation on a problem that
// has neither hessian(x, H) nor hessian_vector(x, v, out) is refused, and the
// diagnostic says what the problem lacks.
// ECOPT_EXPECT_DIAGNOSTIC: hessian_aided needs a problem with hessian\(x, H\) or hessian_vector
#include <Eigen/Core>
#include <cstddef>

#include "ecopt/compensators/hessian_aided.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"

namespace {
using cref = Eigen::Ref<const ecopt::vector_t<double>>;
using ref = Eigen::Ref<ecopt::vector_t<double>>;

struct problem_without_curvature {
  using scalar_type = double;
  std::size_t dim() const { return 1; }
  double loss(cref) { return 0; }
  void gradient(cref, ref) {}
  void stochastic_gradient(cref, ref, ecopt::counter_rng&) {}
#ifdef ECOPT_STATIC_CONTROL
  void hessian_vector(cref, cref, ref) {}
#endif
};
}  // namespace

void compile_fail_probe(ecopt::thread_transport& transport) {
  problem_without_curvature problem;
  ecopt::vector_t<double> x(1);
  const ecopt::solver s{ecopt::top_k{}, ecopt::hessian_aided{}, ecopt::sgd{}};
  s.run(transport, problem, x);
}
