// Tests of the LIBSVM reader: a round trip through plain and gzip files with
// comments, blank lines, CRLF, tabs, '+' signs and qid tokens; every error
// case with "file:line:column" in the message; and the real heart_scale file
// when it is installed.
#include <doctest/doctest.h>
#include <unistd.h>
#include <zlib.h>

#include <Eigen/Core>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "ecopt/data/libsvm.hpp"
#include "ecopt/error.hpp"
#include "support/alloc_counter.hpp"
#include "support/temp_dir.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace libsvm_test {

namespace {

namespace fs = std::filesystem;

using ecopt::test::temp_dir;

fs::path write_plain(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
  return path;
}

fs::path write_gzip(const fs::path& path, const std::string& text) {
  gzFile f = gzopen(path.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, text.data(), static_cast<unsigned>(text.size())) ==
          static_cast<int>(text.size()));
  REQUIRE(gzclose(f) == Z_OK);
  return path;
}

/// The message of the data_error that f throws ("" if none).
template <class F>
std::string data_message(F&& f) {
  try {
    f();
  } catch (const ecopt::data_error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

const std::string sample_text =
    "# a comment line\n"
    "+1 1:0.5 3:-2 # trailing comment\n"
    "\n"
    "-1\tqid:7 2:1e-3\t4:+.25\r\n"
    "   \t \n"
    "2.5 1:-1.5e+2 2:3 3:4 4:5\n"
    "0\n";

}  // namespace

TEST_SUITE_BEGIN("data");

TEST_CASE("LIBSVM round trip, plain and gzip") {
  const temp_dir dir;
  for (const bool gz : {false, true}) {
    CAPTURE(gz);
    const fs::path p = gz ? write_gzip(dir.file("s.gz"), sample_text)
                          : write_plain(dir.file("s.txt"), sample_text);
    const ecopt::libsvm_data<double> data = ecopt::read_libsvm(p);
    REQUIRE(data.features.rows() == 4);
    REQUIRE(data.features.cols() == 4);
    CHECK(data.labels == (Eigen::VectorXd(4) << 1, -1, 2.5, 0).finished());
    Eigen::MatrixXd expected(4, 4);
    expected << 0.5, 0, -150, 0,  //
        0, 1e-3, 3, 0,            //
        -2, 0, 4, 0,              //
        0, 0.25, 5, 0;
    CHECK(data.features == expected);
  }
  const fs::path p = write_plain(dir.file("dim.txt"), sample_text);
  const auto wide = ecopt::read_libsvm<float>(p, {.dim = 10});
  CHECK(wide.features.rows() == 10);
  CHECK(wide.features.bottomRows(6).isZero());
  CHECK(wide.features(0, 2) == -150.0F);
  const auto parsed = ecopt::parse_libsvm(sample_text);
  CHECK(parsed.features.cols() == 4);
  // a last line without '\n' still counts
  CHECK(ecopt::parse_libsvm("1 2:3\n-1 1:1").features.cols() == 2);
}

TEST_CASE("LIBSVM errors give file:line:column") {
  const temp_dir dir;
  struct error_case {
    const char* text;
    const char* where;  // "line:column"
    const char* what;
  };
  const error_case cases[] = {
      {"abc 1:2\n", "1:1", "bad label 'abc'"},
      {"1 1:2\n-1 1:2x\n", "2:6", "bad value '2x'"},
      {"1 1:2\n\n1 a:2\n", "3:3", "bad feature index 'a'"},
      {"1 -3:2\n", "1:3", "bad feature index '-3'"},
      {"1 0:2\n", "1:3", "feature index 0"},
      {"1 2:1 2:3\n", "1:7", "not greater than the previous index 2"},
      {"1 3:1 2:3\n", "1:7", "not greater than the previous index 3"},
      {"1 3\n", "1:3", "missing ':'"},
      {"1 3:\n", "1:5", "missing value"},
      {"1 1:nan\n", "1:5", "not finite"},
      {"1 1:-inf\n", "1:5", "not finite"},
      {"inf 1:1\n", "1:1", "not finite"},
      {"1 1:1e999\n", "1:5", "out of range"},
      {"1 99999999999999999999999:1\n", "1:3", "out of range"},
      {"1 1:2 qid:3\n", "1:7", "qid"},
      {"1 qid:x 1:2\n", "1:7", "bad qid 'x'"},
      {"1,2 1:2\n", "1:1", "bad label '1,2'"},
  };
  for (const error_case& c : cases) {
    CAPTURE(c.text);
    const fs::path p = write_plain(dir.file("bad.txt"), c.text);
    const std::string msg = data_message([&] { (void)ecopt::read_libsvm(p); });
    CHECK(contains(msg, p.string() + ":" + c.where + ": "));
    CHECK(contains(msg, c.what));
  }

  SUBCASE("an index above the given dim") {
    const fs::path p = write_plain(dir.file("dim.txt"), "1 1:1\n1 2:1 4:1\n");
    const std::string msg = data_message([&] { (void)ecopt::read_libsvm(p, {.dim = 3}); });
    CHECK(contains(msg, p.string() + ":2:7: "));
    CHECK(contains(msg, "libsvm_options.dim = 3"));
  }
  SUBCASE("a value out of range for float") {
    const fs::path p = write_plain(dir.file("float.txt"), "1 1:1e300\n");
    CHECK(contains(data_message([&] { (void)ecopt::read_libsvm<float>(p); }), ":1:5: "));
    CHECK(ecopt::read_libsvm<double>(p).features(0, 0) == 1e300);
  }
  SUBCASE("no samples") {
    for (const char* text : {"", "# only a comment\n\n  \n"}) {
      const fs::path p = write_plain(dir.file("empty.txt"), text);
      const std::string msg = data_message([&] { (void)ecopt::read_libsvm(p); });
      CHECK(contains(msg, p.string()));
      CHECK(contains(msg, "no samples"));
    }
  }
  SUBCASE("missing file") {
    const fs::path p = dir.file("missing.txt");
    const std::string msg = data_message([&] { (void)ecopt::read_libsvm(p); });
    CHECK(contains(msg, p.string()));
    CHECK(contains(msg, "cannot open"));
  }
  SUBCASE("a dense matrix above max_elements") {
    const fs::path p = write_plain(dir.file("big.txt"), "1 1000:1\n1 1:1\n");
    const std::string msg =
        data_message([&] { (void)ecopt::read_libsvm(p, {.max_elements = 1500}); });
    CHECK(contains(msg, "1000 x 2"));
    CHECK(contains(msg, "libsvm_options.max_elements"));
  }
}

TEST_CASE("LIBSVM: a short line cannot ask for a huge matrix") {
  const temp_dir dir;
  // 16 bytes declaring 2^30 features: 8 GiB of double as a dense column.
  const fs::path p = write_plain(dir.file("huge_index.txt"), "0 1073741824:1\n");
  {
    const ecopt::test::allocation_scope scope;
    const std::string msg = data_message([&] { (void)ecopt::read_libsvm(p); });
    CHECK(contains(msg, p.string() + ":1:3: "));
    CHECK(contains(msg, "libsvm_options.max_elements = 134217728"));
    CHECK(scope.bytes() < (std::size_t{4} << 20U));  // the 1 MiB read buffer, little else
  }
  // Within the index bound, the matrix grows with the samples and fails at the line
  // that takes it past max_elements, not after the whole text is parsed.
  std::string many;
  for (int k = 0; k < 3000; ++k) many += "0 100000:1\n";
  const fs::path q = write_plain(dir.file("many.txt"), many);
  const std::string msg = data_message([&] { (void)ecopt::read_libsvm(q); });
  CHECK(contains(msg, q.string() + ":1343: "));  // 100000 x 1343 > 2^27
  CHECK(contains(msg, "100000 x 1343 values"));
  CHECK(ecopt::read_libsvm(q, {.max_elements = std::size_t{1} << 29U}).features.cols() == 3000);
}

TEST_CASE("LIBSVM: max_text_bytes bounds the text read") {
  const temp_dir dir;
  const fs::path p = write_plain(dir.file("text.txt"), "1 1:1\n2 2:1\n");  // 12 bytes
  CHECK(ecopt::read_libsvm(p, {.max_text_bytes = 12}).labels.size() == 2);
  const std::string msg =
      data_message([&] { (void)ecopt::read_libsvm(p, {.max_text_bytes = 11}); });
  CHECK(contains(msg, p.string()));
  CHECK(contains(msg, "more than 11 bytes of text (libsvm_options.max_text_bytes)"));
}

TEST_CASE("LIBSVM: heart_scale, when installed") {
  const fs::path p = "/usr/share/doc/liblinear-tools/examples/heart_scale";
  if (!fs::exists(p)) {
    MESSAGE("heart_scale not found at " << p.string() << "; skipped");
    return;
  }
  const auto data = ecopt::read_libsvm(p);
  CHECK(data.features.rows() == 13);
  CHECK(data.features.cols() == 270);
  CHECK(data.labels.size() == 270);
  CHECK((data.labels.array().abs() == 1.0).all());
  CHECK((data.labels.array() == 1.0).count() == 120);
  CHECK(data.features.minCoeff() >= -1.0);
  CHECK(data.features.maxCoeff() <= 1.0);
}

TEST_SUITE_END();

}  // namespace libsvm_test
