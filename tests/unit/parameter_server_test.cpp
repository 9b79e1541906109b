// parameter_server (backup workers, bounded-staleness async SGD, IAG) on
// threads and in modelled time: b = 0 equals synchronous SGD bit for bit;
// late and stale updates are dropped and counted, never applied; error
// feedback keeps a dropped update; every rank ends with the server's model;
// modelled round times follow the straggler model; convergence; refusals.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "ecopt/ecopt.hpp"
#include "ecopt/parameter_server.hpp"
#include "support/messages.hpp"

namespace parameter_server_test {

namespace {

constexpr Eigen::Index dim = 20;
constexpr Eigen::Index samples_per_worker = 32;

/// Least squares with a different shard per worker, deterministic in the worker.
struct shard {
  Eigen::MatrixXd a;
  Eigen::VectorXd b;
  explicit shard(int worker) : a(dim, samples_per_worker), b(samples_per_worker) {
    auto rng = ecopt::counter_rng::stream(33, ecopt::stream_purpose::test,
                                          static_cast<std::uint64_t>(worker), 0);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = 0.5 * rng.normal();
    for (Eigen::Index i = 0; i < b.size(); ++i) b[i] = rng.normal() + 0.3 * worker;
  }
  [[nodiscard]] ecopt::least_squares<double> problem() const {
    return ecopt::least_squares<double>(a, b, ecopt::least_squares_options{.batch_size = 4});
  }
};

/// The shards of `workers` workers in one problem: the objective a server reports.
struct pooled {
  Eigen::MatrixXd a;
  Eigen::VectorXd b;
  explicit pooled(int workers)
      : a(dim, workers * samples_per_worker), b(workers * samples_per_worker) {
    for (int w = 0; w < workers; ++w) {
      const shard s(w);
      a.middleCols(w * samples_per_worker, samples_per_worker) = s.a;
      b.segment(w * samples_per_worker, samples_per_worker) = s.b;
    }
  }
  [[nodiscard]] ecopt::least_squares<double> problem() const {
    return ecopt::least_squares<double>(a, b, ecopt::least_squares_options{.batch_size = 4});
  }
  [[nodiscard]] double optimal_loss() const {
    const Eigen::VectorXd best = (a * a.transpose()).ldlt().solve(a * b);
    return 0.5 * (a.transpose() * best - b).squaredNorm() / static_cast<double>(b.size());
  }
};

struct outcome {
  Eigen::VectorXd x;
  ecopt::server_report report;
};

/// A parameter-server run on 1 + workers threads; worker rank r uses shard r - 1
/// and the server shard 0 for its loss.
template <class Server>
std::vector<outcome> serve_on_threads(const Server& s, int workers,
                                      const ecopt::run_options& options) {
  const pooled everything(std::max(workers, 1));
  return ecopt::run_threads(workers + 1, [&](ecopt::thread_transport& t) {
    const shard data(std::max(t.rank() - 1, 0));
    auto problem = t.rank() == 0 ? everything.problem() : data.problem();
    Eigen::VectorXd x = Eigen::VectorXd::Constant(dim, 0.25);
    auto report = s.run(t, problem, x, options);
    return outcome{x, report};
  });
}

/// The synchronous solver on `workers` threads, rank r on shard r.
template <class Solver>
std::vector<Eigen::VectorXd> solve_on_threads(const Solver& s, int workers,
                                              const ecopt::run_options& options) {
  return ecopt::run_threads(workers, [&](ecopt::thread_transport& t) {
    const shard data(t.rank());
    auto problem = data.problem();
    Eigen::VectorXd x = Eigen::VectorXd::Constant(dim, 0.25);
    (void)s.run(t, problem, x, options);
    return x;
  });
}

bool same_bits(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

/// "" when the server's and every worker's final model equal the synchronous
/// run's bit for bit, else what differs.
std::string difference_from_synchronous(const std::vector<outcome>& served,
                                        const std::vector<Eigen::VectorXd>& synchronous) {
  for (std::size_t r = 0; r < served.size(); ++r) {
    if (!same_bits(served[r].x, synchronous[0])) {
      return "rank " + std::to_string(r) + " of the server run differs from synchronous SGD by " +
             std::to_string((served[r].x - synchronous[0]).cwiseAbs().maxCoeff());
    }
  }
  if ((served[0].x - Eigen::VectorXd::Constant(dim, 0.25)).norm() == 0)
    return "the run never moved";
  return "";
}

const ecopt::run_options thirty_steps{.steps = 30, .seed = 5, .eval_every = 10};

/// A parameter-server run in modelled time: a free network, and each worker's
/// gradient charged the straggler model's time for its worker index.
template <class Server>
std::vector<outcome> serve_in_modelled_time(const Server& s, int workers,
                                            const ecopt::straggler_model& stragglers,
                                            const ecopt::run_options& options) {
  const pooled everything(workers);
  return ecopt::run_threads(workers + 1, [&](ecopt::thread_transport& t) {
    ecopt::simulated_transport sim(t, ecopt::network_model::uniform(0, 1e300));
    const shard data(std::max(t.rank() - 1, 0));
    auto inner = data.problem();
    Eigen::VectorXd x = Eigen::VectorXd::Constant(dim, 0.25);
    if (t.rank() == 0) {
      auto server_problem = everything.problem();
      auto report = s.run(sim, server_problem, x, options);
      return outcome{x, report};
    }
    ecopt::with_compute_time problem(inner, stragglers, t.rank() - 1,
                                     ecopt::modelled_compute{&sim});
    auto report = s.run(sim, problem, x, options);
    return outcome{x, report};
  });
}

/// The backup-worker protocol simulated event by event (the reference the
/// distributed run must match in modelled time): returns the time at which
/// the server finished its last round.
double simulate_backup_rounds(const ecopt::straggler_model& m, int workers, int backups,
                              std::uint64_t rounds) {
  std::vector<double> done(static_cast<std::size_t>(workers));
  std::vector<std::uint64_t> version(static_cast<std::size_t>(workers), 0),
      computed(done.size(), 0);
  auto start = [&](std::size_t w, double at, std::uint64_t v) {
    done[w] = at + m.seconds(static_cast<int>(w), computed[w]++);
    version[w] = v;
  };
  for (std::size_t w = 0; w < done.size(); ++w) start(w, 0, 0);
  double now = 0;
  for (std::uint64_t v = 0; v < rounds; ++v) {
    std::vector<std::size_t> accepted;
    while (accepted.size() < static_cast<std::size_t>(workers - backups)) {
      std::size_t first = 0;
      for (std::size_t w = 0; w < done.size(); ++w) {
        const bool busy = std::find(accepted.begin(), accepted.end(), w) == accepted.end();
        const bool first_busy =
            std::find(accepted.begin(), accepted.end(), first) == accepted.end();
        if (busy && (!first_busy || done[w] < done[first])) first = w;
      }
      now = done[first];
      if (version[first] == v) {
        accepted.push_back(first);
      } else {
        start(first, now, v);  // late: dropped, and the worker takes model v at once
      }
    }
    for (const std::size_t w : accepted) start(w, now, v + 1);
  }
  return now;
}

/// A problem whose every stochastic gradient is the same vector: what a worker
/// sends is then its compensator's doing alone.
struct constant_gradient {
  using scalar_type = double;
  Eigen::VectorXd c;
  [[nodiscard]] std::size_t dim() const { return static_cast<std::size_t>(c.size()); }
  double loss(const Eigen::Ref<const Eigen::VectorXd>& x) const { return c.dot(x); }
  void gradient(const Eigen::Ref<const Eigen::VectorXd>&, Eigen::Ref<Eigen::VectorXd> g) const {
    g = c;
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>&, Eigen::Ref<Eigen::VectorXd> g,
                           ecopt::counter_rng&) const {
    g = c;
  }
};

}  // namespace

TEST_CASE("backup_workers with b = 0 is synchronous SGD bit for bit") {
  SUBCASE("top-k with error feedback and a decaying step, 3 workers") {
    const ecopt::sgd opt{.lr = 0.2, .lr_decay = 0.1};
    const ecopt::top_k compressor{.ratio = 0.25};
    const auto served = serve_on_threads(
        ecopt::parameter_server{compressor, ecopt::error_feedback{}, opt, ecopt::backup_workers{}},
        3, thirty_steps);
    CHECK(difference_from_synchronous(
              served, solve_on_threads(ecopt::solver{compressor, ecopt::error_feedback{}, opt}, 3,
                                       thirty_steps)) == "");
    CHECK(served[0].report.counts.applied == 90);
    CHECK(served[0].report.counts.dropped_late == 0);
  }
  SUBCASE("QSGD with heavy-ball momentum, 4 workers") {
    const ecopt::heavy_ball opt{.lr = 0.05, .momentum = 0.8};
    const ecopt::qsgd compressor{.levels = 4};
    CHECK(difference_from_synchronous(
              serve_on_threads(ecopt::parameter_server{compressor, ecopt::no_compensation{}, opt,
                                                       ecopt::backup_workers{}},
                               4, thirty_steps),
              solve_on_threads(ecopt::solver{compressor, ecopt::no_compensation{}, opt}, 4,
                               thirty_steps)) == "");
  }
  SUBCASE("EF21 with top-k (the server reconstructs), 3 workers") {
    const ecopt::sgd opt{.lr = 0.1};
    const ecopt::top_k compressor{.ratio = 0.2};
    CHECK(difference_from_synchronous(
              serve_on_threads(
                  ecopt::parameter_server{compressor, ecopt::ef21{}, opt, ecopt::backup_workers{}},
                  3, thirty_steps),
              solve_on_threads(ecopt::solver{compressor, ecopt::ef21{}, opt}, 3, thirty_steps)) ==
          "");
  }
  SUBCASE("dense with Nesterov momentum, 2 workers") {
    const ecopt::nesterov opt{.lr = 0.05, .momentum = 0.9};
    CHECK(
        difference_from_synchronous(
            serve_on_threads(
                ecopt::parameter_server{ecopt::no_compression{}, ecopt::no_compensation{}, opt,
                                        ecopt::backup_workers{}},
                2, thirty_steps),
            solve_on_threads(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, opt},
                             2, thirty_steps)) == "");
  }
}

TEST_CASE("backup workers: a round takes the first N updates at its model and drops the slowest") {
  // Worker 3 computes 10x slower than the others, without tails: with one
  // backup every round ends when the three fast workers are done.
  const ecopt::straggler_model stragglers{.base_seconds = 0.01,
                                          .slow_ranks = {{.rank = 3, .factor = 10}}};
  const ecopt::run_options options{.steps = 35, .seed = 2, .eval_every = 0};
  const ecopt::sgd opt{.lr = 0.05};
  const auto with_backup = serve_in_modelled_time(
      ecopt::parameter_server{ecopt::top_k{.ratio = 0.3}, ecopt::error_feedback{}, opt,
                              ecopt::backup_workers{.backups = 1}},
      4, stragglers, options);
  const auto& counts = with_backup[0].report.counts;
  CHECK(with_backup[0].report.steps == 35);
  CHECK(counts.applied == 3 * 35);
  // The slow worker sends one update per 10 rounds, each late for its round
  // (the fourth is still on its way when the run ends).
  CHECK(counts.dropped_late == 3);
  CHECK(counts.received == counts.applied + counts.dropped_late + counts.dropped_at_end);
  CHECK(counts.dropped_at_end == 1);
  CHECK(with_backup[0].report.modelled_seconds == doctest::Approx(35 * 0.01).epsilon(1e-9));
  for (const outcome& o : with_backup) CHECK(same_bits(o.x, with_backup[0].x));

  const auto without = serve_in_modelled_time(
      ecopt::parameter_server{ecopt::top_k{.ratio = 0.3}, ecopt::error_feedback{}, opt,
                              ecopt::backup_workers{}},
      4, stragglers, options);
  CHECK(without[0].report.modelled_seconds == doctest::Approx(35 * 0.1).epsilon(1e-9));
  CHECK(without[0].report.counts.dropped_late == 0);
}

TEST_CASE(
    "backup workers in modelled time follow the protocol event by event, and b = 0 the slowest "
    "worker") {
  const ecopt::straggler_model stragglers{
      .base_seconds = 0.01, .tail_kind = ecopt::compute_tail::exponential, .tail = 0.5, .seed = 8};
  constexpr int workers = 6;
  constexpr std::uint64_t rounds = 300;
  const ecopt::run_options options{.steps = rounds, .seed = 4, .eval_every = 0};
  for (const int backups : {0, 1, 2}) {
    CAPTURE(backups);
    const auto served = serve_in_modelled_time(
        ecopt::parameter_server{ecopt::no_compression{}, ecopt::no_compensation{},
                                ecopt::sgd{.lr = 0.02}, ecopt::backup_workers{.backups = backups}},
        workers, stragglers, options);
    CHECK(served[0].report.modelled_seconds ==
          doctest::Approx(simulate_backup_rounds(stragglers, workers, backups, rounds))
              .epsilon(1e-9));
    if (backups == 0) {
      // Every round waits for the slowest of the six: the order statistic.
      const double per_round = served[0].report.modelled_seconds / rounds;
      CHECK(
          per_round ==
          doctest::Approx(stragglers.expected_kth_fastest(workers, workers, 40000)).epsilon(0.05));
    }
  }
}

TEST_CASE("async SGD: staleness is measured, updates beyond the bound are dropped, not applied") {
  // Equal compute times: the four updates of a wave arrive together and are
  // applied one after another, so their staleness is 0, 1, 2, 3.
  const ecopt::straggler_model stragglers{.base_seconds = 0.01};
  const ecopt::run_options options{.steps = 60, .seed = 3, .eval_every = 0};
  for (const std::uint64_t bound : {std::uint64_t{8}, std::uint64_t{1}}) {
    CAPTURE(bound);
    const auto served = serve_in_modelled_time(
        ecopt::parameter_server{
            ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.05},
            ecopt::async_sgd{.max_staleness = bound, .step_rule = ecopt::delay_rule::per_update}},
        4, stragglers, options);
    const auto& counts = served[0].report.counts;
    CHECK(served[0].report.steps == 60);
    CHECK(counts.applied == 60);
    std::uint64_t beyond = 0, total = 0;
    for (std::size_t s = 0; s < counts.staleness.size(); ++s) {
      total += counts.staleness[s];
      if (s > bound) beyond += counts.staleness[s];
    }
    CHECK(total + counts.dropped_at_end == counts.received);
    CHECK(counts.dropped_stale == beyond);
    CHECK(counts.received == counts.applied + counts.dropped_stale + counts.dropped_at_end);
    REQUIRE(counts.staleness.size() >= 3);
    CHECK(counts.staleness[0] > 0);
    CHECK(counts.staleness[1] > 0);
    if (bound == 1) CHECK(counts.dropped_stale > 0);
    if (bound == 8) CHECK(counts.dropped_stale == 0);
    for (const outcome& o : served) CHECK(same_bits(o.x, served[0].x));
  }
}

