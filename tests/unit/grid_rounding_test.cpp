// grid_rounding: the deterministic bounded-error compressor (the class used by
// Khirirat, Magnusson, Johansson 2021, arXiv:1909.10327). The shared contract
// (exact bits, corrupt payloads, no allocation) runs from compressors/all.hpp;
// these are its own properties.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressors/grid_rounding.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace grid_rounding_test {

namespace {

struct coded {
  std::vector<double> value;
  std::uint64_t bits = 0;
};

coded round_trip(const ecopt::grid_rounding& c, const std::vector<double>& x) {
  auto s = c.make_state<double>(x.size());
  std::vector<std::byte> payload;
  ecopt::bit_writer w(payload);
  c.encode(std::span<const double>(x), s, w, {});
  coded out{std::vector<double>(x.size(), 0.0), w.bits()};
  w.finish();
  ecopt::bit_reader r(payload);
  c.decode_add(r, s, std::span<double>(out.value), 1.0, {});
  return out;
}

}  // namespace

TEST_CASE("grid_rounding errs by at most step/2 per coordinate, step sqrt(d)/2 in norm") {
  const ecopt::grid_rounding c{.step = 0.25};
  auto rng = ecopt::counter_rng::stream(4, ecopt::stream_purpose::test, 0, 0);
  std::vector<double> x(500);
  for (auto& v : x) v = 3.0 * rng.normal();
  const auto cx = round_trip(c, x).value;
  double sq = 0;
  for (std::size_t j = 0; j < x.size(); ++j) {
    const double err = std::abs(cx[j] - x[j]);
    REQUIRE(err <= 0.125 + 1e-15);
    // The value is on the grid.
    REQUIRE(std::abs(cx[j] / 0.25 - std::round(cx[j] / 0.25)) < 1e-12);
    sq += err * err;
  }
  CHECK(std::sqrt(sq) <= c.max_error(500));
  CHECK(c.max_error(500) == doctest::Approx(0.125 * std::sqrt(500.0)));
}

TEST_CASE("grid_rounding payload: 6 + w d bits, w the width of the largest zigzag level") {
  const ecopt::grid_rounding c{.step = 1.0};
  // Levels 0, -1, 1, -2, 3 code as 0, 1, 2, 3, 6: w = 3.
  const auto r = round_trip(c, {0.2, -1.0, 0.6, -2.4, 3.1});
  CHECK(r.bits == 6 + 3 * 5);
  CHECK(r.value == std::vector<double>{0.0, -1.0, 1.0, -2.0, 3.0});
  // Halves round away from zero.
  CHECK(round_trip(c, {0.5, -0.5, 2.5}).value == std::vector<double>{1.0, -1.0, 3.0});
  // Below half a step everything rounds to zero: 6 bits.
  const auto zero = round_trip(c, {0.49, -0.49, 0.0});
  CHECK(zero.bits == 6);
  CHECK(zero.value == std::vector<double>(3, 0.0));
  // The widest levels: +-(2^31 - 1) steps need the full 32 bits.
  const auto wide = round_trip(c, {2147483647.0, -2147483647.0});
  CHECK(wide.bits == 6 + 32 * 2);
  CHECK(wide.value == std::vector<double>{2147483647.0, -2147483647.0});
}

TEST_CASE("grid_rounding refuses what it cannot represent, naming it") {
  const ecopt::grid_rounding c{.step = 1.0};
  auto s = c.make_state<double>(3);
  std::vector<std::byte> payload;
  const std::vector<double> too_big{0.0, 3e9, 0.0};
  ecopt::bit_writer w(payload);
  CHECK_THROWS_WITH_AS(c.encode(std::span<const double>(too_big), s, w, {}),
                       doctest::Contains("x[1]"), ecopt::numeric_error);
  const std::vector<double> nan{0.0, 0.0, std::numeric_limits<double>::quiet_NaN()};
  ecopt::bit_writer w2(payload);
  CHECK_THROWS_WITH_AS(c.encode(std::span<const double>(nan), s, w2, {}), doctest::Contains("x[2]"),
                       ecopt::numeric_error);

  CHECK_THROWS_WITH_AS(ecopt::grid_rounding{.step = 0.0}.validate(), doctest::Contains("step"),
                       ecopt::invalid_argument);
  CHECK_THROWS_AS(ecopt::grid_rounding{.step = -1.0}.validate(), ecopt::invalid_argument);
  CHECK_THROWS_AS(
      (void)ecopt::grid_rounding{.step = std::numeric_limits<double>::infinity()}.make_state<float>(
          4),
      ecopt::invalid_argument);

  // A width field above 32 is corrupt.
  std::vector<std::byte> bad{std::byte{33}};
  ecopt::bit_reader r(bad);
  std::vector<double> out(3, 0.0);
  CHECK_THROWS_WITH_AS(c.decode_add(r, s, std::span<double>(out), 1.0, {}),
                       doctest::Contains("width"), ecopt::decode_error);
}

}  // namespace grid_rounding_test
