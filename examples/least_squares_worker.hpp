#pragma once
// One worker of the multi-process least-squares examples (tcp_least_squares,
// mpi_least_squares): the same code on any transport. Every process builds
// the same synthetic problem from a fixed seed, keeps its shard of the
// samples and runs the solver of the README's tour. Returns the process's
// exit code: non-zero unless the iterate reaches the planted solution, so the
// examples double as end-to-end tests of their transports.
#include <Eigen/Core>
#include <cstdio>

#include "ecopt/ecopt.hpp"

template <ecopt::Transport T>
int run_least_squares_worker(T& transport, const char* program) {
  const int rank = transport.rank();

  // Synthetic data, identical in every process: 2000 samples in R^50.
  const Eigen::Index d = 50, m = 2000;
  auto rng = ecopt::counter_rng::stream(42, ecopt::stream_purpose::test, 0, 0);
  Eigen::MatrixXd features(d, m);
  for (Eigen::Index i = 0; i < features.size(); ++i) features.data()[i] = rng.normal();
  const Eigen::VectorXd truth = Eigen::VectorXd::LinSpaced(d, -1.0, 1.0);
  const Eigen::VectorXd targets = features.transpose() * truth;

  const auto shard = ecopt::shard_range(m, rank, transport.size());
  ecopt::least_squares<double> problem(features.middleCols(shard.begin, shard.count),
                                       targets.segment(shard.begin, shard.count),
                                       {.batch_size = 32});

  // Top-k sparsification (1 in 10 coordinates) + error feedback + Nesterov momentum.
  const ecopt::solver solver{ecopt::top_k{.ratio = 0.1}, ecopt::error_feedback{},
                             ecopt::nesterov{.lr = 0.05, .momentum = 0.9}};
  Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
  const auto report = solver.run(transport, problem, x, {.steps = 1500, .eval_every = 500});

  const double distance = (x - truth).norm();
  std::printf("rank %d of %d: final loss %.3e, distance to truth %.2e, %.1f kbit sent\n", rank,
              transport.size(), report.final_loss(), distance, report.wire_bits * 1e-3);
  if (!(distance < 1e-2)) {
    std::fprintf(stderr, "%s: rank %d did not converge (distance %.3e)\n", program, rank, distance);
    return 1;
  }
  return 0;
}
