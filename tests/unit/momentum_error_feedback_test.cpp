// momentum_error_feedback: Sketched SGD's worker-side momentum and error
// accumulation with momentum stopping (Ivkin et al. 2019). At momentum 0 it is
// error_feedback bit for bit (both step-size conventions, a real compressor, a
// changing step size); a hand-computed two-round example; the momentum stopped
// exactly on the coordinates sent; bad momentum named; and the paper's form
// (count_sketch + momentum_error_feedback + sgd) solving least squares over
// threads, where it differs from momentum on the aggregate.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "contracts/contract_examples.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compensators/momentum_error_feedback.hpp"
#include "ecopt/compressors/count_sketch.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/optimizers/heavy_ball.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problems/least_squares.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"

namespace momentum_error_feedback_test {

namespace {

using ecopt::momentum_error_feedback;
using ecopt::round_context;

template <class T>
std::vector<T> random_vector(std::size_t d, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
  std::vector<T> v(d);
  for (auto& x : v) x = static_cast<T>(rng.normal());
  return v;
}

}  // namespace

TEST_CASE_TEMPLATE("momentum_error_feedback at momentum 0 is error_feedback bit for bit", T, float,
                   double) {
  constexpr std::size_t d = 64;
  for (const bool rescale : {true, false}) {
    CAPTURE(rescale);
    const ecopt::error_feedback ef{.rescale_with_lr = rescale};
    const momentum_error_feedback mef{.momentum = 0, .rescale_with_lr = rescale};
    auto se = ef.make_state<T>(d);
    auto sm = mef.make_state<T>(d);
    ecopt::test::harness<ecopt::top_k, T> compress(ecopt::top_k{.k = 5}, d);
    std::vector<T> pe(d), pm(d);
    for (std::uint64_t t = 0; t < 12; ++t) {
      const round_context ctx{
          .seed = 2, .round = t, .lr = 0.5 / (1.0 + static_cast<double>(t / 4))};
      const auto g = random_vector<T>(d, 40 + t);
      ef.compensate(std::span<const T>(g), se, std::span<T>(pe), ctx);
      mef.compensate(std::span<const T>(g), sm, std::span<T>(pm), ctx);
      REQUIRE(pe == pm);
      const auto sent = compress.apply(std::span<const T>(pe), ctx);
      ef.update(std::span<const T>(pe), std::span<const T>(sent), se, ctx);
      mef.update(std::span<const T>(pm), std::span<const T>(sent), sm, ctx);
      const auto me = ecopt::error_feedback::memory(se);
      const auto mm = momentum_error_feedback::memory(sm);
      REQUIRE(std::vector<T>(me.begin(), me.end()) == std::vector<T>(mm.begin(), mm.end()));
    }
  }
}

TEST_CASE("momentum_error_feedback: two rounds by hand, momentum stopped where sent") {
  const momentum_error_feedback mef{.momentum = 0.5, .rescale_with_lr = false};
  auto s = mef.make_state<double>(3);
  const round_context ctx{.lr = 0.1};
  std::vector<double> p(3);
  // Round 0: u = g, v = u; coordinate 1 is sent.
  const std::vector<double> g0 = {1, 2, -4};
  mef.compensate(std::span<const double>(g0), s, std::span<double>(p), ctx);
  CHECK(p == std::vector<double>{1, 2, -4});
  const std::vector<double> sent0 = {0, 2, 0};
  mef.update(std::span<const double>(p), std::span<const double>(sent0), s, ctx);
  auto u = momentum_error_feedback::velocity(s);
  auto v = momentum_error_feedback::memory(s);
  CHECK(std::vector<double>(u.begin(), u.end()) == std::vector<double>{1, 0, -4});
  CHECK(std::vector<double>(v.begin(), v.end()) == std::vector<double>{1, 0, -4});
  // Round 1: u = 0.5 u + g, v += u; coordinate 2 is sent.
  const std::vector<double> g1 = {2, 4, 2};
  mef.compensate(std::span<const double>(g1), s, std::span<double>(p), ctx);
  CHECK(p == std::vector<double>{1 + 2.5, 4, -4 + 0});
  const std::vector<double> sent1 = {0, 0, -4};
  mef.update(std::span<const double>(p), std::span<const double>(sent1), s, ctx);
  u = momentum_error_feedback::velocity(s);
  v = momentum_error_feedback::memory(s);
  CHECK(std::vector<double>(u.begin(), u.end()) == std::vector<double>{2.5, 4, 0});
  CHECK(std::vector<double>(v.begin(), v.end()) == std::vector<double>{3.5, 4, 0});
}

TEST_CASE("momentum_error_feedback: a momentum below 0 or of 1 and more is named") {
  for (const double bad : {-0.1, 1.0, std::numeric_limits<double>::quiet_NaN()}) {
    CAPTURE(bad);
    std::string what;
    try {
      (void)momentum_error_feedback{.momentum = bad}.make_state<double>(4);
    } catch (const ecopt::invalid_argument& e) {
      what = e.what();
    }
    CHECK(what.find("momentum") != std::string::npos);
  }
}

TEST_CASE(
    "Sketched SGD in the paper's form (worker momentum, momentum stopping) solves least "
    "squares") {
  // Noise-free targets: every shard has the same minimizer x*.
  constexpr Eigen::Index d = 40;
  constexpr Eigen::Index samples = 120;
  constexpr int world = 3;
  auto rng = ecopt::counter_rng::stream(7, ecopt::stream_purpose::test, 0, 0);
  Eigen::VectorXd x_star(d);
  for (Eigen::Index i = 0; i < d; ++i) x_star[i] = rng.normal();
  std::vector<Eigen::MatrixXd> features;
  std::vector<Eigen::VectorXd> targets;
  for (int r = 0; r < world; ++r) {
    Eigen::MatrixXd a(d, samples);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = rng.normal();
    targets.emplace_back(a.transpose() * x_star);
    features.push_back(std::move(a));
  }
  const ecopt::count_sketch sketch{.cols = 60, .block = 4, .k = 6};
  auto run = [&](const auto& solver) {
    return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
      const auto r = static_cast<std::size_t>(t.rank());
      ecopt::least_squares p(features[r], targets[r], {.batch_size = 16});
      Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
      (void)solver.run(t, p, x, {.steps = 600, .seed = 3});
      return Eigen::VectorXd(x);
    });
  };
  const ecopt::solver paper{sketch, momentum_error_feedback{.momentum = 0.5},
                            ecopt::sgd{.lr = 0.15}};
  const ecopt::solver global{sketch, ecopt::error_feedback{},
                             ecopt::heavy_ball{.lr = 0.15, .momentum = 0.5}};
  const auto local = run(paper);
  const auto aggregate = run(global);
  for (const auto& x : local) CHECK((x - x_star).norm() / x_star.norm() < 1e-6);
  CHECK(local[0] == local[1]);      // every rank holds the same iterate
  CHECK(local[0] != aggregate[0]);  // the two placements of momentum are different methods
}

}  // namespace momentum_error_feedback_test
