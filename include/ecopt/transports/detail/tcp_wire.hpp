#pragma once
// The wire format of tcp_transport: a fixed 32-byte frame header, the
// handshake payloads (their sequence: tcp_rendezvous.hpp), and "host:port"
// parsing. Everything is little-endian.
//
// Frame header (offsets in bytes):
//    0  u32  magic        0x50544345, the bytes "ECTP"
//    4  u8   version      2 (1: the handshake before authentication)
//    5  u8   kind         frame_kind
//    6  u16  flags        bit 0: the payload is not checksummed (payload_crc 0);
//                         the other bits are reserved (0)
//    8  u32  sender       the sending rank
//   12  u32  tag          message_tag of a data frame (0 otherwise)
//   16  u64  length       payload bytes that follow the header
//   24  u32  payload_crc  CRC-32C of the payload (0 when flags bit 0 is set)
//   28  u32  header_crc   CRC-32C of bytes 0..27
// The reader checks the magic first (a stream that is not ours), then the
// header's own checksum (so a flipped bit is reported as such, not as a
// strange field), then every field, and the length against its limit before
// it allocates anything for the payload.
#include <algorithm>
#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"
#include "ecopt/transports/detail/crc32c.hpp"

namespace ecopt::detail::tcp_wire {

inline constexpr std::uint32_t magic = 0x50544345u;  // "ECTP" in little-endian byte order
inline constexpr std::uint8_t version = 2;
inline constexpr std::size_t header_size = 32;
/// Longest host name a handshake carries (DNS names are at most 253 bytes).
inline constexpr std::size_t max_host_length = 255;
/// Longest reason text in a reject or abort frame.
inline constexpr std::size_t max_reason_length = 1024;

/// Text a peer sent (a reject or abort reason) as it may appear in an error
/// message: bytes outside printable ASCII, and the backslash, as \xNN, so a
/// hostile peer cannot move the cursor, clear a terminal or forge lines.
[[nodiscard]] inline std::string printable(std::string_view text) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto b = static_cast<unsigned char>(c);
    if (b >= 0x20 && b < 0x7f && b != '\\') {
      out += c;
    } else {
      out += "\\x";
      out += digits[b >> 4];
      out += digits[b & 0xf];
    }
  }
  return out;
}

enum class frame_kind : std::uint8_t {
  data = 1,        ///< a message: tag + payload
  hello = 2,       ///< rank -> rank 0: join the job (hello_payload)
  directory = 3,   ///< rank 0 -> rank: every rank's listening address (directory_payload)
  peer_hello = 4,  ///< higher rank -> lower rank: open the pair's connection (hello_payload)
  peer_ack = 5,    ///< lower rank -> higher rank: connection accepted (no payload)
  reject = 6,      ///< handshake refused; payload: the reason
  goodbye = 7,     ///< the sender closed its transport normally; nothing follows
  abort = 8,       ///< the sender failed; payload: the reason
  challenge = 9,   ///< accepting side's nonce and proof (challenge_payload)
  proof = 10,      ///< connecting side's proof and details (proof_payload)
};

[[nodiscard]] inline const char* kind_name(frame_kind k) noexcept {
  switch (k) {
    case frame_kind::data:
      return "data";
    case frame_kind::hello:
      return "hello";
    case frame_kind::directory:
      return "directory";
    case frame_kind::peer_hello:
      return "peer_hello";
    case frame_kind::peer_ack:
      return "peer_ack";
    case frame_kind::reject:
      return "reject";
    case frame_kind::goodbye:
      return "goodbye";
    case frame_kind::abort:
      return "abort";
    case frame_kind::challenge:
      return "challenge";
    case frame_kind::proof:
      return "proof";
  }
  return "unknown";
}

/// Frame flag: the sender did not checksum the payload (tcp_options::payload_checksum).
inline constexpr std::uint16_t flag_payload_unchecked = 0x1;

struct frame_header {
  frame_kind kind = frame_kind::data;
  std::uint32_t sender = 0;
  message_tag tag = 0;
  std::uint64_t length = 0;
  std::uint32_t payload_crc = 0;
  std::uint16_t flags = 0;
};

using header_bytes = std::array<std::byte, header_size>;

