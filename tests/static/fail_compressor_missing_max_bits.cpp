// Compile-fail test: a compressor without max_bits is not a Compressor, and
// the diagnostic names the unsatisfied requirement.
// ECOPT_EXPECT_DIAGNOSTIC: (satisfaction of|because|does not satisfy) [^A-Za-z]*BoundsPayloadBits
#include <cstddef>
#include <cstdint>
#include <span>

#include "ecopt/compressor.hpp"

namespace {
struct state {};
struct compressor_missing_max_bits {
  template <class T>
  state make_state(std::size_t) const {
    return {};
  }
#ifdef ECOPT_STATIC_CONTROL
  std::uint64_t max_bits(std::size_t) const { return 0; }
#endif
  template <class T>
  void encode(std::span<const T>, state&, ecopt::bit_writer&, const ecopt::round_context&) const {}
  template <class T>
  void decode_add(ecopt::bit_reader&, state&, std::span<T>, T, const ecopt::round_context&) const {}
};

template <ecopt::Compressor C>
int use_compressor(const C&) {
  return 0;
}
}  // namespace

int compile_fail_probe() { return use_compressor(compressor_missing_max_bits{}); }
