#pragma once
// Argument checks shared by policies: a dimension mismatch is a caller's bug
// that must be named, not a buffer overrun.
#include <cstddef>
#include <string>
#include <string_view>

#include "ecopt/error.hpp"

namespace ecopt::detail {

inline void require_size(std::string_view who, std::string_view what, std::size_t actual,
                         std::size_t expected) {
  if (actual != expected) {
    throw invalid_argument(std::string(who) + ": " + std::string(what) + " has " +
                           std::to_string(actual) + " entries, expected " +
                           std::to_string(expected));
  }
}

}  // namespace ecopt::detail