TEST_CASE("async SGD and IAG converge; a delay-aware step where the delay-blind one diverges") {
  // Modelled time (a deterministic order of arrival) with heavy-tailed compute.
  const ecopt::straggler_model stragglers{
      .base_seconds = 0.01, .tail_kind = ecopt::compute_tail::exponential, .tail = 1.0, .seed = 12};
  const ecopt::run_options options{.steps = 600, .seed = 6, .eval_every = 100};
  constexpr int workers = 8;
  const double best = pooled(workers).optimal_loss();
  auto gap_ratio = [best](const ecopt::server_report& r) {
    return (r.history.back().loss - best) / (r.history.front().loss - best);
  };
  auto async_run = [&](double lr, ecopt::delay_rule rule) {
    return serve_in_modelled_time(
               ecopt::parameter_server{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{},
                                       ecopt::sgd{.lr = lr},
                                       ecopt::async_sgd{.max_staleness = 32, .step_rule = rule}},
               workers, stragglers, options)[0]
        .report;
  };
  // Delays reach ~30 versions here: the bound's step (gamma / 33) converges,
  // the same gamma applied blind to the delays diverges.
  const auto bound = async_run(0.5, ecopt::delay_rule::bound);
  CHECK(bound.counts.staleness.size() > 16);
  CHECK(gap_ratio(bound) < 0.3);
  CHECK(gap_ratio(async_run(0.5, ecopt::delay_rule::blind)) > 100);
  // IAG steps with every worker's last update, the oldest ~30 versions old:
  // its step is that of the bound rule for tau ~ n - 1 and more.
  const auto iag = serve_in_modelled_time(
      ecopt::parameter_server{ecopt::no_compression{}, ecopt::no_compensation{},
                              ecopt::sgd{.lr = 0.03}, ecopt::incremental_aggregated{}},
      workers, stragglers, options);
  CHECK(gap_ratio(iag[0].report) < 0.3);
  CHECK(iag[0].report.counts.applied == 600);
  for (const outcome& o : iag) CHECK(same_bits(o.x, iag[0].x));
}

