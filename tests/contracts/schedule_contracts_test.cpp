// One contract, every schedule in the registry (algorithms/all.hpp), run by
// the solver on threads: it reduces to the synchronous solver bit for bit in
// its trivial setting, runs with a compressor and error feedback, converges,
// leaves every rank with the same model, is deterministic, and names a bad
// field. A new schedule joins by adding one line to all_schedules and its
// trivial setting below.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ecopt/algorithms/all.hpp"
#include "ecopt/ecopt.hpp"

TYPE_TO_STRING(ecopt::synchronous);
TYPE_TO_STRING(ecopt::local_sgd);
TYPE_TO_STRING(ecopt::slowmo);

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace schedule_contracts_test {

namespace {

/// The setting in which a schedule is synchronous SGD, and a non-trivial one
/// that still converges with plain SGD.
template <class S>
struct schedule_settings;
template <>
struct schedule_settings<ecopt::synchronous> {
  static ecopt::synchronous trivial() { return {}; }
  static ecopt::synchronous typical() { return {}; }
};
template <>
struct schedule_settings<ecopt::local_sgd> {
  static ecopt::local_sgd trivial() { return {.period = 1}; }
  static ecopt::local_sgd typical() { return {.period = 4}; }
};
template <>
struct schedule_settings<ecopt::slowmo> {
  static ecopt::slowmo trivial() { return {.period = 1, .slow_lr = 1, .slow_momentum = 0}; }
  static ecopt::slowmo typical() { return {.period = 4, .slow_momentum = 0.5}; }
};

constexpr Eigen::Index size = 12;

/// f_i(x) = |x - c_i|^2 / 2 with a different centre per rank: the mean's
/// minimizer is the mean of the centres. Sampling adds seeded noise.
struct centred_quadratic {
  using scalar_type = double;
  Eigen::VectorXd centre;
  explicit centred_quadratic(int rank) : centre(size) {
    for (Eigen::Index j = 0; j < size; ++j) centre[j] = std::cos(double(j + 5 * rank));
  }
  [[nodiscard]] std::size_t dim() const { return static_cast<std::size_t>(centre.size()); }
  double loss(const Eigen::Ref<const Eigen::VectorXd>& x) {
    return 0.5 * (x - centre).squaredNorm();
  }
  void gradient(const Eigen::Ref<const Eigen::VectorXd>& x, Eigen::Ref<Eigen::VectorXd> g) {
    g = x - centre;
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>& x,
                           Eigen::Ref<Eigen::VectorXd> g, ecopt::counter_rng& rng) {
    g = x - centre;
    for (Eigen::Index j = 0; j < g.size(); ++j) g[j] += 0.05 * rng.normal();
  }
};

struct outcome {
  Eigen::VectorXd x;
  ecopt::run_report report;
};

template <class Solver>
std::vector<outcome> run(const Solver& s, int world, std::uint64_t steps) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    centred_quadratic p(t.rank());
    Eigen::VectorXd x = Eigen::VectorXd::Zero(size);
    auto report = s.run(t, p, x, {.steps = steps, .seed = 8, .eval_every = 3});
    return outcome{x, report};
  });
}

bool same_bits(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  return std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(size)) == 0;
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("schedule contract", S, schedule_contract) {
  static_assert(ecopt::Schedule<S, float> && ecopt::Schedule<S, double>);
  const ecopt::sgd opt{.lr = 0.2};

  SUBCASE("the trivial setting is the synchronous solver, bit for bit, compressed") {
    const auto mine = run(ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{}, opt,
                                        schedule_settings<S>::trivial()},
                          3, 20);
    const auto reference =
        run(ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{}, opt}, 3, 20);
    for (std::size_t r = 0; r < mine.size(); ++r) {
      CHECK(same_bits(mine[r].x, reference[r].x));
      CHECK(mine[r].report.payload_bits == reference[r].report.payload_bits);
      REQUIRE(mine[r].report.history.size() == reference[r].report.history.size());
      for (std::size_t i = 0; i < mine[r].report.history.size(); ++i) {
        CHECK(mine[r].report.history[i].loss == reference[r].report.history[i].loss);
      }
    }
  }

  SUBCASE("converges, ends equal on every rank, and runs again to the same bits") {
    // Dense: with compression and error feedback, heterogeneous workers
    // settle within O(lr H |c_i - c|) of the optimum, not at it.
    const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.05},
                          schedule_settings<S>::typical()};
    const auto first = run(s, 3, 240);
    const auto second = run(s, 3, 240);
    Eigen::VectorXd optimum = Eigen::VectorXd::Zero(size);
    for (int r = 0; r < 3; ++r) optimum += centred_quadratic(r).centre / 3.0;
    for (std::size_t r = 0; r < first.size(); ++r) {
      CHECK(same_bits(first[r].x, first[0].x));
      CHECK(same_bits(first[r].x, second[r].x));
      CHECK((first[r].x - optimum).norm() < 0.05 * optimum.norm());
      CHECK(first[r].report.steps == 240);
      CHECK(first[r].report.payload_bits > 0);
    }
  }

  SUBCASE("a bad field is named before any communication") {
    S bad = schedule_settings<S>::typical();
    bool has_field = false;
    if constexpr (requires { bad.period; }) {
      bad.period = 0;
      has_field = true;
    }
    if (has_field) {
      CHECK_THROWS_WITH_AS(ecopt::validate_policy(bad), doctest::Contains("period"),
                           ecopt::invalid_argument);
    } else {
      CHECK_NOTHROW(ecopt::validate_policy(bad));
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(schedule_contract, ecopt::all_schedules);

}  // namespace schedule_contracts_test
