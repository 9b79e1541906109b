#pragma once
// What a policy may know about the round it acts in. The same context, with
// `rank` set to the sender, lets a decoder regenerate a sender's random draws.
#include <cstddef>
#include <cstdint>

namespace ecopt {

struct round_context {
  std::uint64_t seed = 0;   ///< the run's global seed, equal on all ranks
  std::uint64_t round = 0;  ///< the communication round (step) number
  int rank = 0;             ///< the rank that encodes (for a decoder: the sender)
  int world = 1;            ///< number of ranks
  double lr = 0;            ///< the optimizer's step size for this round
};

}  // namespace ecopt
