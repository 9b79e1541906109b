#pragma once
// Registry of compensators: the typed contract tests run every entry.
#include <tuple>

#include "ecopt/compensators/diagonal_hessian.hpp"
#include "ecopt/compensators/ef21.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compensators/hessian_aided.hpp"
#include "ecopt/compensators/momentum_error_feedback.hpp"
#include "ecopt/compensators/no_compensation.hpp"

namespace ecopt {
using all_compensators = std::tuple<no_compensation, error_feedback, ef21, hessian_aided,
                                    diagonal_hessian, momentum_error_feedback>;
}
