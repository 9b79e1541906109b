// Overlap-Local-SGD (algorithms/overlap_local_sgd.hpp) and the background
// channel it runs on (background_channel.hpp): the anchor of boundary k is
// the mean of the contributions of boundary k - 1, bit for bit against a
// sequential reference; modelled time per period is max(compute,
// communication) where local SGD pays their sum; convergence; a failing rank
// is named and nobody hangs; the channel on its own.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "ecopt/ecopt.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace overlap_local_sgd_test {

namespace {

constexpr Eigen::Index size = 10;

/// f_i(x) = |x - c_i|^2 / 2 in float, a different centre per rank, exact gradients.
struct centred_quadratic {
  using scalar_type = float;
  Eigen::VectorXf centre;
  int poisoned_step = -1;
  int calls = 0;
  explicit centred_quadratic(int rank) : centre(size) {
    for (Eigen::Index j = 0; j < size; ++j) {
      centre[j] = static_cast<float>(std::cos(double(2 * j + 3 * rank)));
    }
  }
  [[nodiscard]] std::size_t dim() const { return static_cast<std::size_t>(centre.size()); }
  double loss(const Eigen::Ref<const Eigen::VectorXf>& x) {
    return 0.5 * double((x - centre).squaredNorm());
  }
  void gradient(const Eigen::Ref<const Eigen::VectorXf>& x, Eigen::Ref<Eigen::VectorXf> g) {
    g = x - centre;
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXf>& x,
                           Eigen::Ref<Eigen::VectorXf> g, ecopt::counter_rng&) {
    g = x - centre;
    if (calls++ == poisoned_step) g[2] = std::numeric_limits<float>::quiet_NaN();
  }
};

/// The algorithm of the header, written out for two workers in one thread.
std::vector<Eigen::VectorXf> reference_run(std::uint64_t steps, std::uint64_t period, float lr,
                                           float pull) {
  std::vector<Eigen::VectorXf> x(2, Eigen::VectorXf::Zero(size));
  std::vector<Eigen::VectorXf> contribution(2, Eigen::VectorXf::Zero(size));
  Eigen::VectorXf anchor = Eigen::VectorXf::Zero(size), base = anchor;
  bool travelling = false;
  for (std::uint64_t t = 0; t < steps; ++t) {
    for (int i = 0; i < 2; ++i) {
      const Eigen::VectorXf g = x[i] - centred_quadratic(i).centre;
      for (Eigen::Index j = 0; j < size; ++j) x[i][j] -= lr * g[j];
    }
    if ((t + 1) % period != 0) continue;
    if (travelling) {
      // The mean that left at the previous boundary arrives now.
      for (Eigen::Index j = 0; j < size; ++j) {
        anchor[j] = base[j] + (contribution[0][j] + contribution[1][j]) * 0.5f;
      }
    }
    for (int i = 0; i < 2; ++i) {
      for (Eigen::Index j = 0; j < size; ++j) {
        x[i][j] = (1 - pull) * x[i][j] + pull * anchor[j];
      }
      contribution[i] = x[i] - anchor;
    }
    base = anchor;
    travelling = true;
  }
  return x;
}

}  // namespace

TEST_CASE("the anchor of boundary k is the mean of the contributions of boundary k - 1") {
  const float lr = 0.125f;
  const float pull = 0.25f;
  const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = lr},
                        ecopt::overlap_local_sgd{.period = 3, .pull = pull}};
  // The models just before the run's final exact average, seen by an
  // observer at the last step.
  struct probe {
    const Eigen::VectorXf* x;
    std::uint64_t last;
    Eigen::VectorXf seen;
    void on_step(const ecopt::progress& p) {
      if (p.step == last) seen = *x;
    }
  };
  for (const std::uint64_t steps : {3u, 7u, 31u}) {
    CAPTURE(steps);
    auto models = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
      centred_quadratic p(t.rank());
      Eigen::VectorXf x = Eigen::VectorXf::Zero(size);
      probe watch{&x, steps, {}};
      s.run(t, p, x, {.steps = steps, .seed = 1, .eval_every = 2}, watch);
      return std::vector<Eigen::VectorXf>{watch.seen, x};
    });
    const auto expected = reference_run(steps, 3, lr, pull);
    for (int i = 0; i < 2; ++i) {
      CAPTURE(i);
      CHECK(std::memcmp(models[i][0].data(), expected[i].data(), sizeof(float) * size) == 0);
    }
    // And the run ends with the exact average on both ranks.
    const Eigen::VectorXf mean = (expected[0] + expected[1]) * 0.5f;
    CHECK((models[0][1] - mean).norm() < 1e-6f);
    CHECK(std::memcmp(models[0][1].data(), models[1][1].data(), sizeof(float) * size) == 0);
  }
}

