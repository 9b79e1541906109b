#pragma once
// Registry of compensators: the typed contract tests run every entry.
#include <tuple>

#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compensators/no_compensation.hpp"

namespace ecopt {
using all_compensators = std::tuple<no_compensation, error_feedback>;
}
