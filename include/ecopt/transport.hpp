#pragma once
// The Transport concept: moving bytes between ranks. Collectives
// (collectives/) are written once over it.
//
//   int rank() const, int size() const
//   void send(int to, message_tag, std::span<const std::byte>)
//        -- must not wait for the receiver (collectives send, then receive)
//   void recv(int from, message_tag, std::vector<std::byte>& into)
//        -- replaces `into` with the next message from `from` (reusing its
//           capacity); throws transport_error when the deadline passes, the
//           peer failed, or the message's tag is not the expected one
//   std::uint64_t bytes_sent() const   -- payload bytes this rank has sent
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ecopt {

using message_tag = std::uint32_t;

namespace detail {
/// A tag as error messages show it: small (user) tags in decimal, reserved
/// (collective) tags as 0x followed by eight hex digits.
inline std::string tag_text(message_tag tag) {
  if (tag < 0x10000u) return std::to_string(tag);
  static constexpr char digits[] = "0123456789abcdef";
  std::string s = "0x";
  for (int shift = 28; shift >= 0; shift -= 4) s += digits[(tag >> shift) & 0xfu];
  return s;
}
}  // namespace detail

template <class T>
concept Transport = requires(T& t, const T& ct, int peer, message_tag tag,
                             std::span<const std::byte> data, std::vector<std::byte>& into) {
  { ct.rank() } -> std::convertible_to<int>;
  { ct.size() } -> std::convertible_to<int>;
  t.send(peer, tag, data);
  t.recv(peer, tag, into);
  { ct.bytes_sent() } -> std::convertible_to<std::uint64_t>;
};

/// A Transport that can also take the next message with a tag from whichever
/// rank sent it first, for parameter-server style algorithms:
///   int recv_any(message_tag, std::vector<std::byte>& into) -- returns the
///        sender; throws transport_error like recv, or once every peer is gone
template <class T>
concept RecvAnyTransport = Transport<T> &&
    requires(T& t, message_tag tag, std::vector<std::byte>& into) {
  { t.recv_any(tag, into) } -> std::convertible_to<int>;
};

/// A Transport that can receive a message of known size straight into the
/// caller's memory (tcp_transport reads the socket into it):
///   std::size_t recv_into(int from, message_tag, std::span<std::byte> into)
///        -- fills `into` with the next message from `from` if it has exactly
///           into.size() bytes; else leaves it queued; returns its size
/// Collectives use it to land received chunks in place; with recv alone they
/// copy from the received buffer.
template <class T>
concept InPlaceRecvTransport = Transport<T> &&
    requires(T& t, int peer, message_tag tag, std::span<std::byte> into) {
  { t.recv_into(peer, tag, into) } -> std::convertible_to<std::size_t>;
};

/// A Transport that keeps a modelled clock (simulated_transport):
///   double modelled_seconds() const -- this rank's modelled time so far
/// The solver copies it into run_report and eval_point beside the bits.
template <class T>
concept TimedTransport = Transport<T> && requires(const T& t) {
  { t.modelled_seconds() } -> std::convertible_to<double>;
};

/// A RecvAnyTransport that says which peers are gone (their thread returned,
/// their process died): a parameter server goes on without a lost worker.
///   bool peer_lost(int rank) const
/// A receive that waits on a lost peer still throws transport_error (after
/// the deadline at the latest); peer_lost tells the caller whom to forget.
template <class T>
concept PeerLossTransport = RecvAnyTransport<T> && requires(const T& t, int rank) {
  { t.peer_lost(rank) } -> std::convertible_to<bool>;
};

/// A TimedTransport that can hand over a message without moving its clock,
/// for servers that take messages in modelled rather than real order:
///   auto recv_any_unclocked(message_tag, std::vector<std::byte>& into)
///        -- as recv_any; returns {from, arrival_seconds}
///   void wait_until(double seconds) -- advances the clock to `seconds` if later
template <class T>
concept ModelledArrivalTransport = TimedTransport<T> && RecvAnyTransport<T> &&
    requires(T& t, message_tag tag, std::vector<std::byte>& into, double seconds) {
  { t.recv_any_unclocked(tag, into).from } -> std::convertible_to<int>;
  { t.recv_any_unclocked(tag, into).arrival_seconds } -> std::convertible_to<double>;
  t.wait_until(seconds);
};

}  // namespace ecopt
