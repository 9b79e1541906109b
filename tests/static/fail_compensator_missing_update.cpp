// Compile-fail test: a compensator without update is not a Compensator, and
// the diagnostic names the unsatisfied requirement.
// ECOPT_EXPECT_DIAGNOSTIC: (satisfaction of|because|does not satisfy) [^A-Za-z]*UpdatesMemory
#include <cstddef>
#include <span>

#include "ecopt/compensator.hpp"

namespace {
struct state {};
struct compensator_missing_update {
  template <class T>
  state make_state(std::size_t) const {
    return {};
  }
  template <class T>
  void compensate(std::span<const T>, state&, std::span<T>, const ecopt::round_context&) const {}
#ifdef ECOPT_STATIC_CONTROL
  template <class T>
  void update(std::span<const T>, std::span<const T>, state&, const ecopt::round_context&) const {}
#endif
};

template <ecopt::Compensator E>
int use_compensator(const E&) {
  return 0;
}
}  // namespace

int compile_fail_probe() { return use_compensator(compensator_missing_update{}); }
