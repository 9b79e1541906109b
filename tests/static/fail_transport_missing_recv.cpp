// Compile-fail test: a transport without recv is not a Transport, and the
// diagnostic quotes the unsatisfied requirement.
// ECOPT_EXPECT_DIAGNOSTIC: t\.recv\(peer, tag, into\)[^ ]* (is|would be) invalid
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "ecopt/transport.hpp"

namespace {
struct transport_missing_recv {
  int rank() const { return 0; }
  int size() const { return 1; }
  void send(int, ecopt::message_tag, std::span<const std::byte>) {}
#ifdef ECOPT_STATIC_CONTROL
  void recv(int, ecopt::message_tag, std::vector<std::byte>&) {}
#endif
  std::uint64_t bytes_sent() const { return 0; }
};

template <ecopt::Transport Tr>
int use_transport(Tr&) {
  return 0;
}
}  // namespace

int compile_fail_probe() {
  transport_missing_recv t;
  return use_transport(t);
}
