// Reproduction: TopK SGD with error accumulation (Alistarh, Hoefler, Johansson,
// Khirirat, Konstantinov, Renggli, "The convergence of sparsified gradient
// methods", NeurIPS 2018, arXiv:1809.10505).
//
// Each worker sends only the K largest entries of its message. With memory
// (error_feedback: what TopK dropped is added to the next message) the
// sparsified run follows the dense one; without memory (no_compensation) the
// dropped mass is lost. The claim checked here: at K = 1% and 0.1% of d, TopK
// with memory reaches the dense run's training loss on a convex problem and a
// non-convex one, at the same step size, while TopK without memory falls
// behind.
//
// Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, arXiv:1708.07747; pixels scaled to
// [0, 1]) split over 4 worker threads:
//  - convex: softmax regression, d = 10 x 785 = 7850;
//  - non-convex: a 784-64-10 ReLU perceptron (problems/mlp.hpp), d = 50890.
// Each with dense SGD and TopK at 1% and 0.1%, with and without memory. The
// table gives the training loss (on the 60k training images) at four points of
// the run, the test accuracy (10k test images), the exact bits sent summed
// over workers and the compression against dense.
//
//   topk_memory [--data DIR] [--workers N] [--convex-steps N] [--mlp-steps N] [--batch N]
//               [--convex-lr X] [--mlp-lr X] [--hidden N] [--seed N]
#include <Eigen/Core>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "command_line.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/observers.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problems/mlp.hpp"
#include "ecopt/problems/shard.hpp"
#include "ecopt/problems/softmax_regression.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "fashion_mnist_data.hpp"