TEST_CASE("error feedback on a worker keeps an update the server dropped") {
  // A hand-written server: the worker's first update is answered with
  // `fate`; its second is g + (what its memory kept).
  for (const auto fate : {ecopt::update_fate::applied, ecopt::update_fate::dropped}) {
    CAPTURE(static_cast<int>(fate));
    const auto second = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
      constant_gradient problem{Eigen::VectorXd::LinSpaced(5, 1.0, 5.0)};
      Eigen::VectorXd x = Eigen::VectorXd::Zero(5);
      const ecopt::parameter_server server{ecopt::no_compression{}, ecopt::error_feedback{},
                                           ecopt::sgd{.lr = 0.1}, ecopt::async_sgd{}};
      if (t.rank() == 1) {
        (void)server.run(t, problem, x, {.steps = 2, .seed = 1});
        return Eigen::VectorXd();
      }
      using namespace ecopt::detail;
      const auto model_tag = ecopt::collective_tag_for(ecopt::collective_tag::server_model);
      const auto update_tag = ecopt::collective_tag_for(ecopt::collective_tag::server_update);
      std::vector<std::byte> out, in;
      Eigen::VectorXd payload(5);
      write_server_message(out, server_message::model, ecopt::update_fate::none, 0,
                           std::span<const double>(x.data(), 5));
      t.send(1, model_tag, out);
      t.recv(1, update_tag, in);
      write_server_message(out, server_message::model, fate, 0,
                           std::span<const double>(x.data(), 5));
      t.send(1, model_tag, out);
      t.recv(1, update_tag, in);
      // no_compression's payload: five float32 values after the header.
      std::vector<float> values(5);
      std::memcpy(values.data(), in.data() + worker_header_bytes, 5 * sizeof(float));
      for (int j = 0; j < 5; ++j) payload[j] = values[static_cast<std::size_t>(j)];
      write_server_message(out, server_message::stop, ecopt::update_fate::dropped, 0,
                           std::span<const double>(x.data(), 5));
      t.send(1, model_tag, out);
      t.recv(1, ecopt::collective_tag_for(ecopt::collective_tag::server_leaving), in);
      return payload;
    });
    const Eigen::VectorXd g = Eigen::VectorXd::LinSpaced(5, 1.0, 5.0);
    if (fate == ecopt::update_fate::applied) {
      CHECK((second[0] - g).cwiseAbs().maxCoeff() == 0.0);
    } else {
      CHECK((second[0] - 2 * g).cwiseAbs().maxCoeff() == 0.0);
    }
  }
}

