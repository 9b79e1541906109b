// Tests of gradient_exchange (the round as an object) and per_block (a
// compressor applied layer by layer): reduction to the plain compressor bit for
// bit, exact bits per block, which blocks travel dense, PowerSGD per weight
// matrix over threads, argument errors, and no allocation after the first call.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "ecopt/bit_writer.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compressors/global_top_k.hpp"
#include "ecopt/compressors/per_block.hpp"
#include "ecopt/compressors/power_sgd.hpp"
#include "ecopt/compressors/qsgd.hpp"
#include "ecopt/compressors/rand_k.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "ecopt/gradient_exchange.hpp"
#include "ecopt/optimizers/nesterov.hpp"
#include "ecopt/problems/mlp.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace gradient_exchange_test {

namespace {

std::vector<float> gaussian(std::size_t d, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
  std::vector<float> v(d);
  for (float& x : v) x = static_cast<float>(rng.normal());
  return v;
}

/// The layout of an MLP 30-16-4: W1 16 x 30, b1, W2 4 x 16, b2.
ecopt::parameter_layout small_mlp_layout() {
  ecopt::parameter_layout layout;
  layout.add_matrix("W1", 16, 30).add_vector("b1", 16).add_matrix("W2", 4, 16).add_vector("b2", 4);
  return layout;
}

/// Runs `rounds` exchanges of exchange type X on `world` threads; each rank's
/// gradient of round t is gaussian(d, 1000 t + rank). Returns every rank's
/// directions, concatenated.
template <class C, class E = ecopt::no_compensation>
std::vector<std::vector<float>> exchange_rounds(const C& c, std::size_t d, int world, int rounds,
                                                E e = {}) {
  return ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    ecopt::gradient_exchange<C, E, float> exchange(c, e, d, {.seed = 11});
    std::vector<float> all;
    std::vector<float> direction(d);
    for (int r = 0; r < rounds; ++r) {
      const auto g = gaussian(d, static_cast<std::uint64_t>(1000 * r + t.rank()));
      exchange(t, std::span<const float>(g), std::span<float>(direction),
               {.round = static_cast<std::uint64_t>(r), .lr = 0.1});
      all.insert(all.end(), direction.begin(), direction.end());
    }
    return all;
  });
}

}  // namespace

static_assert(ecopt::PhasedAggregation<ecopt::power_sgd, float>);
static_assert(ecopt::AggregatingCompressor<ecopt::per_block<ecopt::power_sgd>, double,
                                           ecopt::thread_transport>);

TEST_SUITE_BEGIN("exchange");

TEST_CASE("per_block over one block is the compressor itself, bit for bit") {
  constexpr std::size_t d = 700;
  const ecopt::per_block<ecopt::top_k> one_top_k{
      .compressor = {.ratio = 0.05}, .dense_below = 0, .min_gain = 0};
  CHECK(exchange_rounds(one_top_k, d, 3, 3, ecopt::error_feedback{}) ==
        exchange_rounds(ecopt::top_k{.ratio = 0.05}, d, 3, 3, ecopt::error_feedback{}));
  const ecopt::per_block<ecopt::power_sgd> one_power{
      .compressor = {.rank = 2}, .dense_below = 0, .min_gain = 0};
  CHECK(exchange_rounds(one_power, d, 3, 3, ecopt::error_feedback{}) ==
        exchange_rounds(ecopt::power_sgd{.rank = 2}, d, 3, 3, ecopt::error_feedback{}));
  const ecopt::per_block<ecopt::rand_k> one_rand{
      .compressor = {.ratio = 0.1}, .dense_below = 0, .min_gain = 0};
  CHECK(exchange_rounds(one_rand, d, 2, 2) ==
        exchange_rounds(ecopt::rand_k{.ratio = 0.1}, d, 2, 2));
}

