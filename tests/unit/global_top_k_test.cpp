// gTop-k (compressors/global_top_k.hpp): the merge against a single-threaded
// replay of the same tree, its properties (at most k entries, identical on
// every rank, exact error-feedback bookkeeping, exact top-k where theory says
// so), exact bit counts, the set codec with indices above 2^24, corrupt
// messages, no allocation after warm-up, and a solver run.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "contracts/contract_examples.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compressors/all.hpp"
#include "ecopt/compressors/global_top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problems/least_squares.hpp"
#include "ecopt/problems/shard.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace global_top_k_test {

static_assert(ecopt::AggregatingCompressor<ecopt::global_top_k, float, ecopt::thread_transport>);
static_assert(ecopt::AggregatingCompressor<ecopt::global_top_k, double, ecopt::thread_transport>);
static_assert(!ecopt::AggregatingCompressor<ecopt::top_k, double, ecopt::thread_transport>);

namespace {

using ecopt::global_top_k;
using ecopt::round_context;

// ---------------------------------------------------------------------------
// The reference: the same tree merge replayed in one thread with ordered maps,
// recording which ranks' values each entry holds and the size of every set a
// rank sends.

struct ref_entry {
  float value = 0;
  std::set<int> ranks;  // ranks whose values are summed in this entry
};
using ref_set = std::map<std::uint32_t, ref_entry>;

/// Top-k of x by |x| (lower index first on ties) over its nonzero entries, as
/// float32 without zeros: what a rank contributes.
template <class T>
ref_set ref_local(const std::vector<T>& x, std::size_t k, int rank) {
  std::vector<std::uint32_t> nz;
  for (std::size_t j = 0; j < x.size(); ++j) {
    if (x[j] != T(0)) nz.push_back(static_cast<std::uint32_t>(j));
  }
  std::sort(nz.begin(), nz.end(), [&](std::uint32_t a, std::uint32_t b) {
    const T ma = std::fabs(x[a]);
    const T mb = std::fabs(x[b]);
    return ma != mb ? ma > mb : a < b;
  });
  if (nz.size() > k) nz.resize(k);
  ref_set s;
  for (const std::uint32_t j : nz) {
    const auto v = static_cast<float>(x[j]);
    if (v != 0.0f) s[j] = ref_entry{v, {rank}};
  }
  return s;
}

/// Union with sums at common indices, zero sums dropped, then the k largest |value|.
ref_set ref_merge(const ref_set& a, const ref_set& b, std::size_t k) {
  ref_set u = a;
  for (const auto& [j, e] : b) {
    auto it = u.find(j);
    if (it == u.end()) {
      u[j] = e;
      continue;
    }
    it->second.value += e.value;
    it->second.ranks.insert(e.ranks.begin(), e.ranks.end());
    if (it->second.value == 0.0f) u.erase(it);
  }
  if (u.size() <= k) return u;
  std::vector<std::uint32_t> order;
  for (const auto& kv : u) order.push_back(kv.first);
  std::sort(order.begin(), order.end(), [&](std::uint32_t p, std::uint32_t q) {
    const float mp = std::fabs(u[p].value);
    const float mq = std::fabs(u[q].value);
    return mp != mq ? mp > mq : p < q;
  });
  ref_set kept;
  for (std::size_t i = 0; i < k; ++i) kept[order[i]] = u[order[i]];
  return kept;
}

struct ref_result {
  ref_set global;
  std::vector<std::vector<std::uint64_t>> messages;  // per rank: the bits of each set it sends
};

std::uint64_t set_bits(const ecopt::detail::sparse_set_codec& c, const ref_set& s, bool flags) {
  std::vector<std::uint32_t> idx;
  for (const auto& kv : s) idx.push_back(kv.first);
  return c.bits(idx, flags);
}

/// Fold ranks >= P2 into rank - P2, then merge groups pairwise (rank r with
/// r + 2^j), and send the result back to the folded ranks.
template <class T>
ref_result ref_gtopk(const std::vector<std::vector<T>>& xs, const global_top_k& g) {
  const int p = static_cast<int>(xs.size());
  const std::size_t d = xs[0].size();
  const std::size_t k = g.kept(d);
  const auto codec = g.codec(d);
  const int core = static_cast<int>(std::bit_floor(static_cast<unsigned>(p)));
  std::vector<ref_set> sets;
  for (int r = 0; r < p; ++r) sets.push_back(ref_local(xs[static_cast<std::size_t>(r)], k, r));
  ref_result out;
  out.messages.resize(static_cast<std::size_t>(p));
  auto at = [](auto& v, int r) -> auto& { return v[static_cast<std::size_t>(r)]; };
  for (int r = core; r < p; ++r) {
    at(out.messages, r).push_back(set_bits(codec, at(sets, r), false));
    at(sets, r - core) = ref_merge(at(sets, r - core), at(sets, r), k);
  }
  for (int mask = 1; mask < core; mask <<= 1) {
    for (int r = 0; r < core; ++r) {
      if (r & mask) continue;
      at(out.messages, r).push_back(set_bits(codec, at(sets, r), false));
      at(out.messages, r | mask).push_back(set_bits(codec, at(sets, r | mask), false));
      const ref_set m = ref_merge(at(sets, r), at(sets, r | mask), k);
      at(sets, r) = m;
      at(sets, r | mask) = m;
    }
  }
  out.global = sets[0];
  for (int r = core; r < p; ++r) {
    at(out.messages, r - core).push_back(set_bits(codec, out.global, true));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Running aggregate on threads.

template <class T>
struct rank_result {
  std::vector<T> own;
  std::vector<T> sum;
  std::uint64_t bits = 0;
  std::uint64_t bytes_sent = 0;  // what the transport carried
};

template <class T>
std::vector<rank_result<T>> run_gtopk(const std::vector<std::vector<T>>& xs, const global_top_k& g,
                                      std::uint64_t round = 3) {
  const int p = static_cast<int>(xs.size());
  return ecopt::run_threads(p, [&](ecopt::thread_transport& t) {
    const auto& x = xs[static_cast<std::size_t>(t.rank())];
    auto state = g.make_state<T>(x.size());
    ecopt::collective_workspace ws;
    rank_result<T> res{std::vector<T>(x.size(), T(0)), std::vector<T>(x.size(), T(0)), 0};
    const round_context ctx{.seed = 1, .round = round, .rank = t.rank(), .world = p, .lr = 0.1};
    res.bits = g.aggregate(t, std::span<const T>(x), state, std::span<T>(res.own),
                           std::span<T>(res.sum), ws, ctx);
    res.bytes_sent = t.bytes_sent();
    return res;
  });
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t j = 0; j < a.size(); ++j) {
    if (std::bit_cast<std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>(a[j]) !=
        std::bit_cast<std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>(b[j])) {
      return false;
    }
  }
  return true;
}

/// Checks every rank's outputs against the reference and the invariants.
template <class T>
void check_against_reference(const std::vector<std::vector<T>>& xs, const global_top_k& g) {
  const int p = static_cast<int>(xs.size());
  const std::size_t d = xs[0].size();
  const std::size_t k = g.kept(d);
  const ref_result ref = ref_gtopk(xs, g);
  const auto res = run_gtopk(xs, g);
  REQUIRE(res.size() == xs.size());
  CHECK(ref.global.size() <= k);

  // sum: G at G's indices, zero elsewhere, bitwise the same on every rank.
  std::vector<T> expected_sum(d, T(0));
  for (const auto& [j, e] : ref.global) expected_sum[j] = static_cast<T>(e.value);
  for (int r = 0; r < p; ++r) {
    CAPTURE(r);
    const auto& mine = res[static_cast<std::size_t>(r)];
    CHECK(bitwise_equal(mine.sum, res[0].sum));
    CHECK(mine.sum == expected_sum);
    // own: this rank's float32 value exactly where G holds it, nothing else.
    std::vector<T> expected_own(d, T(0));
    for (const auto& [j, e] : ref.global) {
      if (e.ranks.count(r)) {
        expected_own[j] = static_cast<T>(static_cast<float>(xs[static_cast<std::size_t>(r)][j]));
      }
    }
    CHECK(mine.own == expected_own);
    // Bits: exactly the sets the replay says this rank sends, one message each.
    std::uint64_t bits = 0;
    std::uint64_t bytes = 0;
    for (const std::uint64_t b : ref.messages[static_cast<std::size_t>(r)]) {
      bits += b;
      bytes += (b + 7) / 8;
    }
    CHECK(mine.bits == bits);
    CHECK(mine.bytes_sent == bytes);
    CHECK(mine.bits <= g.max_aggregate_bits(d, p));
  }
  // The values are the sums of the contributing ranks' values: sum_r own_r = sum
  // up to float32 rounding of the tree's additions.
  std::size_t support = 0;
  std::size_t mismatches = 0;
  for (std::size_t j = 0; j < d; ++j) {
    double total = 0;
    double magnitude = 0;
    for (int r = 0; r < p; ++r) {
      total += static_cast<double>(res[static_cast<std::size_t>(r)].own[j]);
      magnitude += std::fabs(static_cast<double>(res[static_cast<std::size_t>(r)].own[j]));
    }
    mismatches += std::fabs(total - static_cast<double>(res[0].sum[j])) > 1e-6 * magnitude;
    support += res[0].sum[j] != T(0);
  }
  CHECK(mismatches == 0);
  CHECK(support == ref.global.size());
  CHECK(support <= k);
}

/// Per-rank inputs of several kinds; overlapping supports so merges add.
template <class T>
std::vector<std::vector<T>> make_inputs(int p, std::size_t d, int kind, std::uint64_t seed) {
  std::vector<std::vector<T>> xs;
  auto shared = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 99, 0);
  std::vector<double> common(d);
  for (auto& c : common) c = shared.normal();
  for (int r = 0; r < p; ++r) {
    auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test,
                                          static_cast<std::uint64_t>(r), 1);
    std::vector<T> x(d);
    for (std::size_t j = 0; j < d; ++j) {
      const double u = rng.normal();
      switch (kind) {
        case 0:  // independent
          x[j] = static_cast<T>(u);
          break;
        case 1:  // a shared component: the same indices are large on many ranks
          x[j] = static_cast<T>(2 * common[j] + 0.5 * u);
          break;
        case 2:  // few distinct magnitudes: ties everywhere, and cancellations
          x[j] = static_cast<T>(std::round(1.5 * u));
          break;
        default:  // sparse, with exact cancellation between ranks 0 and 1
          x[j] = rng.below(5) == 0 ? static_cast<T>(u) : T(0);
          if (j % 7 == 0) x[j] = (r == 0 ? T(3) : r == 1 ? T(-3) : T(0));
          break;
      }
    }
    xs.push_back(std::move(x));
  }
  return xs;
}

}  // namespace

