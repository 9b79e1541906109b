// count_sketch: the sketch against a brute-force replay of its hashes, linearity,
// recovery of planted heavy hitters, exact bits, corrupt payloads, and
// Sketched SGD's two-round aggregate on 1-5 thread ranks against a brute-force
// reference, plus a solver run that converges.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "contracts/contract_examples.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compressors/count_sketch.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problems/least_squares.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace count_sketch_test {

namespace {

using ecopt::count_sketch;
using ecopt::round_context;
using ecopt::test::harness;
using ecopt::test::random_vector;

static_assert(ecopt::AggregatingCompressor<count_sketch, float, ecopt::thread_transport>);
static_assert(ecopt::AggregatingCompressor<count_sketch, double, ecopt::thread_transport>);
static_assert(ecopt::FixedSizePayload<count_sketch>);
static_assert(!ecopt::UnbiasedCompressor<count_sketch> &&
              !ecopt::ContractiveCompressor<count_sketch>);
static_assert(!ecopt::SummableCompressor<count_sketch, float>);

round_context ctx_for(std::uint64_t seed, std::uint64_t round = 0, int rank = 0, int world = 1) {
  return round_context{.seed = seed, .round = round, .rank = rank, .world = world, .lr = 0.1};
}

/// Every coordinate's cell in every row, from the policy's slow `locate`.
struct cell_map {
  std::size_t rows = 0;
  std::size_t cols = 0;
  std::vector<count_sketch::cell> cells;  // rows x d
  cell_map(const count_sketch& c, std::uint64_t seed, std::size_t d)
      : rows(c.rows), cols(c.columns(d)), cells(c.rows * d) {
    for (std::size_t j = 0; j < rows; ++j)
      for (std::size_t i = 0; i < d; ++i) cells[j * d + i] = c.locate(seed, d, j, i);
  }
  [[nodiscard]] const count_sketch::cell& at(std::size_t j, std::size_t i, std::size_t d) const {
    return cells[j * d + i];
  }
};

/// The sketch of x in double precision, cell by cell.
std::vector<double> replay_sketch(const cell_map& m, const std::vector<double>& x) {
  const std::size_t d = x.size();
  std::vector<double> table(m.rows * m.cols, 0.0);
  for (std::size_t j = 0; j < m.rows; ++j) {
    for (std::size_t i = 0; i < d; ++i) {
      const auto& c = m.at(j, i, d);
      table[j * m.cols + c.column] += c.negative ? -x[i] : x[i];
    }
  }
  return table;
}

/// Median-of-rows estimates from a double table (mean of the middle two for even rows).
std::vector<double> replay_estimates(const cell_map& m, const std::vector<double>& table,
                                     std::size_t d) {
  std::vector<double> est(d);
  std::vector<double> v(m.rows);
  for (std::size_t i = 0; i < d; ++i) {
    for (std::size_t j = 0; j < m.rows; ++j) {
      const auto& c = m.at(j, i, d);
      const double t = table[j * m.cols + c.column];
      v[j] = c.negative ? -t : t;
    }
    std::sort(v.begin(), v.end());
    const std::size_t r = m.rows;
    est[i] = r % 2 == 1 ? v[r / 2] : 0.5 * (v[r / 2 - 1] + v[r / 2]);
  }
  return est;
}

/// Positions of the `keep` largest |v| (ties: lower position), increasing.
std::vector<std::uint32_t> top_by_magnitude(const std::vector<double>& v, std::size_t keep) {
  std::vector<std::uint32_t> order(v.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    return std::fabs(v[a]) > std::fabs(v[b]);
  });
  order.resize(std::min(keep, v.size()));
  std::sort(order.begin(), order.end());
  return order;
}

/// Checks that `got` (increasing) holds the `keep` positions of largest |v|,
/// up to near-ties: a float32 computation and its double replay may order two
/// values that are equal within `tolerance` either way (equal columns give
/// exactly equal estimates, so ties do occur).
void check_top(const std::vector<std::uint32_t>& got, const std::vector<double>& v,
               std::size_t keep, double tolerance) {
  const auto ref = top_by_magnitude(v, keep);
  REQUIRE(got.size() == ref.size());
  if (got == ref) return;
  double kth = INFINITY;
  for (const std::uint32_t i : ref) kth = std::min(kth, std::fabs(v[i]));
  std::vector<std::uint32_t> differ;
  std::set_symmetric_difference(got.begin(), got.end(), ref.begin(), ref.end(),
                                std::back_inserter(differ));
  for (const std::uint32_t i : differ) {
    CAPTURE(i);
    CHECK(std::fabs(std::fabs(v[i]) - kth) <= tolerance);
  }
}

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

}  // namespace

