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
#include <type_traits>
#include <vector>

#include "ecopt/algorithms/all.hpp"
#include "ecopt/ecopt.hpp"

TYPE_TO_STRING(ecopt::synchronous);
TYPE_TO_STRING(ecopt::local_sgd);
TYPE_TO_STRING(ecopt::slowmo);
TYPE_TO_STRING(ecopt::stochastic_gradient_push);
TYPE_TO_STRING(ecopt::overlap_local_sgd);

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace schedule_contracts_test {

namespace {

/// For each schedule: the setting in which it is synchronous SGD (with the
/// compressor, compensator and world in which that holds), a non-trivial one
/// that converges with plain SGD, and an invalid one with the field it names.
template <class S>
struct schedule_settings;
template <>
struct schedule_settings<ecopt::synchronous> {
  using trivial_compressor = ecopt::top_k;
  using trivial_compensator = ecopt::error_feedback;
  using trivial_scalar = double;
  static constexpr int trivial_world = 3;
  static ecopt::synchronous trivial() { return {}; }
  static ecopt::synchronous typical() { return {}; }
  static constexpr const char* invalid_field = nullptr;
  static ecopt::synchronous invalid() { return {}; }
};
template <>
struct schedule_settings<ecopt::local_sgd> {
  using trivial_compressor = ecopt::top_k;
  using trivial_compensator = ecopt::error_feedback;
  using trivial_scalar = double;
  static constexpr int trivial_world = 3;
  static ecopt::local_sgd trivial() { return {.period = 1}; }
  static ecopt::local_sgd typical() { return {.period = 4}; }
  static constexpr const char* invalid_field = "period";
  static ecopt::local_sgd invalid() { return {.period = 0}; }
};
template <>
struct schedule_settings<ecopt::slowmo> {
  using trivial_compressor = ecopt::top_k;
  using trivial_compensator = ecopt::error_feedback;
  using trivial_scalar = double;
  static constexpr int trivial_world = 3;
  static ecopt::slowmo trivial() { return {.period = 1, .slow_lr = 1, .slow_momentum = 0}; }
  static ecopt::slowmo typical() { return {.period = 4, .slow_momentum = 0.5}; }
  static constexpr const char* invalid_field = "slow_momentum";
  static ecopt::slowmo invalid() { return {.slow_momentum = 1}; }
};
/// Gossip has no trivial setting among several workers (its models differ
/// between averages); alone it is SGD. In float: the synchronous solver's
/// dense wire values are float32 even for a double problem.
template <>
struct schedule_settings<ecopt::stochastic_gradient_push> {
  using trivial_compressor = ecopt::no_compression;
  using trivial_compensator = ecopt::no_compensation;
  using trivial_scalar = float;
  static constexpr int trivial_world = 1;
  static ecopt::stochastic_gradient_push trivial() { return {}; }
  static ecopt::stochastic_gradient_push typical() { return {}; }
  static constexpr const char* invalid_field = "slow_lr";
  static ecopt::stochastic_gradient_push invalid() { return {.slow_lr = -1}; }
};

/// Overlap-Local-SGD without its pull: every worker runs SGD alone (in
/// float, like gossip: the synchronous solver's wire is float32).
template <>
struct schedule_settings<ecopt::overlap_local_sgd> {
  using trivial_compressor = ecopt::no_compression;
  using trivial_compensator = ecopt::no_compensation;
  using trivial_scalar = float;
  static constexpr int trivial_world = 1;
  static ecopt::overlap_local_sgd trivial() { return {.period = 4, .pull = 0}; }
  static ecopt::overlap_local_sgd typical() { return {.period = 4, .pull = 0.5}; }
  static constexpr const char* invalid_field = "pull";
  static ecopt::overlap_local_sgd invalid() { return {.pull = 1.5}; }
};

constexpr Eigen::Index size = 12;

/// f_i(x) = |x - c_i|^2 / 2 with a different centre per rank: the mean's
/// minimizer is the mean of the centres. Sampling adds seeded noise.
template <class T>
struct centred_quadratic {
  using scalar_type = T;
  using vector = ecopt::vector_t<T>;
  vector centre;
  explicit centred_quadratic(int rank) : centre(size) {
    for (Eigen::Index j = 0; j < size; ++j)
      centre[j] = static_cast<T>(std::cos(double(j + 5 * rank)));
  }
  [[nodiscard]] std::size_t dim() const { return static_cast<std::size_t>(centre.size()); }
  double loss(const Eigen::Ref<const vector>& x) {
    return 0.5 * double((x - centre).squaredNorm());
  }
  void gradient(const Eigen::Ref<const vector>& x, Eigen::Ref<vector> g) { g = x - centre; }
  void stochastic_gradient(const Eigen::Ref<const vector>& x, Eigen::Ref<vector> g,
                           ecopt::counter_rng& rng) {
    g = x - centre;
    for (Eigen::Index j = 0; j < g.size(); ++j) g[j] += static_cast<T>(0.05 * rng.normal());
  }
};

template <class T>
struct outcome {
  ecopt::vector_t<T> x;
  ecopt::run_report report;
};

template <class T = double, class Solver>
std::vector<outcome<T>> run(const Solver& s, int world, std::uint64_t steps) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    centred_quadratic<T> p(t.rank());
    ecopt::vector_t<T> x = ecopt::vector_t<T>::Zero(size);
    auto report = s.run(t, p, x, {.steps = steps, .seed = 8, .eval_every = 3});
    return outcome<T>{x, report};
  });
}

