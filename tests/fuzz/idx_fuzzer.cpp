// libFuzzer harness: the IDX readers (data/idx.hpp) on a hostile file, plain
// or gzip, held in memory (memfd) and opened by path as a user's file would
// be. The first byte picks the reader (read_idx, load_idx_images,
// load_idx_labels); under a 1 MiB limit it may refuse the file only with
// data_error, and what it returns must match the header.
#include <cstddef>
#include <cstdint>

#include "ecopt/data/idx.hpp"
#include "ecopt/error.hpp"
#include "fuzz_input.hpp"

using ecopt::fuzz::finding;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ecopt::fuzz::memory_file file;
  ecopt::fuzz::input in(data, size);
  const std::uint8_t reader = in.byte() % 3;
  const std::string& path = file.holding(in.rest());
  const ecopt::idx_options options{.max_bytes = std::uint64_t{1} << 20};
  try {
    if (reader == 0) {
      const ecopt::idx_array a = ecopt::read_idx(path, options);
      std::size_t elements = 1;
      for (const std::uint32_t d : a.dims) elements *= d;
      if (a.size() != elements || a.bytes.size() != elements * a.element_size()) {
        finding("read_idx returned a payload of another size than its header declares");
      }
    } else if (reader == 1) {
      if (ecopt::load_idx_images<float>(path, 1.0F, options).size() == 0) {
        finding("load_idx_images returned no pixels");
      }
    } else {
      (void)ecopt::load_idx_labels(path, options);
    }
  } catch (const ecopt::data_error&) {
  }
  return 0;
}