TEST_CASE("count_sketch: geometry, bits and validation") {
  const count_sketch c{};
  CHECK(c.rows == 5);
  CHECK(c.candidate_factor == 4);
  CHECK(c.exact_round);
  // Defaults: k = 0.1% of d, c = 10 k (the reference configuration), 4k candidates.
  CHECK(c.kept(100000) == 100);
  CHECK(c.columns(100000) == 1000);
  CHECK(c.candidates(100000) == 400);
  CHECK(c.bits(100000) == 32u * 5 * 1000);
  CHECK(c.max_bits(100000) == c.bits(100000));
  CHECK(c.aggregate_bits(100000) == 32u * (5 * 1000 + 400));
  CHECK(count_sketch{.exact_round = false}.aggregate_bits(100000) == 32u * 5 * 1000);
  CHECK(c.kept(1) == 1);
  CHECK(c.columns(1) == 10);
  CHECK(c.candidates(1) == 1);  // never more than d
  CHECK(c.block_size(1) == 10);
  CHECK(c.block_size(1000000) == 256);
  CHECK(count_sketch{.cols = 77}.columns(5000) == 77);
  CHECK(count_sketch{.col_ratio = 0.25}.columns(1000) == 250);
  CHECK(count_sketch{.cols = 9, .col_ratio = 0.25}.columns(1000) == 9);  // cols wins
  CHECK(count_sketch{.k = 7}.columns(1000) == 70);
  CHECK(count_sketch{.k = 30, .candidate_factor = 3}.candidates(100) == 90);
  CHECK(count_sketch{.k = 30, .candidate_factor = 4}.candidates(100) == 100);
  CHECK(count_sketch{.cols = 40, .block = 1000}.block_size(5000) == 40);

  auto rejects = [](const count_sketch& bad, const char* field) {
    CAPTURE(field);
    try {
      bad.validate();
      FAIL("validate() accepted a bad field");
    } catch (const ecopt::invalid_argument& e) {
      CHECK(std::string(e.what()).find(field) != std::string::npos);
    }
    CHECK_THROWS_AS((void)bad.make_state<float>(10), ecopt::invalid_argument);
  };
  rejects(count_sketch{.rows = 0}, "rows");
  rejects(count_sketch{.rows = 65}, "rows");
  rejects(count_sketch{.cols = (std::size_t{1} << 31) + 1}, "cols");
  rejects(count_sketch{.col_ratio = -0.5}, "col_ratio");
  rejects(count_sketch{.col_ratio = NAN}, "col_ratio");
  rejects(count_sketch{.ratio = 0.0}, "ratio");
  rejects(count_sketch{.ratio = 1.5}, "ratio");
  rejects(count_sketch{.candidate_factor = 0}, "candidate_factor");
  rejects(count_sketch{.block = 0}, "block");
  rejects(count_sketch{.block = (std::size_t{1} << 16) + 1}, "block");
  CHECK_THROWS_AS((void)c.make_state<double>(0), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)c.locate(1, 10, 5, 0), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)c.locate(1, 10, 0, 10), ecopt::invalid_argument);
}

