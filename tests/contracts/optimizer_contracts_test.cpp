// One contract, every optimizer in the registry (optimizers/all.hpp), driven
// the way the solver drives it: an optimizer with a gradient hook
// (ProvidesGradient) computes the round's direction itself before apply.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/all.hpp"
#include "ecopt/problem.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace optimizer_contracts_test {

namespace {

/// f(x) = |x|^2 / 2 as the finite sum (1/m) sum_i f_i, f_i(x) = |x|^2 / 2 + c_i'x
/// with sum_i c_i = 0: the sample gradients x + c_i are noisy, the minimizer is
/// 0. stochastic_gradient is the exact gradient x.
template <class T>
class contract_problem {
 public:
  using scalar_type = T;
  using vector = ecopt::vector_t<T>;

  explicit contract_problem(std::size_t d) : shifts_(static_cast<Eigen::Index>(d), samples_) {
    auto rng = ecopt::counter_rng::stream(7, ecopt::stream_purpose::test, 0, 0);
    for (Eigen::Index i = 0; i < shifts_.size(); ++i) {
      shifts_.data()[i] = static_cast<T>(rng.normal());
    }
    const vector mean = shifts_.rowwise().mean();
    shifts_.colwise() -= mean;
  }

  [[nodiscard]] std::size_t dim() const { return static_cast<std::size_t>(shifts_.rows()); }
  [[nodiscard]] std::size_t samples() const { return static_cast<std::size_t>(samples_); }
  double loss(const Eigen::Ref<const vector>& x) { return 0.5 * double(x.squaredNorm()); }
  void gradient(const Eigen::Ref<const vector>& x, Eigen::Ref<vector> g) { g = x; }
  void stochastic_gradient(const Eigen::Ref<const vector>& x, Eigen::Ref<vector> g,
                           ecopt::counter_rng&) {
    g = x;
  }
  void sample_gradient(const Eigen::Ref<const vector>& x, std::span<const std::size_t> indices,
                       Eigen::Ref<vector> g) {
    g = x;
    const T weight = T(1) / static_cast<T>(indices.size());
    for (const std::size_t i : indices) g += weight * shifts_.col(static_cast<Eigen::Index>(i));
  }

 private:
  Eigen::Index samples_ = 8;
  ecopt::matrix_t<T> shifts_;
};

/// One rank's optimizer, state and problem; direction() is what the solver
/// would hand to the compensator: the hook's output when the optimizer has the
/// hook, else the exact gradient at x.
template <class O, class T>
class harness {
 public:
  static constexpr bool hooked = ecopt::ProvidesGradient<O, contract_problem<T>>;

  harness(const O& opt, std::size_t d)
      : opt_(opt), problem_(d), state_(opt.template make_state<T>(d)), g_(d) {}

  /// The round's direction at x (calls the gradient hook when there is one).
  std::span<const T> direction(std::span<T> x, std::uint64_t round) {
    const Eigen::Map<const ecopt::vector_t<T>> xm(x.data(), static_cast<Eigen::Index>(x.size()));
    if constexpr (hooked) {
      auto sampler = ecopt::counter_rng::stream(3, ecopt::stream_purpose::sampling, 0, round);
      opt_.gradient(problem_, xm, g_, state_, sampler, context(round),
                    ecopt::uncompressed_mean<T>::single_rank());
    } else {
      g_ = xm;
    }
    return {g_.data(), static_cast<std::size_t>(g_.size())};
  }

  void apply(std::span<T> x, std::span<const T> direction, std::uint64_t round) {
    opt_.apply(x, direction, state_, context(round));
  }

  static ecopt::round_context context(std::uint64_t round) {
    return {.seed = 11, .round = round, .lr = 0};
  }

  auto& state() { return state_; }