TEST_CASE("parameter_server refuses what cannot run and names a worker that breaks the protocol") {
  SUBCASE("more backups than workers") {
    CHECK_THROWS_WITH_AS(
        serve_on_threads(ecopt::parameter_server{ecopt::no_compression{}, ecopt::no_compensation{},
                                                 ecopt::sgd{}, ecopt::backup_workers{.backups = 2}},
                         2, thirty_steps),
        doctest::Contains("backups leave no update"), ecopt::invalid_argument);
  }
  SUBCASE("a world without workers") {
    CHECK_THROWS_WITH_AS(serve_on_threads(ecopt::parameter_server{}, 0, thirty_steps),
                         doctest::Contains("has no worker"), ecopt::invalid_argument);
  }
  SUBCASE("a worker whose update is malformed") {
    CHECK_THROWS_WITH_AS(
        ecopt::run_threads(
            3,
            [&](ecopt::thread_transport& t) {
              const shard data(0);
              auto problem = data.problem();
              Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
              if (t.rank() == 2) {
                std::vector<std::byte> in;
                t.recv(0, ecopt::collective_tag_for(ecopt::collective_tag::server_model), in);
                const std::byte junk[3]{};
                t.send(0, ecopt::collective_tag_for(ecopt::collective_tag::server_update), junk);
                return 0;
              }
              (void)ecopt::parameter_server{}.run(t, problem, x, thirty_steps);
              return 0;
            }),
        doctest::Contains("rank 2 has 3 bytes"), ecopt::transport_error);
  }
}