TEST_CASE("per_block runs a compressor's own exchange block by block (gTop-k)") {
  constexpr std::size_t d = 600;
  const ecopt::per_block<ecopt::global_top_k> one{
      .compressor = {.ratio = 0.05}, .dense_below = 0, .min_gain = 0};
  CHECK(exchange_rounds(one, d, 3, 3, ecopt::error_feedback{}) ==
        exchange_rounds(ecopt::global_top_k{.ratio = 0.05}, d, 3, 3, ecopt::error_feedback{}));
  // Two compressed blocks and a dense one between them: every rank gets the same
  // direction, and the dense block is the exact mean.
  ecopt::parameter_layout layout;
  layout.add_vector("a", 300).add_vector("bias", 20).add_vector("c", 280);
  const ecopt::per_block<ecopt::global_top_k> split{
      .compressor = {.ratio = 0.05}, .layout = layout, .dense_below = 32};
  const auto directions = exchange_rounds(split, d, 3, 1);
  CHECK(directions[1] == directions[0]);
  CHECK(directions[2] == directions[0]);
  for (std::size_t j = 300; j < 320; ++j) {
    double mean = 0;
    for (int r = 0; r < 3; ++r) mean += gaussian(d, static_cast<std::uint64_t>(r))[j] / 3.0;
    CHECK(directions[0][j] == doctest::Approx(mean).epsilon(1e-6));
  }
  std::size_t nonzero = 0;
  for (std::size_t j = 0; j < 300; ++j) nonzero += directions[0][j] != 0.0f ? 1 : 0;
  CHECK(nonzero == 15);  // gTop-k keeps k = 5 % of the block's 300 entries
}

TEST_CASE("per_block sends small blocks and blocks the compressor cannot shrink dense") {
  const ecopt::parameter_layout layout = small_mlp_layout();
  const ecopt::per_block<ecopt::power_sgd> p{
      .compressor = {.rank = 2}, .layout = layout, .dense_below = 10};
  const auto plan = p.plan(layout.end());
  REQUIRE(plan.size() == 4);
  CHECK_FALSE(plan[0].dense);  // W1: 2 (16 + 30) floats instead of 480
  CHECK(plan[0].compressor.shape(480).rows == 16);
  CHECK(plan[1].dense);  // b1: a vector, PowerSGD cannot shrink it
  CHECK(plan[2].dense);  // W2: 2 (4 + 16) = 40 floats of 64, less than min_gain = 2
  CHECK(plan[3].dense);  // b2: 4 < dense_below
  const ecopt::per_block<ecopt::power_sgd> lenient{
      .compressor = {.rank = 2}, .layout = layout, .dense_below = 10, .min_gain = 1.5};
  CHECK_FALSE(lenient.plan(layout.end())[2].dense);
}

TEST_CASE("per_block refuses a non-finite summed value in a dense block (a fuzz finding)") {
  // rand_k with a shared seed sums in compressed form; biases travel dense.
  const ecopt::parameter_layout layout = small_mlp_layout();
  const ecopt::per_block<ecopt::rand_k> p{.compressor = {.k = 8}, .layout = layout};
  auto state = p.make_state<float>(layout.end());
  std::vector<float> summed(p.summable_size(layout.end()), 0.0f);
  std::vector<float> out(layout.end(), 0.0f);
  const ecopt::round_context ctx{};
  CHECK_NOTHROW(
      p.decode_summed(std::span<const float>(summed), state, std::span<float>(out), 1.0f, ctx));
  REQUIRE(p.plan(layout.end())[1].dense);
  // The last float of the buffer belongs to the last (dense) block.
  summed.back() = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(
      p.decode_summed(std::span<const float>(summed), state, std::span<float>(out), 1.0f, ctx),
      doctest::Contains("per_block summed value"), ecopt::decode_error);
}

