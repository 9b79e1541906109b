// Compressor microbenchmark: every entry of the registry ecopt::all_compressors,
// encode and decode, at d = 2^10, 2^12, ..., 2^24 float32 coordinates, beside
// reference rows of the same sizes:
//   memcpy/<d>             -- copying the d * 4 input bytes (the bound to compare with);
//   nth_element_top_k/<d>  -- top_k's selection (k = 1%) done with std::nth_element:
//                             the baseline a radix select has to beat;
//   crc32c/<d>, crc32c_three_streams/<d> -- the CRC-32C of tcp_transport's frames over
//                             the d * 4 bytes (fastest path; SSE4.2 three streams).
// The input is one fixed-seed N(0, 1) vector per size, made once.
//
// Counters (every rate is per CPU second, as Google Benchmark's default):
//   bytes_per_second  -- input bytes, d * 4 per iteration, for every row
//                        (decode rows count the d * 4 bytes of the vector they rebuild);
//   x_memcpy          -- bytes_per_second / that of memcpy at the same d (added by the
//                        reporter below; 0.1 means ten times slower than memcpy);
//   bits_per_element  -- payload bits / d as counted by the bit_writer (for payloads
//                        of data-dependent size, the mean over the timed encodes);
//   rel_error         -- ||x - C(x)||^2 / ||x||^2 of one round from a fresh state,
//                        computed once per compressor and size, outside the timed loop.
//
// What is timed:
//   encode -- one `encode` into a payload buffer reserved for max_bits (so nothing is
//             allocated in the loop), round r on iteration r (fresh random draws);
//   decode -- one `decode_add` of a fixed payload into a d-float buffer. The scale
//             alternates +1, -1, so the buffer goes 0 -> C(x) -> 0 (exactly, as -1 * v
//             is exact) and is never zeroed, neither inside nor outside the timer: each
//             decode is the accumulate an aggregator does, at the cost of one into zeros.
// Only the generic Compressor API is used (make_state, max_bits, encode,
// decode_add), so new registry entries are benchmarked without code here.
// Compressors with their own exchange (AggregatingCompressor) are timed through
// that same standalone encode/decode. `bench_instance<C>` chooses a non-default
// instance where the default is not the one to report.
//
// Flags besides Google Benchmark's own (--benchmark_filter=..., --benchmark_min_time=0.05
// with this Debian 1.7.1: seconds as a plain number):
//   --ecopt_table[=FILE]        after the runs, a Markdown table to stdout (or FILE)
//   --ecopt_table_d=2^24,2^20   the sizes in the table (default: the largest size run)
//   --ecopt_min_d=2^10 --ecopt_max_d=2^24 --ecopt_multiplier=4   the sizes run
//   --ecopt_reference=false     do not add the memcpy rows to a --benchmark_filter
//
//   scripts/bench.sh --benchmark_filter=top_k
#include <benchmark/benchmark.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/all.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transports/detail/crc32c.hpp"

