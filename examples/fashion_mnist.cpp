// The ecopt demo: Fashion-MNIST (60k training and 10k test images, Xiao,
// Rasul, Vollgraf 2017, arXiv:1708.07747) with four worker threads. Softmax
// regression: dense SGD against top-k 1 % + error feedback and QSGD; an MLP
// 784-64-10: dense SGD against top-k 0.1 % + error feedback. It prints a
// progress line while it runs and a table at the end, and exits non-zero when
// a claim it prints is missed (the MLP: >= 86 % test accuracy compressed, with
// >= 100x fewer bits than dense).
//
//   fashion_mnist [--data DIR] [--workers N] [--steps N] [--mlp-steps N] [--batch N]
//                 [--lr X] [--seed N] [--csv FILE]   (--help lists them)
#include <Eigen/Core>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "command_line.hpp"
#include "ecopt/ecopt.hpp"
#include "fashion_mnist_data.hpp"

namespace {

struct settings {
  std::filesystem::path data = ecopt_examples::fashion_mnist_default_dir;
  int workers = 4;
  std::uint64_t steps = 10000;
  std::uint64_t mlp_steps = 6000;  // 0: no MLP rows
  std::size_t hidden = 64;
  std::size_t mlp_batch = 32;
  std::size_t batch = 64;
  std::uint64_t seed = 1;
  double lr = 0.1;
  std::filesystem::path csv;  // empty: no result file
};

/// Reads the command line into s; false after --help.
bool parse(int argc, char** argv, settings& s) {
  ecopt_examples::command_line cli(
      "fashion_mnist",
      "the ecopt demo: softmax regression and an MLP on Fashion-MNIST on worker threads, "
      "dense SGD against top-k + error feedback and QSGD");
  cli.option("--data", s.data, "directory of the Fashion-MNIST IDX files")
      .option("--workers", s.workers, "worker threads")
      .option("--steps", s.steps, "training steps of softmax regression")
      .option("--mlp-steps", s.mlp_steps, "training steps of the MLP (0: skip it)")
      .option("--hidden", s.hidden, "width of the MLP's hidden layer")
      .option("--mlp-batch", s.mlp_batch, "samples per MLP step and worker")
      .option("--batch", s.batch, "samples per step and worker")
      .option("--lr", s.lr, "SGD step size")
      .option("--seed", s.seed, "seed of the sampling")
      .option("--csv", s.csv,
              "also write every run's loss and bits per evaluation to this CSV file");
  return cli.parse(argc, argv);
}

using dataset = ecopt_examples::fashion_mnist_data;

struct row {
  std::string name;
  double accuracy = 0;
  std::uint64_t bits = 0;  // summed over workers, as carried by the transport
  double seconds = 0;
  double final_loss = 0;
  ecopt::run_report report;  // rank 0's
};

constexpr int classes = 10;

template <class Solver>
row train(std::string name, const Solver& solver, const dataset& data, const settings& s) {
  const auto m = static_cast<std::size_t>(data.train_images.cols());
  const auto start = std::chrono::steady_clock::now();
  Eigen::VectorXf model;
  auto reports = ecopt::run_threads(s.workers, [&](ecopt::thread_transport& t) {
    const auto shard = ecopt::shard_range(m, t.rank(), t.size());
    const auto b = static_cast<Eigen::Index>(shard.begin);
    const auto c = static_cast<Eigen::Index>(shard.count);
    ecopt::softmax_regression<float> problem(data.train_images.middleCols(b, c),
                                             data.train_labels.segment(b, c), classes,
                                             {.l2 = 1e-4, .batch_size = s.batch});
    Eigen::VectorXf x = Eigen::VectorXf::Zero(static_cast<Eigen::Index>(problem.dim()));
    const ecopt::print_progress printer{.out = stderr, .label = name};
    auto report = solver.run(
        t, problem, x, {.steps = s.steps, .seed = s.seed, .eval_every = s.steps / 10}, printer);
    if (t.rank() == 0) model = x;
    return report;
  });
  std::fprintf(stderr, "\n");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return {std::move(name),
          ecopt::softmax_regression<float>::accuracy(model, data.test_images, data.test_labels,
                                                     classes, true),
          reports[0].total_wire_bits(),
          seconds,
          reports[0].final_loss(),
          reports[0]};
}

/// The same for the MLP 784-hidden-10 (ReLU), each worker on its shard.
template <class Solver>
row train_mlp(std::string name, const Solver& solver, const dataset& data, const settings& s) {
  const auto start = std::chrono::steady_clock::now();
  Eigen::VectorXf model;
  auto reports = ecopt::run_threads(s.workers, [&](ecopt::thread_transport& t) {
    auto problem = ecopt_examples::training_shard_mlp(
        data, t.rank(), t.size(), {.hidden = s.hidden, .l2 = 1e-4, .batch_size = s.mlp_batch});
    Eigen::VectorXf x = problem.initial_point(s.seed);
    const ecopt::print_progress printer{.out = stderr, .label = name};
    auto report =
        solver.run(t, problem, x,
                   {.steps = s.mlp_steps, .seed = s.seed, .eval_every = s.mlp_steps / 10}, printer);
    if (t.rank() == 0) model = x;
    return report;
  });
  std::fprintf(stderr, "\n");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ecopt::mlp<float> judge(data.test_images, data.test_labels, classes, {.hidden = s.hidden});
  return {std::move(name),
          judge.accuracy(model, data.test_images, data.test_labels),
          reports[0].total_wire_bits(),
          seconds,
          reports[0].final_loss(),
          reports[0]};
}

}  // namespace

