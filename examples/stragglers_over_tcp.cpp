// A slow worker over TCP: synchronous SGD against backup workers and
// asynchronous SGD on a parameter server, one process per rank, wall time.
// Softmax regression on Fashion-MNIST, each worker a shard of the training
// set; every gradient also sleeps --compute-ms (the straggler model's
// injected delay), and worker --slow-worker sleeps --slow-factor times as
// long. Rank 0 runs until the training loss (on its evaluation subset) is at
// most --target-loss and prints one line: wall time to the target, steps,
// the loss reached, and what the server dropped.
//
//   ecopt-launch -n 4 -- stragglers_over_tcp --mode sync      (4 workers)
//   ecopt-launch -n 5 -- stragglers_over_tcp --mode backup    (server + 4 workers, N = 3)
//   ecopt-launch -n 5 -- stragglers_over_tcp --mode async     (server + 4 workers)
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "ecopt/ecopt.hpp"
#include "ecopt/transports/tcp_transport.hpp"
#include "fashion_mnist_data.hpp"

namespace {

struct settings {
  std::filesystem::path data = ecopt_examples::fashion_mnist_default_dir;
  std::string mode = "sync";
  std::uint64_t steps = 2000;  // most model steps (async: most updates)
  std::size_t batch = 32;
  double lr = 0.1;
  double target_loss = 0.6;
  double compute_ms = 10;
  int slow_worker = 0;
  double slow_factor = 4;
  std::size_t eval_samples = 15000;
  std::uint64_t eval_every = 20;
};

bool parse(int argc, char** argv, settings& s) {
  ecopt_examples::command_line cli(
      "stragglers_over_tcp",
      "a slow worker over TCP: synchronous SGD, backup workers (one backup) and asynchronous "
      "SGD on a parameter server, wall time to a training loss");
  cli.option("--data", s.data, "directory of the Fashion-MNIST IDX files")
      .option("--mode", s.mode, "sync | backup | async")
      .option("--steps", s.steps, "most model steps (async: updates)")
      .option("--batch", s.batch, "samples per gradient")
      .option("--lr", s.lr, "SGD step size (async: divided by the number of workers)")
      .option("--target-loss", s.target_loss, "stop at this training loss")
      .option("--compute-ms", s.compute_ms, "sleep added to every gradient")
      .option("--slow-worker", s.slow_worker, "the worker that sleeps --slow-factor times longer")
      .option("--slow-factor", s.slow_factor, "how much longer it sleeps")
      .option("--eval-samples", s.eval_samples, "training samples the loss is measured on")
      .option("--eval-every", s.eval_every, "model steps between evaluations (async: x workers)");
  return cli.parse(argc, argv);
}

using dataset = ecopt_examples::fashion_mnist_data;
constexpr int classes = 10;

/// Stops when the loss reaches the target; keeps the last loss seen.
struct until_loss {
  double target;
  double* last;
  ecopt::observer_action on_eval(const ecopt::progress& p) const {
    *last = p.loss;
    return p.loss <= target ? ecopt::observer_action::stop : ecopt::observer_action::proceed;
  }
};

}  // namespace

int main(int argc, char** argv) try {
  settings s;
  if (!parse(argc, argv, s)) return EXIT_SUCCESS;
  if (s.mode != "sync" && s.mode != "backup" && s.mode != "async") {
    throw ecopt::invalid_argument("--mode: '" + s.mode + "' is not one of sync, backup, async");
  }
  const dataset data = ecopt_examples::load_fashion_mnist(s.data);
  ecopt::tcp_transport transport(ecopt::tcp_options::from_environment());
  const bool served = s.mode != "sync";
  const int rank = transport.rank();
  const int workers = served ? transport.size() - 1 : transport.size();
  const int worker = served ? rank - 1 : rank;  // -1: the server

  // The worker's shard, or (the server; rank 0 of the synchronous run
  // measures the same) the first eval_samples training images for the loss.
  const auto m = static_cast<std::size_t>(data.train_images.cols());
  const auto shard = ecopt::shard_range(m, std::max(worker, 0), workers);
  const bool evaluator = worker < 0;
  const auto begin = static_cast<Eigen::Index>(evaluator ? 0 : shard.begin);
  const auto count =
      static_cast<Eigen::Index>(evaluator ? std::min(s.eval_samples, m) : shard.count);
  ecopt::softmax_regression<float> problem(data.train_images.middleCols(begin, count),
                                           data.train_labels.segment(begin, count), classes,
                                           {.l2 = 1e-4, .batch_size = s.batch});
  const ecopt::straggler_model delays{
      .base_seconds = 1e-3 * s.compute_ms,
      .slow_ranks = {{.rank = s.slow_worker, .factor = s.slow_factor}}};
  ecopt::with_compute_time timed(problem, delays, std::max(worker, 0), ecopt::injected_delay{});
  Eigen::VectorXf x = Eigen::VectorXf::Zero(static_cast<Eigen::Index>(problem.dim()));
  double last_loss = 0;
  const until_loss stop{s.target_loss, &last_loss};
  const auto start = std::chrono::steady_clock::now();
  std::uint64_t steps = 0, dropped = 0;
  std::vector<int> lost;
  if (s.mode == "sync") {
    // The synchronous solver's loss is the mean of the workers' shard losses.
    const auto report =
        ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = s.lr}}
            .run(transport, timed, x, {.steps = s.steps, .seed = 1, .eval_every = s.eval_every},
                 stop);
    steps = report.steps;
  } else if (s.mode == "backup") {
    const ecopt::parameter_server server{ecopt::no_compression{}, ecopt::no_compensation{},
                                         ecopt::sgd{.lr = s.lr},
                                         ecopt::backup_workers{.backups = 1}};
    const ecopt::run_options options{.steps = s.steps, .seed = 1, .eval_every = s.eval_every};
    const auto report = evaluator ? server.run(transport, problem, x, options, stop)
                                  : server.run(transport, timed, x, options);
    steps = report.steps;
    dropped = report.counts.dropped_late;
    lost = report.counts.lost_workers;
  } else {
    const ecopt::parameter_server server{
        ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = s.lr / workers},
        ecopt::async_sgd{.max_staleness = 64, .step_rule = ecopt::delay_rule::blind}};
    const ecopt::run_options options{
        .steps = s.steps * static_cast<std::uint64_t>(workers),
        .seed = 1,
        .eval_every = s.eval_every * static_cast<std::uint64_t>(workers)};
    const auto report = evaluator ? server.run(transport, problem, x, options, stop)
                                  : server.run(transport, timed, x, options);
    steps = report.steps;
    dropped = report.counts.dropped_stale;
    lost = report.counts.lost_workers;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (rank == 0) {
    std::string lost_text;
    for (const int r : lost) {
      lost_text += (lost_text.empty() ? ", lost ranks " : ", ") + std::to_string(r);
    }
    std::printf(
        "%-7s %d workers (worker %d %gx slower): %6.2f s, %6llu steps, loss %.4f%s, %llu "
        "dropped%s\n",
        s.mode.c_str(), workers, s.slow_worker, s.slow_factor, seconds,
        static_cast<unsigned long long>(steps), last_loss,
        last_loss <= s.target_loss ? "" : " (target not reached)",
        static_cast<unsigned long long>(dropped), lost_text.c_str());
  }
  return EXIT_SUCCESS;
} catch (const std::exception& e) {
  std::fprintf(stderr, "stragglers_over_tcp: %s\n", e.what());
  return EXIT_FAILURE;
}
