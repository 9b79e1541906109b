// gTop-k's traffic against top-k allgather and dense allreduce as the number of
// workers P grows (Shi et al. 2019, arXiv:1901.04359, ICDCS: gTop-k's
// communication is O(k log P) per worker, top-k allgather's O(k P)).
//
// P = 2 .. 256 workers run as threads of this process, each behind a
// simulated_transport (alpha-beta model: 1 Gbit/s with 50 us latency, 10 Gbit/s
// with 20 us). Every worker exchanges one gradient of the size of the MLP
// 784-256-10 (d = 203,530) through gradient_exchange with
//   gTop-k (global_top_k, k = 0.1 % of d, its pairwise merge),
//   top-k (top_k, the same k, payloads allgathered), and
//   dense (no_compression, one allreduce).
// The gradients are a shared component plus independent noise of the same
// size, so the local top-k sets overlap partly. The table gives the bytes a
// worker sends in the round (the most of any worker) and the modelled time of
// the round (the latest clock); then the smallest P at which gTop-k's round is
// shorter than top-k allgather's, per network. No training: traffic only.
//
// Usage: gtopk_traffic [--max-workers N] [--dimension d]  (defaults 256, 203530)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <span>
#include <vector>

#include "command_line.hpp"
#include "ecopt/ecopt.hpp"
#include "ecopt/transports/simulated_transport.hpp"

namespace {

struct round_cost {
  std::uint64_t bytes = 0;  ///< the most any worker sent
  double seconds = 0;       ///< the latest modelled clock after the round
};

/// One exchange of a gradient of d entries on `workers` threads.
template <class C>
round_cost one_round(const C& compressor, int workers, std::size_t d,
                     const ecopt::network_model& network) {
  const auto costs = ecopt::run_threads(workers, [&](ecopt::thread_transport& t) {
    ecopt::simulated_transport net(t, network);
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

int main(int argc, char** argv) try {
  ecopt_examples::command_line cli("gtopk_traffic",
                                   "gTop-k vs top-k allgather vs dense allreduce: bytes per "
                                   "worker and modelled time of one round, P = 2 .. max");
  int max_workers = 256;
  long long dimension = 203530;
  cli.option("--max-workers", max_workers, "largest worker count (powers of two from 2)");
  cli.option("--dimension", dimension, "gradient entries (default: the MLP 784-256-10)");
  if (!cli.parse(argc, argv)) return 0;  // --help was printed
  if (max_workers < 2 || dimension < 1000) {
    std::fprintf(stderr, "gtopk_traffic: --max-workers must be >= 2, --dimension >= 1000\n");
    return 2;
  }
  const auto d = static_cast<std::size_t>(dimension);
  const auto k = static_cast<std::size_t>(std::ceil(0.001 * static_cast<double>(d)));
  const ecopt::global_top_k gtopk{.k = k};
  const ecopt::top_k topk{.k = k};
  const ecopt::no_compression dense{};
  const ecopt::network_model nets[2] = {ecopt::network_model::ethernet_1g(),
                                        ecopt::network_model::ethernet_10g()};
  std::printf(
      "d = %zu, k = %zu (0.1 %%); bytes sent per worker per round (max over workers), "
      "modelled round time (ms)\n\n",
      d, k);
  std::printf(
      "|   P | gTop-k KB | top-k AG KB | dense KB | 1G: gTop-k | top-k AG | dense | "
      "10G: gTop-k | top-k AG | dense |\n");
  std::printf(
      "|----:|----------:|------------:|---------:|-----------:|---------:|------:|"
      "------------:|---------:|------:|\n");
  int crossover[2] = {0, 0};
  for (int p = 2; p <= max_workers; p *= 2) {
    round_cost cost[2][3];
    for (int n = 0; n < 2; ++n) {
      cost[n][0] = one_round(gtopk, p, d, nets[n]);
      cost[n][1] = one_round(topk, p, d, nets[n]);
      cost[n][2] = one_round(dense, p, d, nets[n]);
      if (crossover[n] == 0 && cost[n][0].seconds < cost[n][1].seconds) crossover[n] = p;
    }
    std::printf(
        "| %3d | %9.1f | %11.1f | %8.1f | %10.3f | %8.3f | %5.2f | %11.3f | %8.3f | %5.2f |\n", p,
        cost[0][0].bytes / 1e3, cost[0][1].bytes / 1e3, cost[0][2].bytes / 1e3,
        cost[0][0].seconds * 1e3, cost[0][1].seconds * 1e3, cost[0][2].seconds * 1e3,
        cost[1][0].seconds * 1e3, cost[1][1].seconds * 1e3, cost[1][2].seconds * 1e3);
  }
  for (int n = 0; n < 2; ++n) {
    if (crossover[n] != 0) {
      std::printf("\n%s: gTop-k's round is shorter than top-k allgather's from P = %d on",
                  n == 0 ? "1 Gbit/s" : "10 Gbit/s", crossover[n]);
    } else {
      std::printf("\n%s: gTop-k's round is not shorter than top-k allgather's up to P = %d",
                  n == 0 ? "1 Gbit/s" : "10 Gbit/s", max_workers);
    }
  }
  std::printf("\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "gtopk_traffic: %s\n", e.what());
  return 1;
}
