#pragma once
// DQ-SGD: QSGD whose number of levels s_t is chosen afresh every round by
// trading the bits of the round against its share of the convergence error.
// Yan, Huang, Lan, Song 2021, arXiv:2107.14575.
//
// Source of the level rule. The paper (abstract and introduction) states the
// method: bound the convergence error of SGD with a quantiser of s_t levels,
// then choose s_t every step to minimise the bits subject to that bound. Its
// exact bound, normalisation and closed form were not available to us; what
// follows is our reconstruction of a rule with that structure (derivation in
// the project's notes, papers.md section 5), not the paper's formula. For an L-smooth,
// mu-strongly convex objective, step size eta and rho = 1 - eta mu, the SGD
// recursion bounds the part of F(w_T) - F* caused by quantisation by
//   (L eta^2 / 2) sum_t rho^(T-1-t) q_t / n,   q_t = d G_t^2 / (4 s_t^2),
// where d G_t^2 / (4 s_t^2) is the variance of s_t-level stochastic rounding
// (at most (G_t / s_t)^2 / 4 per coordinate, G_t the norm). Minimising the
// bits sum_t d log2(s_t) subject to that part being at most `error_budget`
// E_Q, the Lagrange conditions give every round the same share E_Q / T:
//   s_t = ceil( sqrt( T L eta^2 d rho^(T-1-t) G_t^2 / (8 n E_Q) ) ),
// clamped to [min_levels, max_levels]. Inputs:
//   G_t^2    the derivation's (1/n) sum_i ||g_i||^2 with share_levels; without
//            it each worker substitutes its own ||x||^2 (an extra pass);
//   eta      ctx.lr (the optimizer's step size this round; 0 gives min_levels);
//   t, n     ctx.round and ctx.world;
//   T, L, mu, E_Q   the fields horizon, smoothness, strong_convexity, error_budget.
// Rounds t >= T use rho^0 = 1. With mu = 0 (non-convex or unknown) rho = 1 and
// s_t is proportional to the gradient norm; with mu > 0 it also grows
// geometrically towards the end of training, where errors are discounted less.
// levels_for() evaluates the rule alone.
//
// Quantiser and payload: s_t travels first as 16 bits (each worker picks its
// own s_t from its own norm, so a decoder cannot know it), then the qsgd body
// for s_t levels and buckets of bucket_size (per bucket a float32 norm and
// 1 + ceil(log2(s_t + 1)) bits per coordinate). Exactly
//   16 + 32 * buckets + d (1 + ceil(log2(s_t + 1))) bits,
// bounded by max_bits(d) at s_t = max_levels. A decoder rejects an s_t outside
// [min_levels, max_levels].
//
// share_levels (off by default): every worker quantises with the same s_t and
// the same bucket norms, so that payloads sum in compressed form (the levels of
// n workers add to integers in [-n s_t, n s_t] against one scale per bucket).
// dq_sgd is an AggregatingCompressor for it: `aggregate` first allreduces the
// workers' ||x||^2 (sum, one float: G_t^2 above is their mean) and their bucket
// norms (max, one float per bucket), then encodes against the shared norms and
// s_t. Each |x_j| is within the shared norm of its bucket, so the quantiser stays
// unbiased; its variance grows with the shared norm (up to the largest worker's).
// The payload keeps its format (the 16-bit s_t and the norms, now equal on
// every rank), and the payloads still travel by allgather: ecopt's allreduce
// sums float32, which would cost more than the packed levels. aggregate returns
// the payload bits plus 32 (1 + buckets) for the two allreduces. Without
// share_levels, aggregate is the plain allgather of payloads.
//
// Unbiased; omega for s levels and buckets of b is min(b / s^2, sqrt(b) / s)
// (QSGD's bound). omega(d) declares the worst case over rounds, s = min_levels
// (fewest levels); omega_at(s, d) gives a round's own value.
//
// The levels chosen are exposed in the state: last_levels (the latest encode)
// and levels_by_round[t] = s_t for rounds t < horizon (0 = not encoded; kept
// when record_levels is set; 2 bytes per round, allocated by make_state).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/bulk_uniforms.hpp"
#include "ecopt/compressors/detail/gathered_exchange.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/compressors/detail/stochastic_levels.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

struct dq_sgd {
  static constexpr std::string_view name = "dq_sgd";
  /// The largest s_t the 16-bit level field carries.
  static constexpr std::uint32_t level_limit = (std::uint32_t{1} << 15) - 1;

