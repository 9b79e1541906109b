#pragma once
// server_round: what parameter_server::run lends a server schedule
// (backup_workers, async_sgd, incremental_aggregated) on the server rank. The
// schedule decides which updates count and how they combine; the round does
// the rest the same way for all of them: it sends models, takes the workers'
// updates in arrival order (modelled order on a simulated_transport), decodes
// payloads, applies the optimizer, counts versions, staleness and drops, and
// evaluates the loss.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ecopt/algorithms/detail/arrival_queue.hpp"
#include "ecopt/algorithms/detail/server_messages.hpp"
#include "ecopt/algorithms/detail/server_worker.hpp"
#include "ecopt/bit_reader.hpp"
#include "ecopt/collectives/tags.hpp"
#include "ecopt/compensator.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/error.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

/// What the server counts besides a run_report's figures.
struct server_counts {
  std::uint64_t received = 0;        ///< updates taken
  std::uint64_t applied = 0;         ///< updates that entered a model step
  std::uint64_t dropped_stale = 0;   ///< older than the staleness bound
  std::uint64_t dropped_late = 0;    ///< late for their round (backup workers)
  std::uint64_t dropped_at_end = 0;  ///< still travelling when the run ended
  /// staleness[s]: updates taken s model versions after the one they were
  /// computed at (those drained at the end are not counted).
  std::vector<std::uint64_t> staleness;
  std::uint64_t payload_bits_received = 0;
  /// Ranks of the workers lost during the run (PeerLossTransport), in the
  /// order they were found; the run went on without them.
  std::vector<int> lost_workers;
};

namespace detail {

template <class T, RecvAnyTransport Tr, class C, class E, class O, class Evaluate>
class server_round {
 public:
  using scalar_type = T;
  /// Whether the compensator reconstructs the direction (EF21).
  static constexpr bool reconstructs = ReconstructsDirection<E, T>;

  using update = taken_update;

  server_round(Tr& transport, std::span<T> x, const C& compressor, const E& compensator,
               const O& optimizer, std::uint64_t seed, std::uint64_t steps, Evaluate evaluate,
               server_counts& counts)
      : transport_(transport),
        x_(x),
        compressor_(compressor),
        compensator_(compensator),
        optimizer_(optimizer),
        seed_(seed),
        steps_(steps),
        evaluate_(std::forward<Evaluate>(evaluate)),
        counts_(counts),
        queue_(transport, collective_tag_for(collective_tag::server_update), transport.size() - 1,
               1),
        compressor_state_(compressor.template make_state<T>(x.size())),
        compensator_state_(compensator.template make_state<T>(x.size())),
        optimizer_state_(optimizer.template make_state<T>(x.size())),
        direction_(x.size()),
        reconstructed_(ReconstructsDirection<E, T> ? x.size() : 0),
        summed_(summable_payload_floats<T>(compressor, x.size())),
        max_bits_(std::max<std::uint64_t>(compressor.max_bits(x.size()),
                                          32 * static_cast<std::uint64_t>(summed_.size()))),
        stopped_workers_(static_cast<std::size_t>(transport.size() - 1), 0) {}

  [[nodiscard]] int workers() const noexcept { return queue_.workers(); }
  [[nodiscard]] std::size_t dim() const noexcept { return x_.size(); }
  [[nodiscard]] std::uint64_t version() const noexcept { return version_; }
  [[nodiscard]] std::uint64_t total_steps() const noexcept { return steps_; }
  [[nodiscard]] std::span<const T> x() const noexcept { return x_; }
  /// True once the run has its model steps (or an observer stopped it).
  [[nodiscard]] bool finished() const noexcept { return version_ >= steps_ || stopped_; }
  [[nodiscard]] bool owes(int worker) const { return queue_.owes(worker); }
  [[nodiscard]] server_counts& counts() noexcept { return counts_; }

  /// Sends the current model to `worker`, telling it what became of its last
  /// update; the worker answers with its next one. Once the run is finished
  /// the model goes with a stop instead, and the worker leaves.
  void publish(int worker, update_fate fate) {
    if (queue_.is_lost(worker)) return;
    if (finished()) {
      send_stop(worker, fate);
      return;
    }
    write_server_message(out_, server_message::model, fate, version_, std::span<const T>(x_));
    if (send_to(worker, collective_tag_for(collective_tag::server_model))) queue_.expect(worker);
  }

  /// The next update from a worker that owes one (see arrival_queue.hpp).
  update take() {
    const update u = take_message();
    if (counts_.staleness.size() <= u.staleness) counts_.staleness.resize(u.staleness + 1, 0);
    ++counts_.staleness[u.staleness];
    return u;
  }