TEST_CASE_TEMPLATE("global_top_k: aggregate equals the replayed tree merge, 1 to 6 ranks", T, float,
                   double) {
  for (int p = 1; p <= 6; ++p) {
    for (int kind = 0; kind < 4; ++kind) {
      for (const std::size_t d : {std::size_t{1}, std::size_t{40}, std::size_t{300}}) {
        for (const global_top_k g : {global_top_k{.ratio = 0.1}, global_top_k{.k = 1},
                                     global_top_k{.k = 37}, global_top_k{.ratio = 1.0}}) {
          CAPTURE(p);
          CAPTURE(kind);
          CAPTURE(d);
          CAPTURE(g.kept(d));
          check_against_reference(make_inputs<T>(p, d, kind, 10 * d + kind), g);
        }
      }
    }
  }
}

TEST_CASE("global_top_k: P = 2 is the exact top-k of the sum of the local sets") {
  constexpr std::size_t d = 500;
  const global_top_k g{.k = 25};
  const auto xs = make_inputs<double>(2, d, 1, 5);
  const auto res = run_gtopk(xs, g);
  std::vector<float> sparse_sum(d, 0.0f);
  for (int r = 0; r < 2; ++r) {
    for (const auto& [j, e] : ref_local(xs[static_cast<std::size_t>(r)], 25, r)) {
      sparse_sum[j] += e.value;
    }
  }
  std::vector<std::uint32_t> order(d);
  for (std::uint32_t j = 0; j < d; ++j) order[j] = j;
  std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    const float ma = std::fabs(sparse_sum[a]);
    const float mb = std::fabs(sparse_sum[b]);
    return ma != mb ? ma > mb : a < b;
  });
  std::vector<double> expected(d, 0.0);
  for (std::size_t i = 0; i < 25; ++i) expected[order[i]] = sparse_sum[order[i]];
  CHECK(res[0].sum == expected);
  CHECK(res[1].sum == expected);
}

