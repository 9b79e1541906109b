#pragma once
// The worker's side of every parameter-server schedule (parameter_server.hpp):
// take the model, compute a stochastic gradient there, compensate, compress,
// send; repeat until the server says stop.
//
// The compensator learns what became of an update before it remembers it:
// its update(p, sent) runs when the server's next message says whether the
// payload was applied, with sent = the decoded payload if it was and 0 if it
// was dropped. Error feedback therefore keeps a dropped update whole in its
// memory instead of forgetting it, and when every update is applied (backup
// workers with b = 0) the calls and their arguments are exactly those of the
// synchronous exchange.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "ecopt/algorithms/detail/server_messages.hpp"
#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/collectives/tags.hpp"
#include "ecopt/compensator.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/gradient_exchange.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/run_report.hpp"

namespace ecopt::detail {

/// Whether updates travel in the compressor's summable form (the floats the
/// synchronous exchange would allreduce) rather than as an encoded payload.
template <class T, class C>
[[nodiscard]] bool sends_summable_payload(const C& compressor) {
  if constexpr (SummableCompressor<C, T>) {
    return compressor.summable();
  } else {
    return false;
  }
}

/// Floats of a summable update (0 when updates are encoded payloads).
template <class T, class C>
[[nodiscard]] std::size_t summable_payload_floats(const C& compressor, std::size_t dim) {
  if constexpr (SummableCompressor<C, T>) {
    return compressor.summable() ? compressor.summable_size(dim) : 0;
  } else {
    return 0;
  }
}

/// Runs worker rank transport.rank() (>= 1) until the server stops it; x
/// ends as the server's final model. Returns this worker's report.
template <class T, class Tr, class P, class C, class E, class O>
run_report run_parameter_server_worker(Tr& transport, P& problem, std::span<T> x,
                                       const C& compressor, const E& compensator,
                                       const O& optimizer, const run_options& options) {
  const std::size_t d = x.size();
  const int workers = transport.size() - 1;
  const int worker = transport.rank() - 1;
  auto compressor_state = compressor.template make_state<T>(d);
  auto compensator_state = compensator.template make_state<T>(d);
  vector_t<T> gradient(static_cast<Eigen::Index>(d));
  std::vector<T> message(d), own(d), nothing(d, T(0)), scratch(ReconstructsDirection<E, T> ? d : 0);
  std::vector<std::byte> payload, out, in;
  std::vector<float> summable(summable_payload_floats<T>(compressor, d));
  payload.reserve(static_cast<std::size_t>((compressor.max_bits(d) + 7) / 8 + 8));
  const Eigen::Map<const vector_t<T>> x_map(x.data(), static_cast<Eigen::Index>(d));
  const std::span<const T> g(gradient.data(), d);

  run_report report;
  round_context pending{};
  bool has_pending = false;
  const std::uint64_t sent_at_start = transport.bytes_sent();
  for (;;) {
    transport.recv(0, collective_tag_for(collective_tag::server_model), in);
    const server_message_view m =
        read_server_message(std::span<const std::byte>(in), x, worker + 1);
    if (has_pending) {
      const std::span<const T> sent =
          m.fate == update_fate::applied ? std::span<const T>(own) : std::span<const T>(nothing);
      compensator.update(std::span<const T>(message), sent, compensator_state, pending);
      if constexpr (ReconstructsDirection<E, T>) {
        // The server holds the mean of the estimates; this worker's copy of it
        // is unused, and the call only closes the compensator's round.
        compensator.reconstruct(std::span<const T>(nothing), compensator_state,
                                std::span<T>(scratch), pending);
      }
      has_pending = false;
    }
    if (m.kind == server_message::stop) break;

    const round_context ctx{.seed = options.seed,
                            .round = m.version,
                            .rank = worker,
                            .world = workers,
                            .lr = optimizer.learning_rate(m.version)};
    counter_rng sampler = counter_rng::stream(options.seed, stream_purpose::sampling,
                                              static_cast<std::uint64_t>(worker), report.steps);
    problem.stochastic_gradient(x_map, gradient, sampler);
    ++report.steps;
    if (options.check_finite) require_finite(g, worker + 1, m.version);
    if constexpr (UsesCurvature<E, P>) {
      compensator.observe_curvature(problem, x_map, compensator_state, ctx);
    }
    compensator.compensate(g, compensator_state, std::span<T>(message), ctx);
    std::fill(own.begin(), own.end(), T(0));
    std::uint64_t bits = 0;
    std::span<const std::byte> bytes;
    if (sends_summable_payload<T>(compressor)) {
      // What the synchronous exchange would allreduce, so that the server can
      // sum it the same way (server_round::sum_in_worker_order).
      if constexpr (SummableCompressor<C, T>) {
        compressor.encode_summable(std::span<const T>(message), compressor_state,
                                   std::span<float>(summable), ctx);
        compressor.decode_summed(std::span<const float>(summable), compressor_state,
                                 std::span<T>(own), T(1), ctx);
        bits = 32 * static_cast<std::uint64_t>(summable.size());
        bytes = std::as_bytes(std::span<const float>(summable));
      }
    } else {
      bit_writer writer(payload);
      compressor.encode(std::span<const T>(message), compressor_state, writer, ctx);
      bits = writer.bits();
      bytes = writer.finish();
      bit_reader reader(bytes);
      compressor.decode_add(reader, compressor_state, std::span<T>(own), T(1), ctx);
    }
    write_worker_message(out, worker_message::update, m.version, bits, bytes);
    transport.send(0, collective_tag_for(collective_tag::server_update), out);
    report.payload_bits += bits;
    pending = ctx;
    has_pending = true;
  }
  report.wire_bits = 8 * (transport.bytes_sent() - sent_at_start);
  write_worker_message(out, worker_message::leaving, report.payload_bits, report.wire_bits, {});
  transport.send(0, collective_tag_for(collective_tag::server_leaving), out);
  return report;
}

}  // namespace ecopt::detail
