// Guard of examples/gtopk_traffic.cpp at test size (README "Reproduced
// results", gTop-k traffic): Shi et al. 2019 (arXiv:1901.04359) claim gTop-k's
// traffic per worker is O(k log P) against top-k allgather's O(k P). One round
// of d = 20,000, k = 20 on P = 2 .. 16 threads behind simulated_transport at
// 1 Gbit/s: gTop-k's bytes per worker grow at most by log2 P over P = 2 (plus a
// margin for the index coding), top-k allgather's at least by (P - 1) / 2, and
// from P = 4 on gTop-k's modelled round is shorter than top-k allgather's, and
// both at least 4x shorter than the dense allreduce's.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "ecopt/compensators/no_compensation.hpp"
#include "ecopt/compressors/global_top_k.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/gradient_exchange.hpp"
#include "ecopt/transports/simulated_transport.hpp"
#include "ecopt/transports/thread_transport.hpp"

namespace gtopk_traffic_test {

namespace {

struct round_cost {
  std::uint64_t bytes = 0;  ///< the most any worker sent
  double seconds = 0;       ///< the latest modelled clock
};

template <class C>
round_cost one_round(const C& compressor, int workers, std::size_t d) {
  const auto costs = ecopt::run_threads(workers, [&](ecopt::thread_transport& t) {
    ecopt::simulated_transport net(t, ecopt::network_model::ethernet_1g());
    auto shared = ecopt::counter_rng::stream(1, ecopt::stream_purpose::test, 0, 0);
    auto own = ecopt::counter_rng::stream(2, ecopt::stream_purpose::test,
                                          static_cast<std::uint64_t>(t.rank()), 0);
    std::vector<float> g(d);
    for (float& v : g) v = static_cast<float>(shared.normal() + own.normal());
    std::vector<float> direction(d);
    ecopt::gradient_exchange<C, ecopt::no_compensation, float> exchange(compressor, {}, d);
    exchange(net, std::span<const float>(g), std::span<float>(direction), {.round = 0});
    return round_cost{net.bytes_sent(), net.modelled_seconds()};
  });
  round_cost worst;
  for (const auto& c : costs) {
    worst.bytes = std::max(worst.bytes, c.bytes);
    worst.seconds = std::max(worst.seconds, c.seconds);
  }
  return worst;
}

}  // namespace

TEST_CASE("gTop-k traffic per worker grows with log P, top-k allgather's with P") {
  constexpr std::size_t d = 20000;
  constexpr std::size_t k = 20;
  const ecopt::global_top_k gtopk{.k = k};
  const ecopt::top_k topk{.k = k};
  const round_cost g2 = one_round(gtopk, 2, d);
  const round_cost t2 = one_round(topk, 2, d);
  for (const int p : {4, 8, 16}) {
    CAPTURE(p);
    const round_cost g = one_round(gtopk, p, d);
    const round_cost t = one_round(topk, p, d);
    const round_cost dense = one_round(ecopt::no_compression{}, p, d);
    const double log_p = std::log2(static_cast<double>(p));
    MESSAGE("P = " << p << ": gTop-k " << g.bytes << " B, " << g.seconds * 1e3
                   << " ms; top-k allgather " << t.bytes << " B, " << t.seconds * 1e3
                   << " ms; dense " << dense.bytes << " B, " << dense.seconds * 1e3 << " ms");
    CHECK(static_cast<double>(g.bytes) <= 1.25 * log_p * static_cast<double>(g2.bytes));
    CHECK(static_cast<double>(t.bytes) >= 0.5 * (p - 1) * static_cast<double>(t2.bytes));
    CHECK(g.seconds < t.seconds);
    CHECK(4 * t.seconds < dense.seconds);
  }
}

}  // namespace gtopk_traffic_test
