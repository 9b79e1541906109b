// Time to accuracy of one schedule over TCP, one process per rank: an MLP
// 784-256-10 on Fashion-MNIST (each rank a shard of the training set), the
// solver with a compressor and a schedule chosen by name (--config), until
// the test accuracy reaches --target or --steps run out. Rank 0 prints one
// line: steps, optimization wall time (evaluations excluded), its split into
// the gradient's compute and the rest (communication and the schedule's own
// work), bits per step and the accuracy reached. scripts/bench-slow-link.sh
// runs it in two network namespaces joined by a link shaped to 100 Mbit/s.
//
//   ecopt-launch -n 2 -- mlp_over_tcp --config dense --steps 900
//   mlp_over_tcp --config local8_topk --target 0.86   (ECOPT_* set by a launcher)
//
// configs: dense, topk (top-k 1 % + error feedback), local8 (local SGD, H = 8),
// local8_topk, slowmo (tau = 8, beta = 0.5), overlap (Overlap-Local-SGD, tau = 8).
#include <Eigen/Core>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "command_line.hpp"
#include "ecopt/ecopt.hpp"
#include "ecopt/transports/tcp_transport.hpp"
#include "fashion_mnist_data.hpp"

namespace {

struct settings {
  std::filesystem::path data = ecopt_examples::fashion_mnist_default_dir;
  std::string config = "dense";
  std::uint64_t steps = 900;
  std::size_t batch = 64;
  std::size_t hidden = 256;
  double lr = 0.1;
  double target = 0;  // test accuracy to stop at (0: run all steps)
  std::uint64_t eval_every = 48;
  std::uint64_t seed = 1;
};

bool parse(int argc, char** argv, settings& s) {
  ecopt_examples::command_line cli(
      "mlp_over_tcp",
      "time to accuracy of an MLP on Fashion-MNIST over TCP with a compressor and schedule by "
      "name (dense, topk, local8, local8_topk, slowmo, overlap)");
  cli.option("--data", s.data, "directory of the Fashion-MNIST IDX files")
      .option("--config", s.config, "dense | topk | local8 | local8_topk | slowmo | overlap")
      .option("--steps", s.steps, "most steps")
      .option("--batch", s.batch, "samples per step and rank")
      .option("--hidden", s.hidden, "width of the hidden layer")
      .option("--lr", s.lr, "Nesterov step size (momentum 0.9)")
      .option("--target", s.target, "stop at this test accuracy (0: run all steps)")
      .option(
          "--eval-every", s.eval_every,
          "steps between evaluations (a multiple of 8: the periodic schedules are averaged there)")
      .option("--seed", s.seed, "seed of the sampling and the initial model");
  return cli.parse(argc, argv);
}

using clock_type = std::chrono::steady_clock;
using dataset = ecopt_examples::fashion_mnist_data;
constexpr int classes = 10;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

/// The MLP of this rank's shard, timing its stochastic gradients.
struct timed_mlp {
  using scalar_type = float;
  ecopt::mlp<float>& inner;
  double compute_seconds = 0;
  [[nodiscard]] std::size_t dim() const { return inner.dim(); }
  double loss(const Eigen::Ref<const Eigen::VectorXf>& x) { return inner.loss(x); }
  void gradient(const Eigen::Ref<const Eigen::VectorXf>& x, Eigen::Ref<Eigen::VectorXf> g) {
    inner.gradient(x, g);
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXf>& x,
                           Eigen::Ref<Eigen::VectorXf> g, ecopt::counter_rng& rng) {
    const auto start = clock_type::now();
    inner.stochastic_gradient(x, g, rng);
    compute_seconds += seconds_since(start);
  }
};

/// Sums the wall time of the steps (evaluations excluded), measures the test
/// accuracy at every evaluation on rank 0 and asks to stop at the target.
struct time_to_accuracy {
  const Eigen::VectorXf* x;
  ecopt::mlp<float>* judge;
  const dataset* data;
  double target;
  int rank;
  clock_type::time_point mark = clock_type::now();
  double optimization_seconds = 0;
  double accuracy = 0;
  std::uint64_t steps = 0;

