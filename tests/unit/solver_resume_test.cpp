// solver::run stopped and resumed (run_options::checkpoint_every, resume_from)
// on threads: for every schedule -- including local SGD and SlowMo mid-period,
// gossip's replicas and Overlap-Local-SGD's travelling average -- and for
// PowerSGD's warm start and a momentum optimizer, the resumed run ends bit for
// bit where the uninterrupted run ends, with the same bits and history; a
// checkpoint of another seed, schedule or world is refused naming it.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cstdint>
#include <cstring>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/ecopt.hpp"

namespace solver_resume_test {

namespace {

constexpr Eigen::Index dim = 16;

/// A noisy quadratic per rank (rank-dependent centre), the same in every run.
struct shard {
  Eigen::MatrixXd h;
  Eigen::VectorXd b;
  explicit shard(int rank) : h(dim, dim), b(dim) {
    auto rng = ecopt::counter_rng::stream(17, ecopt::stream_purpose::test, 0, 0);
    Eigen::MatrixXd a(dim, dim);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = rng.normal();
    h = a * a.transpose() / static_cast<double>(dim) + Eigen::MatrixXd::Identity(dim, dim);
    auto own = ecopt::counter_rng::stream(18, ecopt::stream_purpose::test,
                                          static_cast<std::uint64_t>(rank), 0);
    for (Eigen::Index i = 0; i < dim; ++i) b[i] = own.normal();
  }
};

struct outcome {
  Eigen::VectorXd x;
  ecopt::run_report report;
  std::string checkpoint_bytes;  // the last checkpoint handed over, written out
};

/// Keeps the last checkpoint it is handed, as a file would.
struct keep_checkpoint {
  std::string* bytes;
  void on_checkpoint(const ecopt::checkpoint& c, const ecopt::progress&) const {
    std::ostringstream out;
    c.write(out);
    *bytes = out.str();
  }
};

/// Runs `s` on `world` threads; with `resume` (one checkpoint per rank) it
/// starts from those.
template <class Solver>
std::vector<outcome> run(const Solver& s, int world, ecopt::run_options options,
                         const std::vector<std::string>* resume = nullptr) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    const shard data(t.rank());
    ecopt::quadratic<double> problem(data.h, data.b, {.noise = 0.2});
    Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
    outcome out;
    ecopt::checkpoint loaded;
    ecopt::run_options mine = options;
    if (resume != nullptr) {
      std::istringstream in((*resume)[static_cast<std::size_t>(t.rank())]);
      loaded = ecopt::checkpoint::read(in);
      mine.resume_from = &loaded;
    }
    out.report = s.run(t, problem, x, mine, keep_checkpoint{&out.checkpoint_bytes});
    out.x = x;
    return out;
  });
}

/// "" when the resumed runs end where the uninterrupted ones end, bit for
/// bit, with the same bits and history; else what differs.
std::string resumed_difference(const std::vector<outcome>& whole,
                               const std::vector<outcome>& resumed) {
  for (std::size_t r = 0; r < whole.size(); ++r) {
    const std::string at = "rank " + std::to_string(r) + ": ";
    if (std::memcmp(whole[r].x.data(), resumed[r].x.data(), sizeof(double) * dim) != 0) {
      return at + "x differs by " + std::to_string((whole[r].x - resumed[r].x).norm());
    }
    if (whole[r].report.payload_bits != resumed[r].report.payload_bits) return at + "payload bits";
    if (whole[r].report.history.size() != resumed[r].report.history.size()) return at + "history";
    for (std::size_t i = 0; i < whole[r].report.history.size(); ++i) {
      if (whole[r].report.history[i].loss != resumed[r].report.history[i].loss) {
        return at + "loss at evaluation " + std::to_string(i);
      }
    }
  }
  if (whole[0].x.norm() == 0) return "the run never moved";
  return "";
}

/// A run of 40 steps checkpointed every 17: resumed from the last checkpoint
/// handed over (step 34), against the same run uninterrupted.
template <class Solver>
std::string stop_and_resume(const Solver& s, int world = 3) {
  const ecopt::run_options options{.steps = 40, .seed = 4, .eval_every = 5};
  const auto whole = run(s, world, options);
  ecopt::run_options cut = options;
  cut.checkpoint_every = 17;
  const auto first_part = run(s, world, cut);
  std::vector<std::string> checkpoints;
  for (const outcome& o : first_part) checkpoints.push_back(o.checkpoint_bytes);
  const auto resumed = run(s, world, options, &checkpoints);
  return resumed_difference(whole, resumed);
}

