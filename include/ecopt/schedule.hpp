#pragma once
// The Schedule concept: *when* workers talk, as a policy of the solver
// (solver<C, E, O, S>). The compressor and compensator say what a message is,
// the optimizer how a direction moves x; the schedule says what each step
// does with this worker's gradient -- exchange it at once (synchronous), step
// locally and exchange the accumulated progress every H steps (local SGD,
// SlowMo), ... (algorithms/).
//
//   static constexpr std::string_view name
//   void validate() const                           -- optional, throws invalid_argument
//   state make_state<T>(std::size_t dim, const C& compressor) const
//        -- buffers, made once per run (C: the run's compressor, for schedules
//           that encode messages of their own)
//   void begin(std::span<const T> x, state&) const  -- after rank 0's x is broadcast
//   void step(schedule_round<...>& r, state&) const -- one step; r.x() is this
//        worker's model, r.gradient() its stochastic gradient there
//   void finish(schedule_round<...>& r, state&) const
//        -- after the last step (or an early stop): leave x equal on all ranks
//   std::span<const T> evaluation_point(std::span<const T> x, const state&) const
//        -- where the run's loss is evaluated (the last averaged model for
//           schedules whose workers drift apart between exchanges)
//   static constexpr bool evaluates_average = true      -- optional: the loss
//        is evaluated at the exact mean over workers of evaluation_point
//        (gossip, Overlap-Local-SGD: their workers never hold the same model);
//        its allreduce, like the evaluation, is not charged to the run
//
// schedule_round is what the solver lends a schedule for one step: the
// exchange (compressed mean, bits charged), an uncompressed mean (bits
// charged), the optimizer with its state. A schedule never owns a transport,
// a problem or the optimizer: the same policy value runs on any of them.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>

#include <Eigen/Core>

#include "ecopt/background_channel.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/gradient_exchange.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/run_report.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

template <class S, class T, class C = no_compression>
concept MakesScheduleState = requires(const S& s, std::size_t dim, const C& compressor) {
  s.template make_state<T>(dim, compressor);
};

template <class S, class T, class C = no_compression>
requires MakesScheduleState<S, T, C>
using schedule_state_t = decltype(std::declval<const S&>().template make_state<T>(
    std::size_t{}, std::declval<const C&>()));

template <class S, class T = float, class C = no_compression>
concept Schedule = std::floating_point<T> && std::copy_constructible<S> &&
    MakesScheduleState<S, T, C> &&
    requires(const S& s, schedule_state_t<S, T, C>& state, std::span<const T> x) {
  { S::name } -> std::convertible_to<std::string_view>;
  s.begin(x, state);
  { s.evaluation_point(x, std::as_const(state)) } -> std::convertible_to<std::span<const T>>;
};

/// Whether the run's loss is evaluated at the mean of the workers' models.
template <class S>
inline constexpr bool evaluates_average = [] {
  if constexpr (requires { S::evaluates_average; }) {
    return static_cast<bool>(S::evaluates_average);
  } else {
    return false;
  }
}();

/// What the solver lends a schedule for one step (see the header comment).
/// Made by solver::run; every member acts on this rank and, where it
/// communicates, must be called by all ranks in the same order.
template <class T, Transport Tr, Problem P, class Exchange, Optimizer<T> O>
class schedule_round {
 public:
  using scalar_type = T;
  using optimizer_type = O;
  using compressor_type = typename Exchange::compressor_type;
  using compensator_type = typename Exchange::compensator_type;

  using channel_type = background_channel<Tr, exchange_bits>;

  schedule_round(Tr& transport, P& problem, Exchange& exchange, const O& optimizer,
                 optimizer_state_t<O, T>& optimizer_state, collective_workspace& workspace,
                 channel_type& channel, run_report& report, std::uint64_t seed,
                 std::uint64_t total_steps)
      : transport_(transport),
        problem_(problem),
        exchange_(exchange),
        optimizer_(optimizer),
        optimizer_state_(optimizer_state),
        workspace_(workspace),
        channel_(channel),
        report_(report),
        seed_(seed),
        total_steps_(total_steps) {}

  /// Points the round at step `step`: this worker's model and its gradient there.
  void at(std::uint64_t step, std::span<T> x, std::span<const T> gradient) {
    step_ = step;
    x_ = x;
    gradient_ = gradient;
  }

  [[nodiscard]] std::uint64_t step() const noexcept { return step_; }
  [[nodiscard]] std::uint64_t total_steps() const noexcept { return total_steps_; }
  [[nodiscard]] std::span<T> x() const noexcept { return x_; }
  [[nodiscard]] std::span<const T> gradient() const noexcept { return gradient_; }
  [[nodiscard]] int rank() const { return transport_.rank(); }
  [[nodiscard]] int world() const { return transport_.size(); }
  [[nodiscard]] Tr& transport() noexcept { return transport_; }
  [[nodiscard]] const O& optimizer() const noexcept { return optimizer_; }
  [[nodiscard]] optimizer_state_t<O, T>& optimizer_state() noexcept { return optimizer_state_; }
  /// The optimizer's step size at a step.
  [[nodiscard]] double learning_rate(std::uint64_t step) const {
    return optimizer_.learning_rate(step);
  }
  /// The round_context the optimizer sees at this step.
  [[nodiscard]] round_context context() const {
    return round_context{.seed = seed_,
                         .round = step_,
                         .rank = transport_.rank(),
                         .world = transport_.size(),
                         .lr = optimizer_.learning_rate(step_)};
  }

