// SlowMo against local SGD and synchronous (all-reduce) SGD: an MLP
// 784-64-10 on Fashion-MNIST with 8 worker threads, each on its own shard,
// local Nesterov momentum 0.9 at a constant step size (Wang, Tantia, Ballas,
// Rabbat 2019, arXiv:1910.00643; set-up in the shared notes, papers.md 15.2).
// For each period tau it runs local SGD (beta = 0) and SlowMo with beta in
// {0.4, 0.6, 0.8} (alpha = 1), then prints the final training loss (mean over
// the workers' shards at the averaged model), test accuracy and bits per
// worker, averaged over the seeds, and the paper's claims as checks:
//   - the best beta > 0 reaches <= 0.95x local SGD's training loss and at
//     least its test accuracy + 0.3 points, at the longest period;
//   - SlowMo closes at least half of the gap in training loss between local
//     SGD and all-reduce SGD (when that gap is at least 2 % of the loss);
//   - a period costs all-reduce SGD's bits / tau, exactly.
//
//   slowmo_fashion_mnist [--data DIR] [--workers N] [--steps N] [--seeds N] [--csv FILE]
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "ecopt/ecopt.hpp"
#include "fashion_mnist_data.hpp"

namespace {

struct settings {
  std::filesystem::path data = ecopt_examples::fashion_mnist_default_dir;
  int workers = 8;
  std::uint64_t steps = 6000;
  std::size_t batch = 32;
  std::size_t hidden = 64;
  double lr = 0.05;
  std::uint64_t seeds = 3;
  std::uint64_t short_period = 12;
  std::uint64_t long_period = 48;
  std::filesystem::path csv;
};

bool parse(int argc, char** argv, settings& s) {
  ecopt_examples::command_line cli(
      "slowmo_fashion_mnist",
      "SlowMo against local SGD and all-reduce SGD: MLP on Fashion-MNIST, worker threads");
  cli.option("--data", s.data, "directory of the Fashion-MNIST IDX files")
      .option("--workers", s.workers, "worker threads")
      .option("--steps", s.steps, "inner steps per run")
      .option("--batch", s.batch, "samples per step and worker")
      .option("--hidden", s.hidden, "width of the hidden layer")
      .option("--lr", s.lr, "inner Nesterov step size (momentum 0.9)")
      .option("--seeds", s.seeds, "runs per row, seeds 1..N (the table shows means)")
      .option("--short-period", s.short_period, "the shorter tau")
      .option("--long-period", s.long_period, "the longer tau")
      .option("--csv", s.csv, "also write every run's loss and bits per evaluation here");
  return cli.parse(argc, argv);
}

using dataset = ecopt_examples::fashion_mnist_data;
constexpr int classes = 10;

struct row {
  std::string name;
  std::uint64_t period = 1;
  double slow_momentum = 0;
  double loss = 0;      // mean over seeds of the final training loss
  double accuracy = 0;  // mean over seeds of the test accuracy
  std::uint64_t bits_per_worker = 0;
  double seconds = 0;
};

template <class Solver>
void train(row& r, const Solver& solver, const dataset& data, const settings& s, std::ofstream* csv,
           bool& first_csv_row) {
  const auto start = std::chrono::steady_clock::now();
  for (std::uint64_t seed = 1; seed <= s.seeds; ++seed) {
    Eigen::VectorXf model;
    auto reports = ecopt::run_threads(s.workers, [&](ecopt::thread_transport& t) {
      auto problem = ecopt_examples::training_shard_mlp(
          data, t.rank(), t.size(), {.hidden = s.hidden, .batch_size = s.batch});
      Eigen::VectorXf x = problem.initial_point(seed);
      const ecopt::print_progress printer{.out = stderr, .label = r.name};
      auto report = solver.run(
          t, problem, x, {.steps = s.steps, .seed = seed, .eval_every = s.steps / 4}, printer);
      if (t.rank() == 0) model = x;
      return report;
    });
    ecopt::mlp<float> judge(data.test_images, data.test_labels, classes, {.hidden = s.hidden});
    r.loss += reports[0].final_loss() / static_cast<double>(s.seeds);
    r.accuracy +=
        judge.accuracy(model, data.test_images, data.test_labels) / static_cast<double>(s.seeds);
    r.bits_per_worker = reports[0].payload_bits;
    if (csv != nullptr) {
      ecopt::write_csv(*csv, reports[0], r.name + " seed " + std::to_string(seed), first_csv_row);
      first_csv_row = false;
    }
  }
  std::fprintf(stderr, "\n");
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) try {
  settings s;
  if (!parse(argc, argv, s)) return EXIT_SUCCESS;
  const dataset data = ecopt_examples::load_fashion_mnist(s.data);
  std::printf(
      "SlowMo on Fashion-MNIST: MLP 784-%zu-10, %d worker threads, %llu steps, batch %zu per "
      "worker, Nesterov lr %g momentum 0.9, %llu seed(s)\n\n",
      s.hidden, s.workers, static_cast<unsigned long long>(s.steps), s.batch, s.lr,
      static_cast<unsigned long long>(s.seeds));
  std::ofstream csv_file;
  if (!s.csv.empty()) csv_file.open(s.csv);
  std::ofstream* csv = s.csv.empty() ? nullptr : &csv_file;
  bool first_csv_row = true;

  const ecopt::nesterov inner{.lr = s.lr, .momentum = 0.9};
  std::vector<row> rows;
  rows.push_back({.name = "all-reduce sgd"});
  train(rows.back(), ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, inner}, data,
        s, csv, first_csv_row);
  for (const std::uint64_t tau : {s.short_period, s.long_period}) {
    rows.push_back({.name = "local sgd tau=" + std::to_string(tau), .period = tau});
    train(rows.back(),
          ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, inner,
                        ecopt::local_sgd{.period = tau}},
          data, s, csv, first_csv_row);
    for (const double beta : {0.4, 0.6, 0.8}) {
      char name[64];
      std::snprintf(name, sizeof name, "slowmo tau=%llu beta=%.1f",
                    static_cast<unsigned long long>(tau), beta);
      rows.push_back({.name = name, .period = tau, .slow_momentum = beta});
      train(rows.back(),
            ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, inner,
                          ecopt::slowmo{.period = tau, .slow_lr = 1, .slow_momentum = beta}},
            data, s, csv, first_csv_row);
    }
  }
  if (csv != nullptr && !*csv)
    throw ecopt::invalid_argument("--csv: cannot write " + s.csv.string());

  std::printf("%-26s %12s %14s %16s %9s\n", "schedule", "train loss", "test accuracy",
              "bits per worker", "time");
  for (const auto& r : rows) {
    std::printf("%-26s %12.5f %13.2f%% %16.4g %8.1fs\n", r.name.c_str(), r.loss, 100 * r.accuracy,
                static_cast<double>(r.bits_per_worker), r.seconds);
  }

  // The claims, at each period.
  const row& all_reduce = rows[0];
  bool all_ok = true;
  for (const std::uint64_t tau : {s.short_period, s.long_period}) {
    const auto local = std::find_if(rows.begin(), rows.end(), [&](const row& r) {
      return r.period == tau && r.slow_momentum == 0;
    });
    const row* best = nullptr;
    for (const auto& r : rows) {
      if (r.period == tau && r.slow_momentum > 0 && (best == nullptr || r.loss < best->loss)) {
        best = &r;
      }
    }
    const double gap = local->loss - all_reduce.loss;
    const double closed = gap > 0 ? (local->loss - best->loss) / gap : 0;
    const bool loss_ok = best->loss <= 0.95 * local->loss;
    const bool accuracy_ok = best->accuracy >= local->accuracy + 0.003;
    const bool gap_ok = gap < 0.02 * local->loss ? best->loss <= local->loss : closed >= 0.5;
    // Every period averages once: all-reduce's bits divided by tau (rounded
    // up: the run's last, partial period is averaged too).
    const std::uint64_t periods = (s.steps + tau - 1) / tau;
    const bool bits_ok = rows[0].bits_per_worker / s.steps * periods == local->bits_per_worker;
    std::printf(
        "tau=%llu: best %s: loss %.3fx local sgd's (<= 0.95: %s), accuracy %+.2f points (>= "
        "+0.3: %s), closes %.0f%% of the gap to all-reduce (%s), bits = all-reduce / tau: %s\n",
        static_cast<unsigned long long>(tau), best->name.c_str(), best->loss / local->loss,
        loss_ok ? "yes" : "NO", 100 * (best->accuracy - local->accuracy),
        accuracy_ok ? "yes" : "NO", 100 * closed, gap_ok ? "yes" : "NO", bits_ok ? "yes" : "NO");
    if (tau == s.long_period) all_ok = loss_ok && accuracy_ok && gap_ok && bits_ok;
  }
  return all_ok ? EXIT_SUCCESS : EXIT_FAILURE;
} catch (const std::exception& e) {
  std::fprintf(stderr, "slowmo_fashion_mnist: %s\n", e.what());
  return EXIT_FAILURE;
}