TEST_CASE("count_sketch: the sketch and the estimates are those of the hashes") {
  constexpr std::size_t d = 1500;
  constexpr std::uint64_t seed = 17;
  // Wrapped blocks (B does not divide cols), the classic per-coordinate layout,
  // a block clamped to cols, and odd, even and one-row medians.
  const count_sketch configs[] = {
      count_sketch{.rows = 5, .cols = 97, .block = 10},
      count_sketch{.rows = 5, .cols = 64, .block = 1},
      count_sketch{.rows = 4, .cols = 50, .block = 1000},
      count_sketch{.rows = 3, .cols = 128, .block = 256},
      count_sketch{.rows = 1, .cols = 33, .block = 7},
      count_sketch{.rows = 7, .cols = 40, .block = 3, .seed_salt = 5},
  };
  for (const count_sketch& c : configs) {
    CAPTURE(c.rows);
    CAPTURE(c.cols);
    CAPTURE(c.block);
    const cell_map m(c, seed, d);
    // Every column is reachable and signs are balanced (a gross check of the hash).
    std::vector<int> hits(m.cols, 0);
    std::size_t negative = 0;
    for (std::size_t i = 0; i < d; ++i) {
      ++hits[m.at(0, i, d).column];
      negative += m.at(0, i, d).negative;
    }
    CHECK(std::count(hits.begin(), hits.end(), 0) == 0);
    CHECK(negative > d / 2 - 100);
    CHECK(negative < d / 2 + 100);

    for (const bool as_float : {true, false}) {
      const auto xf = random_vector<float>(d, 3);
      const auto x = as_double(xf);
      const auto ref = replay_sketch(m, x);
      std::vector<float> table(c.sketch_size(d));
      std::span<const float> est;
      if (as_float) {
        auto s = c.make_state<float>(d);
        c.sketch(std::span<const float>(xf), s, std::span<float>(table), ctx_for(seed));
        est = c.estimate(std::span<const float>(table), s, ctx_for(seed));
        const auto ref_est = replay_estimates(m, as_double(table), d);
        for (std::size_t i = 0; i < d; ++i) REQUIRE(est[i] == doctest::Approx(ref_est[i]));
      } else {
        auto s = c.make_state<double>(d);
        c.sketch(std::span<const double>(x), s, std::span<float>(table), ctx_for(seed));
        est = c.estimate(std::span<const float>(table), s, ctx_for(seed));
        const auto ref_est = replay_estimates(m, as_double(table), d);
        for (std::size_t i = 0; i < d; ++i) REQUIRE(est[i] == doctest::Approx(ref_est[i]));
      }
      for (std::size_t cell = 0; cell < table.size(); ++cell) {
        REQUIRE(table[cell] == doctest::Approx(ref[cell]).epsilon(1e-5).scale(1.0));
      }
    }
  }
}

TEST_CASE("count_sketch: hashes depend on the seed and salt only") {
  constexpr std::size_t d = 700;
  const count_sketch c{.cols = 50};
  const auto x = random_vector<double>(d, 4);
  harness<count_sketch, double> h(c, d);
  h.encode(x, ctx_for(8, 0, 0, 3));
  const auto base = h.payload;
  h.encode(x, ctx_for(8, 41, 2, 3));  // another round and rank: same hashes
  CHECK(h.payload == base);
  h.encode(x, ctx_for(9, 0, 0, 3));
  CHECK(h.payload != base);
  harness<count_sketch, double> salted(count_sketch{.cols = 50, .seed_salt = 1}, d);
  salted.encode(x, ctx_for(8, 0, 0, 3));
  CHECK(salted.payload != base);
}

TEST_CASE("count_sketch: the sketch is linear") {
  constexpr std::size_t d = 5000;
  for (const std::size_t block : {std::size_t{1}, std::size_t{64}}) {
    CAPTURE(block);
    const count_sketch c{.cols = 300, .block = block};
    auto s = c.make_state<float>(d);
    const auto x = random_vector<float>(d, 5);
    auto y = random_vector<float>(d, 6);
    for (auto& v : y) v *= 30.0f;  // different scales
    std::vector<float> xy(d);
    std::vector<float> absolute(d);
    for (std::size_t i = 0; i < d; ++i) {
      xy[i] = x[i] + y[i];
      absolute[i] = std::fabs(x[i]) + std::fabs(y[i]);
    }
    const std::size_t n = c.sketch_size(d);
    std::vector<float> sx(n);
    std::vector<float> sy(n);
    std::vector<float> sxy(n);
    std::vector<float> bound(n);
    const auto ctx = ctx_for(12);
    c.sketch(std::span<const float>(x), s, std::span<float>(sx), ctx);
    c.sketch(std::span<const float>(y), s, std::span<float>(sy), ctx);
    c.sketch(std::span<const float>(xy), s, std::span<float>(sxy), ctx);
    // Rounding: each cell sums d / cols terms; relative float error per add
    // 2^-24 against the sum of magnitudes in that cell.
    const cell_map m(c, 12, d);
    std::vector<double> cell_abs(n, 0.0);
    for (std::size_t j = 0; j < m.rows; ++j)
      for (std::size_t i = 0; i < d; ++i)
        cell_abs[j * m.cols + m.at(j, i, d).column] += absolute[i];
    const double per_add = std::ldexp(1.0, -24) * 4 * (d / m.cols + 1);
    bool nonzero = false;
    for (std::size_t cell = 0; cell < n; ++cell) {
      const double diff = static_cast<double>(sx[cell]) + sy[cell] - sxy[cell];
      REQUIRE(std::fabs(diff) <= per_add * cell_abs[cell]);
      nonzero = nonzero || sx[cell] != 0.0f;
    }
    CHECK(nonzero);
  }
}

