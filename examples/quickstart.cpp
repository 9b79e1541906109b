// The five-minute tour of the README: compose a solver in one line and run it
// on four worker threads, each holding its own shard of a least-squares problem.
#include <Eigen/Core>
#include <cstdio>

#include "ecopt/ecopt.hpp"

int main() {
  // Synthetic data: 2000 samples in R^50, one sample per column.
  const Eigen::Index d = 50, m = 2000;
  auto rng = ecopt::counter_rng::stream(42, ecopt::stream_purpose::test, 0, 0);
  Eigen::MatrixXd features(d, m);
  for (Eigen::Index i = 0; i < features.size(); ++i) features.data()[i] = rng.normal();
  Eigen::VectorXd truth = Eigen::VectorXd::LinSpaced(d, -1.0, 1.0);
  Eigen::VectorXd targets = features.transpose() * truth;

  // Top-k sparsification (1 in 10 coordinates) + error feedback + Nesterov momentum.
  const ecopt::solver solver{ecopt::top_k{.ratio = 0.1}, ecopt::error_feedback{},
                             ecopt::nesterov{.lr = 0.05, .momentum = 0.9}};

  auto reports = ecopt::run_threads(4, [&](ecopt::thread_transport& transport) {
    const auto shard = ecopt::shard_range(m, transport.rank(), transport.size());
    ecopt::least_squares<double> problem(features.middleCols(shard.begin, shard.count),
                                         targets.segment(shard.begin, shard.count),
                                         {.batch_size = 32});
    Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
    auto report = solver.run(transport, problem, x, {.steps = 1500, .eval_every = 500});
    if (transport.rank() == 0) std::printf("distance to truth: %.2e\n", (x - truth).norm());
    return report;
  });

  const auto& r = reports[0];
  std::printf("final loss %.3e after %llu steps; each worker sent %.1f kbit (dense: %.1f kbit)\n",
              r.final_loss(), static_cast<unsigned long long>(r.steps), r.wire_bits * 1e-3,
              static_cast<double>(r.steps) * 2 * 3 / 4 * 32 * d * 1e-3);
  return 0;
}
