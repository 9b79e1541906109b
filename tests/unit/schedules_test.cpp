// Local SGD and SlowMo (algorithms/) on threads: their reductions to the
// synchronous solver and to each other, bit for bit; the bits of a period;
// equal models on every rank at the end; the momentum-buffer variants;
// convergence on heterogeneous shards; refused settings.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ecopt/ecopt.hpp"
#include "support/messages.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace schedules_test {

namespace {

constexpr Eigen::Index dim = 24;
constexpr Eigen::Index samples_per_rank = 40;

/// Least-squares data with a different shard per rank (heterogeneous
/// workers), deterministic in the rank. The problem views the features, so
/// the shard outlives it.
struct shard {
  Eigen::MatrixXd a;
  Eigen::VectorXd b;
  explicit shard(int rank) : a(dim, samples_per_rank), b(samples_per_rank) {
    auto rng = ecopt::counter_rng::stream(21, ecopt::stream_purpose::test,
                                          static_cast<std::uint64_t>(rank), 0);
    // Entries N(0, 1/4): curvature between ~0.1 and ~0.5 for the pooled data.
    const double scale = 0.5;
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = scale * rng.normal();
    for (Eigen::Index i = 0; i < b.size(); ++i) b[i] = rng.normal() + 0.5 * rank;
  }
  [[nodiscard]] ecopt::least_squares<double> problem() const {
    return ecopt::least_squares<double>(a, b, ecopt::least_squares_options{.batch_size = 4});
  }
};

/// The optimum of the mean loss over `world` shards: least squares over the
/// pooled data (every shard has the same number of samples).
double optimal_loss(int world) {
  Eigen::MatrixXd pooled_a(dim, world * samples_per_rank);
  Eigen::VectorXd pooled_b(world * samples_per_rank);
  for (int r = 0; r < world; ++r) {
    const shard data(r);
    pooled_a.middleCols(r * samples_per_rank, samples_per_rank) = data.a;
    pooled_b.segment(r * samples_per_rank, samples_per_rank) = data.b;
  }
  const Eigen::VectorXd best = (pooled_a * pooled_a.transpose()).ldlt().solve(pooled_a * pooled_b);
  return 0.5 * (pooled_a.transpose() * best - pooled_b).squaredNorm() /
         static_cast<double>(pooled_b.size());
}

struct outcome {
  Eigen::VectorXd x;
  ecopt::run_report report;
};

template <class Solver>
std::vector<outcome> run_on_threads(const Solver& s, int world, const ecopt::run_options& options) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    const shard data(t.rank());
    auto problem = data.problem();
    Eigen::VectorXd x = Eigen::VectorXd::Constant(dim, 0.25);
    auto report = s.run(t, problem, x, options);
    return outcome{x, report};
  });
}

bool same_bits(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

/// What first differs between two runs on any rank -- iterates bit for bit,
/// steps, bits, evaluated losses -- or "" when nothing does. Also refuses a
/// pair that never left the start, so a match is not vacuous.
std::string first_difference(const std::vector<outcome>& a, const std::vector<outcome>& b) {
  if (a.size() != b.size()) return "world sizes differ";
  for (std::size_t r = 0; r < a.size(); ++r) {
    const std::string rank = "rank " + std::to_string(r) + ": ";
    if (!same_bits(a[r].x, b[r].x)) return rank + "iterates differ";
    if (same_bits(a[r].x, Eigen::VectorXd::Constant(dim, 0.25))) return rank + "x never moved";
    if (a[r].report.steps != b[r].report.steps) return rank + "steps differ";
    if (a[r].report.payload_bits != b[r].report.payload_bits) return rank + "payload bits differ";
    if (a[r].report.wire_bits != b[r].report.wire_bits) return rank + "wire bits differ";
    if (a[r].report.history.size() != b[r].report.history.size()) return rank + "histories differ";
    for (std::size_t i = 0; i < a[r].report.history.size(); ++i) {
      if (a[r].report.history[i].loss != b[r].report.history[i].loss) {
        return rank + "loss at evaluation " + std::to_string(i) + " differs";
      }
    }
  }
  return "";
}

const ecopt::run_options every_step{.steps = 30, .seed = 5, .eval_every = 1};

}  // namespace

