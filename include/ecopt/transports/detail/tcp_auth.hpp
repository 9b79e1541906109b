#pragma once
// Authentication of tcp_transport's connections: a mutual challenge-response
// over the job token (tcp_options::job_token, the shared secret of a job).
// SHA-256, HMAC, the random nonces and the constant-time comparison come from
// OpenSSL's libcrypto (this is why ecopt::tcp links OpenSSL::Crypto): none of
// it is hand-written.
//
// The exchange (frames of tcp_wire.hpp, run by tcp_rendezvous.hpp):
//   connecting side -> hello      its rank c and a fresh nonce Nc
//   accepting side  -> challenge  a fresh nonce Ns and
//                                 HMAC(token, "accepting" | kind | Nc | Ns | c | a)
//   connecting side -> proof      HMAC(token, "connecting" | kind | Nc | Ns | c | a | details)
//                                 and the details (world size, listening address)
// where a is the accepting side's rank and kind is hello or peer_hello. Each
// side proves the token over a nonce the other just drew, so a recorded
// handshake replays nowhere; the labels keep one side's proof from serving
// as the other's; a stranger is told nothing of the job before its proof
// checks out. It authenticates the ranks to each other, not the stream: on a
// network where someone can relay and alter TCP segments, the frames that
// follow are not protected (use a private network or a tunnel there).
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transports/detail/tcp_wire.hpp"

namespace ecopt::detail::tcp_auth {

using tcp_wire::mac_bytes;
using tcp_wire::nonce_bytes;

/// A nonce from OpenSSL's CSPRNG; throws transport_error if it has none.
[[nodiscard]] inline nonce_bytes fresh_nonce() {
  nonce_bytes n{};
  if (RAND_bytes(reinterpret_cast<unsigned char*>(n.data()), static_cast<int>(n.size())) != 1) {
    throw transport_error("tcp handshake: OpenSSL's random generator gave no nonce");
  }
  return n;
}

/// HMAC-SHA-256 of `message` keyed with `key`.
[[nodiscard]] inline mac_bytes hmac_sha256(std::string_view key,
                                           std::span<const std::byte> message) {
  static const unsigned char no_key = 0;  // (a null key means "the previous one" to OpenSSL)
  mac_bytes out{};
  unsigned int length = 0;
  const unsigned char* k =
      key.empty() ? &no_key : reinterpret_cast<const unsigned char*>(key.data());
  if (HMAC(EVP_sha256(), k, static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(),
           reinterpret_cast<unsigned char*>(out.data()), &length) == nullptr ||
      length != out.size()) {
    throw transport_error("tcp handshake: OpenSSL could not compute an HMAC-SHA-256");
  }
  return out;
}

/// Compares proofs in constant time (no timing hint of how much matched).
[[nodiscard]] inline bool same(const mac_bytes& a, const mac_bytes& b) noexcept {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

/// What both sides' proofs cover.
struct transcript {
  tcp_wire::frame_kind kind = tcp_wire::frame_kind::hello;  ///< hello or peer_hello
  nonce_bytes client_nonce{};
  nonce_bytes server_nonce{};
  std::uint32_t client_rank = 0;  ///< the connecting side's (claimed) rank
  std::uint32_t server_rank = 0;  ///< the accepting side's rank
};

namespace detail {
[[nodiscard]] inline std::vector<std::byte> message(std::string_view label, const transcript& t,
                                                    std::span<const std::byte> details) {
  std::vector<std::byte> m;
  m.reserve(label.size() + 1 + 2 * tcp_wire::nonce_size + 8 + details.size());
  tcp_wire::append_text(m, label);
  m.push_back(static_cast<std::byte>(t.kind));
  tcp_wire::append_bytes(m, t.client_nonce);
  tcp_wire::append_bytes(m, t.server_nonce);
  tcp_wire::append_u32(m, t.client_rank);
  tcp_wire::append_u32(m, t.server_rank);
  tcp_wire::append_bytes(m, details);
  return m;
}
}  // namespace detail

/// The accepting side's proof of the token.
[[nodiscard]] inline mac_bytes accepting_proof(std::string_view token, const transcript& t) {
  return hmac_sha256(token, detail::message("ecopt-tcp 2 accepting", t, {}));
}

/// The connecting side's proof of the token, over its details too.
[[nodiscard]] inline mac_bytes connecting_proof(std::string_view token, const transcript& t,
                                                std::span<const std::byte> details) {
  return hmac_sha256(token, detail::message("ecopt-tcp 2 connecting", t, details));
}

}  // namespace ecopt::detail::tcp_auth
