#pragma once
// Registry of compressors: the typed contract tests and the benchmarks run
// every entry. A new compressor joins by adding one entry here.
#include <tuple>

#include "ecopt/compressors/no_compression.hpp"
#include "ecopt/compressors/qsgd.hpp"
#include "ecopt/compressors/rand_k.hpp"
#include "ecopt/compressors/scaled_sign.hpp"
#include "ecopt/compressors/top_k.hpp"

namespace ecopt {
using all_compressors =
    std::tuple<no_compression, top_k, rand_k, rand_k_unscaled, qsgd, scaled_sign>;
}
