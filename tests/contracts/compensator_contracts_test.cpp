// One contract, every compensator in the registry (compensators/all.hpp).
#include <doctest/doctest.h>

#include <cmath>
#include <span>
#include <vector>

#include "ecopt/compensators/all.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "support/alloc_counter.hpp"

namespace {

std::vector<double> random_vector(std::size_t d, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
  std::vector<double> v(d);
  for (auto& x : v) x = rng.normal();
  return v;
}

/// A lossy channel for the tests: keeps every third coordinate.
std::vector<double> keep_every_third(std::span<const double> p) {
  std::vector<double> out(p.size(), 0.0);
  for (std::size_t j = 0; j < p.size(); j += 3) out[j] = p[j];
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("compensator contract", E, compensator_contract) {
  const E comp{};
  static_assert(ecopt::Compensator<E, float> && ecopt::Compensator<E, double>);
  constexpr std::size_t d = 50;
  const ecopt::round_context ctx{.seed = 1, .round = 0, .rank = 0, .world = 1, .lr = 0.1};

  SUBCASE("with a lossless channel the compensated message is the direction") {
    auto s = comp.template make_state<double>(d);
    std::vector<double> p(d);
    for (std::uint64_t t = 0; t < 5; ++t) {
      const auto g = random_vector(d, t);
      comp.compensate(std::span<const double>(g), s, std::span<double>(p), ctx);
      for (std::size_t j = 0; j < d; ++j) REQUIRE(p[j] == doctest::Approx(g[j]));
      comp.update(std::span<const double>(p), std::span<const double>(p), s, ctx);
    }
  }

  SUBCASE("deterministic: two states fed the same inputs agree exactly") {
    auto a = comp.template make_state<double>(d);
    auto b = comp.template make_state<double>(d);
    std::vector<double> pa(d), pb(d);
    for (std::uint64_t t = 0; t < 4; ++t) {
      const auto g = random_vector(d, 10 + t);
      comp.compensate(std::span<const double>(g), a, std::span<double>(pa), ctx);
      comp.compensate(std::span<const double>(g), b, std::span<double>(pb), ctx);
      CHECK(pa == pb);
      const auto sent = keep_every_third(pa);
      comp.update(std::span<const double>(pa), std::span<const double>(sent), a, ctx);
      comp.update(std::span<const double>(pb), std::span<const double>(sent), b, ctx);
    }
  }

  SUBCASE("wrong dimensions are named") {
    auto s = comp.template make_state<float>(d);
    std::vector<float> g(d + 1), p(d);
    CHECK_THROWS_AS(comp.compensate(std::span<const float>(g), s, std::span<float>(p), ctx),
                    ecopt::invalid_argument);
  }

  SUBCASE("no heap allocation after the state is made") {
    auto s = comp.template make_state<float>(d);
    std::vector<float> g(d, 1.0f), p(d), sent(d, 0.5f);
    ecopt::test::allocation_scope scope;
    for (int t = 0; t < 10; ++t) {
      comp.compensate(std::span<const float>(g), s, std::span<float>(p), ctx);
      comp.update(std::span<const float>(p), std::span<const float>(sent), s, ctx);
    }
    CHECK(scope.count() == 0);
  }
}
TEST_CASE_TEMPLATE_APPLY(compensator_contract, ecopt::all_compensators);

TEST_CASE("error feedback conserves what it was given: sum of messages sent + memory = sum of g") {
  const ecopt::error_feedback ef{};
  constexpr std::size_t d = 30;
  auto s = ef.make_state<double>(d);
  const ecopt::round_context ctx{.lr = 0.1};
  std::vector<double> p(d), total_g(d, 0.0), total_sent(d, 0.0);
  for (std::uint64_t t = 0; t < 20; ++t) {
    const auto g = random_vector(d, 100 + t);
    ef.compensate(std::span<const double>(g), s, std::span<double>(p), ctx);
    const auto sent = keep_every_third(p);
    ef.update(std::span<const double>(p), std::span<const double>(sent), s, ctx);
    for (std::size_t j = 0; j < d; ++j) {
      total_g[j] += g[j];
      total_sent[j] += sent[j];
    }
  }
  const auto memory = ecopt::error_feedback::memory(s);
  for (std::size_t j = 0; j < d; ++j) {
    CHECK(total_sent[j] + memory[j] == doctest::Approx(total_g[j]).epsilon(1e-12));
  }
  // The coordinates the channel keeps carry no memory; the others do.
  CHECK(memory[0] == 0.0);
  CHECK(memory[1] != 0.0);
}

TEST_CASE("error feedback rescales its memory when the step size changes") {
  const ecopt::error_feedback ef{};
  auto s = ef.make_state<double>(2);
  const std::vector<double> g{1.0, 2.0};
  const std::vector<double> nothing(2, 0.0);
  std::vector<double> p(2);
  ef.compensate(std::span<const double>(g), s, std::span<double>(p), {.lr = 0.2});
  ef.update(std::span<const double>(p), std::span<const double>(nothing), s, {.lr = 0.2});
  // In parameter units the memory is 0.2 * g; at lr 0.1 it is worth 2 g in gradient units.
  const std::vector<double> zero(2, 0.0);
  ef.compensate(std::span<const double>(zero), s, std::span<double>(p), {.lr = 0.1});
  CHECK(p[0] == doctest::Approx(2.0));
  CHECK(p[1] == doctest::Approx(4.0));

  const ecopt::error_feedback plain{.rescale_with_lr = false};
  auto q = plain.make_state<double>(2);
  plain.compensate(std::span<const double>(g), q, std::span<double>(p), {.lr = 0.2});
  plain.update(std::span<const double>(p), std::span<const double>(nothing), q, {.lr = 0.2});
  plain.compensate(std::span<const double>(zero), q, std::span<double>(p), {.lr = 0.1});
  CHECK(p[0] == doctest::Approx(1.0));
}