TEST_CASE("global_top_k: disjoint supports give the exact top-k of the sum, for every P") {
  constexpr std::size_t d = 600;
  for (int p = 2; p <= 5; ++p) {
    CAPTURE(p);
    // Rank r holds float-exact values on the indices j = r mod p only.
    std::vector<std::vector<double>> xs;
    std::vector<double> total(d, 0.0);
    for (int r = 0; r < p; ++r) {
      auto rng = ecopt::counter_rng::stream(77, ecopt::stream_purpose::test,
                                            static_cast<std::uint64_t>(r), 0);
      std::vector<double> x(d, 0.0);
      for (std::size_t j = static_cast<std::size_t>(r); j < d; j += static_cast<std::size_t>(p)) {
        x[j] = static_cast<double>(static_cast<float>(rng.normal()));
        total[j] = x[j];
      }
      xs.push_back(std::move(x));
    }
    for (const std::size_t k : {std::size_t{1}, std::size_t{17}, std::size_t{60}, d}) {
      CAPTURE(k);
      const auto res = run_gtopk(xs, global_top_k{.k = k});
      std::vector<std::uint32_t> order(d);
      for (std::uint32_t j = 0; j < d; ++j) order[j] = j;
      std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
        const double ma = std::fabs(total[a]);
        const double mb = std::fabs(total[b]);
        return ma != mb ? ma > mb : a < b;
      });
      std::vector<double> expected(d, 0.0);
      for (std::size_t i = 0; i < k; ++i) expected[order[i]] = total[order[i]];
      for (int r = 0; r < p; ++r) CHECK(res[static_cast<std::size_t>(r)].sum == expected);
      if (k == d) CHECK(res[0].sum == total);  // nothing is cut: the whole sum
    }
  }
}