  std::uint64_t horizon = 1000;            ///< T: the planned number of rounds
  double error_budget = 0.01;              ///< E_Q: quantisation's allowed share of F(w_T) - F*
  double smoothness = 1.0;                 ///< L, the objective's smoothness constant
  double strong_convexity = 0.0;           ///< mu; 0 = flat weights (non-convex)
  std::uint32_t min_levels = 1;            ///< lower clamp of s_t
  std::uint32_t max_levels = level_limit;  ///< upper clamp of s_t (<= 2^15 - 1)
  std::size_t bucket_size = 0;             ///< coordinates per norm; 0 = the whole vector
  bool record_levels = true;               ///< keep levels_by_round (2 * horizon bytes)
  bool share_levels = false;               ///< same s_t and bucket norms on every rank (aggregate)

  void validate() const {
    if (horizon == 0) throw invalid_argument("dq_sgd: horizon must be positive, got 0");
    if (!(error_budget > 0) || !std::isfinite(error_budget)) {
      throw invalid_argument("dq_sgd: error_budget = " + std::to_string(error_budget) +
                             " must be positive and finite");
    }
    if (!(smoothness > 0) || !std::isfinite(smoothness)) {
      throw invalid_argument("dq_sgd: smoothness = " + std::to_string(smoothness) +
                             " must be positive and finite");
    }
    if (!(strong_convexity >= 0) || !std::isfinite(strong_convexity)) {
      throw invalid_argument("dq_sgd: strong_convexity = " + std::to_string(strong_convexity) +
                             " must be finite and non-negative");
    }
    if (min_levels < 1 || min_levels > max_levels || max_levels > level_limit) {
      throw invalid_argument("dq_sgd: min_levels = " + std::to_string(min_levels) +
                             " and max_levels = " + std::to_string(max_levels) +
                             " must satisfy 1 <= min_levels <= max_levels <= 32767");
    }
  }

