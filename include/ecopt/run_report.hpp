#pragma once
// What a solver run returns, and what observers are shown while it runs.
#include <cstdint>
#include <limits>
#include <vector>

namespace ecopt {

class checkpoint;

/// How long to run and what to record.
struct run_options {
  std::uint64_t steps = 1000;  ///< communication rounds
  std::uint64_t seed = 0;      ///< global seed: equal on all ranks
  std::uint64_t eval_every =
      0;  ///< evaluate the global loss every this many steps (0: start and end only)
  bool check_finite = true;  ///< throw numeric_error on a non-finite gradient
  /// Every this many steps (0: never), the solver hands its state to the
  /// observers' on_checkpoint(const checkpoint&, const progress&) (write it
  /// to a file there).
  std::uint64_t checkpoint_every = 0;
  /// Start from this checkpoint (one on_checkpoint was given, with the same
  /// policies, world, seed and steps) instead of step 0; the run then ends
  /// bit for bit where the uninterrupted run ends. Not owned.
  const checkpoint* resume_from = nullptr;
};

/// The global loss at one evaluation point.
struct eval_point {
  std::uint64_t step = 0;
  double loss = 0;                 ///< mean of the workers' local losses, f = (1/n) sum_i f_i
  std::uint64_t payload_bits = 0;  ///< this rank's payload bits up to this step
  std::uint64_t wire_bits = 0;     ///< this rank's bits on the wire up to this step
  double modelled_seconds = 0;     ///< this rank's modelled clock (simulated_transport), else 0
};

/// Shown to observers: at every step (loss is the last evaluated one) and at evaluations.
struct progress {
  std::uint64_t step = 0;
  std::uint64_t total_steps = 0;
  double loss = std::numeric_limits<double>::quiet_NaN();
  std::uint64_t payload_bits = 0;
  std::uint64_t wire_bits = 0;
  double elapsed_seconds = 0;
  double modelled_seconds = 0;  ///< as eval_point::modelled_seconds
  int rank = 0;
  int world = 1;
};

/// An observer's `on_eval` may return this to end the run early. The decision
/// is combined over all ranks at the evaluation (any rank's stop stops all),
/// so ranks never disagree on the number of rounds.
enum class observer_action { proceed, stop };

struct run_report {
  std::uint64_t steps = 0;          ///< rounds performed
  std::vector<eval_point> history;  ///< global loss at each evaluation
  std::uint64_t payload_bits = 0;   ///< exact encoded bits this rank produced
  std::uint64_t wire_bits = 0;      ///< bits this rank's transport sent for the gradient exchange
  std::vector<std::uint64_t> payload_bits_per_worker;  ///< index = rank
  std::vector<std::uint64_t> wire_bits_per_worker;     ///< index = rank
  double wall_seconds = 0;
  /// This rank's modelled communication time when the transport models one
  /// (a TimedTransport such as simulated_transport); 0 otherwise.
  double modelled_seconds = 0;
  bool stopped_early = false;

  [[nodiscard]] double final_loss() const noexcept {
    return history.empty() ? std::numeric_limits<double>::quiet_NaN() : history.back().loss;
  }
  /// Sum over workers of the bits their transports sent.
  [[nodiscard]] std::uint64_t total_wire_bits() const noexcept {
    std::uint64_t s = 0;
    for (auto b : wire_bits_per_worker) s += b;
    return s;
  }
  [[nodiscard]] std::uint64_t total_payload_bits() const noexcept {
    std::uint64_t s = 0;
    for (auto b : payload_bits_per_worker) s += b;
    return s;
  }
};

}  // namespace ecopt