namespace {

struct settings {
  std::filesystem::path data = ecopt_examples::fashion_mnist_default_dir;
  int workers = 4;
  std::uint64_t convex_steps = 8000;
  std::uint64_t mlp_steps = 6000;
  std::size_t batch = 32;
  double convex_lr = 0.2;
  double mlp_lr = 0.1;
  std::size_t hidden = 64;
  std::uint64_t seed = 1;
};

settings parse(int argc, char** argv) {
  settings s;
  ecopt_examples::command_line cli("topk_memory",
                                   "top-k SGD with and without error memory, convex and MLP (R4)");
  cli.option("--data", s.data, "directory of the Fashion-MNIST IDX files")
      .option("--workers", s.workers, "worker threads")
      .option("--convex-steps", s.convex_steps, "steps of the convex runs (>= 4)")
      .option("--mlp-steps", s.mlp_steps, "steps of the MLP runs (>= 4)")
      .option("--batch", s.batch, "samples per step and worker")
      .option("--convex-lr", s.convex_lr, "step size of the convex runs")
      .option("--mlp-lr", s.mlp_lr, "step size of the MLP runs")
      .option("--hidden", s.hidden, "width of the MLP's hidden layer")
      .option("--seed", s.seed, "seed");
  if (!cli.parse(argc, argv)) std::exit(EXIT_SUCCESS);
  if (s.convex_steps < 4 || s.mlp_steps < 4) {
    throw ecopt::invalid_argument("--convex-steps and --mlp-steps must be at least 4");
  }
  return s;
}

using dataset = ecopt_examples::fashion_mnist_data;

constexpr int classes = 10;
constexpr int checkpoints = 4;  // training-loss evaluations per run

struct row {
  std::string method;
  std::vector<double> losses;  // global training loss after each quarter of the run
  double accuracy = 0;
  std::uint64_t bits = 0;  // payload bits summed over workers
  double seconds = 0;
};

/// Runs `solver` on every worker's shard of the training set; `make` builds a
/// worker's problem from its shard, `start` writes the starting point (rank
/// 0's is broadcast). Test accuracy is measured on rank 0's final iterate.
template <class Solver, class Make, class Start>
row train(std::string method, const Solver& solver, const dataset& data, const settings& s,
          std::uint64_t steps, Make make, Start start) {
  const auto m = static_cast<std::size_t>(data.train_images.cols());
  const auto t0 = std::chrono::steady_clock::now();
  double accuracy = 0;
  auto reports = ecopt::run_threads(s.workers, [&](ecopt::thread_transport& t) {
    const auto shard = ecopt::shard_range(m, t.rank(), t.size());
    const auto b = static_cast<Eigen::Index>(shard.begin);
    const auto c = static_cast<Eigen::Index>(shard.count);
    auto problem = make(data.train_images.middleCols(b, c), data.train_labels.segment(b, c));
    Eigen::VectorXf x(static_cast<Eigen::Index>(problem.dim()));
    start(problem, x);
    const ecopt::print_progress printer{.out = stderr, .label = method};
    auto report =
        solver.run(t, problem, x,
                   {.steps = steps, .seed = s.seed, .eval_every = steps / checkpoints}, printer);
    if (t.rank() == 0) accuracy = problem.accuracy(x, data.test_images, data.test_labels);
    return report;
  });
  std::fprintf(stderr, "\n");
  row r{std::move(method),
        {},
        accuracy,
        reports[0].total_payload_bits(),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
  for (const auto& point : reports[0].history) {
    if (point.step > 0) r.losses.push_back(point.loss);
  }
  return r;
}

/// Dense SGD, then TopK at 1% and 0.1% of d, each with and without memory, at one step size.
template <class Make, class Start>
std::vector<row> sweep(const dataset& data, const settings& s, std::uint64_t steps, double lr,
                       Make make, Start start) {
  const ecopt::sgd step{.lr = lr};
  std::vector<row> rows;
  rows.push_back(train("dense SGD",
                       ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, step}, data,
                       s, steps, make, start));
  for (const double ratio : {0.01, 0.001}) {
    const std::string k = ratio == 0.01 ? "1%" : "0.1%";
    rows.push_back(train("top_k " + k + " + memory",
                         ecopt::solver{ecopt::top_k{.ratio = ratio}, ecopt::error_feedback{}, step},
                         data, s, steps, make, start));
    rows.push_back(
        train("top_k " + k + ", no memory",
              ecopt::solver{ecopt::top_k{.ratio = ratio}, ecopt::no_compensation{}, step}, data, s,
              steps, make, start));
  }
  return rows;
}

void print_table(const char* title, std::size_t d, std::uint64_t steps, double lr,
                 const std::vector<row>& rows) {
  std::printf("\n### %s: d = %zu, %llu steps, step size %g\n\n", title, d,
              static_cast<unsigned long long>(steps), lr);
  std::printf(
      "| method | train loss at 25%% / 50%% / 75%% | final train loss | vs dense | test "
      "accuracy | bits sent | compression vs dense | wall time |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|\n");
  const double dense_loss = rows[0].losses.back();
  const double dense_bits = static_cast<double>(rows[0].bits);
  for (const auto& r : rows) {
    std::string curve;
    for (std::size_t i = 0; i + 1 < r.losses.size(); ++i) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%s%.4f", i == 0 ? "" : " / ", r.losses[i]);
      curve += buf;
    }
    std::printf("| %s | %s | %.4f | %+.4f | %.2f%% | %.4g | %.0fx | %.1f s |\n", r.method.c_str(),
                curve.c_str(), r.losses.back(), r.losses.back() - dense_loss, 100 * r.accuracy,
                static_cast<double>(r.bits), dense_bits / static_cast<double>(r.bits), r.seconds);
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const settings s = parse(argc, argv);
  const auto t0 = std::chrono::steady_clock::now();
  const dataset data = ecopt_examples::load_fashion_mnist(s.data);
  std::printf(
      "TopK SGD with and without memory (Alistarh et al. 2018, arXiv:1809.10505) on "
      "Fashion-MNIST: %lld training and %lld test images, %d worker threads, batch %zu per "
      "worker\n",
      static_cast<long long>(data.train_images.cols()),
      static_cast<long long>(data.test_images.cols()), s.workers, s.batch);

  const auto convex = sweep(
      data, s, s.convex_steps, s.convex_lr,
      [&](const auto& images, const auto& labels) {
        return ecopt::softmax_regression<float>(images, labels, classes,
                                                {.l2 = 1e-4, .batch_size = s.batch});
      },
      [](auto&, Eigen::VectorXf& x) { x.setZero(); });
  const auto non_convex = sweep(
      data, s, s.mlp_steps, s.mlp_lr,
      [&](const auto& images, const auto& labels) {
        return ecopt::mlp<float>(images, labels, classes,
                                 {.hidden = s.hidden, .l2 = 1e-4, .batch_size = s.batch});
      },
      [&](auto& problem, Eigen::VectorXf& x) { problem.initial_point(s.seed, x); });

  const std::size_t d_convex = classes * (static_cast<std::size_t>(data.train_images.rows()) + 1);
  const std::size_t d_mlp = s.hidden * (static_cast<std::size_t>(data.train_images.rows()) + 1) +
                            classes * (s.hidden + 1);
  print_table("convex: softmax regression", d_convex, s.convex_steps, s.convex_lr, convex);
  char title[64];
  std::snprintf(title, sizeof title, "non-convex: 784-%zu-10 ReLU perceptron", s.hidden);
  print_table(title, d_mlp, s.mlp_steps, s.mlp_lr, non_convex);
  std::printf(
      "\ntrain loss: mean cross-entropy + l2 term over the 60k training images, at the same "
      "iterate on every worker. bits sent: payload bits summed over the workers (values, "
      "indices and their coding), excluding frame headers.\n");
  std::printf("total wall time %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return EXIT_SUCCESS;
} catch (const std::exception& e) {
  std::fprintf(stderr, "topk_memory: %s\n", e.what());
  return EXIT_FAILURE;
}