TEST_CASE("local SGD with H = 1 and plain SGD is the synchronous solver, bit for bit") {
  for (const int world : {1, 3}) {
    CAPTURE(world);
    SUBCASE("dense") {
      const ecopt::sgd opt{.lr = 0.1};
      CHECK(
          first_difference(
              run_on_threads(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, opt,
                                           ecopt::local_sgd{.period = 1}},
                             world, every_step),
              run_on_threads(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, opt},
                             world, every_step)) == "");
    }
    SUBCASE("top-k with error feedback, decaying step size") {
      const ecopt::sgd opt{.lr = 0.2, .lr_decay = 0.1};
      CHECK(first_difference(
                run_on_threads(ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{},
                                             opt, ecopt::local_sgd{.period = 1}},
                               world, every_step),
                run_on_threads(
                    ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{}, opt}, world,
                    every_step)) == "");
    }
    SUBCASE("PowerSGD with error feedback") {
      const ecopt::sgd opt{.lr = 0.1};
      const ecopt::power_sgd compressor{.rank = 2, .rows = 4};
      CHECK(first_difference(run_on_threads(ecopt::solver{compressor, ecopt::error_feedback{}, opt,
                                                          ecopt::local_sgd{.period = 1}},
                                            world, every_step),
                             run_on_threads(ecopt::solver{compressor, ecopt::error_feedback{}, opt},
                                            world, every_step)) == "");
    }
  }
}

TEST_CASE("SlowMo with beta = 0 and alpha = 1 is local SGD, bit for bit") {
  const ecopt::nesterov opt{.lr = 0.02, .momentum = 0.9};
  const ecopt::run_options options{.steps = 26, .seed = 9, .eval_every = 4};
  for (const auto buffers : {ecopt::local_momentum::keep, ecopt::local_momentum::reset,
                             ecopt::local_momentum::average}) {
    CAPTURE(static_cast<int>(buffers));
    CHECK(
        first_difference(
            run_on_threads(ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{}, opt,
                                         ecopt::slowmo{.period = 4,
                                                       .slow_lr = 1,
                                                       .slow_momentum = 0,
                                                       .momentum_buffers = buffers}},
                           3, options),
            run_on_threads(
                ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{}, opt,
                              ecopt::local_sgd{.period = 4, .momentum_buffers = buffers}},
                3, options)) == "");
  }
}

TEST_CASE("SlowMo with H = 1, beta = 0, alpha = 1 and plain SGD is the synchronous solver") {
  const ecopt::sgd opt{.lr = 0.1};
  CHECK(first_difference(
            run_on_threads(ecopt::solver{ecopt::qsgd{.levels = 4}, ecopt::error_feedback{}, opt,
                                         ecopt::slowmo{.period = 1, .slow_momentum = 0}},
                           2, every_step),
            run_on_threads(ecopt::solver{ecopt::qsgd{.levels = 4}, ecopt::error_feedback{}, opt}, 2,
                           every_step)) == "");
}