 private:
  O opt_;
  contract_problem<T> problem_;
  ecopt::optimizer_state_t<O, T> state_;
  ecopt::vector_t<T> g_;
};

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("optimizer contract", O, optimizer_contract) {
  static_assert(ecopt::Optimizer<O, float> && ecopt::Optimizer<O, double>);
  const O opt{.lr = 0.1};
  constexpr std::size_t d = 16;
  const ecopt::round_context ctx{.round = 0};
  constexpr bool hooked = harness<O, double>::hooked;

  SUBCASE("a zero direction from a fresh state leaves x unchanged") {
    // With a gradient hook, at a stationary point of the problem (ECLK adds
    // the snapshot gradient to the direction).
    harness<O, double> h(opt, d);
    const double start = hooked ? 0.0 : 3.0;
    std::vector<double> x(d, start), zero(d, 0.0);
    (void)h.direction(std::span<double>(x), 0);
    h.apply(std::span<double>(x), std::span<const double>(zero), 0);
    for (double v : x) CHECK(v == start);
  }

  SUBCASE("the first step moves against the direction") {
    harness<O, double> h(opt, d);
    std::vector<double> x(d, 0.0), dir(d, 1.0);
    (void)h.direction(std::span<double>(x), 0);
    h.apply(std::span<double>(x), std::span<const double>(dir), 0);
    for (double v : x) CHECK(v < 0.0);
  }

  SUBCASE("gradient steps converge on f(x) = |x|^2 / 2") {
    // With a hook the directions are the optimizer's own: noisy sample
    // gradients for the variance-reduced ones.
    harness<O, double> h(opt, d);
    std::vector<double> x(d);
    for (std::size_t j = 0; j < d; ++j) x[j] = 1.0 + static_cast<double>(j);
    double start = 0;
    for (double v : x) start += v * v;
    for (std::uint64_t t = 0; t < 400; ++t) {
      const std::span<const double> grad = h.direction(std::span<double>(x), t);
      h.apply(std::span<double>(x), grad, t);
    }
    double end = 0;
    for (double v : x) end += v * v;
    CHECK(std::sqrt(end) < 1e-6 * std::sqrt(start));
  }

  if constexpr (hooked) {
    SUBCASE("apply without the round's gradient hook is named") {
      auto s = opt.template make_state<double>(d);
      std::vector<double> x(d, 1.0), dir(d, 1.0);
      CHECK_THROWS_WITH_AS(opt.apply(std::span<double>(x), std::span<const double>(dir), s, ctx),
                           doctest::Contains("gradient"), ecopt::invalid_argument);
    }
  }

  if constexpr (ecopt::SplitsStepSize<O, double>) {
    SUBCASE("the step is the step size times update_direction, bit for bit") {
      // What local SGD and SlowMo rely on (algorithms/detail/local_steps.hpp).
      const O decaying{.lr = 0.3, .lr_decay = 0.5};
      auto applied = decaying.template make_state<double>(d);
      auto split = decaying.template make_state<double>(d);
      std::vector<double> x(d, 1.0), y(d, 1.0), u(d), dir(d);
      for (std::uint64_t t = 0; t < 5; ++t) {
        for (std::size_t j = 0; j < d; ++j) dir[j] = std::sin(double(j + 3 * t)) + 0.1 * x[j];
        const ecopt::round_context at{.round = t};
        decaying.apply(std::span<double>(x), std::span<const double>(dir), applied, at);
        decaying.update_direction(std::span<const double>(dir), std::span<double>(u), split, at);
        const double gamma = decaying.learning_rate(t);
        for (std::size_t j = 0; j < d; ++j) y[j] -= gamma * u[j];
      }
      CHECK(std::memcmp(x.data(), y.data(), d * sizeof(double)) == 0);
      std::vector<double> short_update(d - 1);
      CHECK_THROWS_AS(decaying.update_direction(std::span<const double>(dir),
                                                std::span<double>(short_update), split, ctx),
                      ecopt::invalid_argument);
    }
  }

  SUBCASE("the step size is the configured one and invalid fields are named") {
    CHECK(opt.learning_rate(0) == doctest::Approx(0.1));
    const O bad{.lr = -1.0};
    CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("lr"), ecopt::invalid_argument);
  }

  SUBCASE("wrong dimensions are named") {
    auto s = opt.template make_state<float>(d);
    std::vector<float> x(d), dir(d - 1);
    CHECK_THROWS_AS(opt.apply(std::span<float>(x), std::span<const float>(dir), s, ctx),
                    ecopt::invalid_argument);
  }

  SUBCASE("no heap allocation after the state is made") {
    // Snapshot refreshes included (p = 0.1 over 60 rounds draws several).
    harness<O, float> h(opt, d);
    std::vector<float> x(d, 1.0f);
    ecopt::test::allocation_scope scope;
    for (std::uint64_t t = 0; t < 60; ++t) {
      const std::span<const float> dir = h.direction(std::span<float>(x), t);
      h.apply(std::span<float>(x), dir, t);
    }
    CHECK(scope.count() == 0);
  }
}
TEST_CASE_TEMPLATE_APPLY(optimizer_contract, ecopt::all_optimizers);

TEST_CASE("sgd, heavy ball and nesterov follow their update rules") {
  const std::vector<double> dir{1.0, -2.0};
  SUBCASE("sgd with decay") {
    const ecopt::sgd opt{.lr = 0.5, .lr_decay = 1.0};
    CHECK(opt.learning_rate(3) == doctest::Approx(0.125));
    auto s = opt.make_state<double>(2);
    std::vector<double> x{0.0, 0.0};
    opt.apply(std::span<double>(x), std::span<const double>(dir), s, {.round = 1});
    CHECK(x[0] == doctest::Approx(-0.25));
    CHECK(x[1] == doctest::Approx(0.5));
  }
  SUBCASE("heavy ball accumulates velocity") {
    const ecopt::heavy_ball opt{.lr = 1.0, .momentum = 0.5};
    auto s = opt.make_state<double>(2);
    std::vector<double> x{0.0, 0.0};
    opt.apply(std::span<double>(x), std::span<const double>(dir), s, {});
    opt.apply(std::span<double>(x), std::span<const double>(dir), s, {});
    // v1 = d, v2 = 1.5 d; x = -(1 + 1.5) d
    CHECK(x[0] == doctest::Approx(-2.5));
    CHECK(x[1] == doctest::Approx(5.0));
  }
  SUBCASE("nesterov looks ahead") {
    const ecopt::nesterov opt{.lr = 1.0, .momentum = 0.5};
    auto s = opt.make_state<double>(2);
    std::vector<double> x{0.0, 0.0};
    opt.apply(std::span<double>(x), std::span<const double>(dir), s, {});
    // v1 = d; x = -(d + 0.5 d)
    CHECK(x[0] == doctest::Approx(-1.5));
    opt.apply(std::span<double>(x), std::span<const double>(dir), s, {});
    // v2 = 1.5 d; step = d + 0.75 d
    CHECK(x[0] == doctest::Approx(-3.25));
  }
  SUBCASE("momentum outside [0, 1) is rejected") {
    const ecopt::heavy_ball bad{.momentum = 1.0};
    CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("momentum"), ecopt::invalid_argument);
  }
}

}  // namespace optimizer_contracts_test
