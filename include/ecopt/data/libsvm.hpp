#pragma once
// Reader for the LIBSVM / SVMlight text format, plain or gzip compressed
// (read through zlib; link with -lz / ZLIB::ZLIB):
//
//   <label> [qid:<n>] <index>:<value> <index>:<value> ... [# comment]
//
// Indices are 1-based and strictly increasing within a line; absent features
// are 0. Blank lines and everything from '#' to the end of a line are skipped.
// A "qid:<n>" token (SVMrank query id) right after the label is validated and
// ignored. Tokens are separated by spaces or tabs; "\r\n" line ends are fine.
// Numbers are parsed with std::from_chars (no locale); a leading '+' is
// accepted. The result is dense: features is d x m, one sample per column.
//
// Every defect is an ecopt::data_error "file:line:column: what" (column is the
// 1-based byte position of the offending token): bad numbers, index 0,
// non-increasing indices, an index above libsvm_options.dim, a missing ':',
// NaN/inf or out-of-range values, and a file without samples.
//
// Memory: the text is held whole (at most libsvm_options.max_text_bytes), and
// the dense matrix is bounded by libsvm_options.max_elements, checked line by
// line as samples and indices arrive, so a short line with a huge index fails
// at that line instead of asking for gigabytes.
#include <Eigen/Core>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "ecopt/data/idx.hpp"  // detail::gz_input
#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"

namespace ecopt {

struct libsvm_options {
  /// Number of features d; 0 = the largest index in the file. An index above a
  /// non-zero dim is an error.
  std::size_t dim = 0;
  /// Largest dense matrix (d x m values) accepted: 2^27 values, 1 GiB of double.
  std::size_t max_elements = std::size_t{1} << 27U;
  /// Largest text read from a file (after decompression): a pipe that never
  /// ends is an error, not unbounded memory.
  std::uint64_t max_text_bytes = std::uint64_t{1} << 32U;
};

template <class T>
struct libsvm_data {
  matrix_t<T> features;  ///< d x m, one sample per column
  vector_t<T> labels;    ///< m labels
};

namespace detail {

class libsvm_parser {
 public:
  libsvm_parser(std::string_view name, std::string_view line, std::size_t line_number)
      : name_(name), line_(line), line_number_(line_number) {}

  [[noreturn]] void fail(std::size_t column, const std::string& what) const {
    throw data_error(std::string(name_) + ":" + std::to_string(line_number_) + ":" +
                     std::to_string(column + 1) + ": " + what);
  }

  /// The token [begin, end) of the line as a finite number.
  template <class T>
  [[nodiscard]] T number(std::size_t begin, std::size_t end, const char* what) const {
    const std::string_view token = line_.substr(begin, end - begin);
    std::string_view digits = token;
    if (digits.size() > 1 && digits[0] == '+' && digits[1] != '-' && digits[1] != '+') {
      digits.remove_prefix(1);
    }
    double value = 0;
    const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec == std::errc::result_out_of_range) {
      fail(begin, std::string(what) + " '" + std::string(token) + "' is out of range");
    }
    if (ec != std::errc() || ptr != digits.data() + digits.size() || digits.empty()) {
      fail(begin, "bad " + std::string(what) + " '" + std::string(token) + "'");
    }
    if (!std::isfinite(value)) {
      fail(begin, std::string(what) + " '" + std::string(token) + "' is not finite");
    }
    const auto converted = static_cast<T>(value);
    if (!std::isfinite(converted)) {
      fail(begin, std::string(what) + " '" + std::string(token) + "' is out of range for the " +
                      "scalar type");
    }
    return converted;
  }

  /// The token [begin, end) as a non-negative integer.
  [[nodiscard]] std::uint64_t integer(std::size_t begin, std::size_t end, const char* what) const {
    const std::string_view token = line_.substr(begin, end - begin);
    std::uint64_t value = 0;
    const auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), value);
    if (ec == std::errc::result_out_of_range) {
      fail(begin, std::string(what) + " '" + std::string(token) + "' is out of range");
    }
    if (ec != std::errc() || ptr != token.data() + token.size() || token.empty()) {
      fail(begin, "bad " + std::string(what) + " '" + std::string(token) + "'");
    }
    return value;
  }

 private:
  std::string_view name_;
  std::string_view line_;
  std::size_t line_number_;
};

[[nodiscard]] constexpr bool is_blank(char c) noexcept { return c == ' ' || c == '\t'; }

}  // namespace detail

