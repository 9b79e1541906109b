// Compressor microbenchmark: every compressor of the registry
// (ecopt::all_compressors), encode and decode, d = 2^10 .. 2^24 float32, beside
// memcpy of the same bytes (the reference row) and std::nth_element over the
// magnitudes (the baseline exact top-k selection is compared with).
// Counters: bytes_per_second of input, bits per element, and the relative error
// ||x - C(x)||^2 / ||x||^2 of the decoded payload.
//
//   build/release/bench/compressors --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "ecopt/compressors/all.hpp"
#include "ecopt/counter_rng.hpp"

namespace {

std::vector<float> gaussian(std::size_t d) {
  auto rng = ecopt::counter_rng::stream(2024, ecopt::stream_purpose::test, 0, 0);
  std::vector<float> x(d);
  for (auto& v : x) v = static_cast<float>(rng.normal());
  return x;
}

void set_input_rate(benchmark::State& st, std::size_t d) {
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) *
                       static_cast<std::int64_t>(d * sizeof(float)));
}

template <class C>
double relative_error(const C& c, std::span<const float> x) {
  auto s = c.template make_state<float>(x.size());
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  const ecopt::round_context ctx{.seed = 1};
  c.encode(x, s, w, ctx);
  w.finish();
  std::vector<float> out(x.size(), 0.0f);
  ecopt::bit_reader r(buf);
  c.decode_add(r, s, std::span<float>(out), 1.0f, ctx);
  double num = 0, den = 0;
  for (std::size_t j = 0; j < x.size(); ++j) {
    num += (double(x[j]) - out[j]) * (double(x[j]) - out[j]);
    den += double(x[j]) * x[j];
  }
  return num / den;
}

template <class C>
void encode_bench(benchmark::State& st) {
  const C c{};
  const auto d = static_cast<std::size_t>(st.range(0));
  const auto x = gaussian(d);
  auto s = c.template make_state<float>(d);
  std::vector<std::byte> buf;
  buf.reserve(static_cast<std::size_t>((c.max_bits(d) + 7) / 8 + 8));
  std::uint64_t bits = 0;
  std::uint64_t round = 0;
  for (auto _ : st) {
    ecopt::bit_writer w(buf);
    c.encode(std::span<const float>(x), s, w, {.seed = 1, .round = round++});
    bits = w.bits();
    benchmark::DoNotOptimize(w.finish().data());
  }
  set_input_rate(st, d);
  st.counters["bits_per_element"] = static_cast<double>(bits) / static_cast<double>(d);
  st.counters["rel_error"] = relative_error(c, std::span<const float>(x));
}

template <class C>
void decode_bench(benchmark::State& st) {
  const C c{};
  const auto d = static_cast<std::size_t>(st.range(0));
  const auto x = gaussian(d);
  auto s = c.template make_state<float>(d);
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  const ecopt::round_context ctx{.seed = 1};
  c.encode(std::span<const float>(x), s, w, ctx);
  const std::uint64_t bits = w.bits();
  w.finish();
  std::vector<float> out(d, 0.0f);
  for (auto _ : st) {
    ecopt::bit_reader r(buf);
    c.decode_add(r, s, std::span<float>(out), 1.0f, ctx);
    benchmark::DoNotOptimize(out.data());
  }
  set_input_rate(st, d);
  st.counters["bits_per_element"] = static_cast<double>(bits) / static_cast<double>(d);
}

void memcpy_bench(benchmark::State& st) {
  const auto d = static_cast<std::size_t>(st.range(0));
  const auto x = gaussian(d);
  std::vector<float> y(d);
  for (auto _ : st) {
    std::memcpy(y.data(), x.data(), d * sizeof(float));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_input_rate(st, d);
  st.counters["bits_per_element"] = 32;
}

/// The baseline of exact top-k 1%: nth_element over (magnitude, index) pairs.
void nth_element_top_k_bench(benchmark::State& st) {
  const auto d = static_cast<std::size_t>(st.range(0));
  const auto x = gaussian(d);
  const std::size_t k = ecopt::top_k{}.kept(d);
  std::vector<std::uint32_t> idx(d);
  for (auto _ : st) {
    for (std::size_t j = 0; j < d; ++j) idx[j] = static_cast<std::uint32_t>(j);
    std::nth_element(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k - 1), idx.end(),
                     [&](std::uint32_t a, std::uint32_t b) {
                       const float ma = std::fabs(x[a]), mb = std::fabs(x[b]);
                       return ma > mb || (ma == mb && a < b);
                     });
    std::sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k));
    benchmark::DoNotOptimize(idx.data());
  }
  set_input_rate(st, d);
}

void sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t d = 1 << 10; d <= (1 << 24); d *= 4) b->Arg(d);
  b->Unit(benchmark::kMicrosecond);
}

template <class... C>
void register_all(std::tuple<C...>*) {
  (benchmark::RegisterBenchmark((std::string(ecopt::policy_name<C>()) + "/encode").c_str(),
                                encode_bench<C>)
       ->Apply(sizes),
   ...);
  (benchmark::RegisterBenchmark((std::string(ecopt::policy_name<C>()) + "/decode").c_str(),
                                decode_bench<C>)
       ->Apply(sizes),
   ...);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::RegisterBenchmark("memcpy", memcpy_bench)->Apply(sizes);
  benchmark::RegisterBenchmark("nth_element_top_k", nth_element_top_k_bench)->Apply(sizes);
  register_all(static_cast<ecopt::all_compressors*>(nullptr));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
