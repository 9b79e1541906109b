#pragma once
// gradient_exchange<C, E, T>: one synchronous data-parallel round as an object.
// It turns this worker's gradient into the direction every worker applies --
// the mean over workers of what was sent -- in one call, over any transport:
// what a communication hook is to PyTorch's DDP. A training loop of the user's
// own calls it once per step; ecopt::solver is a loop of such calls.
//
//   gradient --> compensator.compensate --> compressor.encode
//     --> the compressor's own `aggregate` when it has one (gTop-k, Sketched
//         SGD, PowerSGD), else allreduce when the payload sums in compressed
//         form, else allgather and decode every payload
//     --> compensator.update(own decoded payload) --> mean over workers
//     --> compensator.reconstruct(mean) when it has one (EF21) --> direction
//
// Call it collectively: every rank of the transport, once per round, with the
// same round number. The object owns the compressor's and compensator's state
// for a vector of `dim` entries (error memories, PowerSGD's warm start, ...)
// and every buffer a round needs: after the first round a call allocates
// nothing (the collectives reuse their workspace, the gathered payloads keep
// their capacity).
#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/checkpoint.hpp"
#include "ecopt/collectives/allgather.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/compensator.hpp"
#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/detail/all_finite.hpp"
#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

/// What one exchange costs this rank.
struct exchange_bits {
  std::uint64_t payload = 0;  ///< exact encoded bits this rank produced
  std::uint64_t wire = 0;     ///< bits this rank's transport sent during the exchange
};

/// The round an exchange acts in; with the exchange's seed and the transport's
/// rank and world it makes the round_context every policy sees.
struct exchange_round {
  std::uint64_t round = 0;  ///< equal on all ranks, one more each call
  double lr = 0;            ///< the optimizer's step size (compensators may scale by it)
};

struct exchange_options {
  std::uint64_t seed = 0;    ///< the run's global seed: equal on all ranks
  bool check_finite = true;  ///< throw numeric_error on a non-finite gradient entry
};

namespace detail {

template <class T>
void require_finite(std::span<const T> g, int rank, std::uint64_t step) {
  if (all_finite(g)) return;
  for (std::size_t j = 0; j < g.size(); ++j) {
    if (!std::isfinite(g[j])) {
      throw numeric_error("rank " + std::to_string(rank) + ", step " + std::to_string(step) +
                          ": the stochastic gradient has a non-finite entry (" +
                          std::to_string(g[j]) + ") at index " + std::to_string(j));
    }
  }
}

}  // namespace detail

template <Compressor C = no_compression, Compensator E = no_compensation,
          std::floating_point T = float>
class gradient_exchange {
 public:
  using scalar_type = T;
  using compressor_type = C;
  using compensator_type = E;
  using compressor_state_type = compressor_state_t<C, T>;
  using compensator_state_type = compensator_state_t<E, T>;

  gradient_exchange(C compressor, E compensator, std::size_t dim,
                    const exchange_options& options = {})
      : compressor_(validated(std::move(compressor))),
        compensator_(validated(std::move(compensator))),
        options_(options),
        dim_(dim),
        compressor_state_(compressor_.template make_state<T>(dim)),
        compensator_state_(compensator_.template make_state<T>(dim)),
        message_(std::is_same_v<E, no_compensation> ? 0 : dim),
        own_(dim),
        sum_(dim),
        reconstructed_(ReconstructsDirection<E, T> ? dim : 0) {
    static_assert(Compressor<C, T>, "the compressor does not support this scalar type");
    static_assert(Compensator<E, T>, "the compensator does not support this scalar type");
    payload_.reserve(static_cast<std::size_t>((compressor_.max_bits(dim) + 7) / 8 + 8));
    if constexpr (SummableCompressor<C, T>) summed_.resize(compressor_.summable_size(dim));
  }

  explicit gradient_exchange(std::size_t dim, const exchange_options& options = {}) requires
      std::default_initializable<C> && std::default_initializable<E>
      : gradient_exchange(C{}, E{}, dim, options) {}

