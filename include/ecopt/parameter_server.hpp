#pragma once
// parameter_server<Compressor, Compensator, Optimizer, ServerSchedule>: data-
// parallel training with a server that holds the model, for clusters with
// slow or failing workers. Rank 0 is the server; ranks 1 .. P-1 are workers.
//
//   worker: model <- server; gradient; compensate; compress --update--> server
//   server: takes updates as they arrive (in modelled order on a
//           simulated_transport), and its schedule says which count and how
//           they combine; the optimizer steps the model; the worker gets it
//
// Server schedules (algorithms/): backup_workers (synchronous SGD that drops
// each round's b slowest updates; b = 0 is synchronous SGD), async_sgd
// (bounded staleness, delay-aware steps), incremental_aggregated (IAG).
//
// A ServerSchedule is a policy value:
//   static constexpr std::string_view name
//   void validate() const                          -- optional
//   state make_state<T>(std::size_t dim, int workers) const
//   void serve(server_round& r, state&) const      -- runs until r.finished()
// (algorithms/detail/server_round.hpp has what the round offers).
//
// run() is called on every rank with that rank's problem. Workers draw
// minibatches from theirs; the server never computes a gradient and uses its
// problem for the loss it reports (give it the full objective, or a held-out
// set). run_options::steps counts model versions (server steps); the workers
// run until the server stops them. Every rank returns the final model in x.
#include <Eigen/Core>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ecopt/algorithms/async_sgd.hpp"
#include "ecopt/algorithms/backup_workers.hpp"
#include "ecopt/algorithms/detail/server_round.hpp"
#include "ecopt/algorithms/detail/server_worker.hpp"
#include "ecopt/algorithms/incremental_aggregated.hpp"
#include "ecopt/collectives/broadcast.hpp"
#include "ecopt/compensator.hpp"
#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/detail/observer_calls.hpp"
#include "ecopt/error.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/run_report.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

template <class S, class T = float>
concept ServerSchedule = std::floating_point<T> && std::copy_constructible<S> &&
    requires(const S& s, std::size_t dim, int workers) {
  { S::name } -> std::convertible_to<std::string_view>;
  s.template make_state<T>(dim, workers);
};

/// A parameter-server run as one rank saw it. On the server, run_report's
/// history is the server's loss at its model versions (payload_bits there:
/// the bits received from all workers so far), steps the model versions,
/// and `counts` what happened to the updates; on a worker, steps is the
/// gradients it computed and its bits are its own.
struct server_report : run_report {
  bool is_server = false;
  server_counts counts;  ///< the server's (empty on workers)
};

template <Compressor C = no_compression, Compensator E = no_compensation, Optimizer O = sgd,
          class S = backup_workers>
struct parameter_server {
  C compressor{};
  E compensator{};
  O optimizer{};
  S schedule{};

  template <RecvAnyTransport Tr, Problem P, class... Observers>
  server_report run(Tr& transport, P& problem, Eigen::Ref<vector_t<problem_scalar_t<P>>> x,
                    const run_options& options = {}, Observers&&... observers) const {
    using T = problem_scalar_t<P>;
    static_assert(Compressor<C, T>, "the compressor does not support this problem's scalar type");
    static_assert(Compensator<E, T>, "the compensator does not support this problem's scalar type");
    static_assert(Optimizer<O, T>, "the optimizer does not support this problem's scalar type");
    static_assert(ServerSchedule<S, T>, "the schedule is not a server schedule");
    static_assert(!ProvidesGradient<O, P>,
                  "an optimizer that computes its own direction (accelerated_sgd, ec_lsvrg, "
                  "eclk) needs every worker's gradient at one point: it does not run on a "
                  "parameter server");
    validate_policy(compressor);
    validate_policy(compensator);
    validate_policy(optimizer);
    validate_policy(schedule);
    const std::size_t d = problem.dim();
    if (static_cast<std::size_t>(x.size()) != d) {
      throw invalid_argument("parameter_server::run: x has " + std::to_string(x.size()) +
                             " entries, the problem has dimension " + std::to_string(d));
    }
    if (transport.size() < 2) {
      throw invalid_argument("parameter_server::run: a world of " +
                             std::to_string(transport.size()) +
                             " rank has no worker (rank 0 is the server)");
    }
    const auto start = std::chrono::steady_clock::now();
    const std::span<T> x_span(x.data(), d);
    server_report report;
    if (transport.rank() != 0) {
      static_cast<run_report&>(report) = detail::run_parameter_server_worker<T>(
          transport, problem, x_span, compressor, compensator, optimizer, options);
    } else {
      report.is_server = true;
      serve<T>(transport, problem, x_span, options, report, start, observers...);
    }
    report.wall_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if constexpr (TimedTransport<Tr>) {
      if (!report.is_server) report.modelled_seconds = transport.modelled_seconds();
    }
    return report;
  }

 private:
  template <class T, class Tr, class P, class... Observers>
  void serve(Tr& transport, P& problem, std::span<T> x, const run_options& options,
             server_report& report, std::chrono::steady_clock::time_point start,
             Observers&... observers) const {
    const int workers = transport.size() - 1;
    const std::uint64_t sent_at_start = transport.bytes_sent();
    progress info{.step = 0, .total_steps = options.steps, .rank = 0, .world = transport.size()};
    // The loss at version v (every eval_every versions, and the last);
    // returns true when an observer asks to stop.
    auto evaluate = [&](std::uint64_t v, bool last) -> bool {
      const bool due = last || v == 0 ||
                       (options.eval_every > 0 && v % options.eval_every == 0 && v < options.steps);
      info.step = v;
      info.payload_bits = report.counts.payload_bits_received;
      info.wire_bits = 8 * (transport.bytes_sent() - sent_at_start);
      info.elapsed_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if constexpr (TimedTransport<Tr>) info.modelled_seconds = transport.modelled_seconds();
      (detail::notify_step(observers, info), ...);
      if (!due) return false;
      info.loss = problem.loss(
          Eigen::Map<const vector_t<T>>(x.data(), static_cast<Eigen::Index>(x.size())));
      report.history.push_back(
          {v, info.loss, info.payload_bits, info.wire_bits, info.modelled_seconds});
      bool stop = false;
      ((stop = detail::notify_eval(observers, info) || stop), ...);
      return stop;
    };
    using round_type = detail::server_round<T, Tr, C, E, O, decltype(evaluate)&>;
    round_type round(transport, x, compressor, compensator, optimizer, options.seed, options.steps,
                     evaluate, report.counts);
    auto state = schedule.template make_state<T>(x.size(), workers);
    const bool stopped_at_start = evaluate(0, false);
    if (!stopped_at_start) schedule.serve(round, state);
    // The run's modelled time ends with its last step, before the drain.
    if constexpr (TimedTransport<Tr>) report.modelled_seconds = transport.modelled_seconds();
    round.retire(report.payload_bits_per_worker, report.wire_bits_per_worker);
    report.steps = round.version();
    report.stopped_early = round.version() < options.steps;
    if (report.history.empty() || report.history.back().step != round.version()) {
      (void)evaluate(round.version(), true);
    }
    report.wire_bits = 8 * (transport.bytes_sent() - sent_at_start);
    report.wire_bits_per_worker[0] = report.wire_bits;
  }
};

}  // namespace ecopt
