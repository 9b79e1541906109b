// Stochastic Gradient Push (algorithms/stochastic_gradient_push.hpp) on
// threads: exact averaging over the exponential graph, conserved mass under
// compressed pushes, the bits of a push, convergence, SlowMo over the gossip
// base, and the compile-time refusal of a compensator.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ecopt/ecopt.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace stochastic_gradient_push_test {

namespace {

constexpr Eigen::Index size = 16;

/// f_i(x) = |x - c_i|^2 / 2, a different centre per rank. With `kick_only`,
/// the gradient is that at the first call and zero afterwards: the workers'
/// models then differ by one step and gossip alone has to average them.
struct centred_quadratic {
  using scalar_type = double;
  Eigen::VectorXd centre;
  bool kick_only = false;
  std::uint64_t calls = 0;
  centred_quadratic(int rank, bool kick) : centre(size), kick_only(kick) {
    for (Eigen::Index j = 0; j < size; ++j) centre[j] = std::sin(double(3 * j + 7 * rank + 1));
  }
  [[nodiscard]] std::size_t dim() const { return static_cast<std::size_t>(centre.size()); }
  double loss(const Eigen::Ref<const Eigen::VectorXd>& x) {
    return 0.5 * (x - centre).squaredNorm();
  }
  void gradient(const Eigen::Ref<const Eigen::VectorXd>& x, Eigen::Ref<Eigen::VectorXd> g) {
    g = x - centre;
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>& x,
                           Eigen::Ref<Eigen::VectorXd> g, ecopt::counter_rng&) {
    if (kick_only && calls++ > 0) {
      g.setZero();
    } else {
      g = x - centre;
    }
  }
};

Eigen::VectorXd mean_centre(int world) {
  Eigen::VectorXd c = Eigen::VectorXd::Zero(size);
  for (int r = 0; r < world; ++r) c += centred_quadratic(r, false).centre;
  return c / world;
}

/// Records this rank's model after chosen steps.
struct model_probe {
  const Eigen::VectorXd* x;
  std::vector<std::uint64_t> at;
  std::vector<Eigen::VectorXd> seen;
  void on_step(const ecopt::progress& p) {
    for (const auto s : at) {
      if (p.step == s) seen.push_back(*x);
    }
  }
};

template <class Solver>
std::vector<std::vector<Eigen::VectorXd>> probe_models(const Solver& s, int world, bool kick,
                                                       std::uint64_t steps,
                                                       std::vector<std::uint64_t> at) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    centred_quadratic p(t.rank(), kick);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(size);
    model_probe probe{&x, at, {}};
    s.run(t, p, x, {.steps = steps, .seed = 3}, probe);
    probe.seen.push_back(x);
    return probe.seen;
  });
}

}  // namespace

TEST_CASE("gossip over the exponential graph averages 2^m workers exactly in m steps") {
  // After one SGD step of size 1 from 0, worker i holds c_i; pushes of halves
  // over hops 1, 2, 4 leave every worker with the mean after log2(n) steps.
  const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 1},
                        ecopt::stochastic_gradient_push{}};
  for (const int world : {2, 4, 8}) {
    CAPTURE(world);
    const auto steps_to_mix = static_cast<std::uint64_t>(std::bit_width(unsigned(world - 1)));
    const auto seen =
        probe_models(s, world, true, steps_to_mix + 2, {steps_to_mix - 1, steps_to_mix});
    const Eigen::VectorXd mean = mean_centre(world);
    for (int r = 0; r < world; ++r) {
      CAPTURE(r);
      // One step short of mixing, the models still differ from the mean...
      if (world > 2) CHECK((seen[r][0] - mean).norm() > 1e-3);
      // ...after it, they are the mean (halves and sums of a few terms).
      CHECK((seen[r][1] - mean).norm() < 1e-12);
    }
  }
}