int main(int argc, char** argv) try {
  settings s;
  if (!parse(argc, argv, s)) return EXIT_SUCCESS;
  std::printf(
      "ecopt demo: softmax regression on Fashion-MNIST, %d worker threads, %llu steps, "
      "batch %zu per worker; then an MLP\n",
      s.workers, static_cast<unsigned long long>(s.steps), s.batch);
  const dataset data = ecopt_examples::load_fashion_mnist(s.data);
  std::printf("loaded %lld training and %lld test images of %lld pixels\n\n",
              static_cast<long long>(data.train_images.cols()),
              static_cast<long long>(data.test_images.cols()),
              static_cast<long long>(data.train_images.rows()));

  const double lr = s.lr;
  std::vector<row> rows;
  rows.push_back(
      train("dense sgd",
            ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = lr}},
            data, s));
  rows.push_back(train(
      "top_k 1% + error feedback",
      ecopt::solver{ecopt::top_k{.ratio = 0.01}, ecopt::error_feedback{}, ecopt::sgd{.lr = lr}},
      data, s));
  rows.push_back(
      train("qsgd s=4",
            ecopt::solver{ecopt::qsgd{.levels = 4}, ecopt::no_compensation{}, ecopt::sgd{.lr = lr}},
            data, s));
  const std::size_t softmax_rows = rows.size();
  if (s.mlp_steps > 0) {
    const ecopt::sgd mlp_sgd{.lr = 0.1};
    rows.push_back(train_mlp(
        "mlp: dense sgd", ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, mlp_sgd},
        data, s));
    rows.push_back(train_mlp(
        "mlp: top_k 0.1% + error feedback",
        ecopt::solver{ecopt::top_k{.ratio = 0.001}, ecopt::error_feedback{}, mlp_sgd}, data, s));
  }

  if (!s.csv.empty()) {
    std::ofstream out(s.csv);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      ecopt::write_csv(out, rows[i].report, rows[i].name, i == 0);
    }
    if (!out) throw ecopt::invalid_argument("--csv: cannot write " + s.csv.string());
  }

  const double dense_bits = static_cast<double>(rows[0].bits);
  std::printf("\n%-34s %13s %14s %14s %10s %10s\n", "compressor", "test accuracy", "bits sent",
              "vs dense", "train loss", "wall time");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const row& r = rows[i];
    // Each problem's rows against its own dense run.
    const double dense = static_cast<double>(rows[i < softmax_rows ? 0 : softmax_rows].bits);
    if (i == softmax_rows)
      std::printf("MLP 784-%zu-10 (ReLU), %llu steps, batch %zu:\n", s.hidden,
                  static_cast<unsigned long long>(s.mlp_steps), s.mlp_batch);
    std::printf("%-34s %12.2f%% %14.4g %13.1fx %10.4f %9.1fs\n", r.name.c_str(), 100 * r.accuracy,
                static_cast<double>(r.bits), dense / static_cast<double>(r.bits), r.final_loss,
                r.seconds);
  }
  std::printf(
      "\nbits sent: summed over workers, exactly what the transport carried for the "
      "gradient exchange (values, indices, norms, padding to bytes).\n");

  const bool dense_ok = rows[0].accuracy >= 0.83;
  const bool topk_ok = rows[1].accuracy >= 0.83;
  const bool ratio_ok = dense_bits >= 30.0 * static_cast<double>(rows[1].bits);
  std::printf(
      "softmax: dense >= 83%%: %s, top_k+EF >= 83%%: %s, top_k sends >= 30x fewer bits: %s\n",
      dense_ok ? "yes" : "NO", topk_ok ? "yes" : "NO", ratio_ok ? "yes" : "NO");
  bool mlp_ok = true;
  if (s.mlp_steps > 0) {
    const row& dense = rows[softmax_rows];
    const row& sparse = rows[softmax_rows + 1];
    const double ratio = static_cast<double>(dense.bits) / static_cast<double>(sparse.bits);
    mlp_ok = sparse.accuracy >= 0.86 && ratio >= 100;
    std::printf("mlp: top_k 0.1%%+EF at %.2f%% (>= 86%%) with %.0fx fewer bits (>= 100x): %s\n",
                100 * sparse.accuracy, ratio, mlp_ok ? "yes" : "NO");
  }
  return dense_ok && topk_ok && ratio_ok && mlp_ok ? EXIT_SUCCESS : EXIT_FAILURE;
} catch (const std::exception& e) {
  std::fprintf(stderr, "fashion_mnist: %s\n", e.what());
  return EXIT_FAILURE;
}