  /// Coordinates per bucket for dimension d (the last bucket may be shorter).
  [[nodiscard]] std::size_t bucket(std::size_t d) const noexcept {
    return bucket_size == 0 || bucket_size > d ? d : bucket_size;
  }
  [[nodiscard]] std::size_t num_buckets(std::size_t d) const noexcept {
    const std::size_t b = bucket(d);
    return b == 0 ? 0 : (d + b - 1) / b;
  }
  /// Payload bits for s levels.
  [[nodiscard]] std::uint64_t bits_at(std::uint32_t s, std::size_t d) const noexcept {
    return 16 + 32 * static_cast<std::uint64_t>(num_buckets(d)) +
           static_cast<std::uint64_t>(d) * (1 + bits_for(static_cast<std::uint64_t>(s) + 1));
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept {
    return bits_at(max_levels, d);
  }
  /// QSGD's variance factor for s levels.
  [[nodiscard]] double omega_at(std::uint32_t s, std::size_t d) const noexcept {
    const auto b = static_cast<double>(bucket(d));
    const auto sd = static_cast<double>(s);
    return std::min(b / (sd * sd), std::sqrt(b) / sd);
  }
  /// The worst round: s = min_levels.
  [[nodiscard]] double omega(std::size_t d) const noexcept { return omega_at(min_levels, d); }

  /// s_t for a vector of squared norm `norm_squared` and dimension d in round ctx.round
  /// (the rule in the header comment). Throws invalid_argument for a negative or NaN lr.
  [[nodiscard]] std::uint32_t levels_for(double norm_squared, std::size_t d,
                                         const round_context& ctx) const {
    const double eta = ctx.lr;
    if (!(eta >= 0) || !std::isfinite(eta)) {
      throw invalid_argument("dq_sgd: round_context.lr = " + std::to_string(eta) +
                             " must be finite and non-negative");
    }
    const double rho = std::clamp(1.0 - eta * strong_convexity, 0.0, 1.0);
    const double ahead =
        ctx.round + 1 >= horizon ? 0.0 : static_cast<double>(horizon - 1 - ctx.round);
    const double weight = ahead == 0 ? 1.0 : std::pow(rho, ahead);
    const double n = ctx.world > 0 ? static_cast<double>(ctx.world) : 1.0;
    const double s2 = static_cast<double>(horizon) * smoothness * eta * eta *
                      static_cast<double>(d) * weight * norm_squared / (8.0 * n * error_budget);
    const double s = std::ceil(std::sqrt(s2));
    if (!(s >= static_cast<double>(min_levels))) return min_levels;  // also NaN
    if (s >= static_cast<double>(max_levels)) return max_levels;
    return static_cast<std::uint32_t>(s);
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    std::uint32_t last_levels = 0;                 ///< s_t of the latest encode (0 = none yet)
    std::vector<std::uint16_t> levels_by_round;    ///< s_t by round t < horizon (0 = not encoded)
    std::vector<float> norms;                      ///< aggregate: bucket norms, max over ranks
    std::vector<std::byte> payload;                ///< aggregate's own payload
    std::vector<std::vector<std::byte>> gathered;  ///< aggregate's payloads of all ranks
    template <class Archive>
    void persist(Archive& a) {
      a("last_levels", last_levels);
      a("levels_by_round", levels_by_round);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_positive_dim(name, dim);
    return state<T>{
        dim,
        0,
        std::vector<std::uint16_t>(record_levels ? static_cast<std::size_t>(horizon) : 0),
        std::vector<float>(share_levels ? num_buckets(dim) : 0),
        {},
        {}};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    const double norm_squared = detail::sum_squares(x);
    encode_at(x, s, out, ctx, levels_for(norm_squared, s.dim, ctx), norm_squared, {});
  }

  /// One round for every rank (AggregatingCompressor): with share_levels the
  /// ranks first agree on G_t^2 and the bucket norms (header comment), then
  /// every payload is allgathered and decoded. Returns this rank's payload
  /// bits, plus 32 (1 + buckets) for the two allreduces when levels are shared.
  template <Transport Tr, class T>
  std::uint64_t aggregate(Tr& transport, std::span<const T> x, state<T>& s, std::span<T> own,
                          std::span<T> sum, collective_workspace& workspace,
                          const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    detail::require_size(name, "own", own.size(), s.dim);
    detail::require_size(name, "sum", sum.size(), s.dim);
    bit_writer writer(s.payload);
    std::uint64_t collective_bits = 0;
    if (!share_levels) {
      encode(x, s, writer, ctx);
    } else {
      if (s.norms.size() != num_buckets(s.dim)) {
        throw invalid_argument("dq_sgd: share_levels is set but the state was made without it");
      }
      const std::size_t b = bucket(s.dim);
      float total = 0;  // sum over ranks of ||x||^2
      for (std::size_t k = 0; k < s.norms.size(); ++k) {
        const double sq = detail::sum_squares(x.subspan(k * b, std::min(b, s.dim - k * b)));
        total += static_cast<float>(sq);
        // A non-finite norm becomes +inf, which survives the max, so every rank
        // throws in the encode below alike instead of leaving the others waiting.
        s.norms[k] = std::isfinite(sq) ? detail::round_up_to_float(std::sqrt(sq)) : HUGE_VALF;
      }
      allreduce_sum(transport, std::span<float>(&total, 1), workspace);
      allreduce_max(transport, std::span<float>(s.norms), workspace);
      const double mean_squared = static_cast<double>(total) / static_cast<double>(ctx.world);
      encode_at(x, s, writer, ctx, levels_for(mean_squared, s.dim, ctx), -1.0,
                std::span<const float>(s.norms));
      collective_bits = 32 * (1 + static_cast<std::uint64_t>(s.norms.size()));
    }
    const std::uint64_t payload_bits = writer.bits();
    const std::span<const std::byte> mine = writer.finish();
    detail::gather_and_decode(*this, transport, s, mine, s.gathered, own, sum, ctx);
    return payload_bits + collective_bits;
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const auto levels = static_cast<std::uint32_t>(in.read(16, "dq_sgd levels"));
    if (levels < min_levels || levels > max_levels) {
      throw decode_error("corrupt dq_sgd payload: levels = " + std::to_string(levels) +
                         " outside [" + std::to_string(min_levels) + ", " +
                         std::to_string(max_levels) + "]");
    }
    detail::require_payload_bits(in, bits_at(levels, s.dim) - 16, "dq_sgd");
    detail::decode_level_buckets(in, out, scale, levels, bucket(s.dim), "dq_sgd");
    in.expect_end("dq_sgd");
  }

 private:
  template <class T>
  void encode_at(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx,
                 std::uint32_t levels, double norm_squared,
                 std::span<const float> bucket_norms) const {
    detail::bulk_uniforms rng(counter_rng::stream(ctx.seed, stream_purpose::compression,
                                                  static_cast<std::uint64_t>(ctx.rank), ctx.round));
    out.write(levels, 16);
    detail::encode_level_buckets(x, levels, bucket(s.dim), rng, out, "dq_sgd", norm_squared,
                                 bucket_norms);
    s.last_levels = levels;
    if (ctx.round < s.levels_by_round.size()) {
      s.levels_by_round[static_cast<std::size_t>(ctx.round)] = static_cast<std::uint16_t>(levels);
    }
  }
};

static_assert(Compressor<dq_sgd, float> && Compressor<dq_sgd, double>);

}  // namespace ecopt