template <class V>
bool same_bits(const V& a, const V& b) {
  return std::memcmp(a.data(), b.data(),
                     sizeof(typename V::Scalar) * static_cast<std::size_t>(size)) == 0;
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("schedule contract", S, schedule_contract) {
  static_assert(ecopt::Schedule<S, float> && ecopt::Schedule<S, double>);
  const ecopt::sgd opt{.lr = 0.2};

  SUBCASE("the trivial setting is the synchronous solver, bit for bit") {
    using settings = schedule_settings<S>;
    using C = typename settings::trivial_compressor;
    using E = typename settings::trivial_compensator;
    C compressor{};
    if constexpr (std::is_same_v<C, ecopt::top_k>) compressor.ratio = 0.25;
    using T = typename settings::trivial_scalar;
    const auto mine = run<T>(ecopt::solver{compressor, E{}, opt, settings::trivial()},
                             settings::trivial_world, 20);
    const auto reference = run<T>(ecopt::solver{compressor, E{}, opt}, settings::trivial_world, 20);
    for (std::size_t r = 0; r < mine.size(); ++r) {
      CHECK(same_bits(mine[r].x, reference[r].x));
      // Alone, a worker that sends nothing does not count the synchronous
      // solver's exchange with itself.
      if (settings::trivial_world > 1) {
        CHECK(mine[r].report.payload_bits == reference[r].report.payload_bits);
      }
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
    for (int r = 0; r < 3; ++r) optimum += centred_quadratic<double>(r).centre / 3.0;
    for (std::size_t r = 0; r < first.size(); ++r) {
      CHECK(same_bits(first[r].x, first[0].x));
      CHECK(same_bits(first[r].x, second[r].x));
      CHECK((first[r].x - optimum).norm() < 0.05 * optimum.norm());
      CHECK(first[r].report.steps == 240);
      CHECK(first[r].report.payload_bits > 0);
    }
  }

  SUBCASE("a bad field is named") {
    if constexpr (schedule_settings<S>::invalid_field != nullptr) {
      CHECK_THROWS_WITH_AS(ecopt::validate_policy(schedule_settings<S>::invalid()),
                           doctest::Contains(schedule_settings<S>::invalid_field),
                           ecopt::invalid_argument);
    } else {
      CHECK_NOTHROW(ecopt::validate_policy(schedule_settings<S>::invalid()));
    }
    CHECK_NOTHROW(ecopt::validate_policy(schedule_settings<S>::typical()));
  }
}
TEST_CASE_TEMPLATE_APPLY(schedule_contract, ecopt::all_schedules);

}  // namespace schedule_contracts_test
