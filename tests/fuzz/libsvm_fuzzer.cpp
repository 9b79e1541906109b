// libFuzzer harness: the LIBSVM parser (data/libsvm.hpp) on hostile text.
// Control byte: the scalar type and a fixed dimension or none. The dense
// matrix is capped at 2^16 values. The parser may refuse the text only with
// data_error; what it accepts must be finite and of the sizes it reports.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "ecopt/data/libsvm.hpp"
#include "ecopt/error.hpp"
#include "fuzz_input.hpp"

using ecopt::fuzz::finding;

namespace {

template <class T>
void parse(std::string_view text, const ecopt::libsvm_options& options) {
  try {
    const auto d = ecopt::parse_libsvm<T>(text, "fuzz", options);
    if (d.features.cols() != d.labels.size() || d.labels.size() == 0) {
      finding("parse_libsvm returned features and labels of different counts");
    }
    if (options.dim != 0 && static_cast<std::size_t>(d.features.rows()) != options.dim) {
      finding("parse_libsvm ignored libsvm_options.dim");
    }
    if (!d.features.allFinite() || !d.labels.allFinite()) {
      finding("parse_libsvm returned a non-finite value");
    }
  } catch (const ecopt::data_error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ecopt::fuzz::input in(data, size);
  const std::uint8_t control = in.byte();
  // bit 0: float; bits 1-2 nonzero: dim = control >> 3 (0-31), else from the text
  const std::size_t dim = (control >> 1) % 4 == 0 ? 0 : std::size_t{control} >> 3;
  const ecopt::libsvm_options options{.dim = dim, .max_elements = std::size_t{1} << 16};
  const std::string_view text(reinterpret_cast<const char*>(in.rest().data()), in.rest().size());
  if ((control & 1) != 0) {
    parse<float>(text, options);
  } else {
    parse<double>(text, options);
  }
  return 0;
}