 private:
  update take_message() {
    const auto got = queue_.next();
    const worker_message_view m =
        read_worker_message(*got.bytes, got.worker + 1, version_, max_bits_);
    if (m.kind != worker_message::update) {
      throw transport_error("parameter server: rank " + std::to_string(got.worker + 1) +
                            " left before the server stopped it");
    }
    ++counts_.received;
    counts_.payload_bits_received += m.second;
    return {got.worker, m.first, version_ - m.first, m.payload};
  }

 public:
  /// into += scale * decode(u's payload), with the context the worker encoded in.
  void decode_add(const update& u, std::span<T> into, T scale) {
    try {
      if (summed_.empty()) {
        bit_reader reader(u.payload);
        compressor_.decode_add(reader, compressor_state_, into, scale, sender(u));
      } else if constexpr (SummableCompressor<C, T>) {
        compressor_.decode_summed(summable_floats(u), compressor_state_, into, scale, sender(u));
      }
    } catch (const decode_error& e) {
      throw payload_error(u, e);
    }
  }

  /// sum = the sum of the updates updates[w] with taken[w] set, added in
  /// worker order as the synchronous exchange adds ranks' payloads (summable
  /// ones in float, then decoded once, as after an allreduce).
  void sum_in_worker_order(const std::vector<update>& updates, const std::vector<char>& taken,
                           std::span<T> sum) {
    std::fill(sum.begin(), sum.end(), T(0));
    if (summed_.empty()) {
      for (std::size_t w = 0; w < updates.size(); ++w) {
        if (taken[w] != 0) decode_add(updates[w], sum, T(1));
      }
      return;
    }
    if constexpr (SummableCompressor<C, T>) {
      std::fill(summed_.begin(), summed_.end(), 0.0f);
      const update* any = nullptr;
      for (std::size_t w = 0; w < updates.size(); ++w) {
        if (taken[w] == 0) continue;
        any = &updates[w];
        const std::span<const float> v = summable_floats(updates[w]);
        for (std::size_t j = 0; j < summed_.size(); ++j) summed_[j] += v[j];
      }
      if (any == nullptr) return;
      try {
        compressor_.decode_summed(std::span<const float>(summed_), compressor_state_, sum, T(1),
                                  sender(*any));
      } catch (const decode_error& e) {
        throw payload_error(*any, e);
      }
    }
  }

  /// One model step from `sum`, a sum of `count` decoded updates of which
  /// `fresh` were taken since the last step, with the step scaled by
  /// `step_scale` (delay-aware rules): the direction is sum / count, or, for a compensator that
  /// reconstructs (EF21), what it reconstructs from sum / workers() -- each worker's estimate
  /// changes only by what it sent, so the mean of all workers' estimates moves by the sum over
  /// workers(), whoever was counted.
  void step(std::span<const T> sum, int count, int fresh, T step_scale = T(1)) {
    const std::size_t d = dim();
    if constexpr (ReconstructsDirection<E, T>) {
      const T inv = T(1) / static_cast<T>(workers());
      for (std::size_t j = 0; j < d; ++j) direction_[j] = sum[j] * inv;
      compensator_.reconstruct(std::span<const T>(direction_), compensator_state_,
                               std::span<T>(reconstructed_), context());
      std::copy(reconstructed_.begin(), reconstructed_.end(), direction_.begin());
    } else {
      const T inv = T(1) / static_cast<T>(count);
      for (std::size_t j = 0; j < d; ++j) direction_[j] = sum[j] * inv;
    }
    if (step_scale != T(1)) {
      for (T& v : direction_) v *= step_scale;
    }
    optimizer_.apply(x_, std::span<const T>(direction_), optimizer_state_, context());
    counts_.applied += static_cast<std::uint64_t>(fresh);
    ++version_;
    if (evaluate_(version_, false)) stopped_ = true;
  }

  /// Counts a dropped update and sends its worker the current model.
  void drop(const update& u, bool stale) {
    ++(stale ? counts_.dropped_stale : counts_.dropped_late);
    publish(u.worker, update_fate::dropped);
  }

