// Compile-fail test: an optimizer without learning_rate is not an Optimizer,
// and the diagnostic names the unsatisfied requirement.
// ECOPT_EXPECT_DIAGNOSTIC: (satisfaction of|because|does not satisfy) [^A-Za-z]*HasLearningRate
#include <cstddef>
#include <cstdint>
#include <span>

#include "ecopt/optimizer.hpp"

namespace {
struct state {};
struct optimizer_missing_learning_rate {
  template <class T>
  state make_state(std::size_t) const {
    return {};
  }
#ifdef ECOPT_STATIC_CONTROL
  double learning_rate(std::uint64_t) const { return 0.1; }
#endif
  template <class T>
  void apply(std::span<T>, std::span<const T>, state&, const ecopt::round_context&) const {}
};

template <ecopt::Optimizer O>
int use_optimizer(const O&) {
  return 0;
}
}  // namespace

int compile_fail_probe() { return use_optimizer(optimizer_missing_learning_rate{}); }