namespace {

/// The instance of a policy that is benchmarked: the default unless specialised.
/// `note` is shown beside the name in the table.
template <class C>
struct bench_instance {
  static C make() { return C{}; }
  static constexpr std::string_view note{};
};
template <>
struct bench_instance<ecopt::top_k> {
  static ecopt::top_k make() { return ecopt::top_k{.ratio = 0.01}; }
  static constexpr std::string_view note = "k = 1%";
};

constexpr std::uint64_t input_seed = 2024;
constexpr std::uint64_t run_seed = 1;

// ---------------------------------------------------------------------------------
// Options

struct options {
  std::size_t min_d = std::size_t{1} << 10;
  std::size_t max_d = std::size_t{1} << 24;
  std::size_t multiplier = 4;
  bool table = false;
  std::string table_file;               ///< empty: stdout
  std::vector<std::size_t> table_dims;  ///< empty: the largest size that ran
  bool reference = true;
};

/// Parses "16777216" or "2^24".
std::size_t parse_size(const std::string& flag, const std::string& text) {
  try {
    std::size_t used = 0;
    if (text.rfind("2^", 0) == 0) {
      const unsigned long e = std::stoul(text.substr(2), &used);
      if (used + 2 == text.size() && e < 63) return std::size_t{1} << e;
    } else {
      const unsigned long long v = std::stoull(text, &used);
      if (used == text.size() && v > 0) return static_cast<std::size_t>(v);
    }
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(flag + ": '" + text + "' is not a positive size (e.g. 4096 or 2^12)");
}

bool parse_bool(const std::string& flag, const std::string& text) {
  if (text == "true" || text == "1" || text.empty()) return true;
  if (text == "false" || text == "0") return false;
  throw std::invalid_argument(flag + ": '" + text + "' is not true or false");
}

/// Removes the --ecopt_* flags from argv and returns them; others are left for
/// benchmark::ReportUnrecognizedArguments.
options parse_options(int& argc, char** argv) {
  options o;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--ecopt_", 0) != 0) {
      argv[kept++] = argv[i];
      continue;
    }
    const auto eq = arg.find('=');
    const std::string flag = arg.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (flag == "--ecopt_table") {
      o.table = true;
      o.table_file = value;
    } else if (flag == "--ecopt_table_d") {
      std::stringstream ss(value);
      for (std::string item; std::getline(ss, item, ',');) {
        o.table_dims.push_back(parse_size(flag, item));
      }
    } else if (flag == "--ecopt_min_d") {
      o.min_d = parse_size(flag, value);
    } else if (flag == "--ecopt_max_d") {
      o.max_d = parse_size(flag, value);
    } else if (flag == "--ecopt_multiplier") {
      o.multiplier = parse_size(flag, value);
    } else if (flag == "--ecopt_reference") {
      o.reference = parse_bool(flag, value);
    } else {
      throw std::invalid_argument("unknown flag " + arg);
    }
  }
  argc = kept;
  argv[argc] = nullptr;
  if (o.multiplier < 2) throw std::invalid_argument("--ecopt_multiplier must be at least 2");
  if (o.max_d < o.min_d) throw std::invalid_argument("--ecopt_max_d must be >= --ecopt_min_d");
  return o;
}

void print_help() {
  benchmark::PrintDefaultHelp();
  std::fprintf(stdout,
               "ecopt flags:\n"
               "          [--ecopt_table[=FILE]]          Markdown table after the runs\n"
               "          [--ecopt_table_d=2^24,2^20]     sizes in the table (default: largest)\n"
               "          [--ecopt_min_d=2^10] [--ecopt_max_d=2^24] [--ecopt_multiplier=4]\n"
               "          [--ecopt_reference=true|false]  keep memcpy rows under a filter\n");
}

// ---------------------------------------------------------------------------------
// Inputs and per-row facts shared by the benchmark functions and the reporter

/// The N(0, 1) input of size d, made once.
const std::vector<float>& gaussian(std::size_t d) {
  static std::map<std::size_t, std::vector<float>> cache;
  auto [it, inserted] = cache.try_emplace(d);
  if (inserted) {
    auto rng = ecopt::counter_rng::stream(input_seed, ecopt::stream_purpose::test, 0, 0);
    it->second.resize(d);
    for (auto& v : it->second) v = static_cast<float>(rng.normal());
  }
  return it->second;
}

/// What a benchmark family measures, by its registered name.
struct family_info {
  std::string name;  ///< the compressor column of the table, as code
  std::string note;  ///< shown after the name
  std::string op;    ///< copy, select, encode, decode
};
std::map<std::string, family_info>& families() {
  static std::map<std::string, family_info> f;
  return f;
}

/// Payload bytes to reserve so that a bit_writer never grows the buffer: whole
/// 64-bit words plus the tail finish() may append.
std::size_t payload_capacity(std::uint64_t max_bits) {
  return static_cast<std::size_t>((max_bits + 63) / 64 * 8 + 8);
}