TEST_CASE("count_sketch: planted heavy hitters are recovered among noise") {
  constexpr std::size_t d = std::size_t{1} << 16;
  constexpr std::size_t planted = 50;
  auto rng = ecopt::counter_rng::stream(21, ecopt::stream_purpose::test, 0, 0);
  std::vector<double> x(d);
  for (auto& v : x) v = 0.1 * rng.normal();
  std::vector<std::uint32_t> heavy;
  while (heavy.size() < planted) {
    const auto i = static_cast<std::uint32_t>(rng.below(d));
    if (std::find(heavy.begin(), heavy.end(), i) != heavy.end()) continue;
    heavy.push_back(i);
    x[i] = (rng.below(2) ? 1.0 : -1.0) * (10.0 + 10.0 * rng.uniform());
  }
  std::sort(heavy.begin(), heavy.end());
  double noise = 0;  // ||x||^2 without the planted coordinates
  for (std::size_t i = 0; i < d; ++i) {
    if (!std::binary_search(heavy.begin(), heavy.end(), static_cast<std::uint32_t>(i)))
      noise += x[i] * x[i];
  }

  for (const std::size_t block : {std::size_t{1}, std::size_t{256}}) {
    CAPTURE(block);
    constexpr std::size_t cols = 2000;
    const count_sketch c{.cols = cols, .block = block, .k = planted};
    harness<count_sketch, double> h(c, d);
    const auto ctx = ctx_for(77, 3, 1, 4);
    CHECK(h.encode(x, ctx) == 32u * 5 * cols);
    CHECK(h.payload.size() == 4u * 5 * cols);
    const auto est = c.estimate(std::span<const float>(h.state.table), h.state, ctx);

    // A row misestimates a planted coordinate by more than t only if another
    // planted one shares its column (probability <= 49/c) or the noise in it
    // exceeds t (Chebyshev: <= noise / (c t^2)); the median of five fails only
    // if three rows do, so with t = 4 each coordinate fails with probability
    // below 10 * 0.05^3 ~ 1e-3.
    constexpr double t = 4.0;
    const double row_fail = static_cast<double>(planted - 1) / cols + noise / (cols * t * t);
    REQUIRE(row_fail < 0.05);
    for (const std::uint32_t i : heavy) CHECK(std::fabs(est[i] - x[i]) <= t);

    // A noise coordinate outranks a planted one only when three of its rows
    // are corrupted, so all planted ones are among the 4k candidates ...
    const std::vector<double> estimates(est.begin(), est.end());
    const auto candidates = top_by_magnitude(estimates, 4 * planted);
    for (const std::uint32_t i : heavy)
      CHECK(std::binary_search(candidates.begin(), candidates.end(), i));

    // ... but a few such coordinates may enter the top k itself: recovery from
    // the sketch alone keeps most planted ones (the exact round fixes the rest).
    std::vector<double> out(d, 0.0);
    h.decode_add(h.payload, out, 1.0, ctx);
    std::size_t found = 0;
    for (const std::uint32_t i : h.state.selected) {
      found += std::binary_search(heavy.begin(), heavy.end(), i);
      CHECK(out[i] == static_cast<double>(est[i]));
    }
    CHECK(found >= planted - 5);
    CHECK(std::count_if(out.begin(), out.end(), [](double v) { return v != 0.0; }) == planted);

    // The two-round aggregate (one rank) returns exactly the planted set.
    auto got = ecopt::run_threads(1, [&](ecopt::thread_transport& tr) {
      auto s = c.make_state<double>(d);
      ecopt::collective_workspace ws;
      std::vector<double> own(d, 0.0);
      std::vector<double> sum(d, 0.0);
      c.aggregate(tr, std::span<const double>(x), s, std::span<double>(own), std::span<double>(sum),
                  ws, ctx);
      return std::vector<std::uint32_t>(s.selected.begin(), s.selected.end());
    });
    CHECK(got[0] == heavy);
  }
}