/// Parses LIBSVM text; `name` is the file name used in error messages.
template <class T = double>
[[nodiscard]] libsvm_data<T> parse_libsvm(std::string_view text, std::string_view name = "<text>",
                                          const libsvm_options& options = {}) {
  struct entry {
    std::size_t index;  // 0-based feature
    T value;
  };
  std::vector<entry> entries;
  std::vector<std::size_t> starts;  // first entry of each sample
  std::vector<T> labels;
  std::size_t max_index = 0;

  std::size_t line_number = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    ++line_number;
    std::size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (const std::size_t hash = line.find('#'); hash != std::string_view::npos) {
      line = line.substr(0, hash);
    }
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const detail::libsvm_parser parser(name, line, line_number);

    std::size_t i = 0;
    auto next_token = [&](std::size_t& begin, std::size_t& end) {
      while (i < line.size() && detail::is_blank(line[i])) ++i;
      begin = i;
      while (i < line.size() && !detail::is_blank(line[i])) ++i;
      end = i;
      return end > begin;
    };
    std::size_t begin = 0;
    std::size_t end = 0;
    if (!next_token(begin, end)) continue;  // blank or comment-only line

    labels.push_back(parser.template number<T>(begin, end, "label"));
    starts.push_back(entries.size());
    std::size_t previous = 0;  // 1-based index of the previous feature, 0 = none
    bool first = true;
    while (next_token(begin, end)) {
      const std::string_view token = line.substr(begin, end - begin);
      const std::size_t colon = token.find(':');
      if (colon == std::string_view::npos) {
        parser.fail(begin, "expected index:value, missing ':' in '" + std::string(token) + "'");
      }
      if (token.substr(0, colon) == "qid") {
        if (!first) parser.fail(begin, "'qid' must come right after the label");
        (void)parser.integer(begin + colon + 1, end, "qid");
        first = false;
        continue;
      }
      first = false;
      const std::uint64_t index = parser.integer(begin, begin + colon, "feature index");
      if (index == 0) parser.fail(begin, "feature index 0: indices are 1-based");
      if (index <= previous) {
        parser.fail(begin, "feature index " + std::to_string(index) +
                               " is not greater than the previous index " +
                               std::to_string(previous) + " (indices must be strictly increasing)");
      }
      if (options.dim != 0 && index > options.dim) {
        parser.fail(begin, "feature index " + std::to_string(index) +
                               " exceeds libsvm_options.dim = " + std::to_string(options.dim));
      }
      if (index > options.max_elements) {
        parser.fail(begin, "feature index " + std::to_string(index) +
                               " exceeds libsvm_options.max_elements = " +
                               std::to_string(options.max_elements));
      }
      if (colon + 1 == token.size()) parser.fail(begin + colon + 1, "missing value after ':'");
      const T value = parser.template number<T>(begin + colon + 1, end, "value");
      entries.push_back({static_cast<std::size_t>(index - 1), value});
      previous = static_cast<std::size_t>(index);
      max_index = std::max(max_index, previous);
    }
    // The matrix so far must fit: fail at this line, before more text is parsed.
    const std::size_t d_so_far = options.dim != 0 ? options.dim : max_index;
    if (d_so_far != 0 && labels.size() > options.max_elements / d_so_far) {
      throw data_error(std::string(name) + ":" + std::to_string(line_number) +
                       ": the dense feature matrix would be " + std::to_string(d_so_far) + " x " +
                       std::to_string(labels.size()) +
                       " values, more than libsvm_options.max_elements = " +
                       std::to_string(options.max_elements));
    }
  }

  const std::size_t m = labels.size();
  if (m == 0) {
    throw data_error(std::string(name) + ": no samples (the file is empty or has only blank and " +
                     "comment lines)");
  }
  const std::size_t d = options.dim != 0 ? options.dim : max_index;
  libsvm_data<T> out;
  out.features = matrix_t<T>::Zero(static_cast<Eigen::Index>(d), static_cast<Eigen::Index>(m));
  out.labels = Eigen::Map<const vector_t<T>>(labels.data(), static_cast<Eigen::Index>(m));
  starts.push_back(entries.size());
  for (std::size_t j = 0; j < m; ++j) {
    for (std::size_t k = starts[j]; k < starts[j + 1]; ++k) {
      out.features(static_cast<Eigen::Index>(entries[k].index), static_cast<Eigen::Index>(j)) =
          entries[k].value;
    }
  }
  return out;
}

/// Reads a LIBSVM file (plain or gzip) into a dense d x m matrix and m labels.
template <class T = double>
[[nodiscard]] libsvm_data<T> read_libsvm(const std::filesystem::path& path,
                                         const libsvm_options& options = {}) {
  detail::gz_input in(path);
  std::string text;
  constexpr std::size_t chunk = std::size_t{1} << 20U;
  std::size_t have = 0;
  for (;;) {
    text.resize(have + chunk);
    const std::size_t got = in.read(text.data() + have, chunk);
    have += got;
    if (have > options.max_text_bytes) {
      in.fail("more than " + std::to_string(options.max_text_bytes) +
              " bytes of text (libsvm_options.max_text_bytes)");
    }
    if (got < chunk) break;
  }
  text.resize(have);
  return parse_libsvm<T>(text, path.string(), options);
}

}  // namespace ecopt
