// Least squares over TCP: one process per worker, started by the launcher,
//
//   scripts/ecopt-launch -n 3 -- ./tcp_least_squares
//
// Each process reads its rank, the world size and rank 0's address from the
// environment (tcp_options::from_environment), builds the same synthetic
// problem from a fixed seed, keeps its shard of the samples and runs the
// solver of the README's tour. Exits non-zero unless the iterate reaches the
// planted solution, so it doubles as an end-to-end test of tcp_transport.
#include <Eigen/Core>
#include <cstdio>
#include <exception>

#include "ecopt/ecopt.hpp"
#include "ecopt/transports/tcp_transport.hpp"

int main() {
  try {
    ecopt::tcp_transport transport(ecopt::tcp_options::from_environment());
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
      std::fprintf(stderr, "rank %d: did not converge (distance %.3e)\n", rank, distance);
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tcp_least_squares: %s\n", e.what());
    return 1;
  }
}