TEST_CASE("global_top_k: a value cut inside its subtree stays in that rank's memory") {
  // P = 4, k = 1. Index 0 is rank 0's and rank 2's choice, index 1 rank 1's
  // and rank 3's, with |x_1| > |x_0| on ranks 1 and 3. In round 0 ranks 0+1
  // and 2+3 keep index 1, so index 0 never survives; G = {1: x1 + x3}.
  // Then a variant where index 0 is cut in one subtree only and still wins.
  constexpr std::size_t d = 4;
  const global_top_k g{.k = 1};
  std::vector<std::vector<double>> xs = {
      {1.0, 0, 0, 0}, {0, 2.0, 0, 0}, {1.5, 0, 0, 0}, {0, 2.5, 0, 0}};
  auto res = run_gtopk(xs, g);
  CHECK(res[0].sum == std::vector<double>{0, 4.5, 0, 0});
  CHECK(res[0].own == std::vector<double>(d, 0.0));
  CHECK(res[1].own == std::vector<double>{0, 2.0, 0, 0});
  CHECK(res[3].own == std::vector<double>{0, 2.5, 0, 0});

  // Rank 0's 1.0 at index 0 loses to rank 1's 2.0 at index 1; in the other
  // subtree index 0 holds 5.0 and wins the final merge. G = {0: 5.0}: rank 0's
  // value was cut, so it is not in own (the reference code would drop it).
  xs = {{1.0, 0, 0, 0}, {0, 2.0, 0, 0}, {5.0, 0, 0, 0}, {0, 0, 0, 0.5}};
  res = run_gtopk(xs, g);
  for (const auto& r : res) CHECK(r.sum == std::vector<double>{5.0, 0, 0, 0});
  CHECK(res[0].own == std::vector<double>(d, 0.0));
  CHECK(res[2].own == std::vector<double>{5.0, 0, 0, 0});
}

