#pragma once
// Stochastic Gradient Push (Assran, Loizou, Ballas, Rabbat 2019,
// arXiv:1811.10792): decentralised SGD by push-sum gossip, no allreduce. Each
// worker keeps a numerator x_i and a weight w_i and computes its gradient at
// the de-biased model z_i = x_i / w_i; every step
//
//   x_i <- optimizer step on x_i with grad f_i(z_i)
//   push half of (x_i, w_i) to one peer, keep the other half, add what arrives
//   z_i <- x_i / w_i
//
// over the time-varying directed exponential graph: at step t worker i sends
// to i + 2^k and receives from i - 2^k (mod n), k = t mod K, K = floor(log2(n-1)) + 1,
// so every worker talks to one peer per step and the graph mixes in K steps.
//
// Messages may be compressed by the solver's compressor. Push-sum must not
// lose mass, so a compressed push does not send half the model but moves the
// sender's and receiver's copy of a per-link replica s (as CHOCO-SGD does,
// Koloskova, Stich, Jaggi 2019, arXiv:1902.00340): the message is
// C(x_i / 2 - s), both ends add its decoding to s, the sender keeps x_i - s
// and the receiver adds s. The part C left out stays in x_i / 2 - s and goes
// with the next push on that link: the error feedback of the messages, built
// in (the solver's compensator must be no_compensation). Uncompressed pushes
// carry x_i / 2 exactly, in the model's own precision.
//
// With slowmo_period = tau > 0 this is SlowMo over the SGP base (Wang et al.
// 2019, arXiv:1910.00643): every tau steps an exact average x_avg of the z_i
// (dense allreduce), then the slow momentum step from the last such point x_0,
// and every worker restarts from the new x_0 with weight 1. At the end of a
// run the workers' models are averaged exactly once, so every rank returns the
// same x. One worker alone is plain SGD, bit for bit (a test).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ecopt/algorithms/detail/local_steps.hpp"
#include "ecopt/algorithms/detail/slow_momentum.hpp"
#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/collectives/tags.hpp"
#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/detail/all_finite.hpp"
#include "ecopt/error.hpp"
#include "ecopt/optimizers/detail/step_size.hpp"
#include "ecopt/schedule.hpp"

namespace ecopt {

namespace detail {

/// The directed exponential graph of SGP: the hop of step t among n workers.
[[nodiscard]] inline int exponential_hop(std::uint64_t step, int world) {
  if (world < 2) return 0;
  const int hops = std::bit_width(static_cast<unsigned>(world - 1));  // floor(log2(n-1)) + 1
  return 1 << static_cast<int>(step % static_cast<std::uint64_t>(hops));
}

}  // namespace detail

struct stochastic_gradient_push {
  static constexpr std::string_view name = "stochastic_gradient_push";
  /// The workers hold different models: the run's loss is evaluated at their mean.
  static constexpr bool evaluates_average = true;

  std::uint64_t slowmo_period =
      0;                     ///< tau: exact average + slow momentum every tau steps (0: never)
  double slow_lr = 1;        ///< alpha, with slowmo_period
  double slow_momentum = 0;  ///< beta, with slowmo_period
  local_momentum momentum_buffers = local_momentum::keep;  ///< at the exact averages

  void validate() const {
    detail::require_positive(name, "slow_lr", slow_lr);
    detail::require_in_range(name, "slow_momentum", slow_momentum, 0, 1);
  }

  template <class T, class C>
  struct state {
    std::vector<T> numerator;  ///< x_i
    T weight = 1;              ///< w_i
    std::vector<T> anchor;     ///< x_0 of SlowMo
    std::vector<T> slow_velocity, scratch;
    /// Per hop of the graph (compressed pushes only): the replica of what this
    /// worker has pushed to its peer at that hop and of what it has received
    /// from the peer at that hop, with the compressor's state of each end.
    std::vector<std::vector<T>> sent, received;
    std::vector<compressor_state_t<C, T>> sender_states, receiver_states;
    std::vector<std::byte> payload, outgoing, incoming;
    std::uint64_t steps_since_average = 0;
    std::optional<C> compressor;  ///< the run's, to make the replicas' states

    /// Makes the replicas of `hops` hops (zero, with fresh compressor states):
    /// at the first compressed push, or when a checkpoint says there were some.
    void make_replicas(std::size_t hops) {
      const std::size_t d = numerator.size();
      sent.assign(hops, std::vector<T>(d, T(0)));
      received = sent;
      sender_states.clear();
      receiver_states.clear();
      for (std::size_t k = 0; k < hops; ++k) {
        sender_states.push_back(compressor->template make_state<T>(d));
        receiver_states.push_back(compressor->template make_state<T>(d));
      }
      payload.reserve(static_cast<std::size_t>((compressor->max_bits(d) + 7) / 8 + 8));
      outgoing.reserve(sizeof(double) + payload.capacity());
    }

