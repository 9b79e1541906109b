#pragma once
// Registries of schedules -- of the solver and of the parameter server: the
// typed contract tests run every entry.
#include <tuple>

#include "ecopt/algorithms/async_sgd.hpp"
#include "ecopt/algorithms/backup_workers.hpp"
#include "ecopt/algorithms/incremental_aggregated.hpp"
#include "ecopt/algorithms/local_sgd.hpp"
#include "ecopt/algorithms/overlap_local_sgd.hpp"
#include "ecopt/algorithms/slowmo.hpp"
#include "ecopt/algorithms/stochastic_gradient_push.hpp"
#include "ecopt/algorithms/synchronous.hpp"

namespace ecopt {
using all_schedules =
    std::tuple<synchronous, local_sgd, slowmo, stochastic_gradient_push, overlap_local_sgd>;
/// parameter_server's schedules (parameter_server.hpp).
using all_server_schedules = std::tuple<backup_workers, async_sgd, incremental_aggregated>;
}  // namespace ecopt
