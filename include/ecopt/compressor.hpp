#pragma once
// The Compressor concept: what a worker sends, its exact size in bits, and how
// receivers turn it back into a vector.
//
// A compressor is a small value type of hyperparameters. Per-worker mutable
// state (scratch buffers, warm starts) is a separate object made once by
// `make_state<T>(dim)`; all allocation happens there, so `encode` and
// `decode_add` never allocate once the bit buffer has grown to `max_bits`.
// Values travel as IEEE binary32 whatever the solver's scalar type T.
//
// Required members, for a scalar type T and S = decltype(c.make_state<T>(dim)):
//   S             make_state<T>(std::size_t dim) const
//   std::uint64_t max_bits(std::size_t dim) const        -- bound on payload bits
//   void encode(std::span<const T> x, S&, bit_writer&, const round_context&) const
//   void decode_add(bit_reader&, S&, std::span<T> out, T scale, const round_context& sender) const
//        -- out += scale * C(x); throws decode_error on a truncated or corrupt payload
// Optional members, found with `requires`:
//   std::uint64_t bits(std::size_t dim) const      -- exact payload bits (fixed-size payloads)
//   double omega(std::size_t dim) const            -- unbiased, E||C(x)-x||^2 <= omega ||x||^2
//   double delta(std::size_t dim) const            -- contraction, E||C(x)-x||^2 <=
//   (1-delta)||x||^2 bool summable() const, std::size_t summable_size(dim) const,
//   encode_summable(x, S&, std::span<float>, ctx), decode_summed(std::span<const float>, S&, out,
//   scale, ctx) -- payloads that add in compressed form travel by allreduce
//   std::uint64_t aggregate(transport, x, S&, own, sum, collective_workspace&, ctx) const
//        -- a compressor-owned exchange (see AggregatingCompressor)
//   void validate() const                          -- throws invalid_argument naming the bad field
//   static constexpr std::string_view name
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

template <class C, class T>
concept MakesCompressorState = requires(const C& c, std::size_t dim) {
  c.template make_state<T>(dim);
};

template <class C, class T>
requires MakesCompressorState<C, T>
using compressor_state_t = decltype(std::declval<const C&>().template make_state<T>(std::size_t{}));

template <class C>
concept BoundsPayloadBits = requires(const C& c, std::size_t dim) {
  { c.max_bits(dim) } -> std::convertible_to<std::uint64_t>;
};

template <class C, class T>
concept EncodesPayload = MakesCompressorState<C, T> &&
    requires(const C& c, compressor_state_t<C, T>& s, std::span<const T> x, bit_writer& out,
             const round_context& ctx) {
  c.encode(x, s, out, ctx);
};

template <class C, class T>
concept DecodesPayload = MakesCompressorState<C, T> &&
    requires(const C& c, compressor_state_t<C, T>& s, bit_reader& in, std::span<T> out, T scale,
             const round_context& sender) {
  c.decode_add(in, s, out, scale, sender);
};

template <class C, class T = float>
concept Compressor =
    std::floating_point<T> && std::copy_constructible<C> && MakesCompressorState<C, T> &&
    BoundsPayloadBits<C> && EncodesPayload<C, T> && DecodesPayload<C, T>;

/// Payloads of a fixed, data-independent size.
template <class C>
concept FixedSizePayload = requires(const C& c, std::size_t dim) {
  { c.bits(dim) } -> std::convertible_to<std::uint64_t>;
};

/// Unbiased with a declared variance factor omega.
template <class C>
concept UnbiasedCompressor = requires(const C& c, std::size_t dim) {
  { c.omega(dim) } -> std::convertible_to<double>;
};

/// Contractive with a declared delta in (0, 1].
template <class C>
concept ContractiveCompressor = requires(const C& c, std::size_t dim) {
  { c.delta(dim) } -> std::convertible_to<double>;
};

/// Payloads that add in compressed form (all ranks' buffers are summed by allreduce).
template <class C, class T = float>
concept SummableCompressor = Compressor<C, T> &&
    requires(const C& c, compressor_state_t<C, T>& s, std::size_t dim, std::span<const T> x,
             std::span<float> buf, std::span<const float> summed, std::span<T> out, T scale,
             const round_context& ctx) {
  { c.summable() } -> std::convertible_to<bool>;
  { c.summable_size(dim) } -> std::convertible_to<std::size_t>;
  c.encode_summable(x, s, buf, ctx);
  c.decode_summed(summed, s, out, scale, ctx);
};

/// Compressors that run their own exchange instead of one allreduce or
/// allgather: gTop-k's pairwise merge, Sketched SGD's two rounds, PowerSGD's
/// two allreduces. Called collectively by every rank in the same round:
///   own += this rank's contribution as sent (what error feedback subtracts),
///   sum += the sum over ranks of their contributions (the solver divides by
///          the world size);
/// returns the payload bits this rank encoded this round. Bytes on the wire
/// are counted by the transport, not by the compressor.
template <class C, class T, class Tr>
concept AggregatingCompressor = Compressor<C, T> &&
    requires(const C& c, Tr& transport, std::span<const T> x, compressor_state_t<C, T>& s,
             std::span<T> own, std::span<T> sum, collective_workspace& workspace,
             const round_context& ctx) {
  { c.aggregate(transport, x, s, own, sum, workspace, ctx) } -> std::convertible_to<std::uint64_t>;
};

/// Compressors whose own exchange is a fixed sequence of allreduces of float
/// buffers, offered phase by phase so that per_block can fuse phase k of every
/// block into one allreduce (PowerSGD: P, then Q). Per round, for phase = 0 ..
/// phases(s) - 1, every rank calls phase_begin (writes its phase_floats(s, phase)
/// floats), the buffers are summed over ranks, and every rank calls phase_end
/// with the sum; the result is that of `aggregate`.
template <class C, class T>
concept PhasedAggregation = Compressor<C, T> &&
    requires(const C& c, compressor_state_t<C, T>& s, std::size_t phase, std::span<const T> x,
             std::span<float> out, std::span<const float> summed, std::span<T> own,
             std::span<T> sum, const round_context& ctx) {
  { c.phases(s) } -> std::convertible_to<std::size_t>;
  { c.phase_floats(s, phase) } -> std::convertible_to<std::size_t>;
  c.phase_begin(x, s, phase, out, own, ctx);
  c.phase_end(s, phase, summed, own, sum, ctx);
};

/// A policy's display name: its `name` member if it has one.
template <class Policy>
constexpr std::string_view policy_name() {
  if constexpr (requires { Policy::name; }) {
    return Policy::name;
  } else {
    return "unnamed policy";
  }
}

/// Calls `p.validate()` when the policy has one.
template <class Policy>
void validate_policy(const Policy& p) {
  if constexpr (requires { p.validate(); }) p.validate();
}

}  // namespace ecopt
