#pragma once
// Registry of schedules: the typed contract tests run every entry.
#include <tuple>

#include "ecopt/algorithms/local_sgd.hpp"
#include "ecopt/algorithms/overlap_local_sgd.hpp"
#include "ecopt/algorithms/slowmo.hpp"
#include "ecopt/algorithms/stochastic_gradient_push.hpp"
#include "ecopt/algorithms/synchronous.hpp"

namespace ecopt {
using all_schedules =
    std::tuple<synchronous, local_sgd, slowmo, stochastic_gradient_push, overlap_local_sgd>;
}
