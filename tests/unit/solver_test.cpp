// The composed solver end to end on threads: convergence of curated triples to
// a known optimum, exact bit accounting, agreement between ranks, early stop,
// errors, and no allocation in a steady-state round.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "ecopt/ecopt.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace solver_test {

namespace {

/// A well-conditioned random quadratic in R^d, the same on every worker.
struct quadratic_fixture {
  Eigen::MatrixXd h;
  Eigen::VectorXd b;
  explicit quadratic_fixture(Eigen::Index d, double condition = 10.0, std::uint64_t seed = 7) {
    auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
    Eigen::MatrixXd a(d, d);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = rng.normal();
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
    const Eigen::MatrixXd q = qr.householderQ();
    Eigen::VectorXd eig(d);
    for (Eigen::Index i = 0; i < d; ++i) {
      eig[i] = 1.0 + (condition - 1.0) * static_cast<double>(i) / static_cast<double>(d - 1);
    }
    h = q * eig.asDiagonal() * q.transpose();
    h = 0.5 * (h + h.transpose());
    b.resize(d);
    for (Eigen::Index i = 0; i < d; ++i) b[i] = rng.normal();
  }
};

template <class Solver>
std::vector<double> distances_to_optimum(const Solver& s, int world, const quadratic_fixture& f,
                                         const ecopt::run_options& options) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    ecopt::quadratic<double> p(f.h, f.b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(f.b.size());
    s.run(t, p, x, options);
    return (x - p.minimizer()).norm() / p.minimizer().norm();
  });
}

/// Wraps a problem and turns one rank's gradient into NaN at one step.
struct poisoned_problem {
  using scalar_type = double;
  ecopt::quadratic<double> inner;
  int bad_rank;
  std::uint64_t bad_step;
  int rank;
  std::uint64_t calls = 0;
  std::size_t dim() const { return inner.dim(); }
  double loss(Eigen::Ref<const Eigen::VectorXd> x) { return inner.loss(x); }
  void gradient(Eigen::Ref<const Eigen::VectorXd> x, Eigen::Ref<Eigen::VectorXd> g) {
    inner.gradient(x, g);
  }
  void stochastic_gradient(Eigen::Ref<const Eigen::VectorXd> x, Eigen::Ref<Eigen::VectorXd> g,
                           ecopt::counter_rng& rng) {
    inner.stochastic_gradient(x, g, rng);
    if (rank == bad_rank && calls == bad_step) g[3] = std::numeric_limits<double>::quiet_NaN();
    ++calls;
  }
};

}  // namespace

TEST_CASE("curated solver triples converge to the optimum of a quadratic") {
  const quadratic_fixture f(40);
  const std::vector<int> worlds{1, 2, 4};
  SUBCASE("dense gradient descent") {
    const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{},
                          ecopt::sgd{.lr = 0.15}};
    for (int world : worlds) {
      for (double e : distances_to_optimum(s, world, f, {.steps = 600})) CHECK(e < 1e-8);
    }
  }
  SUBCASE("top_k 10% with error feedback and nesterov momentum") {
    const ecopt::solver s{ecopt::top_k{.ratio = 0.1}, ecopt::error_feedback{},
                          ecopt::nesterov{.lr = 0.01, .momentum = 0.8}};
    for (int world : worlds) {
      for (double e : distances_to_optimum(s, world, f, {.steps = 1500})) CHECK(e < 1e-8);
    }
  }
  SUBCASE("scaled sign with error feedback and heavy ball") {
    const ecopt::solver s{ecopt::scaled_sign{}, ecopt::error_feedback{},
                          ecopt::heavy_ball{.lr = 0.02, .momentum = 0.5}};
    for (int world : worlds) {
      for (double e : distances_to_optimum(s, world, f, {.steps = 2000})) CHECK(e < 1e-8);
    }
  }
  SUBCASE("shared-seed rand_k (allreduce) with error feedback") {
    const ecopt::solver s{ecopt::rand_k_unscaled{.ratio = 0.25}, ecopt::error_feedback{},
                          ecopt::sgd{.lr = 0.05}};
    for (int world : worlds) {
      for (double e : distances_to_optimum(s, world, f, {.steps = 2000})) CHECK(e < 1e-8);
    }
  }
  SUBCASE("qsgd: unbiased noise, so a decaying step size gets close") {
    const ecopt::solver s{ecopt::qsgd{.levels = 8}, ecopt::no_compensation{},
                          ecopt::sgd{.lr = 0.1, .lr_decay = 0.01}};
    for (int world : worlds) {
      for (double e : distances_to_optimum(s, world, f, {.steps = 2000})) CHECK(e < 0.05);
    }
  }
}