TEST_CASE("per_block payload bits are exact per block") {
  const ecopt::parameter_layout layout = small_mlp_layout();
  const std::size_t d = layout.end();
  const ecopt::per_block<ecopt::top_k> p{
      .compressor = {.ratio = 0.1}, .layout = layout, .dense_below = 10};
  auto s = p.make_state<float>(d);
  const auto x = gaussian(d, 5);
  std::vector<std::byte> bytes;
  ecopt::bit_writer w(bytes);
  p.encode(std::span<const float>(x), s, w, {.seed = 1, .round = 0});
  w.finish();
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < s.blocks.size(); ++i) {
    const auto& b = s.blocks[i];
    CAPTURE(b.block.name);
    if (b.dense) {
      CHECK(s.block_bits[i] == 32 * b.block.size());
    } else {  // what top_k alone sends for this block
      auto alone = b.compressor.make_state<float>(b.block.size());
      std::vector<std::byte> own;
      ecopt::bit_writer wa(own);
      b.compressor.encode(std::span<const float>(x).subspan(b.block.offset, b.block.size()), alone,
                          wa, p.block_context({.seed = 1, .round = 0}, i));
      CHECK(s.block_bits[i] == wa.bits());
    }
    sum += s.block_bits[i];
  }
  CHECK(w.bits() == sum + s.framing_bits);
  CHECK(w.bits() <= p.max_bits(d));
}

TEST_CASE("per-layer PowerSGD recovers a mean that has low rank in every layer") {
  // Every rank's W1 is u v_r^T and its W2 a v'_r^T: the mean of each is rank 1,
  // which rank-1 PowerSGD captures exactly (up to float32); the biases travel dense.
  const ecopt::parameter_layout layout = small_mlp_layout();
  const std::size_t d = layout.end();
  constexpr int world = 3;
  auto gradient_of = [&](int rank) {
    std::vector<float> g(d, 0.0f);
    const auto u = gaussian(16, 1);
    const auto a = gaussian(4, 2);
    const auto v = gaussian(30, 10 + static_cast<std::uint64_t>(rank));
    const auto w = gaussian(16, 20 + static_cast<std::uint64_t>(rank));
    for (std::size_t j = 0; j < 30; ++j)
      for (std::size_t i = 0; i < 16; ++i) g[i + 16 * j] = u[i] * v[j];
    for (std::size_t i = 0; i < 16; ++i) g[480 + i] = static_cast<float>(rank + 1);
    for (std::size_t j = 0; j < 16; ++j)
      for (std::size_t i = 0; i < 4; ++i) g[496 + i + 4 * j] = a[i] * w[j];
    for (std::size_t i = 0; i < 4; ++i) g[560 + i] = -static_cast<float>(rank);
    return g;
  };
  std::vector<double> mean(d, 0.0);
  for (int r = 0; r < world; ++r) {
    const auto g = gradient_of(r);
    for (std::size_t j = 0; j < d; ++j) mean[j] += g[j] / double{world};
  }
  const ecopt::per_block<ecopt::power_sgd> p{
      .compressor = {.rank = 1}, .layout = layout, .dense_below = 10, .min_gain = 1};
  auto directions = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
    ecopt::gradient_exchange exchange(p, ecopt::no_compensation{}, d, {.seed = 3});
    const auto g = gradient_of(t.rank());
    std::vector<float> direction(d);
    const auto bits =
        exchange(t, std::span<const float>(g), std::span<float>(direction), {.round = 0});
    // Two factors per matrix and the dense biases, 32 bits each.
    CHECK(bits.payload == 32 * ((16 + 30) + (4 + 16) + 16 + 4));
    return direction;
  });
  for (int r = 0; r < world; ++r) {
    CHECK(directions[static_cast<std::size_t>(r)] == directions[0]);  // every rank the same
  }
  double err = 0, norm = 0;
  for (std::size_t j = 0; j < d; ++j) {
    err = std::max(err, std::fabs(directions[0][j] - mean[j]));
    norm = std::max(norm, std::fabs(mean[j]));
  }
  CHECK(err <= 1e-5 * norm);
}

