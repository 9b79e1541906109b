#pragma once
// solver<Compressor, Compensator, Optimizer>: one synchronous data-parallel
// round per step, composed at compile time.
//
//   problem --gradient--> gradient_exchange (compensate, compress, collective,
//     decode, mean: gradient_exchange.hpp) --direction--> optimizer.apply --> x
//
// The solver is a loop of exchange calls around the problem and the optimizer,
// the same object a training loop of the user's own calls. Every rank ends each
// round with the same direction and so the same x: the model itself is never
// sent (rank 0's x is broadcast once at the start).
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ecopt/collectives/allgather.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/broadcast.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/compensator.hpp"
#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/gradient_exchange.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/run_report.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

namespace detail {

template <class Observer>
void notify_step(Observer& o, const progress& p) {
  if constexpr (requires { o.on_step(p); }) o.on_step(p);
}

/// Returns true when the observer asks to stop.
template <class Observer>
bool notify_eval(Observer& o, const progress& p) {
  if constexpr (requires {
                  { o.on_eval(p) } -> std::same_as<observer_action>;
                }) {
    return o.on_eval(p) == observer_action::stop;
  } else if constexpr (requires { o.on_eval(p); }) {
    o.on_eval(p);
  }
  return false;
}
}  // namespace detail

template <Compressor C = no_compression, Compensator E = no_compensation, Optimizer O = sgd>
struct solver {
  C compressor{};
  E compensator{};
  O optimizer{};

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
    validate_policy(compressor);
    validate_policy(compensator);
    validate_policy(optimizer);

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
    vector_t<T> gradient(d), mean(d);
    collective_workspace workspace;
    const T inv_world = T(1) / static_cast<T>(world);

    auto as_span = [](vector_t<T>& v) { return std::span<T>(v.data(), v.size()); };
    auto as_const_span = [](const vector_t<T>& v) {
      return std::span<const T>(v.data(), v.size());
    };

    // All ranks start from rank 0's iterate.
    broadcast(transport, std::span<T>(x.data(), d), 0, workspace);

    run_report report;
    progress info{.step = 0, .total_steps = options.steps, .rank = rank, .world = world};

    // Evaluates the global loss and agrees on early stopping; not charged to the bits.
    auto evaluate_and_agree = [&](std::uint64_t step) -> bool {
      const double modelled_before = modelled();
      double loss = problem.loss(x);
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

    bool stopped = evaluate_and_agree(0);
    std::uint64_t step = 0;
    for (; step < options.steps && !stopped; ++step) {
      const round_context ctx{.seed = options.seed,
                              .round = step,
                              .rank = rank,
                              .world = world,
                              .lr = optimizer.learning_rate(step)};
      counter_rng sampler = counter_rng::stream(options.seed, stream_purpose::sampling,
                                                static_cast<std::uint64_t>(rank), step);
      if constexpr (ProvidesGradient<O, P>) {
        // The optimizer chooses the point and the estimator (optimizer.hpp); its
        // uncompressed means are charged to the bits like the exchange.
        const std::uint64_t sent_before_gradient = transport.bytes_sent();
        auto average = [&](std::span<T> values) {
          allreduce_sum(transport, values, workspace);
          for (T& v : values) v *= inv_world;
          report.payload_bits += 8 * sizeof(T) * values.size();
        };
        optimizer.gradient(problem, x, gradient, optimizer_state, sampler, ctx,
                           uncompressed_mean<T>(average));
        report.wire_bits += 8 * (transport.bytes_sent() - sent_before_gradient);
      } else {
        problem.stochastic_gradient(x, gradient, sampler);
      }
      if (options.check_finite) detail::require_finite(as_const_span(gradient), rank, step);

      exchange.observe_curvature(problem, x, ctx);
      const exchange_bits bits =
          exchange.exchange(transport, as_const_span(gradient), as_span(mean), ctx);
      report.payload_bits += bits.payload;
      report.wire_bits += bits.wire;
      optimizer.apply(std::span<T>(x.data(), d), as_const_span(mean), optimizer_state, ctx);

      info.step = step + 1;
      info.payload_bits = report.payload_bits;
      info.wire_bits = report.wire_bits;
      info.elapsed_seconds = elapsed();
      info.modelled_seconds = modelled();
      (detail::notify_step(observers, info), ...);
      const bool last = step + 1 == options.steps;
      if (last || (options.eval_every > 0 && (step + 1) % options.eval_every == 0)) {
        stopped = evaluate_and_agree(step + 1) && !last;
      }
    }
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
};

template <class C, class E, class O>
solver(C, E, O) -> solver<C, E, O>;
template <class C, class E>
solver(C, E) -> solver<C, E>;
template <class C>
solver(C) -> solver<C>;

}  // namespace ecopt