inline void put_u16(std::byte* p, std::uint16_t v) noexcept {
  p[0] = static_cast<std::byte>(v & 0xffu);
  p[1] = static_cast<std::byte>(v >> 8);
}
inline void put_u32(std::byte* p, std::uint32_t v) noexcept {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xffu);
}
inline void put_u64(std::byte* p, std::uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xffu);
}
[[nodiscard]] inline std::uint16_t get_u16(const std::byte* p) noexcept {
  return static_cast<std::uint16_t>(static_cast<unsigned>(p[0]) |
                                    (static_cast<unsigned>(p[1]) << 8));
}
[[nodiscard]] inline std::uint32_t get_u32(const std::byte* p) noexcept {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(p[i]) << (8 * i);
  return v;
}
[[nodiscard]] inline std::uint64_t get_u64(const std::byte* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

[[nodiscard]] inline std::string hex32(std::uint32_t v) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s = "0x";
  for (int shift = 28; shift >= 0; shift -= 4) s += digits[(v >> shift) & 0xfu];
  return s;
}

/// Writes a complete header (with both checksums' fields) for `h`.
inline void encode_header(const frame_header& h, header_bytes& out) noexcept {
  std::byte* p = out.data();
  put_u32(p, magic);
  p[4] = static_cast<std::byte>(version);
  p[5] = static_cast<std::byte>(h.kind);
  put_u16(p + 6, h.flags);
  put_u32(p + 8, h.sender);
  put_u32(p + 12, h.tag);
  put_u64(p + 16, h.length);
  put_u32(p + 24, h.payload_crc);
  put_u32(p + 28, crc32c(std::span<const std::byte>(p, 28)));
}

/// Header of a frame carrying `payload`; with checksum false (data frames
/// only) the payload's CRC is not computed and the frame says so.
[[nodiscard]] inline header_bytes make_header(frame_kind kind, std::uint32_t sender,
                                              message_tag tag, std::span<const std::byte> payload,
                                              bool checksum = true) noexcept {
  header_bytes out;
  encode_header({.kind = kind,
                 .sender = sender,
                 .tag = tag,
                 .length = payload.size(),
                 .payload_crc = checksum ? crc32c(payload) : 0u,
                 .flags = checksum ? std::uint16_t{0} : flag_payload_unchecked},
                out);
  return out;
}

/// Parses and checks a header. `max_length` bounds the payload length (checked
/// here, before anyone allocates for it). Throws transport_error describing
/// the first field that is wrong.
[[nodiscard]] inline frame_header parse_header(const header_bytes& in, std::uint64_t max_length) {
  const std::byte* p = in.data();
  const std::uint32_t m = get_u32(p);
  if (m != magic) {
    throw transport_error("bad frame magic " + hex32(m) + " (expected " + hex32(magic) +
                          "): the stream is not an ecopt tcp_transport stream");
  }
  const std::uint32_t stored = get_u32(p + 28);
  const std::uint32_t computed = crc32c(std::span<const std::byte>(p, 28));
  if (stored != computed) {
    throw transport_error("frame header checksum mismatch (stored " + hex32(stored) +
                          ", computed " + hex32(computed) + ")");
  }
  const auto v = static_cast<unsigned>(p[4]);
  if (v != version) {
    throw transport_error("unsupported frame version " + std::to_string(v) +
                          " (this build speaks " + std::to_string(version) + ")");
  }
  const auto k = static_cast<unsigned>(p[5]);
  if (k < static_cast<unsigned>(frame_kind::data) || k > static_cast<unsigned>(frame_kind::proof)) {
    throw transport_error("unknown frame kind " + std::to_string(k));
  }
  const std::uint16_t flags = get_u16(p + 6);
  if ((flags & ~flag_payload_unchecked) != 0) {
    throw transport_error("reserved frame flags are " + std::to_string(flags) + ", expected 0 or " +
                          std::to_string(flag_payload_unchecked));
  }
  if ((flags & flag_payload_unchecked) != 0 &&
      (k != static_cast<unsigned>(frame_kind::data) || get_u32(p + 24) != 0)) {
    throw transport_error("only data frames may go without a payload checksum (kind " +
                          std::to_string(k) + ", payload_crc " + hex32(get_u32(p + 24)) + ")");
  }
  frame_header h{.kind = static_cast<frame_kind>(k),
                 .sender = get_u32(p + 8),
                 .tag = get_u32(p + 12),
                 .length = get_u64(p + 16),
                 .payload_crc = get_u32(p + 24),
                 .flags = flags};
  if (h.length > max_length) {
    throw transport_error(std::string(kind_name(h.kind)) + " frame length " +
                          std::to_string(h.length) + " bytes exceeds the maximum of " +
                          std::to_string(max_length) + " bytes");
  }
  return h;
}

/// Does the frame carry a payload checksum to check?
[[nodiscard]] inline bool payload_checked(const frame_header& h) noexcept {
  return (h.flags & flag_payload_unchecked) == 0;
}

