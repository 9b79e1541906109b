#pragma once
// The messages of the parameter-server algorithms (parameter_server.hpp).
// Header fields are little-endian; model values and summable payloads travel
// as the host's IEEE 754 floats (little-endian on every platform ecopt
// supports, as checkpoint.hpp asserts). The server checks what a worker sends
// before it uses it (a broken or hostile worker gets a transport_error naming
// it).
//
//   server -> worker (tag server_model):
//     u32 kind (model | stop), u32 fate of the worker's last update,
//     u64 version of the model, then the model: dim values of T
//   worker -> server (tag server_update; a worker's last word, tag server_leaving):
//     u32 kind (update | leaving), u32 zero, u64 version the gradient was taken
//     at (leaving: the worker's payload bits), u64 payload bits (leaving: wire
//     bits), then the compressor's payload (or its summable floats)
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "ecopt/error.hpp"

namespace ecopt {

/// What became of a worker's update, as the server tells the worker.
enum class update_fate : std::uint32_t {
  none = 0,     ///< no update was pending (the first model)
  applied = 1,  ///< aggregated into the model
  dropped = 2,  ///< too stale, late for its round, or the run ended: not applied
};

namespace detail {

/// An update the server took from a worker (server_round::take). Its payload
/// stays valid until the server sends that worker its next model.
struct taken_update {
  int worker = -1;
  std::uint64_t version = 0;    ///< the model version its gradient was taken at
  std::uint64_t staleness = 0;  ///< server version when taken minus `version`
  std::span<const std::byte> payload;
};

enum class server_message : std::uint32_t { model = 1, stop = 2 };
enum class worker_message : std::uint32_t { update = 1, leaving = 2 };

inline constexpr std::size_t server_header_bytes = 16;
inline constexpr std::size_t worker_header_bytes = 24;

inline void put_u32(std::byte* at, std::uint32_t v) noexcept {
  for (int i = 0; i < 4; ++i) at[i] = static_cast<std::byte>(v >> (8 * i));
}
inline void put_u64(std::byte* at, std::uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) at[i] = static_cast<std::byte>(v >> (8 * i));
}
[[nodiscard]] inline std::uint32_t get_u32(const std::byte* at) noexcept {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= std::uint32_t{std::to_integer<std::uint8_t>(at[i])} << (8 * i);
  return v;
}
[[nodiscard]] inline std::uint64_t get_u64(const std::byte* at) noexcept {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(at[i])} << (8 * i);
  return v;
}

/// Writes a server message (header and model) into `out`, reusing its capacity.
template <class T>
void write_server_message(std::vector<std::byte>& out, server_message kind, update_fate fate,
                          std::uint64_t version, std::span<const T> model) {
  out.resize(server_header_bytes + model.size_bytes());
  put_u32(out.data(), static_cast<std::uint32_t>(kind));
  put_u32(out.data() + 4, static_cast<std::uint32_t>(fate));
  put_u64(out.data() + 8, version);
  if (!model.empty())
    std::memcpy(out.data() + server_header_bytes, model.data(), model.size_bytes());
}

struct server_message_view {
  server_message kind;
  update_fate fate;
  std::uint64_t version;
};

/// Reads a server message into `model`; throws transport_error naming what is wrong.
template <class T>
server_message_view read_server_message(std::span<const std::byte> in, std::span<T> model,
                                        int worker_rank) {
  auto broken = [&](const std::string& why) {
    return transport_error("rank " + std::to_string(worker_rank) +
                           ": message from the parameter server " + why);
  };
  if (in.size() != server_header_bytes + model.size_bytes()) {
    throw broken("has " + std::to_string(in.size()) + " bytes, expected " +
                 std::to_string(server_header_bytes + model.size_bytes()) + " (a model of " +
                 std::to_string(model.size()) + " values)");
  }
  const std::uint32_t kind = get_u32(in.data());
  const std::uint32_t fate = get_u32(in.data() + 4);
  if (kind != 1 && kind != 2) throw broken("has an unknown kind " + std::to_string(kind));
  if (fate > 2) throw broken("has an unknown update fate " + std::to_string(fate));
  if (!model.empty())
    std::memcpy(model.data(), in.data() + server_header_bytes, model.size_bytes());
  return {static_cast<server_message>(kind), static_cast<update_fate>(fate),
          get_u64(in.data() + 8)};
}

/// Writes a worker message header followed by `payload` into `out`.
inline void write_worker_message(std::vector<std::byte>& out, worker_message kind,
                                 std::uint64_t first, std::uint64_t second,
                                 std::span<const std::byte> payload) {
  out.resize(worker_header_bytes + payload.size());
  put_u32(out.data(), static_cast<std::uint32_t>(kind));
  put_u32(out.data() + 4, 0);
  put_u64(out.data() + 8, first);
  put_u64(out.data() + 16, second);
  if (!payload.empty())
    std::memcpy(out.data() + worker_header_bytes, payload.data(), payload.size());
}

struct worker_message_view {
  worker_message kind;
  std::uint64_t first;   ///< update: version; leaving: payload bits
  std::uint64_t second;  ///< update: payload bits; leaving: wire bits
  std::span<const std::byte> payload;
};

/// Checks and splits a worker's message; `newest` is the server's version (an
/// update cannot be taken at a later one), `max_bits` the compressor's bound.
inline worker_message_view read_worker_message(std::span<const std::byte> in, int from_rank,
                                               std::uint64_t newest, std::uint64_t max_bits) {
  auto broken = [&](const std::string& why) {
    return transport_error("parameter server: message from rank " + std::to_string(from_rank) +
                           " " + why);
  };
  if (in.size() < worker_header_bytes) {
    throw broken("has " + std::to_string(in.size()) + " bytes, fewer than its " +
                 std::to_string(worker_header_bytes) + "-byte header");
  }
  const std::uint32_t kind = get_u32(in.data());
  if ((kind != 1 && kind != 2) || get_u32(in.data() + 4) != 0) {
    throw broken("has an unknown kind " + std::to_string(kind));
  }
  worker_message_view v{static_cast<worker_message>(kind), get_u64(in.data() + 8),
                        get_u64(in.data() + 16), in.subspan(worker_header_bytes)};
  if (v.kind == worker_message::update) {
    if (v.first > newest) {
      throw broken("is an update taken at model version " + std::to_string(v.first) +
                   ", newer than the server's " + std::to_string(newest));
    }
    if (v.second > max_bits || (v.second + 7) / 8 != v.payload.size()) {
      throw broken("declares " + std::to_string(v.second) + " payload bits in " +
                   std::to_string(v.payload.size()) + " bytes (the compressor sends at most " +
                   std::to_string(max_bits) + ")");
    }
  } else if (!v.payload.empty()) {
    throw broken("says it is leaving but carries " + std::to_string(v.payload.size()) +
                 " bytes of payload");
  }
  return v;
}

}  // namespace detail
}  // namespace ecopt