TEST_CASE("gradient_exchange refuses wrong sizes and non-finite gradients, naming them") {
  ecopt::run_threads(1, [](ecopt::thread_transport& t) {
    ecopt::gradient_exchange<ecopt::top_k, ecopt::error_feedback, double> exchange(
        ecopt::top_k{.ratio = 0.5}, ecopt::error_feedback{}, 4);
    std::vector<double> g = {1, 2, 3, 4}, out(3);
    try {
      exchange(t, std::span<const double>(g), std::span<double>(out), {.round = 0});
      FAIL("no error for a direction of 3 entries");
    } catch (const ecopt::invalid_argument& e) {
      CHECK(std::string(e.what()).find("the direction 3, the exchange was made for 4") !=
            std::string::npos);
    }
    out.resize(4);
    g[2] = std::nan("");
    try {
      exchange(t, std::span<const double>(g), std::span<double>(out), {.round = 7});
      FAIL("no error for a NaN gradient");
    } catch (const ecopt::numeric_error& e) {
      CHECK(std::string(e.what()).find("step 7") != std::string::npos);
      CHECK(std::string(e.what()).find("at index 2") != std::string::npos);
    }
  });
}

TEST_CASE("gradient_exchange allocates nothing after its first round") {
  const ecopt::parameter_layout layout = small_mlp_layout();
  const std::size_t d = layout.end();
  auto counts = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
    ecopt::gradient_exchange gathered(
        ecopt::per_block<ecopt::top_k>{
            .compressor = {.ratio = 0.1}, .layout = layout, .dense_below = 10},
        ecopt::error_feedback{}, d);
    ecopt::gradient_exchange aggregated(
        ecopt::per_block<ecopt::power_sgd>{.compressor = {.rank = 2}, .layout = layout},
        ecopt::error_feedback{}, d);
    const auto g = gaussian(d, static_cast<std::uint64_t>(t.rank()));
    std::vector<float> direction(d);
    auto round = [&](std::uint64_t r) {
      gathered(t, std::span<const float>(g), std::span<float>(direction), {.round = r});
      aggregated(t, std::span<const float>(g), std::span<float>(direction), {.round = r});
    };
    round(0);
    round(1);  // warm-up: the collectives' buffers settle
    ecopt::test::allocation_scope scope;
    for (std::uint64_t r = 2; r < 6; ++r) round(r);
    return scope.count();
  });
  CHECK(counts[0] == 0);
  CHECK(counts[1] == 0);
}

TEST_CASE("solver with per-layer PowerSGD trains an MLP as well as dense SGD") {
  constexpr int features = 20, samples = 400, classes = 3;
  Eigen::MatrixXd a(features, samples);
  std::vector<int> labels(samples);
  auto rng = ecopt::counter_rng::stream(9, ecopt::stream_purpose::test, 0, 0);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = rng.normal();
  for (int s = 0; s < samples; ++s) {
    labels[static_cast<std::size_t>(s)] = a(0, s) + a(1, s) > 0.5 ? 0 : (a(2, s) > 0 ? 1 : 2);
  }
  auto final_loss = [&](auto compressor) {
    auto reports = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
      ecopt::mlp<double> net(a, labels, classes, {.hidden = 16, .batch_size = 32});
      Eigen::VectorXd x = net.initial_point(1);
      ecopt::solver s{compressor, ecopt::error_feedback{}, ecopt::nesterov{.lr = 0.1}};
      return s.run(t, net, x, {.steps = 300, .seed = 4});
    });
    return reports[0].final_loss();
  };
  ecopt::mlp<double> net(a, labels, classes, {.hidden = 16});
  const double per_layer = final_loss(ecopt::per_block<ecopt::power_sgd>{
      .compressor = {.rank = 1}, .layout = net.layers(), .dense_below = 32});
  const double dense = final_loss(ecopt::no_compression{});
  const double first = final_loss(ecopt::per_block<ecopt::power_sgd>{
      .compressor = {.rank = 1}, .layout = net.layers(), .dense_below = 32});
  CAPTURE(per_layer);
  CAPTURE(dense);
  CHECK(per_layer == first);  // deterministic
  CHECK(per_layer < 1.25 * dense);
  CHECK(per_layer < 0.05);  // from ~1.1 at the start
}

TEST_SUITE_END();

}  // namespace gradient_exchange_test
