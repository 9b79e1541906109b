// Compile-fail test: local SGD takes optimizer steps of its own between
// exchanges, which an optimizer that computes its own direction (AC-SA) cannot
// do; the solver refuses the composition at compile time, naming why.
// ECOPT_EXPECT_DIAGNOSTIC: runs with the synchronous schedule only
#include <Eigen/Core>

#include "ecopt/algorithms/local_sgd.hpp"
#include "ecopt/optimizers/accelerated_sgd.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problems/quadratic.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"

int compile_fail_probe() {
#ifdef ECOPT_STATIC_CONTROL
  using optimizer = ecopt::sgd;
#else
  using optimizer = ecopt::accelerated_sgd;
#endif
  const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{}, optimizer{},
                        ecopt::local_sgd{}};
  const Eigen::MatrixXd hessian = Eigen::MatrixXd::Identity(2, 2);
  const Eigen::VectorXd b = Eigen::VectorXd::Zero(2);
  auto results = ecopt::run_threads(1, [&](ecopt::thread_transport& t) {
    ecopt::quadratic<double> p(hessian, b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(2);
    return s.run(t, p, x, {.steps = 1}).steps;
  });
  return static_cast<int>(results.size());
}
