#pragma once
// solver<Compressor, Compensator, Optimizer, Schedule>: data-parallel
// training composed at compile time.
//
//   problem --gradient--> schedule (algorithms/): when to exchange what
//     --> gradient_exchange (compensate, compress, collective, decode, mean:
//         gradient_exchange.hpp) --> optimizer --> x
//
// The default schedule, `synchronous`, exchanges every gradient: every rank
// ends each round with the same direction and so the same x, and the model
// itself is never sent (rank 0's x is broadcast once at the start). Local SGD
// and SlowMo step locally and exchange every H steps (schedule.hpp). The
// solver is a loop of such steps around the problem and the optimizer; a
// training loop of the user's own calls the same exchange object.
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ecopt/algorithms/synchronous.hpp"
#include "ecopt/checkpoint.hpp"
#include "ecopt/collectives/allgather.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/broadcast.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/compensator.hpp"
#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/observer_calls.hpp"
#include "ecopt/error.hpp"
#include "ecopt/gradient_exchange.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/run_report.hpp"
#include "ecopt/schedule.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

template <Compressor C = no_compression, Compensator E = no_compensation, Optimizer O = sgd,
          Schedule S = synchronous>
struct solver {
  C compressor{};
  E compensator{};
  O optimizer{};
  S schedule{};

