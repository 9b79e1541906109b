// Tests of parameter_layout (named blocks, validation, covering) and of the
// layers that problems report.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/parameter_layout.hpp"
#include "ecopt/problems/mlp.hpp"
#include "ecopt/problems/softmax_regression.hpp"
#include "support/messages.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace parameter_layout_test {

namespace {

using ecopt::test::contains;

template <class F>
std::string invalid_message(F&& f) {
  return ecopt::test::message_of<ecopt::invalid_argument>(std::forward<F>(f));
}

}  // namespace

TEST_SUITE_BEGIN("layout");

TEST_CASE("parameter_layout appends blocks in order and finds them by name") {
  ecopt::parameter_layout layout;
  layout.add_matrix("fc1.weight", 4, 3, ecopt::storage_order::row_major)
      .add_vector("fc1.bias", 4)
      .add_matrix("fc2.weight", 2, 4);
  REQUIRE(layout.block_count() == 3);
  CHECK(layout.end() == 12 + 4 + 8);
  CHECK(layout["fc1.bias"].offset == 12);
  CHECK(layout["fc2.weight"].offset == 16);
  CHECK(layout["fc1.weight"].column_major_rows() == 3);  // row-major: the transpose
  CHECK(layout["fc2.weight"].column_major_rows() == 2);
  CHECK(layout["fc1.weight"].is_matrix());
  CHECK_FALSE(layout["fc1.bias"].is_matrix());
  CHECK(contains(invalid_message([&] { (void)layout["nope"]; }), "no block is named 'nope'"));
}

TEST_CASE("parameter_layout refuses empty, overlapping, repeated and out-of-range blocks") {
  ecopt::parameter_layout layout;
  layout.add_vector("a", 10);
  CHECK(contains(invalid_message([&] { layout.add_vector("e", 0); }), "block 'e' is empty"));
  CHECK(contains(invalid_message([&] { layout.add({.name = "b", .offset = 5, .rows = 10}); }),
                 "block 'b' [5, 15) overlaps block 'a' [0, 10)"));
  CHECK(contains(invalid_message([&] { layout.add({.name = "a", .offset = 20, .rows = 1}); }),
                 "two blocks are named 'a'"));
  CHECK(contains(invalid_message([&] {
                   layout.add({.name = "huge", .offset = 1, .rows = ~std::size_t{0}, .cols = 2});
                 }),
                 "does not fit"));
  CHECK(layout.block_count() == 1);  // nothing refused was added
  CHECK(contains(invalid_message([&] { layout.validate(9); }),
                 "block 'a' ends at entry 10, past the buffer of 9 entries"));
  CHECK_NOTHROW(layout.validate(10));
  CHECK(contains(invalid_message([] { ecopt::parameter_layout{}.validate(3); }), "no block"));
}

TEST_CASE("covering fills the gaps so that every entry belongs to one block") {
  ecopt::parameter_layout layout;
  layout.add({.name = "w", .offset = 2, .rows = 2, .cols = 3})
      .add({.name = "v", .offset = 10, .rows = 3});
  const ecopt::parameter_layout full = layout.covering(20);
  std::vector<int> owner(20, 0);
  for (const auto& b : full.blocks()) {
    for (std::size_t j = b.offset; j < b.offset + b.size(); ++j) ++owner[j];
  }
  for (const int o : owner) CHECK(o == 1);
  REQUIRE(full.block_count() == 5);  // gap, w, gap, v, gap
  CHECK(full.blocks()[0].name == "(gap at 0)");
  CHECK(full.blocks()[2].offset == 8);
  CHECK(full.blocks()[4].size() == 7);
  CHECK(layout.covering(13).block_count() == 4);  // no gap after v
}

TEST_CASE("mlp and softmax_regression report their layers") {
  Eigen::MatrixXd a = Eigen::MatrixXd::Random(5, 8);
  std::vector<int> labels = {0, 1, 2, 0, 1, 2, 0, 1};
  const ecopt::mlp<double> net(a, labels, 3, {.hidden = 4});
  const ecopt::parameter_layout layers = net.layers();
  const ecopt::mlp_layout at = net.layout();
  REQUIRE(layers.block_count() == 4);
  CHECK(layers["W1"].offset == at.w1);
  CHECK(layers["W1"].rows == 4);
  CHECK(layers["W1"].cols == 5);
  CHECK(layers["b1"].offset == at.b1);
  CHECK(layers["W2"].offset == at.w2);
  CHECK(layers["W2"].rows == 3);
  CHECK(layers["W2"].cols == 4);
  CHECK(layers["b2"].offset == at.b2);
  CHECK(layers.end() == net.dim());
  CHECK_NOTHROW(layers.validate(net.dim()));
  CHECK(layers.covering(net.dim()) == layers);  // no gaps

  const ecopt::softmax_regression<double> soft(a, labels, 3);
  const ecopt::parameter_layout s = soft.layers();
  REQUIRE(s.block_count() == 2);
  CHECK(s["W"].rows == 3);
  CHECK(s["W"].cols == 5);
  CHECK(s["b"].offset == 15);
  CHECK(s.end() == soft.dim());
}

TEST_SUITE_END();

}  // namespace parameter_layout_test
