#pragma once
// parameter_layout: the parameters of a model as named blocks of one
// contiguous buffer, each a vector or a rows x cols matrix, so that a
// compressor can see each layer with its own shape (per_block.hpp): PowerSGD
// per weight matrix, top-k per layer.
//
// A matrix block stores its entries column-major (entry (i, j) at
// offset + i + j * rows, Eigen's default) or row-major (offset + i * cols + j,
// PyTorch's). A vector block is a column: rows = size, cols = 1.
//
// Build it in one line per layer; `add_*` appends after the last block:
//   ecopt::parameter_layout layout;
//   layout.add_matrix("fc1.weight", 256, 784, ecopt::storage_order::row_major)
//         .add_vector("fc1.bias", 256)
//         .add_matrix("fc2.weight", 10, 256, ecopt::storage_order::row_major)
//         .add_vector("fc2.bias", 10);
// or place blocks at given offsets with `add` (gaps are allowed: what no block
// covers travels as one dense vector block of its own, see per_block).
// Blocks must not overlap and must lie inside the buffer; names are unique.
#include <algorithm>
#include <cstddef>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/error.hpp"

namespace ecopt {

enum class storage_order { column_major, row_major };

struct parameter_block {
  std::string name;
  std::size_t offset = 0;  ///< first entry in the buffer
  std::size_t rows = 0;
  std::size_t cols = 1;  ///< 1 for a vector
  storage_order order = storage_order::column_major;

  [[nodiscard]] std::size_t size() const noexcept { return rows * cols; }
  [[nodiscard]] bool is_matrix() const noexcept { return rows > 1 && cols > 1; }
  /// The block seen as a column-major matrix: a row-major rows x cols block is
  /// the column-major cols x rows matrix of its transpose.
  [[nodiscard]] std::size_t column_major_rows() const noexcept {
    return order == storage_order::column_major ? rows : cols;
  }
};

class parameter_layout {
 public:
  parameter_layout() = default;

  /// One vector block covering a buffer of `dim` entries.
  [[nodiscard]] static parameter_layout flat(std::size_t dim, std::string name = "x") {
    parameter_layout layout;
    layout.add_vector(std::move(name), dim);
    return layout;
  }

  /// Appends a rows x cols matrix after the last block.
  parameter_layout& add_matrix(std::string name, std::size_t rows, std::size_t cols,
                               storage_order order = storage_order::column_major) {
    return add(
        {.name = std::move(name), .offset = end(), .rows = rows, .cols = cols, .order = order});
  }

  /// Appends a vector of `size` entries after the last block.
  parameter_layout& add_vector(std::string name, std::size_t size) {
    return add({.name = std::move(name), .offset = end(), .rows = size, .cols = 1});
  }

  /// Adds a block where it says; throws invalid_argument naming the block when
  /// it is empty, overflows, overlaps another or repeats a name.
  parameter_layout& add(parameter_block block) {
    if (block.rows == 0 || block.cols == 0) {
      throw invalid_argument("parameter_layout: block '" + block.name + "' is empty (" +
                             std::to_string(block.rows) + " x " + std::to_string(block.cols) + ")");
    }
    constexpr std::size_t limit = std::numeric_limits<std::size_t>::max();
    if (block.rows > limit / block.cols || block.offset > limit - block.size()) {
      throw invalid_argument("parameter_layout: block '" + block.name +
                             "' does not fit in a buffer of size_t entries");
    }
    for (const parameter_block& other : blocks_) {
      if (other.name == block.name) {
        throw invalid_argument("parameter_layout: two blocks are named '" + block.name + "'");
      }
      if (block.offset < other.offset + other.size() &&
          other.offset < block.offset + block.size()) {
        throw invalid_argument("parameter_layout: block '" + block.name + "' [" +
                               std::to_string(block.offset) + ", " +
                               std::to_string(block.offset + block.size()) + ") overlaps block '" +
                               other.name + "' [" + std::to_string(other.offset) + ", " +
                               std::to_string(other.offset + other.size()) + ")");
      }
    }
    const auto at = std::upper_bound(
        blocks_.begin(), blocks_.end(), block.offset,
        [](std::size_t offset, const parameter_block& b) { return offset < b.offset; });
    blocks_.insert(at, std::move(block));
    return *this;
  }

  /// The blocks in the order of their offsets.
  [[nodiscard]] const std::vector<parameter_block>& blocks() const noexcept { return blocks_; }
  [[nodiscard]] std::size_t block_count() const noexcept { return blocks_.size(); }
  /// One past the last entry any block covers.
  [[nodiscard]] std::size_t end() const noexcept {
    return blocks_.empty() ? 0 : blocks_.back().offset + blocks_.back().size();
  }

  [[nodiscard]] const parameter_block& operator[](std::string_view name) const {
    for (const parameter_block& b : blocks_) {
      if (b.name == name) return b;
    }
    throw invalid_argument("parameter_layout: no block is named '" + std::string(name) + "'");
  }

  /// Throws invalid_argument when a block reaches past a buffer of `dim` entries.
  void validate(std::size_t dim) const {
    if (blocks_.empty()) throw invalid_argument("parameter_layout: the layout has no block");
    if (end() > dim) {
      const parameter_block& last = blocks_.back();
      throw invalid_argument("parameter_layout: block '" + last.name + "' ends at entry " +
                             std::to_string(end()) + ", past the buffer of " + std::to_string(dim) +
                             " entries");
    }
  }

  /// The same layout with the gaps before, between and after the blocks (up to
  /// `dim`) filled by vector blocks named "(gap at OFFSET)": every entry of the
  /// buffer then belongs to exactly one block.
  [[nodiscard]] parameter_layout covering(std::size_t dim) const {
    validate(dim);
    parameter_layout out;
    std::size_t at = 0;
    for (const parameter_block& b : blocks_) {
      if (b.offset > at) out.add(gap(at, b.offset - at));
      out.add(b);
      at = b.offset + b.size();
    }
    if (dim > at) out.add(gap(at, dim - at));
    return out;
  }

  friend bool operator==(const parameter_layout& a, const parameter_layout& b) {
    if (a.blocks_.size() != b.blocks_.size()) return false;
    for (std::size_t i = 0; i < a.blocks_.size(); ++i) {
      const parameter_block& x = a.blocks_[i];
      const parameter_block& y = b.blocks_[i];
      if (x.name != y.name || x.offset != y.offset || x.rows != y.rows || x.cols != y.cols ||
          x.order != y.order) {
        return false;
      }
    }
    return true;
  }

 private:
  static parameter_block gap(std::size_t offset, std::size_t size) {
    return {.name = "(gap at " + std::to_string(offset) + ")", .offset = offset, .rows = size};
  }

  std::vector<parameter_block> blocks_;
};

}  // namespace ecopt