TEST_CASE("count_sketch: decode_add of a payload equals recovery from the sketch") {
  constexpr std::size_t d = 3000;
  const count_sketch c{.cols = 200, .block = 32, .k = 12};
  harness<count_sketch, float> h(c, d);
  const auto x = random_vector<float>(d, 31);
  const auto ctx = ctx_for(5, 2, 0, 2);
  h.encode(x, ctx);
  std::vector<float> a(d, 1.0f);
  h.decode_add(h.payload, a, -2.0f, ctx);
  auto s = c.make_state<float>(d);
  std::vector<float> table(c.sketch_size(d));
  c.sketch(std::span<const float>(x), s, std::span<float>(table), ctx);
  std::vector<float> b(d, 1.0f);
  c.add_heavy_hitters(std::span<const float>(table), s, std::span<float>(b), -2.0f, ctx);
  CHECK(a == b);
  CHECK(std::count_if(a.begin(), a.end(), [](float v) { return v != 1.0f; }) == 12);
}

TEST_CASE("count_sketch: corrupt payloads throw decode_error naming the field") {
  constexpr std::size_t d = 400;
  const count_sketch c{.cols = 20};
  harness<count_sketch, double> h(c, d);
  const auto ctx = ctx_for(2);
  h.encode(random_vector<double>(d, 7), ctx);
  const auto good = h.payload;
  std::vector<double> out(d, 0.0);
  auto fails_with = [&](const std::vector<std::byte>& p, const char* what) {
    CAPTURE(what);
    std::fill(out.begin(), out.end(), 0.0);
    try {
      h.decode_add(p, out, 1.0, ctx);
      FAIL("decode_add accepted a corrupt payload");
    } catch (const ecopt::decode_error& e) {
      CHECK(std::string(e.what()).find(what) != std::string::npos);
    }
    // A rejected payload leaves the output untouched.
    CHECK(std::all_of(out.begin(), out.end(), [](double v) { return v == 0.0; }));
  };
  auto p = good;
  p.pop_back();
  fails_with(p, "count_sketch");
  fails_with({}, "count_sketch");
  p = good;
  p.push_back(std::byte{0});
  fails_with(p, "count_sketch");
  for (const std::uint32_t bad : {0x7f800000u, 0xff800000u, 0x7fc00001u}) {
    p = good;
    const std::size_t at = 4 * 37;  // cell 37
    for (int b = 0; b < 4; ++b) p[at + b] = static_cast<std::byte>((bad >> (8 * b)) & 0xffu);
    fails_with(p, "count_sketch cell[37]");
  }
  REQUIRE_NOTHROW(h.decode_add(good, out, 1.0, ctx));
  // A sketch from a policy with another geometry is rejected by length.
  harness<count_sketch, double> other(count_sketch{.cols = 21}, d);
  other.encode(random_vector<double>(d, 7), ctx);
  fails_with(other.payload, "count_sketch");
}

namespace {

/// What one rank saw in an aggregate.
struct rank_result {
  std::vector<double> own;
  std::vector<double> sum;
  std::vector<std::uint32_t> candidates;
  std::vector<std::uint32_t> selected;
  std::uint64_t bits = 0;
  std::uint64_t allocations = 0;
};

/// Rank r's input: noise plus planted coordinates that are heavy on one rank
/// only, spread over all ranks, or partly cancelled between ranks.
std::vector<double> rank_input(std::size_t d, int rank, int world, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test,
                                        static_cast<std::uint64_t>(rank), 0);
  std::vector<double> x(d);
  for (auto& v : x) v = 0.3 * rng.normal();
  for (std::size_t q = 0; q < 30; ++q) {
    const std::size_t i = (q * 97 + 13) % d;
    const double mag = 5.0 + 0.5 * static_cast<double>(q);
    switch (q % 3) {
      case 0:
        if (static_cast<int>(q) % world == rank) x[i] += mag;
        break;
      case 1:
        x[i] += -mag / world;
        break;
      default:
        if (rank == 0) x[i] += 2 * mag;
        if (rank == 1) x[i] -= 3 * mag;
        break;
    }
  }
  return x;
}