/// ||x - C(x)||^2 / ||x||^2 for one round from a fresh state, once per (family, d).
template <class C>
double relative_error(const std::string& family, const C& c, std::span<const float> x) {
  static std::map<std::pair<std::string, std::size_t>, double> cache;
  const auto key = std::make_pair(family, x.size());
  if (const auto it = cache.find(key); it != cache.end()) return it->second;
  auto s = c.template make_state<float>(x.size());
  std::vector<std::byte> buf;
  buf.reserve(payload_capacity(c.max_bits(x.size())));
  ecopt::bit_writer w(buf);
  const ecopt::round_context ctx{.seed = run_seed};
  c.encode(x, s, w, ctx);
  w.finish();
  std::vector<float> out(x.size(), 0.0f);
  ecopt::bit_reader r(buf);
  c.decode_add(r, s, std::span<float>(out), 1.0f, ctx);
  double num = 0;
  double den = 0;
  for (std::size_t j = 0; j < x.size(); ++j) {
    const double e = static_cast<double>(x[j]) - static_cast<double>(out[j]);
    num += e * e;
    den += static_cast<double>(x[j]) * static_cast<double>(x[j]);
  }
  return cache[key] = num / den;
}

void set_input_rate(benchmark::State& st, std::size_t d) {
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) *
                       static_cast<std::int64_t>(d * sizeof(float)));
}

// ---------------------------------------------------------------------------------
// Benchmark functions

template <class C>
void encode_bench(benchmark::State& st, const std::string& family) {
  const auto d = static_cast<std::size_t>(st.range(0));
  try {
    const C c = bench_instance<C>::make();
    const std::span<const float> x(gaussian(d));
    const double err = relative_error(family, c, x);
    auto s = c.template make_state<float>(d);
    std::vector<std::byte> buf;
    buf.reserve(payload_capacity(c.max_bits(d)));
    std::uint64_t total_bits = 0;
    std::uint64_t round = 0;
    for (auto _ : st) {
      ecopt::bit_writer w(buf);
      c.encode(x, s, w, ecopt::round_context{.seed = run_seed, .round = round++});
      total_bits += w.bits();
      benchmark::DoNotOptimize(w.finish().data());
      benchmark::ClobberMemory();
    }
    set_input_rate(st, d);
    st.counters["bits_per_element"] = static_cast<double>(total_bits) /
                                      static_cast<double>(st.iterations()) / static_cast<double>(d);
    st.counters["rel_error"] = err;
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());
  }
}