TEST_CASE("global_top_k: messages per rank and the O(k log P) bound") {
  constexpr std::size_t d = 1000;
  const global_top_k g{.k = 20};
  const auto c = g.codec(d);
  CHECK(c.count_bits() == 5);
  // Fixed width (2-bit tag + 20 x 10 bits) bounds the index set.
  CHECK(c.max_bits(false) == 5 + 2 + 20 * 10 + 20 * 32);
  CHECK(c.max_bits(true) == c.max_bits(false) + 20);
  for (int p = 1; p <= 6; ++p) {
    CAPTURE(p);
    const auto xs = make_inputs<double>(p, d, 0, 3);
    const ref_result ref = ref_gtopk(xs, g);
    const int core = static_cast<int>(std::bit_floor(static_cast<unsigned>(p)));
    const auto rounds = static_cast<std::size_t>(std::countr_zero(static_cast<unsigned>(core)));
    for (int r = 0; r < p; ++r) {
      CAPTURE(r);
      const auto& sent = ref.messages[static_cast<std::size_t>(r)];
      CHECK(sent.size() == (r >= core ? 1 : rounds + (r + core < p ? 1 : 0)));
      for (const std::uint64_t b : sent) CHECK(b <= c.max_bits(true));
    }
    check_against_reference(xs, g);
  }
  CHECK(g.max_aggregate_bits(d, 1) == 0);
  CHECK(g.max_aggregate_bits(d, 2) == c.max_bits(false));
  CHECK(g.max_aggregate_bits(d, 8) == 3 * c.max_bits(false));
  CHECK(g.max_aggregate_bits(d, 5) == 2 * c.max_bits(false) + c.max_bits(true));
}

TEST_CASE("global_top_k: the set codec keeps indices above 2^24 exact") {
  for (const std::size_t d : {(std::size_t{1} << 26) + 5, std::size_t{0xffffffffu}}) {
    CAPTURE(d);
    const ecopt::detail::sparse_set_codec c{d, 8};
    const std::vector<std::uint32_t> idx = {0u,
                                            (1u << 24) - 1,
                                            1u << 24,
                                            (1u << 24) + 1,
                                            (1u << 24) + 3,
                                            (1u << 25) + 7,
                                            static_cast<std::uint32_t>(d - 1)};
    const std::vector<float> val = {1.0f, -2.0f, 3.5f, 1e-30f, -1e30f, 7.0f, 0.25f};
    const std::vector<std::uint8_t> flags = {1, 0, 2, 3, 0, 1, 0};  // mask 1 -> 1 0 0 1 0 1 0
    std::vector<std::byte> bytes;
    ecopt::bit_writer w(bytes);
    c.write(w, idx.size(), idx.data(), val.data(), flags.data(), 1);
    CHECK(w.bits() == c.bits(idx, true));
    CHECK(w.bits() <= c.max_bits(true));
    w.finish();
    std::vector<std::uint32_t> ri(8);
    std::vector<float> rv(8);
    std::vector<std::uint8_t> rf(8);
    ecopt::bit_reader r(bytes);
    REQUIRE(c.read(r, ri.data(), rv.data(), rf.data()) == idx.size());
    for (std::size_t i = 0; i < idx.size(); ++i) {
      CHECK(ri[i] == idx[i]);
      CHECK(std::bit_cast<std::uint32_t>(rv[i]) == std::bit_cast<std::uint32_t>(val[i]));
      CHECK(rf[i] == ((flags[i] & 1) != 0 ? 1 : 0));
    }
    // 2^24 + 1 is not a float32: the reference code's float packing would lose it.
    CHECK(static_cast<std::uint32_t>(static_cast<float>((1u << 24) + 1)) != (1u << 24) + 1);
  }
}

