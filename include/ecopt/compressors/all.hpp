#pragma once
// Registry of compressors: the typed contract tests and the benchmarks run
// every entry. A new compressor joins by adding one entry here.
#include <tuple>

#include "ecopt/compressors/chain.hpp"
#include "ecopt/compressors/count_sketch.hpp"
#include "ecopt/compressors/dq_sgd.hpp"
#include "ecopt/compressors/global_top_k.hpp"
#include "ecopt/compressors/grid_rounding.hpp"
#include "ecopt/compressors/natural.hpp"
#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/compressors/per_block.hpp"
#include "ecopt/compressors/power_sgd.hpp"
#include "ecopt/compressors/qsgd.hpp"
#include "ecopt/compressors/rand_k.hpp"
#include "ecopt/compressors/scaled_sign.hpp"
#include "ecopt/compressors/sign.hpp"
#include "ecopt/compressors/terngrad.hpp"
#include "ecopt/compressors/threshold_top_k.hpp"
#include "ecopt/compressors/top_k.hpp"

namespace ecopt {
using all_compressors =
    std::tuple<no_compression, top_k, rand_k, rand_k_unscaled, qsgd, scaled_sign, terngrad, natural,
               sign, dq_sgd, grid_rounding, power_sgd, count_sketch, global_top_k, threshold_top_k,
               chain<top_k, qsgd>, chain<top_k, scaled_sign>, per_block<top_k>,
               per_block<power_sgd>, per_block<rand_k>>;
}