  /// Runs `options.steps` rounds on this rank. Call it on every rank of the
  /// transport with that rank's problem (its shard) and an x of size
  /// problem.dim(); x is overwritten with the final iterate.
  template <Transport Tr, Problem P, class... Observers>
  run_report run(Tr& transport, P& problem, Eigen::Ref<vector_t<problem_scalar_t<P>>> x,
                 const run_options& options = {}, Observers&&... observers) const {
    using T = problem_scalar_t<P>;
    static_assert(Compressor<C, T>, "the compressor does not support this problem's scalar type");
    static_assert(Compensator<E, T>, "the compensator does not support this problem's scalar type");
    static_assert(Optimizer<O, T>, "the optimizer does not support this problem's scalar type");
    static_assert(Schedule<S, T, C>,
                  "the schedule does not support this problem's scalar type or compressor");
    static_assert(!ProvidesGradient<O, P> || std::same_as<S, synchronous>,
                  "an optimizer that computes its own direction (accelerated_sgd, ec_lsvrg, "
                  "eclk) runs with the synchronous schedule only");
    validate_policy(compressor);
    validate_policy(compensator);
    validate_policy(optimizer);
    validate_policy(schedule);

    const std::size_t d = problem.dim();
    if (static_cast<std::size_t>(x.size()) != d) {
      throw invalid_argument("solver::run: x has " + std::to_string(x.size()) +
                             " entries, the problem has dimension " + std::to_string(d));
    }
    const int rank = transport.rank();
    const int world = transport.size();
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    // The modelled clock of a TimedTransport, less the time the evaluations'
    // own messages were charged: like the bits, it counts the optimization only.
    double modelled_in_evaluations = 0;
    auto modelled = [&]() -> double {
      if constexpr (TimedTransport<Tr>) {
        return static_cast<double>(transport.modelled_seconds()) - modelled_in_evaluations;
      } else {
        return 0.0;
      }
    };

    // Everything a round needs is made here, once. The solver checks the
    // gradient itself, before a Hessian-aided compensator looks at the problem.
    gradient_exchange<C, E, T> exchange(compressor, compensator, d,
                                        {.seed = options.seed, .check_finite = false});
    auto optimizer_state = optimizer.template make_state<T>(d);
    auto schedule_state = schedule.template make_state<T>(d, compressor);
    vector_t<T> gradient(d);
    std::vector<T> average_point(evaluates_average<S> ? d : 0);
    collective_workspace workspace;
    const T inv_world = T(1) / static_cast<T>(world);
    run_report report;
    // Declared after everything a background job uses, so that it is
    // destroyed (and waits for its job) first.
    background_channel<Tr, exchange_bits> channel(transport);
    schedule_round<T, Tr, P, decltype(exchange), O> round(transport, problem, exchange, optimizer,
                                                          optimizer_state, workspace, channel,
                                                          report, options.seed, options.steps);
    const std::span<T> x_span(x.data(), d);
    const std::span<const T> gradient_span(gradient.data(), d);

    // Checkpoints need every policy's state to say what it carries (persist()).
    constexpr bool checkpointable =
        PersistentState<compressor_state_t<C, T>> && PersistentState<compensator_state_t<E, T>> &&
        PersistentState<optimizer_state_t<O, T>> && PersistentState<decltype(schedule_state)>;
    if (!checkpointable && (options.checkpoint_every > 0 || options.resume_from != nullptr)) {
      throw invalid_argument(
          "solver::run: checkpoint_every and resume_from need a persist() member on the state "
          "of every policy (checkpoint.hpp); one of " +
          std::string(policy_name<C>()) + ", " + std::string(policy_name<E>()) + ", " +
          std::string(policy_name<O>()) + ", " + std::string(S::name) + " has none");
    }

    // All ranks start from rank 0's iterate, or each from its checkpoint.
    std::uint64_t first_step = 0;
    if (options.resume_from != nullptr) {
      if constexpr (checkpointable) {
        first_step = resume<T>(*options.resume_from, options, transport, x_span, exchange,
                               optimizer_state, schedule_state, report);
      }
    } else {
      broadcast(transport, x_span, 0, workspace);
      schedule.begin(std::span<const T>(x_span), schedule_state);
    }

    progress info{.step = 0, .total_steps = options.steps, .rank = rank, .world = world};

    // Evaluates the global loss at the schedule's evaluation point and agrees
    // on early stopping; not charged to the bits.
    auto evaluate_and_agree = [&](std::uint64_t step) -> bool {
      // The evaluation needs the transport: a background exchange lands
      // first. (A modelled one has already run: its clock is left alone.)
      if constexpr (!BackgroundTimedTransport<Tr>) round.settle_background();
      const double modelled_before = modelled();
      std::span<const T> point =
          schedule.evaluation_point(std::span<const T>(x_span), std::as_const(schedule_state));
      if constexpr (evaluates_average<S>) {
        std::copy(point.begin(), point.end(), average_point.begin());
        allreduce_sum(transport, std::span<T>(average_point), workspace);
        for (T& v : average_point) v *= inv_world;
        point = std::span<const T>(average_point);
      }
      double loss = problem.loss(Eigen::Map<const vector_t<T>>(point.data(), x.size()));
      allreduce_sum(transport, std::span<double>(&loss, 1), workspace);
      info.step = step;
      info.loss = loss / world;
      info.payload_bits = report.payload_bits;
      info.wire_bits = report.wire_bits;
      info.elapsed_seconds = elapsed();
      info.modelled_seconds = modelled_before;
      report.history.push_back(
          {step, info.loss, report.payload_bits, report.wire_bits, modelled_before});
      bool stop = false;
      ((stop = detail::notify_eval(observers, info) || stop), ...);
      double vote = stop ? 1.0 : 0.0;
      allreduce_sum(transport, std::span<double>(&vote, 1), workspace);
      modelled_in_evaluations += modelled() - modelled_before;
      return vote > 0;
    };

    bool stopped = options.resume_from == nullptr && evaluate_and_agree(0);
    std::uint64_t step = first_step;
    for (; step < options.steps && !stopped; ++step) {
      counter_rng sampler = counter_rng::stream(options.seed, stream_purpose::sampling,
                                                static_cast<std::uint64_t>(rank), step);
      round.at(step, x_span, gradient_span);
      if constexpr (ProvidesGradient<O, P>) {
        // The optimizer chooses the point and the estimator (optimizer.hpp); its
        // uncompressed means are charged to the bits like the exchange.
        const std::uint64_t sent_before_gradient = transport.bytes_sent();
        auto average = [&](std::span<T> values) {
          allreduce_sum(transport, values, workspace);
          for (T& v : values) v *= inv_world;
          report.payload_bits += 8 * sizeof(T) * values.size();
        };
        optimizer.gradient(problem, x, gradient, optimizer_state, sampler, round.context(),
                           uncompressed_mean<T>(average));
        report.wire_bits += 8 * (transport.bytes_sent() - sent_before_gradient);
      } else {
        problem.stochastic_gradient(x, gradient, sampler);
      }
      if (options.check_finite) detail::require_finite(gradient_span, rank, step);
      schedule.step(round, schedule_state);

      info.step = step + 1;
      info.payload_bits = report.payload_bits;
      info.wire_bits = report.wire_bits;
      info.elapsed_seconds = elapsed();
      info.modelled_seconds = modelled();
      (detail::notify_step(observers, info), ...);
      if (step + 1 < options.steps && options.eval_every > 0 &&
          (step + 1) % options.eval_every == 0) {
        stopped = evaluate_and_agree(step + 1);
      }
      if (options.checkpoint_every > 0 && (step + 1) % options.checkpoint_every == 0 &&
          step + 1 < options.steps && !stopped) {
        if constexpr (checkpointable) {
          round.settle_background();  // a travelling average lands in the schedule's state
          checkpoint c;
          save<T>(c, step + 1, options, transport, x_span, exchange, optimizer_state,
                  schedule_state, report);
          (detail::notify_checkpoint(observers, c, info), ...);
        }
      }
    }
    // A schedule with progress not yet averaged averages it now, so every
    // rank returns the same x.
    if (step > 0) {
      round.at(step - 1, x_span, gradient_span);
      schedule.finish(round, schedule_state);
    }
    round.settle_background();
    if (!stopped && step > 0) (void)evaluate_and_agree(step);
    report.steps = step;
    report.stopped_early = stopped;
    report.modelled_seconds = modelled();

    // Every rank learns every rank's bit counts.
    std::uint64_t mine[2] = {report.payload_bits, report.wire_bits};
    std::vector<std::uint64_t> all(2 * static_cast<std::size_t>(world));
    allgather(transport, std::span<const std::uint64_t>(mine, 2), std::span<std::uint64_t>(all),
              workspace);
    for (int r = 0; r < world; ++r) {
      report.payload_bits_per_worker.push_back(all[2 * static_cast<std::size_t>(r)]);
      report.wire_bits_per_worker.push_back(all[2 * static_cast<std::size_t>(r) + 1]);
    }
    report.wall_seconds = elapsed();
    return report;
  }