  [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
  [[nodiscard]] const C& compressor() const noexcept { return compressor_; }
  [[nodiscard]] const E& compensator() const noexcept { return compensator_; }
  [[nodiscard]] const exchange_options& options() const noexcept { return options_; }
  /// The per-worker states (error memory, warm starts): for inspection and checkpoints.
  [[nodiscard]] compressor_state_type& compressor_state() noexcept { return compressor_state_; }
  [[nodiscard]] compensator_state_type& compensator_state() noexcept { return compensator_state_; }

  /// Writes what this exchange carries from round to round -- the compressor's
  /// and compensator's states (error memory, PowerSGD's warm start) -- under
  /// `prefix`, with what it must be loaded into: the dimension, the policies'
  /// names, this rank and the world size (checkpoint.hpp).
  template <Transport Tr>
  void save(checkpoint& c, const Tr& transport, const std::string& prefix = "exchange.") requires
      PersistentState<compressor_state_type> && PersistentState<compensator_state_type> {
    c.put(prefix + "dim", static_cast<std::uint64_t>(dim_));
    c.put(prefix + "rank", static_cast<std::int64_t>(transport.rank()));
    c.put(prefix + "world", static_cast<std::int64_t>(transport.size()));
    c.put_text(prefix + "compressor", policy_name<C>());
    c.put_text(prefix + "compensator", policy_name<E>());
    save_state(c, prefix + "compressor.", compressor_state_);
    save_state(c, prefix + "compensator.", compensator_state_);
  }

  /// Restores what save wrote; refuses (checkpoint_error naming it) a
  /// checkpoint of another dimension, policy, layout, rank or world size.
  template <Transport Tr>
  void load(const checkpoint& c, const Tr& transport,
            const std::string& prefix = "exchange.") requires
      PersistentState<compressor_state_type> && PersistentState<compensator_state_type> {
    auto expect = [&](const char* what, std::int64_t here) {
      const auto there = c.get<std::int64_t>(prefix + what);
      if (there != here) {
        throw checkpoint_error("checkpoint: written by " + std::string(what) + " " +
                               std::to_string(there) + ", loaded by " + what + " " +
                               std::to_string(here));
      }
    };
    const auto dim = c.get<std::uint64_t>(prefix + "dim");
    if (dim != dim_) {
      throw checkpoint_error("checkpoint: written for a dimension of " + std::to_string(dim) +
                             ", this exchange has " + std::to_string(dim_));
    }
    expect("world", transport.size());
    expect("rank", transport.rank());
    c.expect_text(prefix + "compressor", policy_name<C>());
    c.expect_text(prefix + "compensator", policy_name<E>());
    // Into copies first: a refused record leaves this exchange as it was.
    compressor_state_type compressor_copy = compressor_state_;
    compensator_state_type compensator_copy = compensator_state_;
    load_state(c, prefix + "compressor.", compressor_copy);
    load_state(c, prefix + "compensator.", compensator_copy);
    compressor_state_ = std::move(compressor_copy);
    compensator_state_ = std::move(compensator_copy);
  }

  /// The round_context of `round` on this transport.
  template <Transport Tr>
  [[nodiscard]] round_context context(const Tr& transport, const exchange_round& round) const {
    return round_context{.seed = options_.seed,
                         .round = round.round,
                         .rank = transport.rank(),
                         .world = transport.size(),
                         .lr = round.lr};
  }

  /// Hessian-aided compensators read the worker's problem at the iterate its
  /// gradient was taken at: call this before the exchange of that gradient
  /// (ecopt::solver does). Does nothing for the other compensators.
  template <Problem P>
  void observe_curvature(P& problem, const Eigen::Ref<const vector_t<T>>& x,
                         const round_context& ctx) {
    if constexpr (UsesCurvature<E, P>) {
      compensator_.observe_curvature(problem, x, compensator_state_, ctx);
    }
  }

  /// One round: `direction` receives the direction to apply (the mean over
  /// workers of their decoded payloads, or what the compensator reconstructs
  /// from it). `gradient` and `direction` may be the same memory.
  template <Transport Tr>
  exchange_bits operator()(Tr& transport, std::span<const T> gradient, std::span<T> direction,
                           const exchange_round& round) {
    return exchange(transport, gradient, direction, context(transport, round));
  }

  /// The same with the round_context given whole (its rank and world must be
  /// the transport's).
  template <Transport Tr>
  exchange_bits exchange(Tr& transport, std::span<const T> gradient, std::span<T> direction,
                         const round_context& ctx) {
    if (gradient.size() != dim_ || direction.size() != dim_) {
      throw invalid_argument("gradient_exchange: the gradient has " +
                             std::to_string(gradient.size()) + " entries and the direction " +
                             std::to_string(direction.size()) + ", the exchange was made for " +
                             std::to_string(dim_));
    }
    if (options_.check_finite) detail::require_finite(gradient, ctx.rank, ctx.round);
    exchange_bits bits;
    // Without compensation the message is the gradient itself: no copy.
    std::span<const T> message = gradient;
    if constexpr (!std::is_same_v<E, no_compensation>) {
      compensator_.compensate(gradient, compensator_state_, span(message_), ctx);
      message = const_span(message_);
    }
    std::fill(own_.begin(), own_.end(), T(0));
    std::fill(sum_.begin(), sum_.end(), T(0));
    const std::uint64_t sent_before = transport.bytes_sent();
    if constexpr (AggregatingCompressor<C, T, Tr>) {
      bits.payload = compressor_.aggregate(transport, message, compressor_state_, span(own_),
                                           span(sum_), workspace_, ctx);
    } else if (use_allreduce()) {
      bits.payload = exchange_summed(transport, message, ctx);
    } else {
      bits.payload = exchange_gathered(transport, message, ctx);
    }
    bits.wire = 8 * (transport.bytes_sent() - sent_before);
    compensator_.update(message, const_span(own_), compensator_state_, ctx);
    const T inv_world = T(1) / static_cast<T>(ctx.world);
    if constexpr (ReconstructsDirection<E, T>) {
      for (std::size_t j = 0; j < dim_; ++j) sum_[j] *= inv_world;
      compensator_.reconstruct(const_span(sum_), compensator_state_, span(reconstructed_), ctx);
      std::copy(reconstructed_.begin(), reconstructed_.end(), direction.begin());
    } else {
      for (std::size_t j = 0; j < dim_; ++j) direction[j] = sum_[j] * inv_world;
    }
    return bits;
  }

 private:
  template <class Policy>
  static Policy validated(Policy p) {
    validate_policy(p);
    return p;
  }
  static std::span<T> span(std::vector<T>& v) { return {v.data(), v.size()}; }
  static std::span<const T> const_span(const std::vector<T>& v) { return {v.data(), v.size()}; }

  [[nodiscard]] bool use_allreduce() const {
    if constexpr (requires { compressor_.summable(); }) {
      return SummableCompressor<C, float> && compressor_.summable();
    } else {
      return false;
    }
  }

  template <class Tr>
  std::uint64_t exchange_summed(Tr& transport, std::span<const T> message,
                                const round_context& ctx) {
    if constexpr (SummableCompressor<C, T>) {
      compressor_.encode_summable(message, compressor_state_, std::span<float>(summed_), ctx);
      compressor_.decode_summed(std::span<const float>(summed_), compressor_state_, span(own_),
                                T(1), ctx);
      allreduce_sum(transport, std::span<float>(summed_), workspace_);
      compressor_.decode_summed(std::span<const float>(summed_), compressor_state_, span(sum_),
                                T(1), ctx);
      return 32 * static_cast<std::uint64_t>(summed_.size());
    } else {
      return 0;
    }
  }

  template <class Tr>
  std::uint64_t exchange_gathered(Tr& transport, std::span<const T> message,
                                  const round_context& ctx) {
    bit_writer writer(payload_);
    compressor_.encode(message, compressor_state_, writer, ctx);
    const std::uint64_t bits = writer.bits();
    const std::span<const std::byte> bytes = writer.finish();
    {
      bit_reader reader(bytes);
      compressor_.decode_add(reader, compressor_state_, span(own_), T(1), ctx);
    }
    gathered_.resize(static_cast<std::size_t>(ctx.world));
    allgather_bytes(transport, bytes, gathered_);
    for (int sender = 0; sender < ctx.world; ++sender) {
      if (sender == ctx.rank) {
        for (std::size_t j = 0; j < dim_; ++j) sum_[j] += own_[j];
        continue;
      }
      round_context from = ctx;
      from.rank = sender;
      bit_reader reader(gathered_[static_cast<std::size_t>(sender)]);
      try {
        compressor_.decode_add(reader, compressor_state_, span(sum_), T(1), from);
      } catch (const decode_error& e) {
        throw decode_error("rank " + std::to_string(ctx.rank) + ", step " +
                           std::to_string(ctx.round) + ": payload from rank " +
                           std::to_string(sender) + ": " + e.what());
      }
    }
    return bits;
  }

  C compressor_;
  E compensator_;
  exchange_options options_;
  std::size_t dim_;
  compressor_state_type compressor_state_;
  compensator_state_type compensator_state_;
  std::vector<T> message_, own_, sum_, reconstructed_;
  std::vector<std::byte> payload_;
  std::vector<std::vector<std::byte>> gathered_;
  std::vector<float> summed_;
  collective_workspace workspace_;
};

}  // namespace ecopt