/// Throws transport_error unless `computed`, the CRC-32C of the frame's
/// payload of `size` bytes, matches the header's (a receiver that computes
/// it piece by piece, as the bytes arrive, checks it here).
inline void check_payload_crc(const frame_header& h, std::size_t size, std::uint32_t computed) {
  if (!payload_checked(h)) return;  // the sender chose not to checksum
  if (computed != h.payload_crc) {
    throw transport_error(std::string(kind_name(h.kind)) + " frame payload checksum mismatch (" +
                          std::to_string(size) + " bytes, stored " + hex32(h.payload_crc) +
                          ", computed " + hex32(computed) + ")");
  }
}

/// Throws transport_error unless `payload` matches the header's checksum.
inline void check_payload(const frame_header& h, std::span<const std::byte> payload) {
  if (!payload_checked(h)) return;
  check_payload_crc(h, payload.size(), crc32c(payload));
}

/// A fresh random nonce, and an HMAC-SHA-256 proof (tcp_auth.hpp).
inline constexpr std::size_t nonce_size = 32;
inline constexpr std::size_t mac_size = 32;
using nonce_bytes = std::array<std::byte, nonce_size>;
using mac_bytes = std::array<std::byte, mac_size>;

/// Payload of hello and peer_hello: the rank the sender claims and its nonce.
/// Nothing of the job travels before both sides have proved the token.
struct hello_payload {
  std::uint32_t rank = 0;
  nonce_bytes nonce{};
};

inline constexpr std::size_t max_hello_bytes = 4 + nonce_size;

/// Payload of challenge: the accepting side's nonce and its proof over both nonces.
struct challenge_payload {
  nonce_bytes nonce{};
  mac_bytes proof{};
};

inline constexpr std::size_t max_challenge_bytes = nonce_size + mac_size;

/// Payload of proof: the connecting side's proof, then its details (which
/// the proof covers too: details_of()).
struct proof_payload {
  mac_bytes proof{};
  std::uint32_t world_size = 0;
  std::uint16_t listen_port = 0;  ///< hello only: where the sender accepts its peers
  std::string host{};             ///< hello only: its listening host ("": the address rank 0 sees)
};

inline constexpr std::size_t max_proof_bytes = mac_size + 4 + 2 + 2 + max_host_length;