namespace {

/// Thrown by a worker's problem to end that worker as a crash would: its
/// thread returns without a word to the server.
struct worker_died {};

/// A shard whose worker dies at its `dies_at`-th gradient (never when 0).
struct mortal_shard {
  using scalar_type = double;
  ecopt::least_squares<double> inner;
  std::uint64_t dies_at = 0;
  std::uint64_t calls = 0;
  [[nodiscard]] std::size_t dim() const { return inner.dim(); }
  double loss(const Eigen::Ref<const Eigen::VectorXd>& x) { return inner.loss(x); }
  void gradient(const Eigen::Ref<const Eigen::VectorXd>& x, Eigen::Ref<Eigen::VectorXd> g) {
    inner.gradient(x, g);
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXd>& x,
                           Eigen::Ref<Eigen::VectorXd> g, ecopt::counter_rng& rng) {
    if (dies_at > 0 && ++calls == dies_at) throw worker_died{};
    inner.stochastic_gradient(x, g, rng);
  }
};

/// A run on 1 + workers threads in which worker rank `mortal` dies at its
/// 6th gradient; the surviving ranks' outcomes (the dead one's x is empty).
template <class Server>
std::vector<outcome> serve_with_a_death(const Server& s, int workers, int mortal) {
  const pooled everything(workers);
  return ecopt::run_threads(
      workers + 1,
      [&](ecopt::thread_transport& t) {
        const shard data(std::max(t.rank() - 1, 0));
        mortal_shard problem{t.rank() == 0 ? everything.problem() : data.problem(),
                             t.rank() == mortal ? 6u : 0u};
        Eigen::VectorXd x = Eigen::VectorXd::Constant(dim, 0.25);
        try {
          auto report = s.run(t, problem, x, {.steps = 40, .seed = 3, .eval_every = 20});
          return outcome{x, report};
        } catch (const worker_died&) {
          return outcome{};
        }
      },
      {.timeout = std::chrono::milliseconds(300)});
}

}  // namespace