    /// What a checkpoint carries: the push-sum pair, SlowMo's anchor and
    /// velocity, and per hop the replicas and their compressors' states.
    template <class Archive>
    void persist(Archive& a) {
      a("numerator", numerator);
      a("weight", weight);
      a("anchor", anchor);
      a("slow_velocity", slow_velocity);
      a("steps_since_average", steps_since_average);
      auto hops = static_cast<std::uint64_t>(sent.size());
      a("hops", hops);  // loading: the replicas the checkpoint has
      if (hops != sent.size()) make_replicas(static_cast<std::size_t>(hops));
      for (std::size_t hop = 0; hop < sent.size(); ++hop) {
        const std::string at = "hop" + std::to_string(hop) + ".";
        a(at + "sent", sent[hop]);
        a(at + "received", received[hop]);
        a.nest(at + "sender", sender_states[hop]);
        a.nest(at + "receiver", receiver_states[hop]);
      }
    }
  };

  template <class T, class C>
  [[nodiscard]] state<T, C> make_state(std::size_t dim, const C& compressor) const {
    state<T, C> s;
    s.compressor = compressor;
    s.numerator.resize(dim);
    s.anchor.resize(dim);
    s.scratch.resize(dim);
    if (slowmo_period > 0) s.slow_velocity.resize(dim);
    return s;
  }

  template <class T, class C>
  void begin(std::span<const T> x, state<T, C>& s) const {
    std::copy(x.begin(), x.end(), s.numerator.begin());
    std::copy(x.begin(), x.end(), s.anchor.begin());
    s.weight = 1;
  }

  template <class T, class C, class Round>
  void step(Round& r, state<T, C>& s) const {
    static_assert(std::is_same_v<typename Round::compensator_type, no_compensation>,
                  "stochastic_gradient_push: compressed pushes carry their own error feedback "
                  "(a replica per link); run it with no_compensation");
    r.apply(std::span<T>(s.numerator), r.gradient());
    ++s.steps_since_average;
    if (r.world() > 1) {
      if constexpr (std::is_same_v<C, no_compression>) {
        push_exact(r, s);
      } else {
        push_compressed(r, s);
      }
    }
    const std::span<T> x = r.x();
    if (slowmo_period > 0 && (r.step() + 1) % slowmo_period == 0) {
      average(r, s);
    } else if (s.weight == T(1)) {
      std::copy(s.numerator.begin(), s.numerator.end(), x.begin());
    } else {
      for (std::size_t j = 0; j < x.size(); ++j) x[j] = s.numerator[j] / s.weight;
    }
  }

  template <class T, class C, class Round>
  void finish(Round& r, state<T, C>& s) const {
    if (r.world() > 1 && s.steps_since_average > 0) {
      r.average(r.x());
      std::copy(r.x().begin(), r.x().end(), s.anchor.begin());
    }
  }

  /// This worker's de-biased model; the solver evaluates the mean of them
  /// (evaluates_average).
  template <class T, class C>
  [[nodiscard]] std::span<const T> evaluation_point(std::span<const T> x,
                                                    const state<T, C>&) const {
    return x;
  }

 private:
  static constexpr message_tag tag = collective_tag_for<std::byte>(collective_tag::gossip);

  template <class T, class C, class Round>
  static std::uint64_t send_and_receive(Round& r, state<T, C>& s, int hop) {
    const int n = r.world();
    const int to = (r.rank() + hop) % n;
    const int from = (r.rank() - hop + n) % n;
    const std::uint64_t sent_before = r.transport().bytes_sent();
    r.transport().send(to, tag, std::span<const std::byte>(s.outgoing));
    r.transport().recv(from, tag, s.incoming);
    return 8 * (r.transport().bytes_sent() - sent_before);
  }

  template <class T>
  static void write_weight(std::vector<std::byte>& out, T half) {
    const double w = static_cast<double>(half);
    std::memcpy(out.data(), &w, sizeof w);
  }

  template <class T>
  static T read_weight(const std::vector<std::byte>& in, int from, std::uint64_t step) {
    double w = 0;
    if (in.size() >= sizeof w) std::memcpy(&w, in.data(), sizeof w);
    if (in.size() < sizeof w || !(w > 0) || !std::isfinite(w)) {
      throw decode_error("stochastic_gradient_push: step " + std::to_string(step) +
                         ": the push from rank " + std::to_string(from) +
                         " has no valid push-sum weight");
    }
    return static_cast<T>(w);
  }

  /// Half of (x, w) to the peer, exactly: 64 + 8 sizeof(T) d bits.
  template <class T, class C, class Round>
  static void push_exact(Round& r, state<T, C>& s) {
    const int hop = detail::exponential_hop(r.step(), r.world());
    const int from = (r.rank() - hop + r.world()) % r.world();
    const std::size_t d = s.numerator.size();
    const T half_weight = s.weight / T(2);
    for (T& v : s.numerator) v /= T(2);
    s.outgoing.resize(sizeof(double) + d * sizeof(T));
    write_weight(s.outgoing, half_weight);
    std::memcpy(s.outgoing.data() + sizeof(double), s.numerator.data(), d * sizeof(T));
    const std::uint64_t wire = send_and_receive(r, s, hop);
    if (s.incoming.size() != s.outgoing.size()) {
      throw decode_error("stochastic_gradient_push: step " + std::to_string(r.step()) +
                         ": the push from rank " + std::to_string(from) + " has " +
                         std::to_string(s.incoming.size()) + " bytes, expected " +
                         std::to_string(s.outgoing.size()));
    }
    const T their_weight = read_weight<T>(s.incoming, from, r.step());
    const std::byte* values = s.incoming.data() + sizeof(double);
    for (std::size_t j = 0; j < d; ++j) {
      T v;
      std::memcpy(&v, values + j * sizeof(T), sizeof(T));
      s.numerator[j] += v;
    }
    require_finite_numerator(s, from, r.step());
    s.weight = half_weight + their_weight;
    r.charge(8 * s.outgoing.size(), wire);
  }