/// Bounds checks for the handshake payload readers.
class payload_reader {
 public:
  payload_reader(std::span<const std::byte> bytes, const char* what) : bytes_(bytes), what_(what) {}
  std::uint16_t u16() { return get_u16(take(2)); }
  std::uint32_t u32() { return get_u32(take(4)); }
  std::uint64_t u64() { return get_u64(take(8)); }
  std::string text(std::size_t n) {
    const std::byte* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  template <std::size_t N>
  void bytes(std::array<std::byte, N>& out) {
    const std::byte* p = take(N);
    std::copy(p, p + N, out.begin());
  }
  void expect_end() const {
    if (pos_ != bytes_.size()) {
      throw transport_error(std::string(what_) + " payload has " +
                            std::to_string(bytes_.size() - pos_) + " trailing bytes");
    }
  }

 private:
  const std::byte* take(std::size_t n) {
    if (bytes_.size() - pos_ < n) {
      throw transport_error(std::string(what_) + " payload is truncated (" +
                            std::to_string(bytes_.size()) + " bytes)");
    }
    const std::byte* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  std::span<const std::byte> bytes_;
  std::size_t pos_ = 0;
  const char* what_;
};

inline void append_u16(std::vector<std::byte>& out, std::uint16_t v) {
  out.resize(out.size() + 2);
  put_u16(out.data() + out.size() - 2, v);
}
inline void append_u32(std::vector<std::byte>& out, std::uint32_t v) {
  out.resize(out.size() + 4);
  put_u32(out.data() + out.size() - 4, v);
}
inline void append_u64(std::vector<std::byte>& out, std::uint64_t v) {
  out.resize(out.size() + 8);
  put_u64(out.data() + out.size() - 8, v);
}
inline void append_text(std::vector<std::byte>& out, std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  out.insert(out.end(), p, p + s.size());
}

inline void append_bytes(std::vector<std::byte>& out, std::span<const std::byte> bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}

[[nodiscard]] inline std::vector<std::byte> encode_hello(const hello_payload& h) {
  std::vector<std::byte> out;
  out.reserve(max_hello_bytes);
  append_u32(out, h.rank);
  append_bytes(out, h.nonce);
  return out;
}

[[nodiscard]] inline hello_payload parse_hello(std::span<const std::byte> bytes) {
  payload_reader r(bytes, "hello");
  hello_payload h;
  h.rank = r.u32();
  r.bytes(h.nonce);
  r.expect_end();
  return h;
}

[[nodiscard]] inline std::vector<std::byte> encode_challenge(const challenge_payload& c) {
  std::vector<std::byte> out;
  out.reserve(max_challenge_bytes);
  append_bytes(out, c.nonce);
  append_bytes(out, c.proof);
  return out;
}

[[nodiscard]] inline challenge_payload parse_challenge(std::span<const std::byte> bytes) {
  payload_reader r(bytes, "challenge");
  challenge_payload c;
  r.bytes(c.nonce);
  r.bytes(c.proof);
  r.expect_end();
  return c;
}

/// The details part of a proof payload: what follows the proof itself.
[[nodiscard]] inline std::vector<std::byte> encode_details(const proof_payload& p) {
  std::vector<std::byte> out;
  append_u32(out, p.world_size);
  append_u16(out, p.listen_port);
  const std::size_t n = p.host.size() < max_host_length ? p.host.size() : max_host_length;
  append_u16(out, static_cast<std::uint16_t>(n));
  append_text(out, std::string_view(p.host).substr(0, n));
  return out;
}

[[nodiscard]] inline std::vector<std::byte> encode_proof(const proof_payload& p) {
  std::vector<std::byte> out(p.proof.begin(), p.proof.end());
  append_bytes(out, encode_details(p));
  return out;
}

[[nodiscard]] inline proof_payload parse_proof(std::span<const std::byte> bytes) {
  payload_reader r(bytes, "proof");
  proof_payload p;
  r.bytes(p.proof);
  p.world_size = r.u32();
  p.listen_port = r.u16();
  const std::uint16_t n = r.u16();
  if (n > max_host_length) {
    throw transport_error("proof payload host name of " + std::to_string(n) + " bytes is too long");
  }
  p.host = r.text(n);
  r.expect_end();
  return p;
}

/// One rank's listening address in rank 0's directory.
struct peer_address {
  std::string host{};
  std::uint16_t port = 0;
};

[[nodiscard]] inline std::size_t max_directory_bytes(std::size_t world) noexcept {
  return 4 + world * (4 + max_host_length);
}

[[nodiscard]] inline std::vector<std::byte> encode_directory(
    const std::vector<peer_address>& table) {
  std::vector<std::byte> out;
  append_u32(out, static_cast<std::uint32_t>(table.size()));
  for (const peer_address& a : table) {
    const std::size_t n = a.host.size() < max_host_length ? a.host.size() : max_host_length;
    append_u16(out, a.port);
    append_u16(out, static_cast<std::uint16_t>(n));
    append_text(out, std::string_view(a.host).substr(0, n));
  }
  return out;
}

[[nodiscard]] inline std::vector<peer_address> parse_directory(std::span<const std::byte> bytes,
                                                               std::size_t expected_world) {
  payload_reader r(bytes, "directory");
  const std::uint32_t n = r.u32();
  if (n != expected_world) {
    throw transport_error("directory lists " + std::to_string(n) + " ranks, expected " +
                          std::to_string(expected_world));
  }
  std::vector<peer_address> table(n);
  for (peer_address& a : table) {
    a.port = r.u16();
    const std::uint16_t len = r.u16();
    if (len > max_host_length) {
      throw transport_error("directory host name of " + std::to_string(len) + " bytes is too long");
    }
    a.host = r.text(len);
  }
  r.expect_end();
  return table;
}

/// "host:port" or "[v6-address]:port" -> {host, port}. Throws
/// invalid_argument naming `what` when malformed.
[[nodiscard]] inline peer_address parse_host_port(std::string_view text, const std::string& what) {
  const auto bad = [&](const std::string& why) {
    return invalid_argument(what + ": '" + std::string(text) + "' is not host:port (" + why + ")");
  };
  const std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) throw bad("no ':'");
  std::string_view host = text.substr(0, colon);
  const std::string_view port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    throw bad("write IPv6 addresses in brackets");
  }
  if (host.empty()) throw bad("empty host");
  if (host.size() > max_host_length) throw bad("host name too long");
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    throw bad("port must be an integer in [0, 65535]");
  }
  return {std::string(host), static_cast<std::uint16_t>(value)};
}

/// The text form of an address for messages: host:port, IPv6 hosts in brackets.
[[nodiscard]] inline std::string format_host_port(const std::string& host, std::uint16_t port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

}  // namespace ecopt::detail::tcp_wire
