// Your loop, your layers: a training loop written by the user -- a two-layer
// perceptron with its own forward and backward pass in Eigen, not an ecopt
// problem -- that calls ecopt::gradient_exchange once per step to turn its
// gradient into the workers' mean direction, here PowerSGD per weight matrix
// with error feedback (the biases travel dense), over TCP between processes.
//
//   scripts/ecopt-launch -n 2 -- own_loop [--compressor NAME] [--steps 900] [--hidden 256]
//       [--batch 64] [--lr 0.1] [--seed 1] [--data /usr/share/datasets/fashion-mnist]
//   NAME: power_sgd (default; per layer), top_k (1 % per layer), dense, top_k_global,
//         power_sgd_whole (the whole vector as one matrix, for comparison)
//
// Each process trains on its own shard of Fashion-MNIST; all end with the same
// model. --checkpoint PREFIX --checkpoint-at K saves a checkpoint at step K and
// resumes from it; --resume starts a new job from one. Rank 0 prints the test accuracy, the bits
// each layer sent per round, and the wall time.
#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "command_line.hpp"
#include "ecopt/checkpoint.hpp"
#include "ecopt/ecopt.hpp"
#include "ecopt/transports/tcp_transport.hpp"
#include "fashion_mnist_data.hpp"

namespace {

struct settings {
  std::string compressor = "power_sgd";
  std::uint64_t steps = 900;
  Eigen::Index hidden = 256;
  Eigen::Index batch = 64;
  double lr = 0.1;
  std::uint64_t seed = 1;
  std::filesystem::path data = ecopt_examples::fashion_mnist_default_dir;
  std::filesystem::path checkpoint;  ///< each rank writes CHECKPOINT.rank<r>
  std::uint64_t checkpoint_at = 0;   ///< 0: never
  bool resume = false;
};

/// Reads the command line into s; false after --help.
bool parse(int argc, char** argv, settings& s) {
  ecopt_examples::command_line cli(
      "own_loop",
      "an MLP trained by a loop of your own through ecopt::gradient_exchange, one "
      "process per worker (start it with scripts/ecopt-launch)");
  cli.choice("--compressor", s.compressor,
             {"power_sgd", "top_k", "dense", "top_k_global", "power_sgd_whole"},
             "per-layer PowerSGD rank 4, per-layer top-k 1 %, dense, global top-k 1 %, or "
             "PowerSGD of the whole vector as one matrix")
      .option("--steps", s.steps, "training steps")
      .option("--hidden", s.hidden, "width of the hidden layer")
      .option("--batch", s.batch, "samples per step and worker")
      .option("--lr", s.lr, "Nesterov step size (momentum 0.9)")
      .option("--seed", s.seed, "seed of the initialisation and the sampling")
      .option("--data", s.data, "directory of the Fashion-MNIST IDX files")
      .option("--checkpoint", s.checkpoint,
              "checkpoint file prefix (each rank writes PREFIX.rank<r>)")
      .option("--checkpoint-at", s.checkpoint_at,
              "save a checkpoint before this step, then reload everything from it and go on "
              "(0: never)")
      .option("--resume", s.resume, "start from the checkpoint instead of step 0");
  if (!cli.parse(argc, argv)) return false;
  if ((s.checkpoint_at > 0 || s.resume) && s.checkpoint.empty()) {
    throw ecopt::invalid_argument("--checkpoint-at and --resume need --checkpoint PREFIX");
  }
  if (s.hidden < 1 || s.batch < 1) {
    throw ecopt::invalid_argument("--hidden and --batch must be at least 1");
  }
  return true;
}

/// The user's model: 784 -> hidden (ReLU) -> 10, softmax cross-entropy. Its
/// parameters live in one buffer; the weight matrices are column-major views.
class perceptron {
 public:
  static constexpr Eigen::Index inputs = 784;
  static constexpr Eigen::Index classes = 10;

  explicit perceptron(Eigen::Index hidden) : hidden_(hidden) {
    layout_.add_matrix("fc1.weight", hidden, inputs)
        .add_vector("fc1.bias", hidden)
        .add_matrix("fc2.weight", classes, hidden)
        .add_vector("fc2.bias", classes);
  }

  [[nodiscard]] const ecopt::parameter_layout& layout() const { return layout_; }
  [[nodiscard]] std::size_t size() const { return layout_.end(); }

  /// He initialisation from `seed`: the same on every worker.
  void initialise(std::span<float> x, std::uint64_t seed) const {
    auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
    std::fill(x.begin(), x.end(), 0.0f);
    for (const auto* name : {"fc1.weight", "fc2.weight"}) {
      const ecopt::parameter_block& b = layout_[name];
      const double scale = std::sqrt(2.0 / static_cast<double>(b.cols));
      for (std::size_t j = 0; j < b.size(); ++j) {
        x[b.offset + j] = static_cast<float>(scale * rng.normal());
      }
    }
  }