  /// A compressed push on the hop's replica (see the header comment).
  template <class T, class C, class Round>
  static void push_compressed(Round& r, state<T, C>& s) {
    const int n = r.world();
    const int hop = detail::exponential_hop(r.step(), n);
    const auto slot = static_cast<std::size_t>(std::countr_zero(static_cast<unsigned>(hop)));
    const int from = (r.rank() - hop + n) % n;
    const std::size_t d = s.numerator.size();
    const C& compressor = r.compressor();
    if (s.sent.empty()) {
      s.make_replicas(static_cast<std::size_t>(std::bit_width(static_cast<unsigned>(n - 1))));
    }
    std::vector<T>& replica = s.sent[slot];
    for (std::size_t j = 0; j < d; ++j) s.scratch[j] = s.numerator[j] / T(2) - replica[j];
    const round_context ctx{
        .seed = r.seed(), .round = r.step(), .rank = r.rank(), .world = n, .lr = 0};
    bit_writer writer(s.payload);
    compressor.encode(std::span<const T>(s.scratch), s.sender_states[slot], writer, ctx);
    const std::uint64_t payload_bits = writer.bits();
    const std::span<const std::byte> bytes = writer.finish();
    {
      bit_reader reader(bytes);
      compressor.decode_add(reader, s.sender_states[slot], std::span<T>(replica), T(1), ctx);
    }
    const T half_weight = s.weight / T(2);
    s.outgoing.resize(sizeof(double) + bytes.size());
    write_weight(s.outgoing, half_weight);
    std::copy(bytes.begin(), bytes.end(), s.outgoing.begin() + sizeof(double));
    const std::uint64_t wire = send_and_receive(r, s, hop);
    const T their_weight = read_weight<T>(s.incoming, from, r.step());
    std::vector<T>& theirs = s.received[slot];
    round_context from_ctx = ctx;
    from_ctx.rank = from;
    try {
      bit_reader reader(std::span<const std::byte>(s.incoming).subspan(sizeof(double)));
      compressor.decode_add(reader, s.receiver_states[slot], std::span<T>(theirs), T(1), from_ctx);
    } catch (const decode_error& e) {
      throw decode_error("stochastic_gradient_push: step " + std::to_string(r.step()) +
                         ": the push from rank " + std::to_string(from) + ": " + e.what());
    }
    // Keep what was not handed over, add what was received: mass is conserved.
    for (std::size_t j = 0; j < d; ++j) s.numerator[j] += theirs[j] - replica[j];
    require_finite_numerator(s, from, r.step());
    s.weight = half_weight + their_weight;
    r.charge(64 + payload_bits, wire);
  }

  template <class T, class C>
  static void require_finite_numerator(const state<T, C>& s, int from, std::uint64_t step) {
    if (!detail::all_finite(std::span<const T>(s.numerator))) {
      throw numeric_error("stochastic_gradient_push: step " + std::to_string(step) +
                          ": the model is not finite after the push from rank " +
                          std::to_string(from));
    }
  }

  /// SlowMo over the gossip base: the exact average of the workers' models,
  /// the slow momentum step from the last average, and a restart from it.
  template <class T, class C, class Round>
  void average(Round& r, state<T, C>& s) const {
    const std::span<T> x = r.x();
    for (std::size_t j = 0; j < x.size(); ++j) x[j] = s.numerator[j] / s.weight;
    r.average(x);
    const double gamma = r.learning_rate(r.step());
    if (slow_momentum == 0 && slow_lr == 1) {
      std::copy(x.begin(), x.end(), s.anchor.begin());
    } else {
      const T inv_gamma = static_cast<T>(1 / gamma);
      for (std::size_t j = 0; j < x.size(); ++j) s.scratch[j] = (s.anchor[j] - x[j]) * inv_gamma;
      detail::slow_momentum_step(std::span<T>(s.anchor), std::span<T>(s.slow_velocity),
                                 std::span<const T>(s.scratch), slow_momentum, slow_lr * gamma);
      std::copy(s.anchor.begin(), s.anchor.end(), x.begin());
    }
    std::copy(x.begin(), x.end(), s.numerator.begin());
    s.weight = 1;
    s.steps_since_average = 0;
    detail::settle_momentum<T>(r, momentum_buffers);
  }
};

static_assert(Schedule<stochastic_gradient_push, float> &&
              Schedule<stochastic_gradient_push, double>);

}  // namespace ecopt