  /// Ends the run for every worker: drains what is still travelling and sends
  /// each the final model with a stop. Returns the workers' own bit counts.
  void retire(std::vector<std::uint64_t>& payload_bits, std::vector<std::uint64_t>& wire_bits) {
    for (int w = 0; w < workers(); ++w) {
      if (!queue_.owes(w) && stopped_workers_[static_cast<std::size_t>(w)] == 0) {
        send_stop(w, update_fate::none);
      }
    }
    while (queue_.owing() > 0) {
      std::optional<update> u;
      try {
        u = take_message();
      } catch (const transport_error&) {
        // The last owing workers were lost: nothing is left to drain.
        if (queue_.owing() > 0 || queue_.lost().empty()) throw;
        break;
      }
      ++counts_.dropped_at_end;
      send_stop(u->worker, update_fate::dropped);
    }
    payload_bits.assign(static_cast<std::size_t>(workers()) + 1, 0);
    wire_bits.assign(static_cast<std::size_t>(workers()) + 1, 0);
    for (int w = 0; w < workers(); ++w) {
      if (queue_.is_lost(w)) continue;
      try {
        transport_.recv(w + 1, collective_tag_for(collective_tag::server_leaving), in_);
      } catch (const transport_error&) {
        if (!lost_now(w)) throw;
        continue;
      }
      const worker_message_view m = read_worker_message(in_, w + 1, version_, max_bits_);
      if (m.kind != worker_message::leaving) {
        throw transport_error("parameter server: rank " + std::to_string(w + 1) +
                              " sent an update after it was stopped");
      }
      payload_bits[static_cast<std::size_t>(w) + 1] = m.first;
      wire_bits[static_cast<std::size_t>(w) + 1] = m.second;
    }
    for (const int w : queue_.lost()) counts_.lost_workers.push_back(w + 1);
  }

 private:
  [[nodiscard]] round_context context() const {
    return round_context{.seed = seed_,
                         .round = version_,
                         .rank = 0,
                         .world = workers(),
                         .lr = optimizer_.learning_rate(version_)};
  }

  [[nodiscard]] round_context sender(const update& u) const {
    return round_context{.seed = seed_,
                         .round = u.version,
                         .rank = u.worker,
                         .world = workers(),
                         .lr = optimizer_.learning_rate(u.version)};
  }

  // A summable update's floats (their count was checked against the
  // declared bits when it was taken).
  [[nodiscard]] std::span<const float> summable_floats(const update& u) {
    if (u.payload.size() != summed_.size() * sizeof(float)) {
      throw transport_error("parameter server: rank " + std::to_string(u.worker + 1) + " sent " +
                            std::to_string(u.payload.size()) + " bytes, a summable update has " +
                            std::to_string(summed_.size() * sizeof(float)));
    }
    scratch_.resize(summed_.size());
    std::memcpy(scratch_.data(), u.payload.data(), u.payload.size());
    return std::span<const float>(scratch_);
  }

  [[nodiscard]] decode_error payload_error(const update& u, const decode_error& e) const {
    return decode_error("parameter server, version " + std::to_string(version_) +
                        ": payload from rank " + std::to_string(u.worker + 1) + ": " + e.what());
  }

  void send_stop(int worker, update_fate fate) {
    stopped_workers_[static_cast<std::size_t>(worker)] = 1;
    if (queue_.is_lost(worker)) return;
    write_server_message(out_, server_message::stop, fate, version_, std::span<const T>(x_));
    (void)send_to(worker, collective_tag_for(collective_tag::server_model));
  }

  // True when the transport reports the worker lost (it is then forgotten).
  bool lost_now(int worker) {
    if constexpr (PeerLossTransport<Tr>) {
      if (transport_.peer_lost(worker + 1)) {
        queue_.lose(worker);
        return true;
      }
    }
    return false;
  }

  // Sends out_ to a worker; false (and the worker forgotten) if it is lost.
  bool send_to(int worker, message_tag tag) {
    if (lost_now(worker)) return false;
    try {
      transport_.send(worker + 1, tag, out_);
    } catch (const transport_error&) {
      if (!lost_now(worker)) throw;
      return false;
    }
    return true;
  }

  Tr& transport_;
  std::span<T> x_;
  const C& compressor_;
  const E& compensator_;
  const O& optimizer_;
  std::uint64_t seed_;
  std::uint64_t steps_;
  Evaluate evaluate_;
  server_counts& counts_;
  arrival_queue<Tr> queue_;
  compressor_state_t<C, T> compressor_state_;
  compensator_state_t<E, T> compensator_state_;
  optimizer_state_t<O, T> optimizer_state_;
  std::vector<T> direction_, reconstructed_;
  std::vector<float> summed_;   // sum of summable updates, in float as an allreduce sums
  std::vector<float> scratch_;  // one summable update, aligned
  std::uint64_t max_bits_;
  std::vector<char> stopped_workers_;
  std::vector<std::byte> out_, in_;
  std::uint64_t version_ = 0;
  bool stopped_ = false;
};

}  // namespace detail
}  // namespace ecopt