template <class C>
void decode_bench(benchmark::State& st, const std::string& family) {
  const auto d = static_cast<std::size_t>(st.range(0));
  try {
    const C c = bench_instance<C>::make();
    const std::span<const float> x(gaussian(d));
    const double err = relative_error(family, c, x);
    auto s = c.template make_state<float>(d);
    std::vector<std::byte> buf;
    buf.reserve(payload_capacity(c.max_bits(d)));
    const ecopt::round_context ctx{.seed = run_seed};
    ecopt::bit_writer w(buf);
    c.encode(x, s, w, ctx);
    const std::uint64_t bits = w.bits();
    w.finish();
    std::vector<float> out(d, 0.0f);
    const std::span<float> o(out);
    float scale = 1.0f;
    for (auto _ : st) {
      ecopt::bit_reader r(buf);
      c.decode_add(r, s, o, scale, ctx);
      scale = -scale;
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
    set_input_rate(st, d);
    st.counters["bits_per_element"] = static_cast<double>(bits) / static_cast<double>(d);
    st.counters["rel_error"] = err;
  } catch (const std::exception& e) {
    st.SkipWithError(e.what());
  }
}

void memcpy_bench(benchmark::State& st) {
  const auto d = static_cast<std::size_t>(st.range(0));
  const auto& x = gaussian(d);
  std::vector<float> y(d);
  for (auto _ : st) {
    std::memcpy(y.data(), x.data(), d * sizeof(float));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_input_rate(st, d);
  st.counters["bits_per_element"] = 32;
  st.counters["rel_error"] = 0;
}

/// The CRC-32C that tcp_transport's frames carry, over the d * 4 input bytes:
/// what checking a message costs beside copying it. `folding` false times the
/// three crc32 streams (SSE4.2) even where the AVX-512 folding path exists.
void crc32c_bench(benchmark::State& st, bool folding) {
  const auto d = static_cast<std::size_t>(st.range(0));
  const auto bytes = std::as_bytes(std::span(gaussian(d)));
  if (!folding && !ecopt::detail::crc32c_hardware_available()) {
    st.SkipWithError("this CPU has no SSE4.2 crc32 instruction");
    return;
  }
  for (auto _ : st) {
    std::uint32_t crc = 0;
#if ECOPT_DETAIL_CRC32C_HW
    crc = folding ? ecopt::detail::crc32c(bytes)
                  : ~ecopt::detail::crc32c_update_sse42(0xFFFFFFFFu, bytes.data(), bytes.size());
#else
    crc = ecopt::detail::crc32c(bytes);
#endif
    benchmark::DoNotOptimize(crc);
  }
  set_input_rate(st, d);
}

/// top_k's selection (the k largest magnitudes, the lower index first on ties, in
/// index order) with the standard library: copy |x|, std::nth_element for the
/// k-th largest magnitude, one pass to collect the indices. No payload is written.
void nth_element_top_k_bench(benchmark::State& st) {
  const auto d = static_cast<std::size_t>(st.range(0));
  const auto& x = gaussian(d);
  const std::size_t k = bench_instance<ecopt::top_k>::make().kept(d);
  std::vector<float> mag(d);
  std::vector<std::uint32_t> chosen(k);
  for (auto _ : st) {
    for (std::size_t j = 0; j < d; ++j) mag[j] = std::fabs(x[j]);
    const auto kth = mag.begin() + static_cast<std::ptrdiff_t>(k - 1);
    std::nth_element(mag.begin(), kth, mag.end(), std::greater<>());
    const float t = *kth;
    // Everything above t is in mag[0, k - 1); the rest of the k are ties with t.
    std::size_t ties = k - static_cast<std::size_t>(
                               std::count_if(mag.begin(), kth, [t](float m) { return m > t; }));
    std::size_t n = 0;
    for (std::size_t j = 0; j < d; ++j) {
      const float a = std::fabs(x[j]);
      if (a > t) {
        chosen[n++] = static_cast<std::uint32_t>(j);
      } else if (a == t && ties > 0) {
        chosen[n++] = static_cast<std::uint32_t>(j);
        --ties;
      }
    }
    benchmark::DoNotOptimize(chosen.data());
    benchmark::ClobberMemory();
  }
  set_input_rate(st, d);
}

// ---------------------------------------------------------------------------------
// Registration

struct registrar {
  std::vector<std::int64_t> sizes;
  std::set<std::string> used;

  /// A unique family name (two registry entries could share a policy name).
  std::string unique(std::string name) {
    std::string candidate = name;
    for (int i = 2; used.count(candidate) != 0; ++i) candidate = name + "#" + std::to_string(i);
    used.insert(candidate);
    return candidate;
  }

  template <class Fn, class... Args>
  void add(const std::string& family, family_info info, Fn&& fn, Args&&... args) {
    families()[family] = std::move(info);
    auto* b = benchmark::RegisterBenchmark(family.c_str(), std::forward<Fn>(fn),
                                           std::forward<Args>(args)...);
    for (const auto d : sizes) b->Arg(d);
    b->Unit(benchmark::kMicrosecond);
  }

  template <class C>
  void add_compressor() {
    static_assert(ecopt::Compressor<C, float>, "registry entries must be Compressor<C, float>");
    const std::string name = unique(std::string(ecopt::policy_name<C>()));
    const std::string note(bench_instance<C>::note);
    const std::string enc = name + "/encode";
    const std::string dec = name + "/decode";
    add(enc, {name, note, "encode"}, encode_bench<C>, enc);
    add(dec, {name, note, "decode"}, decode_bench<C>, dec);
  }

  template <class... C>
  void add_registry(std::tuple<C...>*) {
    (add_compressor<C>(), ...);
  }
};

// ---------------------------------------------------------------------------------
// Reporter: adds x_memcpy to the runs, passes them on to the display reporter
// chosen by --benchmark_format, and keeps them for the Markdown table.

class table_reporter final : public benchmark::BenchmarkReporter {
 public:
  explicit table_reporter(benchmark::BenchmarkReporter* inner) : inner_(inner) {
    SetOutputStream(&inner->GetOutputStream());
    SetErrorStream(&inner->GetErrorStream());
  }

  bool ReportContext(const Context& context) override {
    cpus_ = context.cpu_info.num_cpus;
    mhz_ = context.cpu_info.cycles_per_second / 1e6;
    return inner_->ReportContext(context);
  }

  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> annotated = runs;
    for (auto& run : annotated) annotate(run);
    inner_->ReportRuns(annotated);
  }

  void Finalize() override { inner_->Finalize(); }

  /// The Markdown table for the sizes asked for (default: the largest that ran).
  [[nodiscard]] std::string markdown(std::vector<std::size_t> dims) const {
    if (dims.empty()) {  // the largest size a row other than memcpy ran at
      std::size_t largest = 0;
      std::size_t largest_any = 0;
      for (const auto& r : rows_) {
        largest_any = std::max(largest_any, r.d);
        if (r.family != "memcpy") largest = std::max(largest, r.d);
      }
      if (largest_any == 0) return "No benchmark ran: no table.\n";
      dims.push_back(largest != 0 ? largest : largest_any);
    }
    std::ostringstream out;
    out << "| compressor | op | d | input GiB/s | x memcpy | bits/element | rel. error |\n"
        << "|---|---|--:|--:|--:|--:|--:|\n";
    for (const std::size_t d : dims) {
      for (const auto& r : rows_) {
        if (r.d != d) continue;
        out << "| " << cell(r.label) << " | " << r.op << " | " << size_text(d) << " | ";
        if (r.error) {
          out << "error: " << cell(r.message) << " | | | |\n";
          continue;
        }
        out << fixed3(r.bytes_per_second / (1024.0 * 1024.0 * 1024.0)) << " | "
            << (r.x_memcpy > 0 ? fixed3(r.x_memcpy) : "-") << " | "
            << (r.bits_per_element >= 0 ? general(r.bits_per_element, 4) : "-") << " | "
            << (r.rel_error >= 0 ? general(r.rel_error, 3) : "-") << " |\n";
      }
    }
    out << "\nfloat32 N(0, 1) input; rates per CPU second (" << cpus_ << " CPUs at "
        << general(mhz_, 4) << " MHz)";
#ifdef NDEBUG
    out << ".\n";
#else
    out << "; built without NDEBUG (not a release build).\n";
#endif
    return out.str();
  }

 private:
  struct row {
    std::string family;
    std::string label;
    std::string op;
    std::size_t d = 0;
    bool error = false;
    std::string message;
    double bytes_per_second = 0;
    double x_memcpy = -1;
    double bits_per_element = -1;
    double rel_error = -1;
  };

  static std::string cell(const std::string& text) {  // one Markdown table cell
    std::string out;
    for (const char ch : text) {
      if (ch == '|') out += '\\';
      out += ch == '\n' ? ' ' : ch;
    }
    return out;
  }
  static std::string size_text(std::size_t d) {
    if (d != 0 && (d & (d - 1)) == 0) {
      return "2^" + std::to_string(std::countr_zero(static_cast<std::uint64_t>(d)));
    }
    return std::to_string(d);
  }
  static std::string fixed3(double v) {  // three significant digits without exponents
    if (!(v > 0) || !std::isfinite(v)) return general(v, 3);
    char rounded[32];
    std::snprintf(rounded, sizeof rounded, "%.2e", v);
    const int exponent = std::atoi(std::strchr(rounded, 'e') + 1);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", std::clamp(2 - exponent, 0, 9),
                  std::strtod(rounded, nullptr));
    return buf;
  }
  static std::string general(double v, int digits) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    return buf;
  }
  static double counter(const Run& run, const char* name, double missing) {
    const auto it = run.counters.find(name);
    return it == run.counters.end() ? missing : it->second.value;
  }

  // The runs the table shows: iterations, replaced by the median aggregate when
  // --benchmark_repetitions asked for one.
  void annotate(Run& run) {
    const bool iteration = run.run_type == Run::RT_Iteration;
    const bool central = run.run_type == Run::RT_Aggregate &&
                         (run.aggregate_name == "median" || run.aggregate_name == "mean");
    if (!iteration && !central) return;
    const std::string family = run.run_name.function_name;
    std::size_t d = 0;
    try {
      d = static_cast<std::size_t>(std::stoull(run.run_name.args));
    } catch (const std::exception&) {
      return;
    }
    const double bps = counter(run, "bytes_per_second", 0);
    const auto ref_key = std::make_pair(d, run.aggregate_name);
    if (!run.error_occurred && family == "memcpy" && bps > 0) memcpy_[ref_key] = bps;
    double ratio = -1;
    if (const auto it = memcpy_.find(ref_key);
        it != memcpy_.end() && bps > 0 && !run.error_occurred) {
      ratio = bps / it->second;
      run.counters["x_memcpy"] = benchmark::Counter(ratio);
    }
    if (!iteration && run.aggregate_name != "median") return;

    row r;
    r.family = family;
    r.d = d;
    if (const auto it = families().find(family); it != families().end()) {
      r.label = "`" + it->second.name + "`";
      if (!it->second.note.empty()) r.label += " (" + it->second.note + ")";
      r.op = it->second.op;
    } else {
      r.label = "`" + family + "`";
    }
    r.error = run.error_occurred;
    r.message = run.error_message;
    r.bytes_per_second = bps;
    r.x_memcpy = ratio;
    r.bits_per_element = counter(run, "bits_per_element", -1);
    r.rel_error = counter(run, "rel_error", -1);
    // One row per (family, d): a median replaces the repetitions it summarises.
    const auto same = [&](const row& o) { return o.family == r.family && o.d == r.d; };
    if (auto it = std::find_if(rows_.begin(), rows_.end(), same); it != rows_.end()) {
      *it = std::move(r);
    } else {
      rows_.push_back(std::move(r));
    }
  }

  benchmark::BenchmarkReporter* inner_;
  std::vector<row> rows_;
  std::map<std::pair<std::size_t, std::string>, double> memcpy_;
  int cpus_ = 0;
  double mhz_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv, print_help);
  options opt;
  try {
    opt = parse_options(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "compressors: " << e.what() << "\n";
    return 1;
  }
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  registrar reg;
  for (std::size_t d = opt.min_d; d <= opt.max_d; d *= opt.multiplier) {
    reg.sizes.push_back(static_cast<std::int64_t>(d));
    if (d > opt.max_d / opt.multiplier) break;
  }
  reg.add(reg.unique("memcpy"), {"memcpy", "", "copy"}, memcpy_bench);
  reg.add(reg.unique("nth_element_top_k"), {"std::nth_element", "k = 1%", "select"},
          nth_element_top_k_bench);
  reg.add(reg.unique("crc32c"), {"CRC-32C", "fastest path", "checksum"}, crc32c_bench, true);
  reg.add(reg.unique("crc32c_three_streams"), {"CRC-32C", "SSE4.2 crc32, 3 streams", "checksum"},
          crc32c_bench, false);
  reg.add_registry(static_cast<ecopt::all_compressors*>(nullptr));

  // A filter that leaves memcpy out would leave x_memcpy empty: add it back.
  const std::string filter = benchmark::GetBenchmarkFilter();
  if (opt.reference && !filter.empty() && filter != "." && filter != "all" && filter[0] != '-') {
    benchmark::SetBenchmarkFilter("(" + filter + ")|^memcpy/");
  }

  table_reporter reporter(benchmark::CreateDefaultDisplayReporter());
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  if (opt.table) {
    const std::string table = reporter.markdown(opt.table_dims);
    if (opt.table_file.empty()) {
      std::cout << "\n" << table << std::flush;
    } else {
      std::ofstream f(opt.table_file);
      f << table;
      if (!f) {
        std::cerr << "compressors: cannot write " << opt.table_file << "\n";
        return 1;
      }
    }
  }
  return 0;
}