template <class T>
std::vector<rank_result> run_aggregate(const count_sketch& c, int world, std::size_t d,
                                       std::uint64_t data_seed, const round_context& base) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    const auto xd = rank_input(d, t.rank(), world, data_seed);
    const std::vector<T> x(xd.begin(), xd.end());
    auto s = c.make_state<T>(d);
    ecopt::collective_workspace ws;
    std::vector<T> own(d);
    std::vector<T> sum(d);
    round_context ctx = base;
    ctx.rank = t.rank();
    ctx.world = world;
    rank_result r;
    std::uint64_t bits = 0;
    auto once = [&] {
      std::fill(own.begin(), own.end(), T(0));
      std::fill(sum.begin(), sum.end(), T(0));
      bits =
          c.aggregate(t, std::span<const T>(x), s, std::span<T>(own), std::span<T>(sum), ws, ctx);
      ++ctx.round;
    };
    for (int warm = 0; warm < 4; ++warm) once();
    {
      ecopt::test::allocation_scope scope;
      once();
      once();
      r.allocations = scope.count();
    }
    r.own.assign(own.begin(), own.end());
    r.sum.assign(sum.begin(), sum.end());
    r.candidates.assign(s.candidates.begin(), s.candidates.end());
    r.selected.assign(s.selected.begin(), s.selected.end());
    r.bits = bits;
    return r;
  });
}

/// Checks one aggregate against the brute-force replay of what it claims to compute.
template <class T>
void check_aggregate(const count_sketch& c, int world) {
  constexpr std::size_t d = 4000;
  constexpr std::uint64_t seed = 1234;
  constexpr std::uint64_t data_seed = 99;
  CAPTURE(world);
  CAPTURE(c.exact_round);
  const auto results = run_aggregate<T>(c, world, d, data_seed, ctx_for(seed));
  const std::size_t k = c.kept(d);
  const std::size_t m = c.candidates(d);

  // The true sum over ranks of what they send (float32 values).
  std::vector<std::vector<double>> xs;
  std::vector<double> total(d, 0.0);
  for (int r = 0; r < world; ++r) {
    const auto xd = rank_input(d, r, world, data_seed);
    std::vector<double> sent(d);
    for (std::size_t i = 0; i < d; ++i) {
      sent[i] = static_cast<float>(static_cast<T>(xd[i]));
      total[i] += sent[i];
    }
    xs.push_back(sent);
  }
  // Round 1 replayed: the sketch of the sum is the sum of the sketches.
  const cell_map cells(c, seed, d);
  const auto est = replay_estimates(cells, replay_sketch(cells, total), d);
  const double rounding = 1e-3;
  // All ranks agree on the candidates and the update's support.
  for (const auto& r : results) {
    CHECK(r.candidates == results[0].candidates);
    CHECK(r.selected == results[0].selected);
  }
  const std::vector<std::uint32_t>& selected = results[0].selected;
  std::vector<double> expected_value(d, 0.0);
  if (c.exact_round) {
    const std::vector<std::uint32_t>& cand = results[0].candidates;
    check_top(cand, est, m, rounding);
    // Round 2 replayed on those candidates: exact sums, then their top k.
    std::vector<double> exact(m);
    for (std::size_t p = 0; p < m; ++p) exact[p] = total[cand[p]];
    std::vector<std::uint32_t> positions;
    for (const std::uint32_t i : selected) {
      positions.push_back(
          static_cast<std::uint32_t>(std::lower_bound(cand.begin(), cand.end(), i) - cand.begin()));
      REQUIRE(positions.back() < m);
      REQUIRE(cand[positions.back()] == i);
    }
    check_top(positions, exact, k, rounding);
    for (const std::uint32_t i : selected) expected_value[i] = total[i];
  } else {
    check_top(selected, est, k, rounding);
    for (const std::uint32_t i : selected) expected_value[i] = est[i];
  }
  // The planted coordinates make the selection non-trivial: most are found.
  std::size_t planted_found = 0;
  for (const std::uint32_t i : selected) planted_found += std::fabs(total[i]) > 4.0;
  CHECK(planted_found >= k / 2);

  std::vector<double> own_total(d, 0.0);
  for (int r = 0; r < world; ++r) {
    CAPTURE(r);
    const rank_result& got = results[static_cast<std::size_t>(r)];
    CHECK(got.bits == c.aggregate_bits(d));
    CHECK(got.allocations == 0);
    // Every rank holds bitwise the same sum.
    CHECK(got.sum == results[0].sum);
    for (std::size_t i = 0; i < d; ++i) {
      const bool chosen = std::binary_search(selected.begin(), selected.end(), i);
      if (!chosen) {
        REQUIRE(got.sum[i] == 0.0);
        REQUIRE(got.own[i] == 0.0);
        continue;
      }
      REQUIRE(std::fabs(got.sum[i] - expected_value[i]) <= rounding);
      // own is exactly what this rank sent at the selected coordinates.
      REQUIRE(got.own[i] == xs[static_cast<std::size_t>(r)][i]);
      own_total[i] += got.own[i];
    }
  }
  if (c.exact_round) {
    // The update is the sum of what the ranks credit to themselves.
    for (std::size_t i = 0; i < d; ++i) {
      REQUIRE(results[0].sum[i] == doctest::Approx(own_total[i]).epsilon(1e-5).scale(1.0));
    }
  }
}

}  // namespace

