// libFuzzer harness: tcp_transport's frame header parser and payload check
// (transports/detail/tcp_wire.hpp) on hostile bytes. Control bytes: the
// length limit (a power of two) and whether to make the header's and the
// payload's checksums right first, so that the fuzzer gets past them to the
// fields. A frame may be refused only with transport_error; one accepted
// must encode back to the same header.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

#include "ecopt/error.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"
#include "fuzz_input.hpp"

namespace wire = ecopt::detail::tcp_wire;
using ecopt::fuzz::finding;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ecopt::fuzz::input in(data, size);
  const std::uint64_t max_length = std::uint64_t{1} << (in.byte() % 49);
  const std::uint8_t fix = in.byte();
  const std::span<const std::byte> bytes = in.rest();
  if (bytes.size() < wire::header_size) return 0;
  wire::header_bytes header{};
  std::copy_n(bytes.begin(), wire::header_size, header.begin());
  const std::span<const std::byte> payload = bytes.subspan(wire::header_size);
  if ((fix & 1) != 0) {  // the payload checksum right, for the payload present
    wire::put_u32(header.data() + 24, ecopt::detail::crc32c(payload));
  }
  if ((fix & 2) != 0) {  // the header checksum right
    wire::put_u32(header.data() + 28,
                  ecopt::detail::crc32c(std::span<const std::byte>(header.data(), 28)));
  }
  wire::frame_header h;
  try {
    h = wire::parse_header(header, max_length);
  } catch (const ecopt::transport_error&) {
    return 0;
  }
  if (h.length > max_length) finding("parse_header accepted a length above its limit");
  wire::header_bytes again{};
  wire::encode_header(h, again);
  if (again != header) finding("an accepted header does not encode back to itself");
  try {
    wire::check_payload(h, payload.first(std::min<std::size_t>(payload.size(), h.length)));
  } catch (const ecopt::transport_error&) {
  }
  (void)wire::printable(std::string_view(reinterpret_cast<const char*>(payload.data()),
                                         std::min<std::size_t>(payload.size(), 64)));
  return 0;
}