 private:
  // A checkpoint of the run after `step` steps: this rank's model, the
  // exchange's, optimizer's and schedule's states, the bits and the history
  // so far, and what it must be resumed with (policies, seed, steps, world).
  template <class T, class Tr, class Exchange, class OState, class SState>
  void save(checkpoint& c, std::uint64_t step, const run_options& options, const Tr& transport,
            std::span<const T> x, Exchange& exchange, OState& optimizer_state,
            SState& schedule_state, const run_report& report) const {
    c.put("solver.step", step);
    c.put("solver.seed", options.seed);
    c.put("solver.steps", options.steps);
    c.put_text("solver.optimizer", policy_name<O>());
    c.put_text("solver.schedule", S::name);
    c.put("solver.x", x);
    c.put("solver.payload_bits", report.payload_bits);
    c.put("solver.wire_bits", report.wire_bits);
    std::vector<double> history;
    for (const eval_point& e : report.history) {
      history.insert(history.end(),
                     {static_cast<double>(e.step), e.loss, static_cast<double>(e.payload_bits),
                      static_cast<double>(e.wire_bits), e.modelled_seconds});
    }
    c.put("solver.history", std::span<const double>(history));
    exchange.save(c, transport, "exchange.");
    save_state(c, "optimizer.", optimizer_state);
    save_state(c, "schedule.", schedule_state);
  }

  // Restores what save wrote; returns the step to go on from. Refuses
  // (checkpoint_error naming it) a checkpoint of other policies, seed,
  // steps, world, rank or dimension.
  template <class T, class Tr, class Exchange, class OState, class SState>
  std::uint64_t resume(const checkpoint& c, const run_options& options, const Tr& transport,
                       std::span<T> x, Exchange& exchange, OState& optimizer_state,
                       SState& schedule_state, run_report& report) const {
    c.expect_text("solver.optimizer", policy_name<O>());
    c.expect_text("solver.schedule", S::name);
    auto expect = [&](const char* what, std::uint64_t here) {
      const auto there = c.get<std::uint64_t>(std::string("solver.") + what);
      if (there != here) {
        throw checkpoint_error("checkpoint: written by a run with " + std::string(what) + " " +
                               std::to_string(there) + ", resumed by one with " +
                               std::to_string(here));
      }
    };
    expect("seed", options.seed);
    expect("steps", options.steps);
    const auto step = c.get<std::uint64_t>("solver.step");
    exchange.load(c, transport, "exchange.");
    c.get("solver.x", x);
    load_state(c, "optimizer.", optimizer_state);
    load_state(c, "schedule.", schedule_state);
    report.payload_bits = c.get<std::uint64_t>("solver.payload_bits");
    report.wire_bits = c.get<std::uint64_t>("solver.wire_bits");
    std::vector<double> history(c.count("solver.history"));
    c.get("solver.history", std::span<double>(history));
    if (history.size() % 5 != 0) {
      throw checkpoint_error("checkpoint: solver.history has " + std::to_string(history.size()) +
                             " values, not a multiple of 5");
    }
    for (std::size_t i = 0; i < history.size(); i += 5) {
      report.history.push_back({static_cast<std::uint64_t>(history[i]), history[i + 1],
                                static_cast<std::uint64_t>(history[i + 2]),
                                static_cast<std::uint64_t>(history[i + 3]), history[i + 4]});
    }
    return step;
  }
};

template <class C, class E, class O, class S>
solver(C, E, O, S) -> solver<C, E, O, S>;
template <class C, class E, class O>
solver(C, E, O) -> solver<C, E, O>;
template <class C, class E>
solver(C, E) -> solver<C, E>;
template <class C>
solver(C) -> solver<C>;

}  // namespace ecopt