  /// The mean cross-entropy gradient over the columns `batch` of `images`.
  void gradient(std::span<const float> x, const Eigen::MatrixXf& images,
                const Eigen::VectorXi& labels, const std::vector<Eigen::Index>& batch,
                std::span<float> g) {
    const Eigen::Index b = static_cast<Eigen::Index>(batch.size());
    a_.resize(inputs, b);
    for (Eigen::Index i = 0; i < b; ++i) a_.col(i) = images.col(batch[static_cast<std::size_t>(i)]);
    forward(x, a_);
    // dZ = (softmax(Z) - onehot(y)) / b
    for (Eigen::Index i = 0; i < b; ++i) {
      z_.col(i) = (z_.col(i).array() - z_.col(i).maxCoeff()).exp();
      z_.col(i) /= z_.col(i).sum();
      z_(labels[batch[static_cast<std::size_t>(i)]], i) -= 1.0f;
    }
    z_ /= static_cast<float>(b);
    weight(g, "fc2.weight").noalias() = z_ * h_.transpose();
    bias(g, "fc2.bias") = z_.rowwise().sum();
    dh_.noalias() = weight(x, "fc2.weight").transpose() * z_;
    dh_ = dh_.cwiseProduct((h_.array() > 0.0f).cast<float>().matrix());
    weight(g, "fc1.weight").noalias() = dh_ * a_.transpose();
    bias(g, "fc1.bias") = dh_.rowwise().sum();
  }

  /// Fraction of `images` classified correctly.
  double accuracy(std::span<const float> x, const Eigen::MatrixXf& images,
                  const Eigen::VectorXi& labels) {
    Eigen::Index right = 0;
    for (Eigen::Index at = 0; at < images.cols(); at += 1000) {
      const Eigen::Index n = std::min<Eigen::Index>(1000, images.cols() - at);
      forward(x, images.middleCols(at, n));
      for (Eigen::Index i = 0; i < n; ++i) {
        Eigen::Index best = 0;
        z_.col(i).maxCoeff(&best);
        right += best == labels[at + i] ? 1 : 0;
      }
    }
    return static_cast<double>(right) / static_cast<double>(images.cols());
  }

 private:
  using matrix_view = Eigen::Map<Eigen::MatrixXf>;
  using const_matrix_view = Eigen::Map<const Eigen::MatrixXf>;

  matrix_view weight(std::span<float> x, const char* name) const {
    const auto& b = layout_[name];
    return {x.data() + b.offset, static_cast<Eigen::Index>(b.rows),
            static_cast<Eigen::Index>(b.cols)};
  }
  const_matrix_view weight(std::span<const float> x, const char* name) const {
    const auto& b = layout_[name];
    return {x.data() + b.offset, static_cast<Eigen::Index>(b.rows),
            static_cast<Eigen::Index>(b.cols)};
  }
  Eigen::Map<Eigen::VectorXf> bias(std::span<float> x, const char* name) const {
    const auto& b = layout_[name];
    return {x.data() + b.offset, static_cast<Eigen::Index>(b.size())};
  }
  Eigen::Map<const Eigen::VectorXf> bias(std::span<const float> x, const char* name) const {
    const auto& b = layout_[name];
    return {x.data() + b.offset, static_cast<Eigen::Index>(b.size())};
  }

  template <class Images>
  void forward(std::span<const float> x, const Images& a) {
    h_.noalias() = weight(x, "fc1.weight") * a;
    h_.colwise() += bias(x, "fc1.bias");
    h_ = h_.cwiseMax(0.0f);
    z_.noalias() = weight(x, "fc2.weight") * h_;
    z_.colwise() += bias(x, "fc2.bias");
  }