TEST_CASE(
    "heterogeneous workers: top_k stalls without memory; with memory the error shrinks with the "
    "step") {
  // Worker i minimises 1/2 x'Hx - b_i'x; the optimum of the mean solves H x = mean b_i.
  // At that point each local gradient is nonzero, so the mean of the workers' top-k
  // never vanishes without memory (Karimireddy et al. 2019, arXiv:1901.09847).
  // Classic error feedback reaches a neighbourhood of size O(lr) (the motivation of
  // EF21, Richtarik et al. 2021, arXiv:2106.05203).
  const quadratic_fixture f(40, 10.0, 11);
  constexpr int world = 3;
  std::vector<Eigen::VectorXd> b(world, f.b);
  auto rng = ecopt::counter_rng::stream(99, ecopt::stream_purpose::test, 0, 0);
  Eigen::VectorXd mean_b = Eigen::VectorXd::Zero(40);
  for (auto& bi : b) {
    for (Eigen::Index j = 0; j < bi.size(); ++j) bi[j] += rng.normal();
    mean_b += bi / world;
  }
  const Eigen::VectorXd optimum = f.h.ldlt().solve(mean_b);
  auto error = [&](const auto& s) {
    auto xs = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
      ecopt::quadratic<double> p(f.h, b[static_cast<std::size_t>(t.rank())]);
      Eigen::VectorXd x = Eigen::VectorXd::Zero(40);
      s.run(t, p, x, {.steps = 3000});
      return x;
    });
    return (xs[0] - optimum).norm() / optimum.norm();
  };
  const double ef_small = error(
      ecopt::solver{ecopt::top_k{.ratio = 0.05}, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.005}});
  const double ef_large = error(
      ecopt::solver{ecopt::top_k{.ratio = 0.05}, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.02}});
  const double none = error(ecopt::solver{ecopt::top_k{.ratio = 0.05}, ecopt::no_compensation{},
                                          ecopt::sgd{.lr = 0.005}});
  const double dense = error(
      ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.02}});
  // Values travel as float32: with O(1) local gradients at the optimum that limits dense
  // accuracy to about float epsilon.
  CHECK(dense < 1e-7);
  CHECK(none > 0.3);
  CHECK(ef_small < 0.05);
  CHECK(ef_small < none / 10);
  CHECK(ef_large > 2 * ef_small);  // the neighbourhood grows with the step size
}

