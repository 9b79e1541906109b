// What gradient_exchange costs over the steps it wraps: per round, the same
// work written out by hand (encode, decode this rank's payload, allgather the
// payloads, decode every other one; or the compressor's own aggregate) beside
// one exchange call (with and without its finiteness check of the gradient,
// `exchange_options::check_finite`), on thread_transport ranks, for the layers of an MLP
// 784-256-10. The variants run interleaved, repetition after repetition, so a
// slow spell of the machine hits all of them alike; the table gives the median
// time per round over the repetitions and the exchange's overhead.
//
//   exchange [--ranks 2] [--rounds 200] [--repetitions 11]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/ecopt.hpp"

namespace {

ecopt::parameter_layout mlp_layers() {
  ecopt::parameter_layout layout;
  layout.add_matrix("W1", 256, 784)
      .add_vector("b1", 256)
      .add_matrix("W2", 10, 256)
      .add_vector("b2", 10);
  return layout;
}

std::vector<float> gradient(std::size_t d, int rank) {
  auto rng = ecopt::counter_rng::stream(7, ecopt::stream_purpose::test,
                                        static_cast<std::uint64_t>(rank), 0);
  std::vector<float> g(d);
  for (float& v : g) v = static_cast<float>(rng.normal());
  return g;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct timings {
  std::vector<double> bare, wrapped, unchecked;
};

/// Seconds per round of the hand-written steps and of the exchange (with and
/// without its check that the gradient is finite), one of each per repetition,
/// measured on rank 0.
template <class C>
timings measure(const C& c, int ranks, int rounds, int repetitions) {
  const std::size_t d = mlp_layers().end();
  timings out;
  ecopt::run_threads(ranks, [&](ecopt::thread_transport& t) {
    const auto g = gradient(d, t.rank());
    // By hand.
    auto state = c.template make_state<float>(d);
    std::vector<float> own(d), sum(d), direction(d);
    std::vector<std::byte> payload;
    payload.reserve(static_cast<std::size_t>(c.max_bits(d) / 8 + 8));
    std::vector<std::vector<std::byte>> gathered;
    ecopt::collective_workspace ws;
    auto by_hand = [&](std::uint64_t round) {
      const ecopt::round_context ctx{
          .seed = 1, .round = round, .rank = t.rank(), .world = t.size(), .lr = 0.1};
      std::fill(own.begin(), own.end(), 0.0f);
      std::fill(sum.begin(), sum.end(), 0.0f);
      if constexpr (ecopt::AggregatingCompressor<C, float, ecopt::thread_transport>) {
        c.aggregate(t, std::span<const float>(g), state, std::span<float>(own),
                    std::span<float>(sum), ws, ctx);
      } else {
        ecopt::bit_writer w(payload);
        c.encode(std::span<const float>(g), state, w, ctx);
        const auto bytes = w.finish();
        ecopt::bit_reader mine(bytes);
        c.decode_add(mine, state, std::span<float>(own), 1.0f, ctx);
        ecopt::allgather_bytes(t, bytes, gathered);
        for (int r = 0; r < t.size(); ++r) {
          if (r == t.rank()) continue;
          ecopt::round_context from = ctx;
          from.rank = r;
          ecopt::bit_reader in(gathered[static_cast<std::size_t>(r)]);
          c.decode_add(in, state, std::span<float>(sum), 1.0f, from);
        }
        for (std::size_t j = 0; j < d; ++j) sum[j] += own[j];
      }
      const float inv = 1.0f / static_cast<float>(t.size());
      for (std::size_t j = 0; j < d; ++j) direction[j] = sum[j] * inv;
    };
    ecopt::gradient_exchange exchange(c, ecopt::no_compensation{}, d, {.seed = 1});
    auto through_exchange = [&](std::uint64_t round) {
      exchange(t, std::span<const float>(g), std::span<float>(direction),
               {.round = round, .lr = 0.1});
    };
    ecopt::gradient_exchange trusting(c, ecopt::no_compensation{}, d,
                                      {.seed = 1, .check_finite = false});
    auto through_trusting = [&](std::uint64_t round) {
      trusting(t, std::span<const float>(g), std::span<float>(direction),
               {.round = round, .lr = 0.1});
    };
    auto timed = [&](auto&& body, std::uint64_t first) {
      ecopt::barrier(t, ws);
      const auto start = std::chrono::steady_clock::now();
      for (int r = 0; r < rounds; ++r) body(first + static_cast<std::uint64_t>(r));
      ecopt::barrier(t, ws);
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
             rounds;
    };
    timed(by_hand, 0);  // warm-up
    timed(through_exchange, 0);
    timed(through_trusting, 0);
    std::uint64_t next = static_cast<std::uint64_t>(rounds);
    for (int rep = 0; rep < repetitions; ++rep, next += static_cast<std::uint64_t>(rounds)) {
      const double a = timed(by_hand, next);
      const double b = timed(through_exchange, next);
      const double u = timed(through_trusting, next);
      if (t.rank() == 0) {
        out.bare.push_back(a);
        out.wrapped.push_back(b);
        out.unchecked.push_back(u);
      }
    }
    return 0;
  });
  return out;
}

template <class C>
void row(const char* name, const C& c, int ranks, int rounds, int repetitions) {
  const timings m = measure(c, ranks, rounds, repetitions);
  const double a = median(m.bare);
  const double b = median(m.wrapped);
  const double u = median(m.unchecked);
  std::printf("| %-30s | %8.1f | %8.1f | %+6.1f %% | %8.1f | %+6.1f %% |\n", name, 1e6 * a, 1e6 * b,
              100 * (b / a - 1), 1e6 * u, 100 * (u / a - 1));
}

}  // namespace

int main(int argc, char** argv) try {
  int ranks = 2, rounds = 200, repetitions = 11;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (i + 1 >= argc) throw ecopt::invalid_argument(std::string(arg) + " needs a value");
    const int v = std::stoi(argv[++i]);
    if (arg == "--ranks") {
      ranks = v;
    } else if (arg == "--rounds") {
      rounds = v;
    } else if (arg == "--repetitions") {
      repetitions = v;
    } else {
      throw ecopt::invalid_argument("unknown argument " + std::string(arg) +
                                    " (known: --ranks --rounds --repetitions)");
    }
  }
  std::printf(
      "gradient_exchange vs the same steps by hand: MLP 784-256-10 layers (d = %zu), "
      "%d thread ranks, %d rounds x %d repetitions, median us per round\n\n",
      mlp_layers().end(), ranks, rounds, repetitions);
  std::printf("| %-30s | %8s | %8s | %8s | %8s | %8s |\n", "compressor", "by hand", "exchange",
              "overhead", "no check", "overhead");
  std::printf("|---|--:|--:|--:|--:|--:|\n");
  const auto layers = mlp_layers();
  row("top_k 1% (global)", ecopt::top_k{.ratio = 0.01}, ranks, rounds, repetitions);
  row("per_block<top_k 1%>",
      ecopt::per_block<ecopt::top_k>{.compressor = {.ratio = 0.01}, .layout = layers}, ranks,
      rounds, repetitions);
  row("per_block<power_sgd rank 4>",
      ecopt::per_block<ecopt::power_sgd>{.compressor = {.rank = 4}, .layout = layers}, ranks,
      rounds, repetitions);
  row("qsgd s=4", ecopt::qsgd{.levels = 4}, ranks, rounds, repetitions);
  return EXIT_SUCCESS;
} catch (const std::exception& e) {
  std::fprintf(stderr, "exchange: %s\n", e.what());
  return EXIT_FAILURE;
}