TEST_CASE("a worker that dies is found at the deadline; the server goes on without it") {
  SUBCASE("backup workers with one backup") {
    const auto survivors = serve_with_a_death(
        ecopt::parameter_server{ecopt::top_k{.ratio = 0.25}, ecopt::error_feedback{},
                                ecopt::sgd{.lr = 0.05}, ecopt::backup_workers{.backups = 1}},
        4, 3);
    const auto& server = survivors[0].report;
    CHECK(server.steps == 40);
    CHECK(server.counts.lost_workers == std::vector<int>{3});
    CHECK(server.counts.applied == 3 * 40);
    for (const int r : {1, 2, 4})
      CHECK(same_bits(survivors[static_cast<std::size_t>(r)].x, survivors[0].x));
    CHECK(survivors[3].x.size() == 0);
  }
  SUBCASE("asynchronous SGD") {
    const auto survivors = serve_with_a_death(
        ecopt::parameter_server{ecopt::no_compression{}, ecopt::no_compensation{},
                                ecopt::sgd{.lr = 0.05}, ecopt::async_sgd{}},
        3, 2);
    CHECK(survivors[0].report.steps == 40);
    CHECK(survivors[0].report.counts.lost_workers == std::vector<int>{2});
    CHECK(same_bits(survivors[1].x, survivors[0].x));
    CHECK(same_bits(survivors[3].x, survivors[0].x));
  }
  SUBCASE("without a backup the round cannot finish: the server names the lost worker") {
    // The waiting workers time out too; what the server says is caught on its thread.
    std::string server_says;
    CHECK_THROWS_AS(
        ecopt::run_threads(4,
                           [&](ecopt::thread_transport& t) {
                             const shard data(std::max(t.rank() - 1, 0));
                             mortal_shard problem{data.problem(), t.rank() == 2 ? 6u : 0u};
                             Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
                             try {
                               (void)ecopt::parameter_server{}.run(t, problem, x, {.steps = 40});
                             } catch (const worker_died&) {
                             } catch (const ecopt::transport_error& e) {
                               if (t.rank() == 0) server_says = e.what();
                               throw;
                             }
                             return 0;
                           },
                           {.timeout = std::chrono::milliseconds(300)}),
        ecopt::transport_error);
    CHECK(server_says.find("lost (ranks 2)") != std::string::npos);
  }
  SUBCASE("the synchronous solver fails, naming the rank") {
    CHECK_THROWS_WITH_AS(
        ecopt::run_threads(3,
                           [&](ecopt::thread_transport& t) {
                             const shard data(t.rank());
                             mortal_shard problem{data.problem(), t.rank() == 1 ? 6u : 0u};
                             Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
                             try {
                               (void)ecopt::solver{}.run(t, problem, x, {.steps = 40});
                             } catch (const worker_died&) {
                             }
                             return 0;
                           },
                           {.timeout = std::chrono::milliseconds(300)}),
        doctest::Contains("rank 1"), ecopt::transport_error);
  }
}

}  // namespace parameter_server_test