  Eigen::Index hidden_;
  ecopt::parameter_layout layout_;
  Eigen::MatrixXf a_, h_, z_, dh_;
};

template <class Compressor>
int train(const settings& s, Compressor compressor, const ecopt_examples::fashion_mnist_data& data,
          perceptron& net, ecopt::tcp_transport& transport) {
  const std::size_t d = net.size();
  std::vector<float> x(d), g(d), direction(d);
  net.initialise(x, s.seed);

  // The round as an object: compressor and error memory for this layout.
  ecopt::gradient_exchange exchange(compressor, ecopt::error_feedback{}, d, {.seed = s.seed});
  const ecopt::nesterov optimizer{.lr = s.lr, .momentum = 0.9};
  auto momentum = optimizer.make_state<float>(d);

  const auto shard = ecopt::shard_range(static_cast<std::size_t>(data.train_images.cols()),
                                        transport.rank(), transport.size());
  std::vector<Eigen::Index> batch(static_cast<std::size_t>(s.batch));
  std::uint64_t payload_bits = 0;
  const auto start = std::chrono::steady_clock::now();
  // A checkpoint holds everything the loop carries between steps: the exchange's
  // error memories and PowerSGD's warm start, the momentum, the model, the step.
  const auto file =
      std::filesystem::path(s.checkpoint.string() + ".rank" + std::to_string(transport.rank()));
  auto save = [&](std::uint64_t step) {
    ecopt::checkpoint c;
    exchange.save(c, transport);
    ecopt::save_state(c, "optimizer.", momentum);
    c.put("model", std::span<const float>(x));
    c.put("step", step);
    std::ofstream out(file, std::ios::binary);
    c.write(out);
  };
  auto load = [&]() -> std::uint64_t {  // into fresh objects, as a restarted job would
    std::ifstream in(file, std::ios::binary);
    if (!in) throw ecopt::invalid_argument("cannot read the checkpoint " + file.string());
    const ecopt::checkpoint c = ecopt::checkpoint::read(in);
    exchange = decltype(exchange)(compressor, ecopt::error_feedback{}, d, {.seed = s.seed});
    momentum = optimizer.make_state<float>(d);
    exchange.load(c, transport);
    ecopt::load_state(c, "optimizer.", momentum);
    c.get("model", std::span<float>(x));
    return c.get<std::uint64_t>("step");
  };
  const std::uint64_t first = s.resume ? load() : 0;

  for (std::uint64_t step = first; step < s.steps; ++step) {
    if (s.checkpoint_at > 0 && step == s.checkpoint_at) {
      save(step);
      if (load() != step) throw ecopt::invalid_argument("the checkpoint's step differs");
    }
    auto rng = ecopt::counter_rng::stream(s.seed, ecopt::stream_purpose::sampling,
                                          static_cast<std::uint64_t>(transport.rank()), step);
    for (auto& i : batch) i = static_cast<Eigen::Index>(shard.begin + rng.below(shard.count));
    net.gradient(x, data.train_images, data.train_labels, batch, g);

    const ecopt::exchange_round round{.round = step, .lr = optimizer.learning_rate(step)};
    payload_bits +=
        exchange(transport, std::span<const float>(g), std::span<float>(direction), round).payload;
    optimizer.apply(std::span<float>(x), std::span<const float>(direction), momentum,
                    exchange.context(transport, round));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Every worker applied the same directions: the models must be equal, bit for bit.
  std::uint64_t digest = 14695981039346656037ULL;  // FNV-1a over the bytes of x
  for (const float v : x) {
    const auto bits = std::bit_cast<std::uint32_t>(v);
    for (int k = 0; k < 4; ++k) digest = (digest ^ ((bits >> (8 * k)) & 0xFFU)) * 1099511628211ULL;
  }
  std::vector<std::uint64_t> digests(static_cast<std::size_t>(transport.size()));
  ecopt::collective_workspace workspace;
  ecopt::allgather(transport, std::span<const std::uint64_t>(&digest, 1),
                   std::span<std::uint64_t>(digests), workspace);
  for (const std::uint64_t other : digests) {
    if (other != digest) {
      std::fprintf(stderr, "own_loop: rank %d: the workers' models differ\n", transport.rank());
      return EXIT_FAILURE;
    }
  }

  if (transport.rank() == 0) {
    const double accuracy = net.accuracy(x, data.test_images, data.test_labels);
    std::printf(
        "own_loop: %s + error feedback, %d workers, %llu steps: test accuracy %.2f %%, "
        "%.0f payload bits per round per worker, %.2f s\n",
        s.compressor.c_str(), transport.size(), static_cast<unsigned long long>(s.steps),
        100 * accuracy, static_cast<double>(payload_bits) / static_cast<double>(s.steps - first),
        seconds);
    if constexpr (requires { exchange.compressor_state().block_bits; }) {
      const auto& state = exchange.compressor_state();
      for (std::size_t i = 0; i < state.blocks.size(); ++i) {
        std::printf("  %-11s %5zu x %-4zu %-6s %9llu bits\n", state.blocks[i].block.name.c_str(),
                    state.blocks[i].block.rows, state.blocks[i].block.cols,
                    state.blocks[i].dense ? "dense" : "packed",
                    static_cast<unsigned long long>(state.block_bits[i]));
      }
    }
  }
  return EXIT_SUCCESS;
}

}  // namespace

int main(int argc, char** argv) try {
  settings s;
  if (!parse(argc, argv, s)) return EXIT_SUCCESS;
  const auto data = ecopt_examples::load_fashion_mnist(s.data);
  ecopt::tcp_transport transport(ecopt::tcp_options::from_environment());
  perceptron net(s.hidden);
  if (s.compressor == "power_sgd") {
    return train(
        s, ecopt::per_block<ecopt::power_sgd>{.compressor = {.rank = 4}, .layout = net.layout()},
        data, net, transport);
  }
  if (s.compressor == "top_k") {
    return train(
        s, ecopt::per_block<ecopt::top_k>{.compressor = {.ratio = 0.01}, .layout = net.layout()},
        data, net, transport);
  }
  if (s.compressor == "top_k_global") {  // one top-k over all layers together
    return train(s, ecopt::top_k{.ratio = 0.01}, data, net, transport);
  }
  if (s.compressor == "power_sgd_whole") {  // the whole vector as one matrix: mixes the layers
    return train(s, ecopt::power_sgd{.rank = 4}, data, net, transport);
  }
  return train(s, ecopt::no_compression{}, data, net, transport);
} catch (const std::exception& e) {
  std::fprintf(stderr, "own_loop: %s\n", e.what());
  return EXIT_FAILURE;
}
