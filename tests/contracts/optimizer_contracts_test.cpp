// One contract, every optimizer in the registry (optimizers/all.hpp).
#include <doctest/doctest.h>

#include <cmath>
#include <span>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/optimizers/all.hpp"
#include "support/alloc_counter.hpp"

TEST_CASE_TEMPLATE_DEFINE("optimizer contract", O, optimizer_contract) {
  static_assert(ecopt::Optimizer<O, float> && ecopt::Optimizer<O, double>);
  const O opt{.lr = 0.1};
  constexpr std::size_t d = 16;
  const ecopt::round_context ctx{.round = 0};

  SUBCASE("a zero direction from a fresh state leaves x unchanged") {
    auto s = opt.template make_state<double>(d);
    std::vector<double> x(d, 3.0), zero(d, 0.0);
    opt.apply(std::span<double>(x), std::span<const double>(zero), s, ctx);
    for (double v : x) CHECK(v == 3.0);
  }

  SUBCASE("the first step moves against the direction") {
    auto s = opt.template make_state<double>(d);
    std::vector<double> x(d, 0.0), dir(d, 1.0);
    opt.apply(std::span<double>(x), std::span<const double>(dir), s, ctx);
    for (double v : x) CHECK(v < 0.0);
  }

  SUBCASE("gradient steps converge on f(x) = |x|^2 / 2") {
    auto s = opt.template make_state<double>(d);
    std::vector<double> x(d);
    for (std::size_t j = 0; j < d; ++j) x[j] = 1.0 + static_cast<double>(j);
    double start = 0;
    for (double v : x) start += v * v;
    for (std::uint64_t t = 0; t < 400; ++t) {
      const std::vector<double> grad = x;
      opt.apply(std::span<double>(x), std::span<const double>(grad), s, {.round = t});
    }
    double end = 0;
    for (double v : x) end += v * v;
    CHECK(std::sqrt(end) < 1e-6 * std::sqrt(start));
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
    auto s = opt.template make_state<float>(d);
    std::vector<float> x(d, 1.0f), dir(d, 0.5f);
    ecopt::test::allocation_scope scope;
    for (std::uint64_t t = 0; t < 10; ++t) {
      opt.apply(std::span<float>(x), std::span<const float>(dir), s, {.round = t});
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
