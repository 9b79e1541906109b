// libFuzzer harness: checkpoint::read on hostile bytes (at most 1 MiB, so a
// forged count is refused rather than read). It may refuse them only with
// checkpoint_error; a checkpoint it accepts must write back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "ecopt/checkpoint.hpp"
#include "ecopt/error.hpp"
#include "fuzz_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::istringstream in(bytes);
  try {
    const ecopt::checkpoint c = ecopt::checkpoint::read(in, std::uint64_t{1} << 20);
    std::ostringstream out;
    c.write(out);
    if (out.str() != bytes.substr(0, out.str().size())) {
      ecopt::fuzz::finding("an accepted checkpoint does not write back to the bytes read");
    }
  } catch (const ecopt::checkpoint_error&) {
  }
  return 0;
}