TEST_CASE("compressed pushes conserve the workers' mass and reach consensus") {
  // top-k of the replica difference: the average of the models never moves
  // (nothing is lost), and the spread shrinks as the replicas catch up.
  const ecopt::solver s{ecopt::top_k{.ratio = 0.25}, ecopt::no_compensation{}, ecopt::sgd{.lr = 1},
                        ecopt::stochastic_gradient_push{}};
  const int world = 5;
  const auto seen = probe_models(s, world, true, 400, {20, 399});
  const Eigen::VectorXd mean = mean_centre(world);
  Eigen::VectorXd average_early = Eigen::VectorXd::Zero(size);
  Eigen::VectorXd average_late = Eigen::VectorXd::Zero(size);
  double spread_early = 0, spread_late = 0;
  for (int r = 0; r < world; ++r) {
    average_early += seen[r][0] / world;
    average_late += seen[r][1] / world;
  }
  for (int r = 0; r < world; ++r) {
    spread_early = std::max(spread_early, (seen[r][0] - average_early).norm());
    spread_late = std::max(spread_late, (seen[r][1] - average_late).norm());
  }
  CAPTURE(spread_early);
  CAPTURE(spread_late);
  // The push-sum weights stay 1 on this regular graph, so the mean of the
  // de-biased models is the conserved mass.
  CHECK((average_early - mean).norm() < 1e-12);
  CHECK((average_late - mean).norm() < 1e-12);
  CHECK(spread_late < 1e-6);
  CHECK(spread_late < 1e-3 * spread_early);
  // The run's end averages exactly: every rank returns the mean.
  for (int r = 0; r < world; ++r) CHECK((seen[r][2] - mean).norm() < 1e-12);
}

TEST_CASE("gossip SGD converges near the optimum of the mean, dense and compressed") {
  auto distance = [](const auto& s) {
    auto out = ecopt::run_threads(6, [&](ecopt::thread_transport& t) {
      centred_quadratic p(t.rank(), false);
      Eigen::VectorXd x = Eigen::VectorXd::Zero(size);
      s.run(t, p, x, {.steps = 300, .seed = 4});
      return x;
    });
    return (out[0] - mean_centre(6)).norm() / mean_centre(6).norm();
  };
  const ecopt::sgd opt{.lr = 0.05};
  const double dense = distance(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{},
                                              opt, ecopt::stochastic_gradient_push{}});
  const double sparse =
      distance(ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::no_compensation{}, opt,
                             ecopt::stochastic_gradient_push{}});
  const double slow = distance(
      ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::nesterov{.lr = 0.02},
                    ecopt::stochastic_gradient_push{.slowmo_period = 12, .slow_momentum = 0.5}});
  CAPTURE(dense);
  CAPTURE(sparse);
  CAPTURE(slow);
  // Heterogeneous workers: decentralised SGD at a constant step settles
  // within O(lr) of the optimum; the final exact average removes most of it.
  CHECK(dense < 0.02);
  CHECK(sparse < 0.05);
  CHECK(slow < 0.02);
}

TEST_CASE("a push costs one message of half the model and the weight") {
  const ecopt::solver dense{ecopt::no_compression{}, ecopt::no_compensation{},
                            ecopt::sgd{.lr = 0.1}, ecopt::stochastic_gradient_push{}};
  const ecopt::solver averaged{
      ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.1},
      ecopt::stochastic_gradient_push{.slowmo_period = 5, .slow_momentum = 0.5}};
  const ecopt::solver sparse{ecopt::scaled_sign{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.1},
                             ecopt::stochastic_gradient_push{}};
  auto bits = [](const auto& s) {
    return ecopt::run_threads(3, [&](ecopt::thread_transport& t) {
      centred_quadratic p(t.rank(), false);
      Eigen::VectorXd x = Eigen::VectorXd::Zero(size);
      return s.run(t, p, x, {.steps = 10, .seed = 4}).payload_bits;
    })[0];
  };
  const std::uint64_t d = size;
  // 10 pushes of (double weight, d doubles), and the exact average at the end.
  CHECK(bits(dense) == 10 * (64 + 64 * d) + 64 * d);
  // With SlowMo every 5 steps: two exact averages, none left for the end.
  CHECK(bits(averaged) == 10 * (64 + 64 * d) + 2 * 64 * d);
  // Compressed: the weight and the compressor's payload (scaled sign: d bits and a scale).
  const std::uint64_t sign_bits = ecopt::scaled_sign{}.max_bits(d);
  CHECK(bits(sparse) == 10 * (64 + sign_bits) + 64 * d);
}

}  // namespace stochastic_gradient_push_test