TEST_CASE("a period costs one exchange: the bits are synchronous SGD's divided by H") {
  const ecopt::sgd opt{.lr = 0.1};
  // 22 steps with H = 5: four full periods and the partial one that the end of
  // the run averages.
  const ecopt::run_options options{.steps = 22, .seed = 1};
  const auto local = run_on_threads(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{},
                                                  opt, ecopt::local_sgd{.period = 5}},
                                    3, options);
  for (const auto& o : local) {
    // The dense payload is float32 on the wire.
    CHECK(o.report.payload_bits == 5u * 32u * static_cast<std::uint64_t>(dim));
    CHECK(o.report.steps == 22);
  }
  // Averaged momentum buffers travel dense (in double) once more per period.
  const auto averaged = run_on_threads(
      ecopt::solver{
          ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::heavy_ball{.lr = 0.05},
          ecopt::local_sgd{.period = 5, .momentum_buffers = ecopt::local_momentum::average}},
      3, options);
  for (const auto& o : averaged) {
    CHECK(o.report.payload_bits == 5u * (32u + 64u) * static_cast<std::uint64_t>(dim));
  }
  // Compressed: a fixed-size payload (scaled sign), once per period.
  const auto sparse = run_on_threads(ecopt::solver{ecopt::scaled_sign{}, ecopt::error_feedback{},
                                                   opt, ecopt::slowmo{.period = 11}},
                                     2, options);
  const auto synchronous =
      run_on_threads(ecopt::solver{ecopt::scaled_sign{}, ecopt::error_feedback{}, opt}, 2,
                     {.steps = 2, .seed = 1});
  for (std::size_t r = 0; r < sparse.size(); ++r) {
    CHECK(sparse[r].report.payload_bits == synchronous[r].report.payload_bits);
  }
}

TEST_CASE("every rank ends with the same model, and the workers drift apart in between") {
  const ecopt::nesterov opt{.lr = 0.02, .momentum = 0.9};
  for (const std::uint64_t steps : {24u, 27u}) {
    CAPTURE(steps);
    const auto out =
        run_on_threads(ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{}, opt,
                                     ecopt::slowmo{.period = 8, .slow_momentum = 0.6}},
                       3, {.steps = steps, .seed = 2});
    for (const auto& o : out) CHECK(same_bits(o.x, out[0].x));
  }
  // Mid-period, the workers' models differ (their shards differ): observed
  // by an observer that reads this rank's x between exchanges.
  struct drift_probe {
    const Eigen::VectorXd* x;
    std::vector<Eigen::VectorXd> seen;
    void on_step(const ecopt::progress& p) {
      if (p.step == 3) seen.push_back(*x);
    }
  };
  const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{}, opt,
                        ecopt::local_sgd{.period = 8}};
  auto mid = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
    const shard data(t.rank());
    auto problem = data.problem();
    Eigen::VectorXd x = Eigen::VectorXd::Constant(dim, 0.25);
    drift_probe probe{&x, {}};
    s.run(t, problem, x, {.steps = 8, .seed = 2}, probe);
    REQUIRE(probe.seen.size() == 1);
    return probe.seen[0];
  });
  CHECK((mid[0] - mid[1]).norm() > 1e-6);
}

TEST_CASE("local SGD and SlowMo converge on heterogeneous shards like synchronous SGD") {
  const ecopt::run_options options{.steps = 600, .seed = 4};
  const ecopt::nesterov opt{.lr = 0.01, .momentum = 0.9};
  auto final_loss = [&](const auto& s) {
    return run_on_threads(s, 4, options)[0].report.final_loss();
  };
  const double start = run_on_threads(ecopt::solver{}, 4, {.steps = 0})[0].report.final_loss();
  const double optimum = optimal_loss(4);
  CAPTURE(optimum);
  const double sync =
      final_loss(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, opt});
  const double local = final_loss(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{},
                                                opt, ecopt::local_sgd{.period = 8}});
  const double slow =
      final_loss(ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{}, opt,
                               ecopt::slowmo{.period = 8, .slow_momentum = 0.5}});
  CAPTURE(start);
  CAPTURE(sync);
  CAPTURE(local);
  CAPTURE(slow);
  CHECK(sync - optimum < 0.05 * (start - optimum));
  // Local steps on differing shards drift, but not far at this step size.
  CHECK(local - optimum < 0.05 * (start - optimum));
  // The slow momentum's larger effective step settles at a higher noise floor.
  CHECK(slow - optimum < 0.1 * (start - optimum));
}