TEST_CASE("bits are counted exactly: payload bits and what the wire carried") {
  const quadratic_fixture f(120);
  constexpr std::uint64_t steps = 25;
  SUBCASE("gathered payloads: scaled_sign") {
    const ecopt::scaled_sign c{};
    const ecopt::solver s{c, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.05}};
    const int world = 3;
    auto reports = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
      ecopt::quadratic<double> p(f.h, f.b);
      Eigen::VectorXd x = Eigen::VectorXd::Zero(120);
      return s.run(t, p, x, {.steps = steps});
    });
    const std::uint64_t bits = c.bits(120);  // one scale, one sign per coordinate
    CHECK(bits == 32 + 120);
    for (const auto& r : reports) {
      CHECK(r.steps == steps);
      CHECK(r.payload_bits == steps * bits);
      // A ring allgather forwards world - 1 whole payloads, each padded to bytes.
      CHECK(r.wire_bits == steps * (world - 1) * 8 * ((bits + 7) / 8));
      REQUIRE(r.wire_bits_per_worker.size() == static_cast<std::size_t>(world));
      CHECK(r.total_wire_bits() == world * r.wire_bits);
    }
  }
  SUBCASE("summed payloads: dense allreduce") {
    const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{},
                          ecopt::sgd{.lr = 0.05}};
    const int world = 4;
    auto reports = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
      ecopt::quadratic<double> p(f.h, f.b);
      Eigen::VectorXd x = Eigen::VectorXd::Zero(120);
      return s.run(t, p, x, {.steps = steps, .eval_every = 5});
    });
    for (const auto& r : reports) {
      CHECK(r.payload_bits == steps * 32 * 120);
      // Ring allreduce: every rank sends 2 (world - 1) chunks of 120 / world floats.
      CHECK(r.wire_bits == steps * 2 * (world - 1) * (120 / world) * 32);
      CHECK(r.history.size() == 1 + steps / 5);
    }
  }
}

TEST_CASE("all ranks finish with bitwise identical iterates, and runs repeat per seed") {
  const quadratic_fixture f(30);
  const ecopt::solver s{ecopt::qsgd{.levels = 2}, ecopt::error_feedback{},
                        ecopt::heavy_ball{.lr = 0.02}};
  auto run = [&](std::uint64_t seed) {
    return ecopt::run_threads(3, [&](ecopt::thread_transport& t) {
      ecopt::quadratic<double> p(f.h, f.b, {.noise = 0.1});
      Eigen::VectorXd x = Eigen::VectorXd::Zero(30);
      s.run(t, p, x, {.steps = 60, .seed = seed});
      return x;
    });
  };
  const auto a = run(1);
  const auto again = run(1);
  const auto other = run(2);
  for (int r = 0; r < 3; ++r) {
    CHECK(a[r] == a[0]);
    CHECK(again[r] == a[r]);
  }
  CHECK(other[0] != a[0]);
}

TEST_CASE("float problems run too") {
  const quadratic_fixture f(20);
  const Eigen::MatrixXf h = f.h.cast<float>();
  const Eigen::VectorXf b = f.b.cast<float>();
  const ecopt::solver s{ecopt::top_k{.ratio = 0.2}, ecopt::error_feedback{},
                        ecopt::sgd{.lr = 0.05}};
  auto errors = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
    ecopt::quadratic<float> p(h, b);
    Eigen::VectorXf x = Eigen::VectorXf::Zero(20);
    s.run(t, p, x, {.steps = 1000});
    return static_cast<double>((x - p.minimizer()).norm() / p.minimizer().norm());
  });
  for (double e : errors) CHECK(e < 1e-4);
}

TEST_CASE("observers see progress and can stop every rank at the same step") {
  const quadratic_fixture f(20);
  const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.1}};
  struct counter {
    std::uint64_t steps_seen = 0;
    std::uint64_t evals_seen = 0;
    void on_step(const ecopt::progress&) { ++steps_seen; }
    void on_eval(const ecopt::progress&) { ++evals_seen; }
  };
  auto reports = ecopt::run_threads(3, [&](ecopt::thread_transport& t) {
    ecopt::quadratic<double> p(f.h, f.b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(20);
    const double optimum = p.loss(p.minimizer());
    counter c;
    // Only rank 1 asks to stop; all ranks must stop together.
    const double target = t.rank() == 1 ? optimum + 1e-3 : -1e300;
    auto r = s.run(t, p, x, {.steps = 5000, .eval_every = 10}, c, ecopt::stop_at_loss{target});
    CHECK(c.steps_seen == r.steps);
    CHECK(c.evals_seen == r.history.size());
    return r;
  });
  for (const auto& r : reports) {
    CHECK(r.stopped_early);
    CHECK(r.steps == reports[0].steps);
    CHECK(r.steps < 5000);
    CHECK(r.steps % 10 == 0);
    CHECK(r.final_loss() == reports[0].final_loss());
  }
}

