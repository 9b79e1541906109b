// One contract, every schedule of the parameter server (algorithms/all.hpp's
// all_server_schedules), run on threads: in its trivial setting it is the
// synchronous solver bit for bit; in modelled time with heavy-tailed workers
// it stops at its model steps, accounts for every update it took, leaves
// every rank with the server's model, converges, runs again to the same bits;
// and it names a bad field. A new server schedule joins by adding one line to
// all_server_schedules and its settings below.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ecopt/algorithms/all.hpp"
#include "ecopt/ecopt.hpp"
#include "ecopt/parameter_server.hpp"

TYPE_TO_STRING(ecopt::backup_workers);
TYPE_TO_STRING(ecopt::async_sgd);
TYPE_TO_STRING(ecopt::incremental_aggregated);

namespace server_schedule_contracts_test {

namespace {

/// For each server schedule: the setting (and number of workers) in which it
/// is synchronous SGD, a typical one, and an invalid one with the field it names.
template <class S>
struct server_settings;
template <>
struct server_settings<ecopt::backup_workers> {
  static constexpr int trivial_workers = 3;
  static ecopt::backup_workers trivial() { return {}; }
  static ecopt::backup_workers typical() { return {.backups = 1}; }
  static constexpr const char* invalid_field = "backups";
  static ecopt::backup_workers invalid() { return {.backups = -1}; }
};
template <>
struct server_settings<ecopt::async_sgd> {
  // One worker: every update is applied at once, at staleness 0.
  static constexpr int trivial_workers = 1;
  static ecopt::async_sgd trivial() { return {.max_staleness = 0}; }
  static ecopt::async_sgd typical() {
    return {.max_staleness = 8, .step_rule = ecopt::delay_rule::per_update};
  }
  static constexpr const char* invalid_field = "max_staleness";
  static ecopt::async_sgd invalid() { return {.max_staleness = std::uint64_t{1} << 41}; }
};
template <>
struct server_settings<ecopt::incremental_aggregated> {
  // One worker: the table is its latest update.
  static constexpr int trivial_workers = 1;
  static ecopt::incremental_aggregated trivial() { return {}; }
  static ecopt::incremental_aggregated typical() { return {}; }
  static constexpr const char* invalid_field = nullptr;
  static ecopt::incremental_aggregated invalid() { return {}; }
};

constexpr Eigen::Index size = 8;

/// Worker w's objective: 1/2 |x - c_w|^2 with gradient noise; the server's:
/// the mean of the workers' (its optimum is the mean of the c_w).
Eigen::VectorXd centre(int worker) {
  Eigen::VectorXd c(size);
  for (Eigen::Index j = 0; j < size; ++j) c[j] = 1.0 + 0.5 * worker - 0.1 * static_cast<double>(j);
  return c;
}

/// The identity Hessian the problems view (it outlives them).
const Eigen::MatrixXd& identity() {
  static const Eigen::MatrixXd i = Eigen::MatrixXd::Identity(size, size);
  return i;
}

ecopt::quadratic<double> worker_problem(int worker) {
  return ecopt::quadratic<double>(identity(), centre(worker), {.noise = 0.1});
}

struct outcome {
  Eigen::VectorXd x;
  ecopt::server_report report;
};

bool same_bits(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  return std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(size)) == 0;
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("server schedule contract", S, server_schedule_contract) {
  static_assert(ecopt::ServerSchedule<S, float> && ecopt::ServerSchedule<S, double>);
  const ecopt::sgd opt{.lr = 0.2};
  const ecopt::run_options options{.steps = 24, .seed = 8, .eval_every = 6};

  SUBCASE("the trivial setting is the synchronous solver, bit for bit") {
    constexpr int workers = server_settings<S>::trivial_workers;
    const ecopt::top_k compressor{.ratio = 0.25};
    const auto served = ecopt::run_threads(workers + 1, [&](ecopt::thread_transport& t) {
      auto problem = worker_problem(std::max(t.rank() - 1, 0));
      Eigen::VectorXd x = Eigen::VectorXd::Zero(size);
      (void)ecopt::parameter_server{compressor, ecopt::error_feedback{}, opt,
                                    server_settings<S>::trivial()}
          .run(t, problem, x, options);
      return x;
    });
    const auto synchronous = ecopt::run_threads(workers, [&](ecopt::thread_transport& t) {
      auto problem = worker_problem(t.rank());
      Eigen::VectorXd x = Eigen::VectorXd::Zero(size);
      (void)ecopt::solver{compressor, ecopt::error_feedback{}, opt}.run(t, problem, x, options);
      return x;
    });
    for (const Eigen::VectorXd& x : served) CHECK(same_bits(x, synchronous[0]));
    CHECK(served[0].norm() > 0);
  }

  SUBCASE("in modelled time: stops at its steps, accounts for every update, converges, repeats") {
    constexpr int workers = 4;
    const ecopt::straggler_model stragglers{.base_seconds = 0.01,
                                            .tail_kind = ecopt::compute_tail::exponential,
                                            .tail = 1.0,
                                            .seed = 3};
    const ecopt::run_options long_run{.steps = 300, .seed = 2, .eval_every = 100};
    auto run = [&] {
      return ecopt::run_threads(workers + 1, [&](ecopt::thread_transport& t) {
        ecopt::simulated_transport sim(t, ecopt::network_model::ethernet_1g());
        const ecopt::parameter_server server{ecopt::no_compression{}, ecopt::no_compensation{},
                                             ecopt::sgd{.lr = 0.05}, server_settings<S>::typical()};
        Eigen::VectorXd x = Eigen::VectorXd::Zero(size);
        if (t.rank() == 0) {
          Eigen::VectorXd mean = Eigen::VectorXd::Zero(size);
          for (int w = 0; w < workers; ++w) mean += centre(w) / workers;
          ecopt::quadratic<double> whole(identity(), mean);
          auto report = server.run(sim, whole, x, long_run);
          return outcome{x, report};
        }
        auto inner = worker_problem(t.rank() - 1);
        ecopt::with_compute_time problem(inner, stragglers, t.rank() - 1,
                                         ecopt::modelled_compute{&sim});
        auto report = server.run(sim, problem, x, long_run);
        return outcome{x, report};
      });
    };
    const auto first = run();
    const auto second = run();
    const ecopt::server_report& server = first[0].report;
    CHECK(server.is_server);
    CHECK(server.steps == 300);
    const auto& c = server.counts;
    CHECK(c.received == c.applied + c.dropped_late + c.dropped_stale + c.dropped_at_end);
    CHECK(c.applied >= 300);
    std::uint64_t counted = 0;
    for (const auto n : c.staleness) counted += n;
    CHECK(counted + c.dropped_at_end == c.received);
    std::uint64_t payload = 0;
    for (int w = 1; w <= workers; ++w) {
      CHECK_FALSE(first[static_cast<std::size_t>(w)].report.is_server);
      payload += first[static_cast<std::size_t>(w)].report.payload_bits;
      CHECK(server.payload_bits_per_worker[static_cast<std::size_t>(w)] ==
            first[static_cast<std::size_t>(w)].report.payload_bits);
    }
    CHECK(payload == c.payload_bits_received);
    Eigen::VectorXd optimum = Eigen::VectorXd::Zero(size);
    for (int w = 0; w < workers; ++w) optimum += centre(w) / workers;
    // From x = 0: nine tenths of the way to the optimum.
    CHECK((first[0].x - optimum).norm() < 0.1 * optimum.norm());
    for (std::size_t r = 0; r < first.size(); ++r) {
      CHECK(same_bits(first[r].x, first[0].x));
      CHECK(same_bits(first[r].x, second[r].x));
    }
    CHECK(server.modelled_seconds > 0);
  }

  SUBCASE("a bad field is named") {
    if constexpr (server_settings<S>::invalid_field != nullptr) {
      CHECK_THROWS_WITH_AS(ecopt::validate_policy(server_settings<S>::invalid()),
                           doctest::Contains(server_settings<S>::invalid_field),
                           ecopt::invalid_argument);
    } else {
      CHECK_NOTHROW(ecopt::validate_policy(server_settings<S>::invalid()));
    }
    CHECK_NOTHROW(ecopt::validate_policy(server_settings<S>::typical()));
  }
}
TEST_CASE_TEMPLATE_APPLY(server_schedule_contract, ecopt::all_server_schedules);

}  // namespace server_schedule_contracts_test
