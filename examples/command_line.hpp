#pragma once
// The example programs' command lines: one flag syntax (`--name value` or
// `--name=value`; a true|false switch alone means true), `--help` on every program, and errors that
// name the flag and what it accepts. Each option writes into the caller's variable, whose value
// before parsing is the default shown by --help.
//
//   ecopt_examples::command_line cli("own_loop", "Train an MLP with your own loop.");
//   cli.option("--steps", s.steps, "training steps")
//      .choice("--compressor", s.compressor, {"power_sgd", "top_k"}, "what to send");
//   if (!cli.parse(argc, argv)) return 0;  // --help was printed
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include "ecopt/error.hpp"

namespace ecopt_examples {

class command_line {
 public:
  command_line(std::string program, std::string summary)
      : program_(std::move(program)), summary_(std::move(summary)) {}

  /// A number (integer or floating point), a string or a path.
  template <class V>
  command_line& option(std::string name, V& value, std::string help) {
    options_.push_back({std::move(name), std::move(help), show(value), kind_of<V>(),
                        [&value](const std::string& flag, const std::string& text) {
                          value = parse_value<V>(flag, text);
                        }});
    return *this;
  }

  /// A string that must be one of `allowed`.
  command_line& choice(std::string name, std::string& value, std::vector<std::string> allowed,
                       std::string help) {
    std::string list;
    for (const std::string& a : allowed) list += (list.empty() ? "" : "|") + a;
    options_.push_back({std::move(name), std::move(help), value, list,
                        [&value, allowed, list](const std::string& flag, const std::string& text) {
                          for (const std::string& a : allowed) {
                            if (a == text) {
                              value = text;
                              return;
                            }
                          }
                          throw ecopt::invalid_argument(flag + ": '" + text + "' is not one of " +
                                                        list);
                        }});
    return *this;
  }

  /// Parses argv. Returns false after printing the help for --help or -h (the
  /// program should then exit 0); throws ecopt::invalid_argument naming the
  /// flag for anything it cannot take.
  bool parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        print_help();
        return false;
      }
      std::string text;
      bool has_text = false;
      if (const auto eq = arg.find('='); eq != std::string::npos && arg.starts_with("--")) {
        text = arg.substr(eq + 1);
        arg.resize(eq);
        has_text = true;
      }
      const entry* match = nullptr;
      for (const entry& e : options_) {
        if (e.name == arg) match = &e;
      }
      if (match == nullptr) {
        std::string known;
        for (const entry& e : options_) known += " " + e.name;
        throw ecopt::invalid_argument(program_ + ": unknown argument '" + arg +
                                      "' (known:" + known + " --help)");
      }
      if (!has_text && match->kind == "true|false" &&
          (i + 1 >= argc || std::string_view(argv[i + 1]).starts_with("--"))) {
        text = "true";  // a switch given alone
        has_text = true;
      }
      if (!has_text) {
        if (i + 1 >= argc) {
          throw ecopt::invalid_argument(arg + " needs a value (" + match->kind + ")");
        }
        text = argv[++i];
      }
      match->set(arg, text);
    }
    return true;
  }

  void print_help(std::FILE* out = stdout) const {
    std::fprintf(out, "%s: %s\n\nusage: %s [options]\n\n", program_.c_str(), summary_.c_str(),
                 program_.c_str());
    for (const entry& e : options_) {
      std::fprintf(out, "  %s %s\n      %s (default: %s)\n", e.name.c_str(), e.kind.c_str(),
                   e.help.c_str(), e.shown.c_str());
    }
    std::fprintf(out, "  --help\n      this text\n");
  }

 private:
  struct entry {
    std::string name, help, shown, kind;
    std::function<void(const std::string&, const std::string&)> set;
  };

  template <class V>
  static std::string kind_of() {
    if constexpr (std::is_same_v<V, bool>) {
      return "true|false";
    } else if constexpr (std::is_integral_v<V>) {
      return std::is_signed_v<V> ? "INTEGER" : "COUNT";
    } else if constexpr (std::is_floating_point_v<V>) {
      return "NUMBER";
    } else if constexpr (std::is_same_v<V, std::filesystem::path>) {
      return "PATH";
    } else {
      return "TEXT";
    }
  }

  template <class V>
  static std::string show(const V& v) {
    if constexpr (std::is_same_v<V, bool>) {
      return v ? "true" : "false";
    } else if constexpr (std::is_arithmetic_v<V>) {
      char buf[64];
      const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
      return ec == std::errc{} ? std::string(buf, end) : "?";
    } else if constexpr (std::is_same_v<V, std::filesystem::path>) {
      return v.string();
    } else {
      return v.empty() ? "\"\"" : std::string(v);
    }
  }

  template <class V>
  static V parse_value(const std::string& flag, const std::string& text) {
    if constexpr (std::is_same_v<V, bool>) {
      if (text == "true" || text == "1") return true;
      if (text == "false" || text == "0") return false;
      throw ecopt::invalid_argument(flag + ": '" + text + "' is not true or false");
    } else if constexpr (std::is_arithmetic_v<V>) {
      V v{};
      const char* end = text.data() + text.size();
      const auto [ptr, ec] = std::from_chars(text.data(), end, v);
      if (ec == std::errc::result_out_of_range) {
        throw ecopt::invalid_argument(flag + ": '" + text + "' is out of range");
      }
      if (ec != std::errc{} || ptr != end || text.empty()) {
        throw ecopt::invalid_argument(
            flag + ": '" + text + "' is not " +
            (std::is_integral_v<V> ? (std::is_signed_v<V> ? "an integer" : "a whole number >= 0")
                                   : "a number"));
      }
      return v;
    } else {
      return V(text);
    }
  }

  std::string program_, summary_;
  std::vector<entry> options_;
};

}  // namespace ecopt_examples
