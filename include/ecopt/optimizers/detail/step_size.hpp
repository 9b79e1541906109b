#pragma once
// The step-size rule shared by the first-order optimizers and the checks of
// their fields.
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "ecopt/error.hpp"

namespace ecopt::detail {

/// gamma_t = lr / (1 + lr_decay * t): constant for lr_decay = 0, O(1/t) otherwise.
[[nodiscard]] inline double decayed_step_size(double lr, double lr_decay,
                                              std::uint64_t step) noexcept {
  return lr / (1.0 + lr_decay * static_cast<double>(step));
}

inline void require_positive(std::string_view who, std::string_view field, double value) {
  if (!(value > 0) || !std::isfinite(value)) {
    throw invalid_argument(std::string(who) + ": " + std::string(field) +
                           " must be positive and finite, got " + std::to_string(value));
  }
}

inline void require_in_range(std::string_view who, std::string_view field, double value, double low,
                             double high) {
  if (!(value >= low && value < high)) {
    throw invalid_argument(std::string(who) + ": " + std::string(field) + " must be in [" +
                           std::to_string(low) + ", " + std::to_string(high) + "), got " +
                           std::to_string(value));
  }
}

}  // namespace ecopt::detail