TEST_CASE("slow momentum speeds up local SGD where progress is slow (SlowMo's claim, small)") {
  // Plain inner SGD at a small step: the curvature-limited regime in which
  // SlowMo's outer momentum acts as acceleration. Equal steps, equal bits.
  const ecopt::run_options options{.steps = 160, .seed = 6};
  const ecopt::sgd inner{.lr = 0.02};
  const auto local = run_on_threads(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{},
                                                  inner, ecopt::local_sgd{.period = 8}},
                                    4, options);
  const auto slow =
      run_on_threads(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, inner,
                                   ecopt::slowmo{.period = 8, .slow_momentum = 0.6}},
                     4, options);
  const double optimum = optimal_loss(4);
  const double local_gap = local[0].report.final_loss() - optimum;
  const double slow_gap = slow[0].report.final_loss() - optimum;
  CAPTURE(local_gap);
  CAPTURE(slow_gap);
  CHECK(local_gap > 0);
  CHECK(slow_gap < 0.5 * local_gap);
  CHECK(slow[0].report.payload_bits == local[0].report.payload_bits);
}

TEST_CASE("an early stop ends every schedule on every rank at the same step, averaged") {
  // Rank 2 asks to stop at its first evaluation past step 20; the others
  // follow, and the models are averaged before the run returns.
  struct stop_on_rank_two {
    int rank;
    ecopt::observer_action on_eval(const ecopt::progress& p) const {
      return rank == 2 && p.step > 20 ? ecopt::observer_action::stop
                                      : ecopt::observer_action::proceed;
    }
  };
  auto check = [](const auto& s) {
    auto out = ecopt::run_threads(3, [&](ecopt::thread_transport& t) {
      const shard data(t.rank());
      auto problem = data.problem();
      Eigen::VectorXd x = Eigen::VectorXd::Constant(dim, 0.25);
      auto report = s.run(t, problem, x, {.steps = 200, .seed = 3, .eval_every = 6},
                          stop_on_rank_two{t.rank()});
      return outcome{x, report};
    });
    for (const auto& o : out) {
      CHECK(o.report.stopped_early);
      CHECK(o.report.steps == 24);
      CHECK(same_bits(o.x, out[0].x));
      // Every rank learns every rank's bits (top-k's index code varies by rank).
      CHECK(o.report.payload_bits_per_worker == out[0].report.payload_bits_per_worker);
    }
  };
  const ecopt::nesterov opt{.lr = 0.05, .momentum = 0.9};
  const ecopt::top_k sparse{.ratio = 0.25};
  check(ecopt::solver{sparse, ecopt::error_feedback{}, opt, ecopt::local_sgd{.period = 5}});
  check(ecopt::solver{sparse, ecopt::error_feedback{}, opt, ecopt::slowmo{.period = 5}});
  check(ecopt::solver{sparse, ecopt::no_compensation{}, opt, ecopt::stochastic_gradient_push{}});
  check(ecopt::solver{sparse, ecopt::error_feedback{}, opt, ecopt::overlap_local_sgd{.period = 5}});
}

TEST_CASE("refused schedule settings are named") {
  auto refuse = [](const auto& s, const char* what) {
    auto body = [&](ecopt::thread_transport& t) {
      const shard data(t.rank());
      auto problem = data.problem();
      Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
      s.run(t, problem, x, {.steps = 3});
    };
    CHECK_THROWS_WITH_AS(ecopt::run_threads(2, body), doctest::Contains(what),
                         ecopt::invalid_argument);
  };
  refuse(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{},
                       ecopt::local_sgd{.period = 0}},
         "local_sgd: period");
  refuse(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{},
                       ecopt::slowmo{.slow_momentum = 1}},
         "slowmo: slow_momentum");
  refuse(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{},
                       ecopt::slowmo{.slow_lr = 0}},
         "slowmo: slow_lr");
}

}  // namespace schedules_test
