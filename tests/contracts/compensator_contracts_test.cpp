// One contract, every compensator in the registry (compensators/all.hpp), run
// through a harness that calls the optional hooks (observe_curvature,
// reconstruct) the way the solver does; then the laws of particular
// compensators: what error feedback conserves under each step-size
// convention, and EF21's estimates.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "ecopt/compensator.hpp"
#include "ecopt/compensators/all.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problems/quadratic.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace compensator_contracts_test {

namespace {

template <class T = double>
std::vector<T> random_vector(std::size_t d, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
  std::vector<T> v(d);
  for (auto& x : v) x = static_cast<T>(rng.normal());
  return v;
}

/// A lossy channel for the tests: keeps every third coordinate.
template <class T>
std::vector<T> keep_every_third(std::span<const T> p) {
  std::vector<T> out(p.size(), T(0));
  for (std::size_t j = 0; j < p.size(); j += 3) out[j] = p[j];
  return out;
}

/// A symmetric positive definite d x d matrix with eigenvalues in [1, 4].
template <class T>
ecopt::matrix_t<T> spd_matrix(std::size_t d, std::uint64_t seed) {
  const auto n = static_cast<Eigen::Index>(d);
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 1, 0);
  Eigen::MatrixXd a(n, n);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = rng.normal();
  const Eigen::MatrixXd q = Eigen::HouseholderQR<Eigen::MatrixXd>(a).householderQ();
  Eigen::VectorXd eig(n);
  for (Eigen::Index i = 0; i < n; ++i) eig[i] = 1.0 + 3.0 * static_cast<double>(i) / double(n);
  Eigen::MatrixXd h = q * eig.asDiagonal() * q.transpose();
  h = 0.5 * (h + h.transpose());
  return h.cast<T>();
}

/// One worker's compensator and state, driven as the solver drives it: the
/// curvature hook before compensate (with a fixed quadratic problem and
/// iterate), and reconstruct turning the mean of the payloads into the
/// direction the optimizer applies.
template <class E, class T>
class harness {
 public:
  using problem_type = ecopt::quadratic<T>;

  harness(const E& e, std::size_t d)
      : comp_(e),
        hessian_(spd_matrix<T>(d, 5)),
        linear_(ecopt::vector_t<T>::Ones(static_cast<Eigen::Index>(d))),
        problem_(hessian_, linear_),
        x_(ecopt::vector_t<T>::LinSpaced(static_cast<Eigen::Index>(d), T(-1), T(1))),
        state_(e.template make_state<T>(d)) {}
  harness(const harness&) = delete;  // problem_ views hessian_
  harness& operator=(const harness&) = delete;

  void compensate(std::span<const T> g, std::span<T> p, const ecopt::round_context& ctx) {
    if constexpr (ecopt::UsesCurvature<E, problem_type>) {
      comp_.observe_curvature(problem_, x_, state_, ctx);
    }
    comp_.compensate(g, state_, p, ctx);
  }
  void update(std::span<const T> p, std::span<const T> sent, const ecopt::round_context& ctx) {
    comp_.update(p, sent, state_, ctx);
  }
  /// What the optimizer applies, given the mean of all ranks' decoded payloads.
  void direction(std::span<const T> mean_sent, std::span<T> out, const ecopt::round_context& ctx) {
    if constexpr (ecopt::ReconstructsDirection<E, T>) {
      comp_.reconstruct(mean_sent, state_, out, ctx);
    } else {
      for (std::size_t j = 0; j < out.size(); ++j) out[j] = mean_sent[j];
    }
  }

  [[nodiscard]] const E& compensator() const { return comp_; }
  [[nodiscard]] ecopt::compensator_state_t<E, T>& state() { return state_; }
  [[nodiscard]] problem_type& problem() { return problem_; }
  [[nodiscard]] const ecopt::vector_t<T>& x() const { return x_; }