  void on_step(const ecopt::progress& p) {
    optimization_seconds += seconds_since(mark);
    mark = clock_type::now();
    steps = p.step;
  }
  ecopt::observer_action on_eval(const ecopt::progress&) {
    if (rank == 0) accuracy = judge->accuracy(*x, data->test_images, data->test_labels);
    mark = clock_type::now();
    return rank == 0 && target > 0 && accuracy >= target ? ecopt::observer_action::stop
                                                         : ecopt::observer_action::proceed;
  }
};

template <class Solver>
int run(const settings& s, const Solver& solver, const dataset& data,
        ecopt::tcp_transport& transport) {
  auto problem = ecopt_examples::training_shard_mlp(data, transport.rank(), transport.size(),
                                                    {.hidden = s.hidden, .batch_size = s.batch});
  ecopt::mlp<float> judge(data.test_images, data.test_labels, classes, {.hidden = s.hidden});
  timed_mlp timed{problem};
  Eigen::VectorXf x = problem.initial_point(s.seed);
  time_to_accuracy watch{&x, &judge, &data, s.target, transport.rank()};
  const auto report = solver.run(
      transport, timed, x, {.steps = s.steps, .seed = s.seed, .eval_every = s.eval_every}, watch);
  if (transport.rank() == 0) {
    const double steps = static_cast<double>(report.steps);
    const double per_step = watch.optimization_seconds / steps;
    const double compute = timed.compute_seconds / steps;
    std::printf(
        "%-12s steps %5llu  time %7.2f s  per step %7.2f ms = compute %6.2f + rest %6.2f ms  "
        "%10.0f bits/step  accuracy %.2f%%%s\n",
        s.config.c_str(), static_cast<unsigned long long>(report.steps), watch.optimization_seconds,
        1e3 * per_step, 1e3 * compute, 1e3 * (per_step - compute),
        static_cast<double>(report.payload_bits) / steps, 100 * watch.accuracy,
        s.target > 0 && watch.accuracy < s.target ? "  (target not reached)" : "");
  }
  return EXIT_SUCCESS;
}

}  // namespace

int main(int argc, char** argv) try {
  settings s;
  if (!parse(argc, argv, s)) return EXIT_SUCCESS;
  const auto data = ecopt_examples::load_fashion_mnist(s.data);
  ecopt::tcp_transport transport(ecopt::tcp_options::from_environment());
  const ecopt::nesterov inner{.lr = s.lr, .momentum = 0.9};
  const ecopt::no_compression dense;
  const ecopt::no_compensation none;
  const ecopt::top_k sparse{.ratio = 0.01};
  const ecopt::error_feedback memory;
  if (s.config == "dense") return run(s, ecopt::solver{dense, none, inner}, data, transport);
  if (s.config == "topk") return run(s, ecopt::solver{sparse, memory, inner}, data, transport);
  if (s.config == "local8") {
    return run(s, ecopt::solver{dense, none, inner, ecopt::local_sgd{.period = 8}}, data,
               transport);
  }
  if (s.config == "local8_topk") {
    return run(s, ecopt::solver{sparse, memory, inner, ecopt::local_sgd{.period = 8}}, data,
               transport);
  }
  if (s.config == "slowmo") {
    return run(s,
               ecopt::solver{dense, none, inner, ecopt::slowmo{.period = 8, .slow_momentum = 0.5}},
               data, transport);
  }
  if (s.config == "overlap") {
    return run(
        s,
        ecopt::solver{dense, none, inner,
                      ecopt::overlap_local_sgd{.period = 8, .pull = 0.5, .anchor_momentum = 0.7}},
        data, transport);
  }
  throw ecopt::invalid_argument("--config: unknown '" + s.config +
                                "' (dense, topk, local8, local8_topk, slowmo, overlap)");
} catch (const std::exception& e) {
  std::fprintf(stderr, "mlp_over_tcp: %s\n", e.what());
  return EXIT_FAILURE;
}