TEST_CASE("in modelled time a period costs max(compute, communication), not their sum") {
  // 4 workers; a step computes for t_c; the network makes one average of the
  // model take about `ratio` periods of compute.
  const double t_c = 1e-3;
  const std::uint64_t tau = 8;
  const std::uint64_t periods = 20;
  const std::uint64_t dim = size;
  // Ring allreduce of 4 ranks: 2 (n - 1) / n of the float32 payload per rank,
  // in 6 sequential messages: pick the bandwidth so that one allreduce takes
  // ~ratio * tau * t_c.
  auto modelled = [&](const auto& solver, double ratio) {
    const double bytes = 4.0 * dim * 2.0 * 3.0 / 4.0;
    const double bandwidth = bytes / (ratio * tau * t_c);
    auto times = ecopt::run_threads(4, [&](ecopt::thread_transport& t) {
      ecopt::simulated_transport sim(t, ecopt::network_model::uniform(0, bandwidth));
      centred_quadratic p(t.rank());
      Eigen::VectorXf x = Eigen::VectorXf::Zero(size);
      struct charge {
        decltype(sim)* transport;
        double seconds;
        void on_step(const ecopt::progress&) const { transport->charge_compute(seconds); }
      };
      return solver.run(sim, p, x, {.steps = tau * periods, .seed = 2}, charge{&sim, t_c})
          .modelled_seconds;
    });
    return times[0];
  };
  const ecopt::sgd opt{.lr = 0.05};
  const ecopt::solver local{ecopt::no_compression{}, ecopt::no_compensation{}, opt,
                            ecopt::local_sgd{.period = tau}};
  const ecopt::solver overlap{ecopt::no_compression{}, ecopt::no_compensation{}, opt,
                              ecopt::overlap_local_sgd{.period = tau}};
  const double compute = static_cast<double>(tau * periods) * t_c;
  for (const double ratio : {0.5, 1.0, 3.0}) {
    CAPTURE(ratio);
    const double local_time = modelled(local, ratio);
    const double overlap_time = modelled(overlap, ratio);
    // Local SGD pays compute + communication: D per average.
    const double average = (local_time - compute) / static_cast<double>(periods);
    CAPTURE(local_time);
    CAPTURE(overlap_time);
    CAPTURE(average);
    CHECK(average == doctest::Approx(ratio * tau * t_c).epsilon(0.3));
    // Overlap: the first period's compute, then max(compute, D) per period,
    // the wait for the last average and the run's final exact average.
    const double expected =
        tau * t_c + static_cast<double>(periods - 1) * std::max(tau * t_c, average) + 2 * average;
    CHECK(overlap_time == doctest::Approx(expected).epsilon(0.03));
    CHECK(overlap_time < local_time);
  }
}

TEST_CASE("Overlap-Local-SGD converges like local SGD on heterogeneous workers") {
  auto distance = [](const auto& solver, int world) {
    auto out = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
      centred_quadratic p(t.rank());
      Eigen::VectorXf x = Eigen::VectorXf::Zero(size);
      solver.run(t, p, x, {.steps = 240, .seed = 3});
      return x;
    });
    Eigen::VectorXf optimum = Eigen::VectorXf::Zero(size);
    for (int r = 0; r < world; ++r) optimum += centred_quadratic(r).centre / float(world);
    return double((out[0] - optimum).norm() / optimum.norm());
  };
  const ecopt::sgd opt{.lr = 0.05};
  const double plain = distance(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{},
                                              opt, ecopt::overlap_local_sgd{.period = 6}},
                                4);
  const double momentum = distance(
      ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, opt,
                    ecopt::overlap_local_sgd{.period = 6, .pull = 0.5, .anchor_momentum = 0.7}},
      4);
  const double sparse = distance(ecopt::solver{ecopt::top_k{.ratio = 0.5}, ecopt::error_feedback{},
                                               opt, ecopt::overlap_local_sgd{.period = 6}},
                                 3);
  const double sparse_local =
      distance(ecopt::solver{ecopt::top_k{.ratio = 0.5}, ecopt::error_feedback{}, opt,
                             ecopt::local_sgd{.period = 6}},
               3);
  CAPTURE(plain);
  CAPTURE(momentum);
  CAPTURE(sparse);
  CAPTURE(sparse_local);
  CHECK(plain < 1e-3);
  CHECK(momentum < 1e-3);
  // Compressed contributions of heterogeneous workers: error feedback leaves
  // an O(lr H) neighbourhood, as it does for local SGD.
  CHECK(sparse < 0.1);
  CHECK(sparse < sparse_local);
}

TEST_CASE("a rank that fails mid-run is named while its average travels, and nobody hangs") {
  const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.1},
                        ecopt::overlap_local_sgd{.period = 4}};
  auto body = [&](ecopt::thread_transport& t) {
    centred_quadratic p(t.rank());
    if (t.rank() == 1) p.poisoned_step = 6;  // the average of step 3 is travelling
    Eigen::VectorXf x = Eigen::VectorXf::Zero(size);
    s.run(t, p, x, {.steps = 40});
  };
  CHECK_THROWS_WITH_AS(ecopt::run_threads(3, body, {.timeout = std::chrono::seconds(20)}),
                       doctest::Contains("rank 1, step 6"), ecopt::numeric_error);
}

TEST_CASE("background_channel runs jobs on another thread and hands errors back") {
  auto results = ecopt::run_threads(2, [](ecopt::thread_transport& t) {
    ecopt::background_channel<ecopt::thread_transport, int> channel(t);
    CHECK_FALSE(channel.in_flight());
    CHECK_THROWS_WITH_AS(channel.wait(), doctest::Contains("nothing was started"),
                         ecopt::invalid_argument);
    int sum = 0;
    ecopt::collective_workspace workspace;
    for (int round = 0; round < 5; ++round) {
      double value = t.rank() + round;
      auto job = [&t, &value, &workspace] {
        ecopt::allreduce_sum(t, std::span<double>(&value, 1), workspace);
        return static_cast<int>(value);
      };
      channel.start(job);
      CHECK(channel.in_flight());
      CHECK_THROWS_WITH_AS(channel.start(job), doctest::Contains("not waited"),
                           ecopt::invalid_argument);
      sum += channel.wait();
    }
    auto failing = []() -> int { throw std::runtime_error("job failed"); };
    channel.start(failing);
    CHECK_THROWS_WITH_AS(channel.wait(), "job failed", std::runtime_error);
    return sum;
  });
  // Round r sums (0 + r) + (1 + r).
  CHECK(results[0] == 1 + 3 + 5 + 7 + 9);
  CHECK(results[1] == results[0]);
}

}  // namespace overlap_local_sgd_test