 private:
  E comp_;
  ecopt::matrix_t<T> hessian_;
  ecopt::vector_t<T> linear_;
  problem_type problem_;
  ecopt::vector_t<T> x_;
  ecopt::compensator_state_t<E, T> state_;
};

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("compensator contract", E, compensator_contract) {
  const E comp{};
  static_assert(ecopt::Compensator<E, float> && ecopt::Compensator<E, double>);
  constexpr std::size_t d = 50;
  const ecopt::round_context ctx{.seed = 1, .round = 0, .rank = 0, .world = 1, .lr = 0.1};

  SUBCASE("with a lossless channel the applied direction is the gradient") {
    harness<E, double> h(comp, d);
    std::vector<double> p(d), applied(d);
    for (std::uint64_t t = 0; t < 5; ++t) {
      const auto g = random_vector(d, t);
      h.compensate(g, p, ctx);
      h.update(p, p, ctx);
      h.direction(p, applied, ctx);
      for (std::size_t j = 0; j < d; ++j) REQUIRE(applied[j] == doctest::Approx(g[j]));
    }
  }

  SUBCASE("deterministic: two states fed the same inputs agree exactly") {
    harness<E, double> a(comp, d);
    harness<E, double> b(comp, d);
    std::vector<double> pa(d), pb(d), da(d), db(d);
    for (std::uint64_t t = 0; t < 4; ++t) {
      const auto g = random_vector(d, 10 + t);
      a.compensate(g, pa, ctx);
      b.compensate(g, pb, ctx);
      CHECK(pa == pb);
      const auto sent = keep_every_third<double>(pa);
      a.update(pa, sent, ctx);
      b.update(pb, sent, ctx);
      a.direction(sent, da, ctx);
      b.direction(sent, db, ctx);
      CHECK(da == db);
    }
  }

  SUBCASE("wrong dimensions are named") {
    harness<E, float> h(comp, d);
    std::vector<float> g(d + 1), p(d);
    CHECK_THROWS_AS(h.compensate(g, p, ctx), ecopt::invalid_argument);
    if constexpr (ecopt::UsesCurvature<E, ecopt::quadratic<float>>) {
      const ecopt::vector_t<float> short_x = ecopt::vector_t<float>::Zero(d - 1);
      CHECK_THROWS_AS(h.compensator().observe_curvature(h.problem(), short_x, h.state(), ctx),
                      ecopt::invalid_argument);
    }
    if constexpr (ecopt::ReconstructsDirection<E, float>) {
      std::vector<float> mean(d), out(d + 1);
      CHECK_THROWS_AS(h.direction(mean, out, ctx), ecopt::invalid_argument);
    }
  }

  SUBCASE("a caller that skips an optional hook gets an error, not a wrong step") {
    harness<E, double> h(comp, d);
    const auto g = random_vector(d, 3);
    std::vector<double> p(d);
    if constexpr (ecopt::UsesCurvature<E, ecopt::quadratic<double>>) {
      CHECK_THROWS_WITH_AS(
          comp.compensate(std::span<const double>(g), h.state(), std::span<double>(p), ctx),
          doctest::Contains("observe_curvature"), ecopt::invalid_argument);
    }
    if constexpr (ecopt::ReconstructsDirection<E, double>) {
      h.compensate(g, p, ctx);
      h.update(p, keep_every_third<double>(p), ctx);
      CHECK_THROWS_WITH_AS(h.compensate(g, p, ctx), doctest::Contains("reconstruct"),
                           ecopt::invalid_argument);
    }
  }

  SUBCASE("no heap allocation after the state is made") {
    harness<E, float> h(comp, d);
    std::vector<float> g(d, 1.0f), p(d), sent(d, 0.5f), applied(d);
    h.compensate(g, p, ctx);  // warm-up
    h.update(p, sent, ctx);
    h.direction(sent, applied, ctx);
    ecopt::test::allocation_scope scope;
    for (int t = 0; t < 10; ++t) {
      const ecopt::round_context round{.round = static_cast<std::uint64_t>(t), .lr = 0.1 / (1 + t)};
      h.compensate(g, p, round);
      h.update(p, sent, round);
      h.direction(sent, applied, round);
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
    const auto sent = keep_every_third<double>(p);
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

TEST_CASE(
    "EF-SGD conserves displacement under a decaying step size, classic error feedback conserves "
    "gradient mass") {
  // Run both conventions through the same lossy channel with gamma_t = 0.5 / (1 + t).
  //   EF-SGD (parameter units): sum_t gamma_t sent_t + gamma_{T-1} e_T = sum_t gamma_t g_t:
  //     the iterate has moved by exactly the uncompressed steps, minus what is still held.
  //   classic (gradient units): sum_t sent_t + e_T = sum_t g_t, but the displacement identity
  //     fails: residuals are applied with later, smaller steps.
  static_assert(ecopt::ef_sgd.rescale_with_lr && !ecopt::classic_error_feedback.rescale_with_lr);
  constexpr std::size_t d = 24;
  constexpr std::uint64_t steps = 40;
  struct totals {
    std::vector<double> moved, wanted, sent, given, memory;
    double last_lr = 0;
  };
  auto run = [&](const ecopt::error_feedback& ef) {
    auto s = ef.make_state<double>(d);
    totals r{std::vector<double>(d, 0.0),
             std::vector<double>(d, 0.0),
             std::vector<double>(d, 0.0),
             std::vector<double>(d, 0.0),
             {}};
    std::vector<double> p(d);
    for (std::uint64_t t = 0; t < steps; ++t) {
      const ecopt::round_context ctx{.round = t, .lr = 0.5 / (1.0 + static_cast<double>(t))};
      const auto g = random_vector(d, 300 + t);
      ef.compensate(std::span<const double>(g), s, std::span<double>(p), ctx);
      const auto sent = keep_every_third<double>(p);
      ef.update(std::span<const double>(p), std::span<const double>(sent), s, ctx);
      for (std::size_t j = 0; j < d; ++j) {
        r.moved[j] += ctx.lr * sent[j];
        r.wanted[j] += ctx.lr * g[j];
        r.sent[j] += sent[j];
        r.given[j] += g[j];
      }
      r.last_lr = ctx.lr;
    }
    const auto m = ecopt::error_feedback::memory(s);
    r.memory.assign(m.begin(), m.end());
    return r;
  };
  const totals ef = run(ecopt::ef_sgd);
  const totals classic = run(ecopt::classic_error_feedback);
  double ef_displacement_gap = 0;
  double classic_displacement_gap = 0;
  double classic_mass_gap = 0;
  for (std::size_t j = 0; j < d; ++j) {
    ef_displacement_gap = std::max(
        ef_displacement_gap, std::abs(ef.moved[j] + ef.last_lr * ef.memory[j] - ef.wanted[j]));
    classic_displacement_gap = std::max(
        classic_displacement_gap,
        std::abs(classic.moved[j] + classic.last_lr * classic.memory[j] - classic.wanted[j]));
    classic_mass_gap = std::max(classic_mass_gap,
                                std::abs(classic.sent[j] + classic.memory[j] - classic.given[j]));
  }
  CHECK(ef_displacement_gap < 1e-12);
  CHECK(classic_mass_gap < 1e-12);
  // Residuals held across many steps lose a visible part of their weight.
  CHECK(classic_displacement_gap > 0.05);
}

TEST_CASE("EF21: every rank keeps the same global estimate, the mean of the local estimates") {
  const ecopt::ef21 ef{};
  constexpr std::size_t d = 20;
  constexpr int world = 3;
  std::vector<ecopt::ef21::state<double>> states;
  for (int r = 0; r < world; ++r) states.push_back(ef.make_state<double>(d));
  std::vector<std::vector<double>> directions(world, std::vector<double>(d));
  std::vector<double> p(d);
  for (std::uint64_t t = 0; t < 15; ++t) {
    const ecopt::round_context ctx{.round = t, .world = world, .lr = 0.1};
    std::vector<double> mean(d, 0.0);
    for (int r = 0; r < world; ++r) {
      const auto g = random_vector(d, 1000 * (r + 1) + t);
      ef.compensate(std::span<const double>(g), states[r], std::span<double>(p), ctx);
      const auto sent = keep_every_third<double>(p);
      ef.update(std::span<const double>(p), std::span<const double>(sent), states[r], ctx);
      for (std::size_t j = 0; j < d; ++j) mean[j] += sent[j] / world;
    }
    for (int r = 0; r < world; ++r) {
      ef.reconstruct(std::span<const double>(mean), states[r], std::span<double>(directions[r]),
                     ctx);
    }
  }
  for (std::size_t j = 0; j < d; ++j) {
    double local_mean = 0;
    for (int r = 0; r < world; ++r) local_mean += ecopt::ef21::local_estimate(states[r])[j] / world;
    CHECK(directions[0][j] == doctest::Approx(local_mean).epsilon(1e-12));
    CHECK(directions[1][j] == directions[0][j]);
    CHECK(directions[2][j] == directions[0][j]);
    CHECK(ecopt::ef21::global_estimate(states[0])[j] == directions[0][j]);
  }
}

TEST_CASE("EF21 tracks a fixed gradient: the correction shrinks geometrically") {
  // With g fixed and a top-1-of-3 style channel, g_i -> g and p = g - g_i -> 0.
  const ecopt::ef21 ef{};
  constexpr std::size_t d = 9;
  auto s = ef.make_state<double>(d);
  const auto g = random_vector(d, 77);
  std::vector<double> p(d), out(d);
  for (std::uint64_t t = 0; t < 3; ++t) {
    const ecopt::round_context ctx{.round = t, .lr = 0.1};
    ef.compensate(std::span<const double>(g), s, std::span<double>(p), ctx);
    // A channel that sends the coordinates j = t mod 3, t mod 3 + 3, ...
    std::vector<double> sent(d, 0.0);
    for (std::size_t j = t % 3; j < d; j += 3) sent[j] = p[j];
    ef.update(std::span<const double>(p), std::span<const double>(sent), s, ctx);
    ef.reconstruct(std::span<const double>(sent), s, std::span<double>(out), ctx);
  }
  // After three rounds every coordinate has been sent once: the estimate is exact.
  for (std::size_t j = 0; j < d; ++j) CHECK(out[j] == doctest::Approx(g[j]).epsilon(1e-15));
}

TEST_CASE("EF21's theory step size") {
  // alpha = 1 (no compression): theta = 1, beta = 0, gamma = 1/L.
  CHECK(ecopt::ef21::theory_step_size(4.0, 4.0, 1.0) == doctest::Approx(0.25));
  // alpha = 0.75: theta = 1/2, beta = 1/2, sqrt(beta/theta) = 1, gamma = 1 / (L + L~).
  CHECK(ecopt::ef21::theory_step_size(2.0, 3.0, 0.75) == doctest::Approx(0.2));
  CHECK_THROWS_AS((void)ecopt::ef21::theory_step_size(1.0, 1.0, 0.0), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)ecopt::ef21::theory_step_size(0.0, 1.0, 0.5), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)ecopt::ef21::theory_step_size(1.0, -1.0, 0.5), ecopt::invalid_argument);
}

TEST_CASE("curvature compensators check their fields and the problem they are given") {
  CHECK_NOTHROW(ecopt::diagonal_hessian{}.validate());
  CHECK_THROWS_WITH_AS(ecopt::diagonal_hessian{.max_scaled_curvature = 2.0}.validate(),
                       doctest::Contains("max_scaled_curvature"), ecopt::invalid_argument);
  CHECK_THROWS_AS(ecopt::diagonal_hessian{.max_scaled_curvature = 0.0}.validate(),
                  ecopt::invalid_argument);
  CHECK_NOTHROW(ecopt::hessian_aided{}.validate());
  CHECK_THROWS_AS(
      ecopt::hessian_aided{.source = static_cast<ecopt::curvature_source>(7)}.validate(),
      ecopt::invalid_argument);

  // A problem with Hessian-vector products only: the full-Hessian source is refused by name,
  // the product source works.
  struct hvp_only {
    using scalar_type = double;
    std::size_t dim() const { return 2; }
    double loss(const Eigen::Ref<const Eigen::VectorXd>&) { return 0; }
    void gradient(const Eigen::Ref<const Eigen::VectorXd>&, Eigen::Ref<Eigen::VectorXd> g) {
      g.setZero();
    }
    void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>&,
                             Eigen::Ref<Eigen::VectorXd> g, ecopt::counter_rng&) {
      g.setZero();
    }
    void hessian_vector(const Eigen::Ref<const Eigen::VectorXd>&,
                        const Eigen::Ref<const Eigen::VectorXd>& v,
                        Eigen::Ref<Eigen::VectorXd> out) {
      out = 3.0 * v;
    }
  };
  static_assert(ecopt::HasHessianVectorProduct<hvp_only> && !ecopt::HasHessian<hvp_only>);
  hvp_only problem;
  const Eigen::VectorXd x = Eigen::VectorXd::Zero(2);
  const ecopt::round_context ctx{.lr = 0.1};
  const ecopt::hessian_aided full{};
  auto s = full.make_state<double>(2);
  CHECK_THROWS_WITH_AS(full.observe_curvature(problem, x, s, ctx),
                       doctest::Contains("curvature_source::hessian_vector"),
                       ecopt::invalid_argument);
  const ecopt::hessian_aided products{.source = ecopt::curvature_source::hessian_vector};
  auto q = products.make_state<double>(2);
  std::vector<double> p(2);
  const std::vector<double> g{1.0, -1.0};
  const std::vector<double> nothing(2, 0.0);
  products.observe_curvature(problem, x, q, ctx);
  products.compensate(std::span<const double>(g), q, std::span<double>(p), ctx);
  products.update(std::span<const double>(p), std::span<const double>(nothing), q, ctx);
  products.observe_curvature(problem, x, q, ctx);
  products.compensate(std::span<const double>(g), q, std::span<double>(p), ctx);
  // p = g + (1 - 0.1 * 3) e with e = g.
  CHECK(p[0] == doctest::Approx(1.0 + 0.7));
  CHECK(p[1] == doctest::Approx(-1.0 - 0.7));
}

}  // namespace compensator_contracts_test
