// Tests of the result files of a run_report: CSV rows and JSON, exact text,
// numbers that read back to the same value, quoting and escaping.
#include <doctest/doctest.h>

#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "ecopt/report_files.hpp"
#include "ecopt/run_report.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace report_files_test {

namespace {

ecopt::run_report sample() {
  ecopt::run_report r;
  r.steps = 20;
  r.history = {{0, 2.5, 0, 0, 0.0}, {10, 0.1, 3200, 3456, 0.25}, {20, 1.0 / 3.0, 6400, 6912, 0.5}};
  r.payload_bits = 6400;
  r.wire_bits = 6912;
  r.payload_bits_per_worker = {6400, 6400};
  r.wire_bits_per_worker = {6912, 7000};
  r.wall_seconds = 1.5;
  return r;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

}  // namespace

TEST_SUITE_BEGIN("report");

TEST_CASE("write_csv writes a header and one row per evaluation") {
  std::ostringstream out;
  ecopt::write_csv(out, sample(), "top_k 1%");
  const auto rows = lines(out.str());
  REQUIRE(rows.size() == 4);
  CHECK(rows[0] == "run,step,loss,payload_bits,wire_bits,modelled_seconds");
  CHECK(rows[1] == "top_k 1%,0,2.5,0,0,0");
  CHECK(rows[2] == "top_k 1%,10,0.1,3200,3456,0.25");
  // The loss reads back to the same double.
  const std::string loss = rows[3].substr(12, rows[3].find(',', 12) - 12);
  double back = 0;
  std::from_chars(loss.data(), loss.data() + loss.size(), back);
  CHECK(back == 1.0 / 3.0);

  std::ostringstream more;
  ecopt::write_csv(more, sample(), "a, \"b\"", false);
  CHECK(lines(more.str())[0] == "\"a, \"\"b\"\"\",0,2.5,0,0,0");  // quoted, no header
}

TEST_CASE("write_json writes the whole report; non-finite numbers become null") {
  ecopt::run_report r = sample();
  r.history.resize(2);
  r.history[1].loss = std::numeric_limits<double>::quiet_NaN();
  std::ostringstream out;
  ecopt::write_json(out, r, "tab\there");
  CHECK(out.str() ==
        "{\"run\": \"tab\\u0009here\", \"steps\": 20, \"stopped_early\": false, \"final_loss\": "
        "null, \"payload_bits\": 6400, \"wire_bits\": 6912, \"payload_bits_per_worker\": [6400, "
        "6400], \"wire_bits_per_worker\": [6912, 7000], \"wall_seconds\": 1.5, "
        "\"modelled_seconds\": 0, \"history\": [{\"step\": 0, \"loss\": 2.5, \"payload_bits\": 0, "
        "\"wire_bits\": 0, \"modelled_seconds\": 0}, {\"step\": 10, \"loss\": null, "
        "\"payload_bits\": 3200, \"wire_bits\": 3456, \"modelled_seconds\": 0.25}]}\n");
}

TEST_SUITE_END();

}  // namespace report_files_test
