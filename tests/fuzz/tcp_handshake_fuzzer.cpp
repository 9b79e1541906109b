// libFuzzer harness: tcp_transport's handshake payload parsers
// (transports/detail/tcp_wire.hpp): hello, challenge and proof (the mutual
// authentication), rank 0's directory, "host:port" and the escaping of
// peer-supplied text. The first control byte picks the
// parser, the second the world size a directory must list. A parser may
// refuse the bytes only with transport_error (invalid_argument for
// host:port); what it accepts must encode back to the same bytes, and
// escaped text must be printable ASCII.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"
#include "fuzz_input.hpp"

namespace wire = ecopt::detail::tcp_wire;
using ecopt::fuzz::finding;

namespace {

bool same(const std::vector<std::byte>& a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ecopt::fuzz::input in(data, size);
  const std::uint8_t which = in.byte() % 6;
  const std::size_t world = 1 + in.byte();
  const std::span<const std::byte> bytes = in.rest();
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  try {
    switch (which) {
      case 0:
        if (!same(wire::encode_hello(wire::parse_hello(bytes)), bytes)) {
          finding("an accepted hello does not encode back to itself");
        }
        break;
      case 1:
        if (!same(wire::encode_directory(wire::parse_directory(bytes, world)), bytes)) {
          finding("an accepted directory does not encode back to itself");
        }
        break;
      case 2: {
        const wire::peer_address a = wire::parse_host_port(text, "fuzz");
        if (a.host.empty() || a.host.size() > wire::max_host_length) {
          finding("parse_host_port accepted an empty or too long host");
        }
        break;
      }
      case 3:
        for (const char c : wire::printable(text)) {
          if (c < 0x20 || c >= 0x7f) finding("printable() let a control byte through");
        }
        break;
      case 4:
        if (!same(wire::encode_challenge(wire::parse_challenge(bytes)), bytes)) {
          finding("an accepted challenge does not encode back to itself");
        }
        break;
      case 5:
        if (!same(wire::encode_proof(wire::parse_proof(bytes)), bytes)) {
          finding("an accepted proof does not encode back to itself");
        }
        break;
    }
  } catch (const ecopt::transport_error&) {
  } catch (const ecopt::invalid_argument&) {
    if (which != 2) throw;
  }
  return 0;
}