TEST_CASE("global_top_k: aggregate with d > 2^24 on 3 ranks") {
  constexpr std::size_t d = (std::size_t{1} << 24) + 9;
  const global_top_k g{.k = 6};
  std::vector<std::vector<float>> xs(3, std::vector<float>(d, 0.0f));
  // Large indices, neighbours of 2^24 among them, partly shared between ranks.
  const std::size_t hot[] = {(1u << 24) - 1, 1u << 24, (1u << 24) + 1, (1u << 24) + 3,
                             d - 1,          12345,    (1u << 24) + 5};
  for (int r = 0; r < 3; ++r) {
    for (std::size_t i = 0; i < std::size(hot); ++i) {
      if ((i + static_cast<std::size_t>(r)) % 3 != 0) {
        xs[static_cast<std::size_t>(r)][hot[i]] =
            static_cast<float>(1 + i) * (r == 1 ? -0.5f : 1.0f);
      }
    }
  }
  check_against_reference(xs, g);
}

TEST_CASE("global_top_k: a corrupt merge message is a decode_error naming the peer") {
  constexpr std::size_t d = 100;
  const global_top_k g{.k = 10};
  const auto xs = make_inputs<double>(2, d, 0, 4);

  // Rank 1 plays a faulty peer: it sends `bad` in place of its set.
  auto run_with_bad_peer = [&](std::vector<std::byte> bad) {
    ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
      if (t.rank() == 1) {
        t.send(0, global_top_k::exchange_tag, bad);
        std::vector<std::byte> drain;
        t.recv(0, global_top_k::exchange_tag, drain);
        return;
      }
      auto state = g.make_state<double>(d);
      ecopt::collective_workspace ws;
      std::vector<double> own(d, 0.0);
      std::vector<double> sum(d, 0.0);
      (void)g.aggregate(t, std::span<const double>(xs[0]), state, std::span<double>(own),
                        std::span<double>(sum), ws, round_context{.round = 7, .world = 2});
    });
  };
  // A valid set to corrupt: 10 increasing indices and values.
  const auto c = g.codec(d);
  std::vector<std::uint32_t> idx(10);
  std::vector<float> val(10);
  for (std::uint32_t i = 0; i < 10; ++i) {
    idx[i] = 3 * i + 1;
    val[i] = static_cast<float>(i) + 0.5f;
  }
  std::vector<std::byte> good;
  {
    ecopt::bit_writer w(good);
    c.write(w, 10, idx.data(), val.data());
    w.finish();
  }
  REQUIRE_NOTHROW(run_with_bad_peer(good));

  std::vector<std::byte> truncated = good;
  truncated.pop_back();
  CHECK_THROWS_WITH_AS(run_with_bad_peer(truncated),
                       doctest::Contains("rank 0, step 7: merge message from rank 1"),
                       ecopt::decode_error);
  std::vector<std::byte> padded = good;
  padded.push_back(std::byte{0x5a});
  CHECK_THROWS_AS(run_with_bad_peer(padded), ecopt::decode_error);
  CHECK_THROWS_WITH_AS(run_with_bad_peer({}), doctest::Contains("from rank 1"),
                       ecopt::decode_error);

  // Sets written field by field (count, fixed-width index code, values), so
  // that they can break the rules the encoder enforces.
  auto rewrite = [&](auto&& edit) {
    auto i2 = idx;
    auto v2 = val;
    edit(i2, v2);
    std::vector<std::byte> out;
    ecopt::bit_writer w(out);
    w.write(10, c.count_bits());
    w.write(static_cast<std::uint64_t>(ecopt::detail::index_code::fixed),
            ecopt::detail::index_tag_bits);
    for (const std::uint32_t j : i2) w.write(j, ecopt::bits_for(d));
    w.write_f32s(v2);
    w.finish();
    return out;
  };
  REQUIRE_NOTHROW(run_with_bad_peer(rewrite([](auto&, auto&) {})));
  CHECK_THROWS_WITH_AS(run_with_bad_peer(rewrite([](auto& i, auto&) { std::swap(i[2], i[3]); })),
                       doctest::Contains("does not increase"), ecopt::decode_error);
  CHECK_THROWS_WITH_AS(run_with_bad_peer(rewrite([](auto& i, auto&) { i[9] = 100; })),
                       doctest::Contains("out of range"), ecopt::decode_error);
  CHECK_THROWS_WITH_AS(run_with_bad_peer(rewrite([](auto&, auto& v) { v[4] = 0.0f; })),
                       doctest::Contains("value[4] is zero"), ecopt::decode_error);
  CHECK_THROWS_WITH_AS(run_with_bad_peer(rewrite(
                           [](auto&, auto& v) { v[5] = std::numeric_limits<float>::infinity(); })),
                       doctest::Contains("not finite"), ecopt::decode_error);
  {
    std::vector<std::byte> big;  // count = 11 > k (count is the first 4 bits)
    ecopt::bit_writer w(big);
    w.write(11, 4);
    w.finish();
    CHECK_THROWS_WITH_AS(run_with_bad_peer(big), doctest::Contains("exceeds k"),
                         ecopt::decode_error);
  }
  // Fuzz: bit flips either decode to a valid set or throw decode_error.
  auto rng = ecopt::counter_rng::stream(5, ecopt::stream_purpose::test, 0, 0);
  int rejected = 0;
  for (int t = 0; t < 40; ++t) {
    std::vector<std::byte> p = good;
    p[rng.below(p.size())] ^= static_cast<std::byte>(1u << rng.below(8));
    try {
      run_with_bad_peer(p);
    } catch (const ecopt::decode_error& e) {
      CHECK(std::string(e.what()).find("from rank 1") != std::string::npos);
      ++rejected;
    }
  }
  CHECK(rejected > 0);
}