TEST_CASE("count_sketch: aggregate on 1-5 ranks matches a brute-force replay") {
  // d = 4000 over 256 columns in blocks of 32 (blocks wrap), k = 20 of 40 candidates.
  const count_sketch c{.cols = 256, .block = 32, .k = 20, .candidate_factor = 2};
  for (int world = 1; world <= 5; ++world) check_aggregate<double>(c, world);
  check_aggregate<float>(c, 3);
  SUBCASE("one round: the update is the top-k estimates") {
    count_sketch one = c;
    one.exact_round = false;
    for (int world = 1; world <= 5; ++world) check_aggregate<double>(one, world);
  }
  SUBCASE("the classic per-coordinate layout") {
    count_sketch classic = c;
    classic.block = 1;
    for (const int world : {2, 4}) check_aggregate<double>(classic, world);
  }
}

TEST_CASE("count_sketch: aggregate rejects mismatched spans") {
  const count_sketch c{.cols = 16};
  CHECK_THROWS_AS(ecopt::run_threads(1,
                                     [&](ecopt::thread_transport& t) {
                                       auto s = c.make_state<double>(50);
                                       ecopt::collective_workspace ws;
                                       std::vector<double> x(50);
                                       std::vector<double> own(49);
                                       std::vector<double> sum(50);
                                       c.aggregate(t, std::span<const double>(x), s,
                                                   std::span<double>(own), std::span<double>(sum),
                                                   ws, ctx_for(1));
                                     }),
                  ecopt::invalid_argument);
}

TEST_CASE("count_sketch: Sketched SGD with error feedback solves least squares") {
  // Noise-free targets: every shard has the same minimizer x*, and stochastic
  // gradients vanish there, so the iterates converge to x* itself.
  constexpr Eigen::Index d = 40;
  constexpr Eigen::Index samples = 120;
  constexpr int world = 3;
  auto rng = ecopt::counter_rng::stream(5, ecopt::stream_purpose::test, 0, 0);
  Eigen::VectorXd x_star(d);
  for (Eigen::Index i = 0; i < d; ++i) x_star[i] = rng.normal();
  std::vector<Eigen::MatrixXd> features;
  std::vector<Eigen::VectorXd> targets;
  for (int r = 0; r < world; ++r) {
    Eigen::MatrixXd a(d, samples);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = rng.normal();
    targets.emplace_back(a.transpose() * x_star);
    features.push_back(std::move(a));
  }
  constexpr std::uint64_t steps = 600;
  for (const bool exact : {true, false}) {
    CAPTURE(exact);
    const count_sketch c{.cols = 60, .block = 4, .k = 6, .exact_round = exact};
    const ecopt::solver s{c, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.3}};
    auto out = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
      const auto r = static_cast<std::size_t>(t.rank());
      ecopt::least_squares p(features[r], targets[r], {.batch_size = 16});
      Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
      const auto report = s.run(t, p, x, {.steps = steps, .seed = 3});
      return std::pair{(x - x_star).norm() / x_star.norm(), report};
    });
    for (const auto& [error, report] : out) {
      CHECK(error < 1e-8);
      CHECK(report.payload_bits == steps * c.aggregate_bits(d));
      CHECK(report.history.back().loss < 1e-12 * report.history.front().loss);
    }
    CHECK(out[0].first == out[1].first);  // every rank holds the same iterate
  }
}

}  // namespace count_sketch_test
