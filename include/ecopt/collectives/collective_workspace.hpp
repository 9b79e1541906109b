#pragma once
// Buffers the collectives reuse from call to call, so that a collective on
// repeating sizes does not allocate after its first calls. Keep one workspace
// per rank (per thread) and pass it to every collective call.
#include <concepts>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "ecopt/error.hpp"

namespace ecopt {

struct collective_workspace {
  /// Staging for outgoing bytes that are not already contiguous in the
  /// caller's data (for collectives built on top of these). The built-in
  /// collectives send straight from the caller's span.
  std::vector<std::byte> send;
  /// The message most recently received; the transport swaps its buffers
  /// through here, so its capacity settles at the largest chunk.
  std::vector<std::byte> recv;
};

/// Element types the reducing collectives accept.
template <class V>
concept reducible_value = std::is_arithmetic_v<V> && !std::same_as<std::remove_cv_t<V>, bool>;

namespace detail {

/// Bounds of part `index` when `count` elements are split into `parts`
/// contiguous parts as evenly as possible (the first count % parts parts
/// get one element more).
struct part_bounds {
  std::size_t begin;
  std::size_t size;
};

[[nodiscard]] constexpr part_bounds even_part(std::size_t count, int parts, int index) noexcept {
  const auto p = static_cast<std::size_t>(parts);
  const auto i = static_cast<std::size_t>(index);
  const std::size_t base = count / p;
  const std::size_t extra = count % p;
  return {i * base + (i < extra ? i : extra), base + (i < extra ? 1 : 0)};
}

/// (a mod n) for a in (-2n, 2n).
[[nodiscard]] constexpr int ring_index(int a, int n) noexcept { return ((a % n) + n) % n; }

/// Throws transport_error unless a message from `peer` has the size the
/// protocol expects (a mismatch means ranks passed different sizes).
inline void check_message_size(const char* collective, int rank, int peer, std::size_t expected,
                               std::size_t received) {
  if (expected == received) return;
  throw transport_error(std::string(collective) + ": rank " + std::to_string(rank) + " received " +
                        std::to_string(received) + " bytes from rank " + std::to_string(peer) +
                        ", expected " + std::to_string(expected) +
                        " (do all ranks pass the same number of elements?)");
}

/// Copies a received message into typed storage of the same byte size.
template <class V>
void copy_from_bytes(std::span<const std::byte> from, std::span<V> to) noexcept {
  if (!to.empty()) std::memcpy(to.data(), from.data(), to.size_bytes());
}

}  // namespace detail
}  // namespace ecopt