TEST_CASE("global_top_k: a result message that flags an unsent index is rejected") {
  // P = 3: rank 2 folds into rank 0; a faulty rank 0 answers with a set whose
  // flag claims an index rank 2 never sent.
  constexpr std::size_t d = 50;
  const global_top_k g{.k = 4};
  std::vector<double> x(d, 0.0);
  x[10] = 5.0;
  x[20] = -4.0;
  CHECK_THROWS_WITH_AS(
      ecopt::run_threads(3,
                         [&](ecopt::thread_transport& t) {
                           if (t.rank() == 1) return;
                           if (t.rank() == 0) {
                             std::vector<std::byte> in;
                             t.recv(2, global_top_k::fold_tag, in);
                             const std::uint32_t idx[] = {10, 30};
                             const float val[] = {5.0f, 1.0f};
                             const std::uint8_t flags[] = {1, 1};
                             std::vector<std::byte> out;
                             ecopt::bit_writer w(out);
                             g.codec(d).write(w, 2, idx, val, flags, 1);
                             t.send(2, global_top_k::result_tag, w.finish());
                             return;
                           }
                           auto state = g.make_state<double>(d);
                           ecopt::collective_workspace ws;
                           std::vector<double> own(d, 0.0);
                           std::vector<double> sum(d, 0.0);
                           (void)g.aggregate(t, std::span<const double>(x), state,
                                             std::span<double>(own), std::span<double>(sum), ws,
                                             round_context{.round = 2, .world = 3});
                         }),
      doctest::Contains("from rank 0: corrupt global_top_k set: flag[1] claims index 30"),
      ecopt::decode_error);
}

TEST_CASE("global_top_k: bad arguments and non-finite inputs are named") {
  CHECK_THROWS_WITH_AS((void)global_top_k{.ratio = 0.0}.make_state<float>(10),
                       doctest::Contains("global_top_k: ratio"), ecopt::invalid_argument);
  CHECK_THROWS_AS((void)global_top_k{}.make_state<float>(0), ecopt::invalid_argument);
  const global_top_k g{.k = 3};
  auto body = [&](std::size_t own_size, double poison) {
    ecopt::run_threads(1, [&](ecopt::thread_transport& t) {
      auto state = g.make_state<double>(10);
      ecopt::collective_workspace ws;
      std::vector<double> x(10, 1.0);
      x[4] = poison;
      std::vector<double> own(own_size, 0.0);
      std::vector<double> sum(10, 0.0);
      (void)g.aggregate(t, std::span<const double>(x), state, std::span<double>(own),
                        std::span<double>(sum), ws, round_context{});
    });
  };
  CHECK_THROWS_WITH_AS(body(9, 1.0), doctest::Contains("own has 9 entries"),
                       ecopt::invalid_argument);
  CHECK_THROWS_WITH_AS(body(10, std::numeric_limits<double>::quiet_NaN()),
                       doctest::Contains("global_top_k: input[4]"), ecopt::numeric_error);
  CHECK_THROWS_WITH_AS(body(10, 1e300), doctest::Contains("not finite as float32"),
                       ecopt::numeric_error);
  // Two ranks whose values at one index overflow float32 when added.
  std::vector<std::vector<double>> xs = {{3e38, 1.0}, {3e38, 1.0}};
  CHECK_THROWS_WITH_AS(run_gtopk(xs, global_top_k{.k = 1}), doctest::Contains("overflows float32"),
                       ecopt::numeric_error);
}

