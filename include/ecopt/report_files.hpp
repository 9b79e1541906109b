#pragma once
// A run_report as a result file: CSV (one row per evaluation, for plotting
// loss against bits or time) or JSON (the whole report). Numbers are written
// so that they read back to the same value (shortest round-trip form).
//
//   std::ofstream out("topk.csv");
//   ecopt::write_csv(out, report, "top_k 1%");          // header + one row per evaluation
//   ecopt::write_csv(out, other, "dense", false);      // more rows, no second header
//   ecopt::write_json(std::cout, report);
#include <charconv>
#include <cmath>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "ecopt/run_report.hpp"

namespace ecopt {

namespace detail {

/// The shortest text that reads back to v; "nan", "inf", "-inf" for the rest
/// (JSON has no such numbers: write_json writes null for them).
inline std::string number_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc{} ? std::string(buf, end) : std::string("nan");
}

/// `text` as a CSV field: quoted (with doubled quotes) when it holds a comma,
/// a quote or a line break.
inline std::string csv_field(std::string_view text) {
  if (text.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(text);
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

/// `text` as a JSON string, with control characters escaped.
inline std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\u00";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

inline std::string json_number(double v) {
  return std::isfinite(v) ? number_text(v) : std::string("null");
}

inline std::string json_array(const std::vector<std::uint64_t>& values) {
  std::string out = "[";
  for (std::size_t i = 0; i < values.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(values[i]);
  }
  return out + "]";
}

}  // namespace detail

/// The columns of write_csv, in order.
inline constexpr std::string_view report_csv_header =
    "run,step,loss,payload_bits,wire_bits,modelled_seconds";

/// One row per evaluation of the report (`run` names it in the first column),
/// preceded by the header line when `header` is true.
inline void write_csv(std::ostream& out, const run_report& report, std::string_view run = "run",
                      bool header = true) {
  if (header) out << report_csv_header << '\n';
  const std::string name = detail::csv_field(run);
  for (const eval_point& p : report.history) {
    out << name << ',' << p.step << ',' << detail::number_text(p.loss) << ',' << p.payload_bits
        << ',' << p.wire_bits << ',' << detail::number_text(p.modelled_seconds) << '\n';
  }
}

/// The whole report as one JSON object (non-finite numbers as null).
inline void write_json(std::ostream& out, const run_report& report, std::string_view run = "run") {
  out << "{\"run\": " << detail::json_string(run) << ", \"steps\": " << report.steps
      << ", \"stopped_early\": " << (report.stopped_early ? "true" : "false")
      << ", \"final_loss\": " << detail::json_number(report.final_loss())
      << ", \"payload_bits\": " << report.payload_bits << ", \"wire_bits\": " << report.wire_bits
      << ", \"payload_bits_per_worker\": " << detail::json_array(report.payload_bits_per_worker)
      << ", \"wire_bits_per_worker\": " << detail::json_array(report.wire_bits_per_worker)
      << ", \"wall_seconds\": " << detail::json_number(report.wall_seconds)
      << ", \"modelled_seconds\": " << detail::json_number(report.modelled_seconds)
      << ", \"history\": [";
  for (std::size_t i = 0; i < report.history.size(); ++i) {
    const eval_point& p = report.history[i];
    out << (i ? ", " : "") << "{\"step\": " << p.step
        << ", \"loss\": " << detail::json_number(p.loss) << ", \"payload_bits\": " << p.payload_bits
        << ", \"wire_bits\": " << p.wire_bits
        << ", \"modelled_seconds\": " << detail::json_number(p.modelled_seconds) << "}";
  }
  out << "]}\n";
}

}  // namespace ecopt