TEST_CASE("a NaN gradient on one rank is named, and the other ranks do not hang") {
  const quadratic_fixture f(20);
  const ecopt::solver s{ecopt::top_k{.ratio = 0.2}, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.1}};
  auto body = [&](ecopt::thread_transport& t) {
    poisoned_problem p{ecopt::quadratic<double>(f.h, f.b), 1, 3, t.rank()};
    Eigen::VectorXd x = Eigen::VectorXd::Zero(20);
    s.run(t, p, x, {.steps = 50});
  };
  CHECK_THROWS_WITH_AS(ecopt::run_threads(3, body, {.timeout = std::chrono::seconds(20)}),
                       doctest::Contains("rank 1, step 3"), ecopt::numeric_error);
}

TEST_CASE("a wrong x dimension is named before any communication") {
  const quadratic_fixture f(20);
  const ecopt::solver s{ecopt::top_k{}};
  auto body = [&](ecopt::thread_transport& t) {
    ecopt::quadratic<double> p(f.h, f.b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(19);
    s.run(t, p, x, {.steps = 5});
  };
  CHECK_THROWS_WITH_AS(ecopt::run_threads(2, body), doctest::Contains("dimension 20"),
                       ecopt::invalid_argument);
  const ecopt::solver bad{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0}};
  auto bad_body = [&](ecopt::thread_transport& t) {
    ecopt::quadratic<double> p(f.h, f.b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(20);
    bad.run(t, p, x, {.steps = 5});
  };
  CHECK_THROWS_WITH_AS(ecopt::run_threads(2, bad_body), doctest::Contains("lr"),
                       ecopt::invalid_argument);
}

TEST_CASE("a steady-state round does not allocate") {
  const quadratic_fixture f(64);
  struct allocation_probe {
    std::uint64_t at_warm = 0, at_end = 0;
    std::optional<ecopt::test::allocation_scope> scope;
    void on_step(const ecopt::progress& p) {
      if (p.step == 10) scope.emplace();
      if (p.step == 60) at_end = scope->count();
    }
  };
  auto check_triple = [&](const auto& s) {
    auto counts = ecopt::run_threads(3, [&](ecopt::thread_transport& t) {
      ecopt::quadratic<double> p(f.h, f.b, {.noise = 0.01});
      Eigen::VectorXd x = Eigen::VectorXd::Zero(64);
      allocation_probe probe;
      s.run(t, p, x, {.steps = 60}, probe);
      return probe.at_end;
    });
    for (auto c : counts) CHECK(c == 0);
  };
  check_triple(ecopt::solver{ecopt::top_k{.ratio = 0.1}, ecopt::error_feedback{},
                             ecopt::nesterov{.lr = 0.01}});
  check_triple(
      ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.01}});
  check_triple(ecopt::solver{ecopt::rand_k{.ratio = 0.1}, ecopt::error_feedback{},
                             ecopt::heavy_ball{.lr = 0.001}});
  check_triple(ecopt::solver{ecopt::qsgd{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.001}});
}

TEST_CASE("solver<qsgd> defaults to no compensation and sgd") {
  using s = ecopt::solver<ecopt::qsgd>;
  static_assert(std::is_same_v<decltype(s{}.compensator), ecopt::no_compensation>);
  static_assert(std::is_same_v<decltype(s{}.optimizer), ecopt::sgd>);
  const ecopt::solver deduced{ecopt::scaled_sign{}};
  CHECK(ecopt::policy_name<std::remove_cvref_t<decltype(deduced.compressor)>>() == "scaled_sign");
}

}  // namespace solver_test