TEST_CASE("global_top_k: standalone encode/decode is top_k's") {
  constexpr std::size_t d = 777;
  const global_top_k g{.ratio = 0.05};
  const ecopt::top_k t{.ratio = 0.05};
  const auto x = ecopt::test::random_vector<double>(d, 3);
  ecopt::test::harness<global_top_k, double> hg(g, d);
  ecopt::test::harness<ecopt::top_k, double> ht(t, d);
  const round_context ctx{.round = 1};
  CHECK(hg.encode(x, ctx) <= g.max_bits(d));
  ht.encode(x, ctx);
  CHECK(hg.payload == ht.payload);
  CHECK(hg.apply(x, ctx) == ht.apply(x, ctx));
  CHECK(g.delta(d) == t.delta(d));
}

TEST_CASE("global_top_k: aggregate does not allocate after warm-up") {
  constexpr std::size_t d = 2000;
  for (const int p : {3, 4}) {
    CAPTURE(p);
    const global_top_k g{.ratio = 0.02};
    const auto xs = make_inputs<double>(p, d, 1, 6);
    const auto counts = ecopt::run_threads(p, [&](ecopt::thread_transport& t) {
      const auto& x = xs[static_cast<std::size_t>(t.rank())];
      auto state = g.make_state<double>(d);
      ecopt::collective_workspace ws;
      std::vector<double> own(d, 0.0);
      std::vector<double> sum(d, 0.0);
      auto round = [&](std::uint64_t step) {
        (void)g.aggregate(t, std::span<const double>(x), state, std::span<double>(own),
                          std::span<double>(sum), ws,
                          round_context{.round = step, .rank = t.rank(), .world = p});
      };
      for (std::uint64_t step = 0; step < 4; ++step) round(step);
      ecopt::test::allocation_scope scope;
      for (std::uint64_t step = 4; step < 10; ++step) round(step);
      return scope.count();
    });
    for (const auto c : counts) CHECK(c == 0);
  }
}

TEST_CASE("global_top_k: solver with error feedback converges on least squares") {
  // A consistent system (y = A'x*): every sample's gradient vanishes at x*, so
  // SGD with compressed, error-compensated steps converges to x* itself.
  constexpr Eigen::Index d = 40;
  constexpr Eigen::Index m = 600;
  auto rng = ecopt::counter_rng::stream(21, ecopt::stream_purpose::test, 0, 0);
  Eigen::MatrixXd a(d, m);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = rng.normal();
  Eigen::VectorXd x_star(d);
  for (Eigen::Index i = 0; i < d; ++i) x_star[i] = rng.normal();
  const Eigen::VectorXd y = a.transpose() * x_star;

  for (const int world : {3, 4}) {
    CAPTURE(world);
    const ecopt::solver s{global_top_k{.ratio = 0.1}, ecopt::error_feedback{},
                          ecopt::sgd{.lr = 0.2}};
    const auto out = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
      ecopt::least_squares p(ecopt::shard_columns(a, t.rank(), world),
                             ecopt::shard_segment(y, t.rank(), world), {.batch_size = 16});
      Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
      const auto report = s.run(t, p, x, {.steps = 1500, .seed = 3});
      return std::pair{(x - x_star).norm() / x_star.norm(), report};
    });
    for (const auto& [err, report] : out) {
      CHECK(err < 1e-8);  // about 1e-16 is reached
      CHECK(report.payload_bits <= 1500 * global_top_k{.ratio = 0.1}.max_aggregate_bits(d, world));
      CHECK(report.payload_bits > 0);
    }
    CHECK(out[0].first == out[1].first);  // identical iterates on every rank
  }
}

}  // namespace global_top_k_test
