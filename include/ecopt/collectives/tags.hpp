#pragma once
// Message tags of the built-in collectives. Each collective has its own tag,
// so ranks that call different collectives (or the same one with different
// element types) get a transport_error for the tag mismatch instead of
// silently combining unrelated bytes.
//
// Tags from collective_tag_base upwards are reserved for collectives; user
// protocols should pick tags below it.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "ecopt/transport.hpp"

namespace ecopt {

inline constexpr message_tag collective_tag_base = 0xEC0C'0000u;

/// One tag block per collective; the low 12 bits encode the element type.
enum class collective_tag : message_tag {
  allreduce_sum = collective_tag_base + 0x1000u,
  allreduce_max = collective_tag_base + 0x2000u,
  allgather_bytes = collective_tag_base + 0x3000u,
  allgather = collective_tag_base + 0x4000u,
  broadcast = collective_tag_base + 0x5000u,
  barrier = collective_tag_base + 0x6000u,
  global_top_k = collective_tag_base + 0x7000u,  ///< compressors/global_top_k.hpp's merge
  gossip = collective_tag_base + 0x8000u,  ///< algorithms/stochastic_gradient_push.hpp's pushes
  server_model = collective_tag_base + 0x9000u,    ///< parameter_server.hpp: server to worker
  server_update = collective_tag_base + 0xA000u,   ///< parameter_server.hpp: worker to server
  server_leaving = collective_tag_base + 0xB000u,  ///< parameter_server.hpp: a worker's last word
};

/// The tag of `op` over elements of type V: the type's kind (floating,
/// signed, unsigned, other) and size are folded in, so that, say, float on
/// one rank and std::int32_t on another is caught although both are 4 bytes.
template <class V = std::byte>
[[nodiscard]] constexpr message_tag collective_tag_for(collective_tag op) noexcept {
  constexpr message_tag kind = std::is_floating_point_v<V> ? 1u
                               : std::is_integral_v<V>     ? (std::is_signed_v<V> ? 2u : 3u)
                                                           : 0u;
  constexpr message_tag size = sizeof(V) < 0xffu ? static_cast<message_tag>(sizeof(V)) : 0xffu;
  return static_cast<message_tag>(op) | (kind << 8) | size;
}

}  // namespace ecopt