  /// The compressed mean over workers of `message` through the run's exchange
  /// (compensator, compressor, collective); `round` numbers the exchanges,
  /// `lr` is the step size the compensator may scale its memory by.
  void exchange(std::span<const T> message, std::span<T> mean, std::uint64_t round, double lr) {
    const exchange_bits bits = exchange_.exchange(transport_, message, mean,
                                                  round_context{.seed = seed_,
                                                                .round = round,
                                                                .rank = transport_.rank(),
                                                                .world = transport_.size(),
                                                                .lr = lr});
    report_.payload_bits += bits.payload;
    report_.wire_bits += bits.wire;
  }

  /// Starts the compressed mean of `message` into `mean` on the run's
  /// background channel (background_channel.hpp): the caller computes while it
  /// travels, and must leave the transport, `message` and `mean` alone until
  /// settle_background(). Its bits are charged when it is settled.
  void exchange_in_background(std::span<const T> message, std::span<T> mean, std::uint64_t round,
                              double lr) {
    const round_context ctx{.seed = seed_,
                            .round = round,
                            .rank = transport_.rank(),
                            .world = transport_.size(),
                            .lr = lr};
    struct job {
      Exchange* exchange;
      Tr* transport;
      std::span<const T> message;
      std::span<T> mean;
      round_context ctx;
      exchange_bits operator()() const {
        return exchange->exchange(*transport, message, mean, ctx);
      }
    };
    channel_.start(job{&exchange_, &transport_, message, mean, ctx});
  }

  /// True while a background exchange travels.
  [[nodiscard]] bool background_in_flight() const noexcept { return channel_.in_flight(); }

  /// Waits for the background exchange, if one travels, and charges its bits.
  /// The solver calls it before it uses the transport itself (evaluations).
  void settle_background() {
    if (!channel_.in_flight()) return;
    const exchange_bits bits = channel_.wait();
    charge(bits.payload, bits.wire);
  }

  /// Hessian-aided compensators read the problem at the point of the gradient
  /// about to be exchanged (ecopt::gradient_exchange::observe_curvature).
  void observe_curvature(std::span<const T> point, std::uint64_t round, double lr) {
    const Eigen::Map<const vector_t<T>> at(point.data(), static_cast<Eigen::Index>(point.size()));
    exchange_.observe_curvature(problem_, at,
                                round_context{.seed = seed_,
                                              .round = round,
                                              .rank = transport_.rank(),
                                              .world = transport_.size(),
                                              .lr = lr});
  }

  /// Replaces `values` by their exact mean over workers (dense, uncompressed);
  /// its bits are charged to the run like the exchange's.
  void average(std::span<T> values) {
    const std::uint64_t sent_before = transport_.bytes_sent();
    allreduce_sum(transport_, values, workspace_);
    const T inv_world = T(1) / static_cast<T>(transport_.size());
    for (T& v : values) v *= inv_world;
    report_.payload_bits += 8 * sizeof(T) * values.size();
    report_.wire_bits += 8 * (transport_.bytes_sent() - sent_before);
  }

  /// The run's compressor, for schedules that encode messages of their own
  /// (gossip), and the run's seed.
  [[nodiscard]] const auto& compressor() const noexcept { return exchange_.compressor(); }
  [[nodiscard]] std::uint64_t seed() const noexcept { return seed_; }

  /// Charges bits a schedule sent itself (point-to-point messages).
  void charge(std::uint64_t payload_bits, std::uint64_t wire_bits) noexcept {
    report_.payload_bits += payload_bits;
    report_.wire_bits += wire_bits;
  }

  /// x <- optimizer step along `direction`, with the optimizer's state.
  void apply(std::span<T> x, std::span<const T> direction) {
    optimizer_.apply(x, direction, optimizer_state_, context());
  }

  /// The optimizer's step before its size (SplitsStepSize).
  void update_direction(std::span<const T> direction,
                        std::span<T> update) requires SplitsStepSize<O, T> {
    optimizer_.update_direction(direction, update, optimizer_state_, context());
  }

 private:
  Tr& transport_;
  P& problem_;
  Exchange& exchange_;
  const O& optimizer_;
  optimizer_state_t<O, T>& optimizer_state_;
  collective_workspace& workspace_;
  channel_type& channel_;
  run_report& report_;
  std::uint64_t seed_;
  std::uint64_t total_steps_;
  std::uint64_t step_ = 0;
  std::span<T> x_;
  std::span<const T> gradient_;
};

}  // namespace ecopt