/// An optimizer of the user's own, without persist() on its state.
struct plain_step {
  static constexpr std::string_view name = "plain_step";
  struct state {};
  template <class T>
  state make_state(std::size_t) const {
    return {};
  }
  double learning_rate(std::uint64_t) const { return 0.1; }
  template <class T>
  void apply(std::span<T> x, std::span<const T> d, state&, const ecopt::round_context&) const {
    for (std::size_t j = 0; j < x.size(); ++j) x[j] -= T(0.1) * d[j];
  }
};

}  // namespace

TEST_CASE("solver runs resumed from a checkpoint end bit for bit where uninterrupted runs end") {
  const ecopt::nesterov momentum{.lr = 0.05, .momentum = 0.9};
  SUBCASE("synchronous, top-k + error feedback + Nesterov") {
    CHECK(stop_and_resume(
              ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{}, momentum}) == "");
  }
  SUBCASE("synchronous, PowerSGD's warm start") {
    CHECK(stop_and_resume(ecopt::solver{ecopt::power_sgd{.rank = 2, .rows = 4},
                                        ecopt::error_feedback{}, ecopt::sgd{.lr = 0.05}}) == "");
  }
  SUBCASE("local SGD, mid-period") {
    CHECK(stop_and_resume(ecopt::solver{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{},
                                        momentum, ecopt::local_sgd{.period = 4}}) == "");
  }
  SUBCASE("SlowMo, mid-period") {
    CHECK(stop_and_resume(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, momentum,
                                        ecopt::slowmo{.period = 5, .slow_momentum = 0.5}}) == "");
  }
  SUBCASE("stochastic gradient push with compressed pushes and SlowMo") {
    CHECK(stop_and_resume(
              ecopt::solver{
                  ecopt::top_k{.ratio = 0.25}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.05},
                  ecopt::stochastic_gradient_push{.slowmo_period = 6, .slow_momentum = 0.4}},
              4) == "");
  }
  SUBCASE("Overlap-Local-SGD, an average travelling at the checkpoint") {
    CHECK(stop_and_resume(
              ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, momentum,
                            ecopt::overlap_local_sgd{.period = 6, .anchor_momentum = 0.5}}) == "");
  }
}

TEST_CASE("a checkpoint of another run is refused, naming what differs") {
  const ecopt::solver s{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{},
                        ecopt::sgd{.lr = 0.1}};
  ecopt::run_options cut{.steps = 40, .seed = 4, .eval_every = 5, .checkpoint_every = 17};
  const auto first_part = run(s, 3, cut);
  std::vector<std::string> checkpoints;
  for (const outcome& o : first_part) checkpoints.push_back(o.checkpoint_bytes);
  REQUIRE_FALSE(checkpoints[0].empty());
  SUBCASE("another seed") {
    CHECK_THROWS_WITH_AS(run(s, 3, {.steps = 40, .seed = 5}, &checkpoints),
                         doctest::Contains("seed 4"), ecopt::checkpoint_error);
  }
  SUBCASE("another schedule") {
    const ecopt::solver other{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{},
                              ecopt::sgd{.lr = 0.1}, ecopt::local_sgd{.period = 2}};
    CHECK_THROWS_WITH_AS(run(other, 3, {.steps = 40, .seed = 4}, &checkpoints),
                         doctest::Contains("solver.schedule"), ecopt::checkpoint_error);
  }
  SUBCASE("another world") {
    CHECK_THROWS_WITH_AS(run(s, 2, {.steps = 40, .seed = 4}, &checkpoints),
                         doctest::Contains("world"), ecopt::checkpoint_error);
  }
}

TEST_CASE("checkpoints of a run whose policy keeps no persist() are refused, naming the policies") {
  const ecopt::solver s{ecopt::no_compression{}, ecopt::no_compensation{}, plain_step{}};
  // Without checkpoints it runs.
  CHECK(run(s, 2, {.steps = 5, .seed = 1})[0].x.norm() > 0);
  CHECK_THROWS_WITH_AS(run(s, 2, {.steps = 5, .seed = 1, .checkpoint_every = 2}),
                       doctest::Contains("plain_step"), ecopt::invalid_argument);
}

}  // namespace solver_resume_test
