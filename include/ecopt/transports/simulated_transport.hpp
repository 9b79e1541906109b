#pragma once
// simulated_transport<Inner>: a network model over a real transport. Messages
// still travel through Inner (thread_transport, tcp_transport, ...); on the
// side, every rank keeps a virtual clock that charges each message the cost
// of the alpha-beta model (Hockney 1994, "The communication challenge for
// MPP: Intel Paragon and Meiko CS-2", Parallel Computing 20(3)): a message of
// n bytes on a link with latency alpha and bandwidth beta takes
// alpha + n / beta. So a run on 64 threads of one machine predicts the
// communication time of the same run on 64 machines at 1 Gbit/s or
// 100 Gbit/s, and compressors compare by modelled time-to-accuracy.
//
// The clock model (all times in seconds, each rank's clock starts at 0):
//  * send(to, n bytes): the sender's NIC pushes the bytes out in n / beta,
//    and it has one NIC: sends serialize on the sender's clock, whichever
//    links they use (a rank sending to P-1 peers pays (P-1) n / beta). The
//    latency does not occupy the sender: the message is modelled to arrive at
//    (clock before the send) + n / beta + alpha, and the sender's clock
//    advances by n / beta only.
//  * recv: the receiver's clock becomes max(own clock, the message's arrival).
//    Receiving costs no NIC time of its own: links are full duplex, and many
//    senders to one receiver do not queue behind each other (incast is not
//    modelled; its cost shows on the sending side only).
//  * charge_compute(s): advances the clock by s, to model computation.
// The message carries its modelled arrival time in a 12-byte trailer (appended
// by send, checked and removed by recv; bytes_sent() counts payloads only), so
// clocks agree across processes as well as threads. recv_any takes messages in
// the inner transport's real arrival order, not the modelled one.
//
// Collectives over a simulated_transport always run as the ring and tree
// algorithms of collectives/ on its point-to-point messages, so that each of
// their messages is charged: it does not pass on an inner transport's own
// (native_*) collectives, e.g. mpi_transport's MPI_Allreduce.
//
// Every rank of a world must wrap its transport (a message without the
// trailer is a transport_error naming its sender), with the same
// network_model. Use one simulated_transport from one thread at a time.
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

/// The cost of one directed link in the alpha-beta model.
struct link_cost {
  double latency_seconds = 0;  ///< alpha: from the last byte sent to its arrival
  double bytes_per_second = std::numeric_limits<double>::infinity();  ///< beta (+inf: free)

  /// n / beta: how long the sender's NIC is busy with n bytes.
  [[nodiscard]] double injection_seconds(std::uint64_t bytes) const noexcept {
    return static_cast<double>(bytes) / bytes_per_second;
  }
  /// alpha + n / beta: one message of n bytes on an idle link.
  [[nodiscard]] double transfer_seconds(std::uint64_t bytes) const noexcept {
    return latency_seconds + injection_seconds(bytes);
  }

  /// Throws invalid_argument unless latency is finite and >= 0 and the
  /// bandwidth is > 0 (+inf allowed).
  void validate(std::string_view where = "link_cost") const {
    if (!(latency_seconds >= 0) || !std::isfinite(latency_seconds)) {
      throw invalid_argument(std::string(where) +
                             ": latency_seconds must be finite and >= 0, got " +
                             std::to_string(latency_seconds));
    }
    if (!(bytes_per_second > 0)) {
      throw invalid_argument(std::string(where) + ": bytes_per_second must be > 0, got " +
                             std::to_string(bytes_per_second));
    }
  }

  friend bool operator==(const link_cost&, const link_cost&) = default;
};

/// The cost of the directed link from -> to, replacing the default link.
struct link_override {
  int from = 0;
  int to = 0;
  link_cost cost{};
};

/// Every link costs `default_link` unless an override names its (from, to)
/// pair (links are directed; the last override of a pair wins).
struct network_model {
  link_cost default_link{};
  std::vector<link_override> overrides{};

  /// One cost for every link.
  [[nodiscard]] static network_model uniform(double latency_seconds, double bytes_per_second) {
    return {.default_link = {latency_seconds, bytes_per_second}};
  }
  // Illustrative presets: line rate, and a one-way latency typical of a
  // switched LAN with a kernel TCP stack (1 and 10 Gbit/s) or a
  // kernel-bypass stack (100 Gbit/s). Measure your own network for real
  // predictions and pass its figures to uniform().
  /// 1 Gbit/s (125e6 B/s), 50 us.
  [[nodiscard]] static network_model ethernet_1g() { return uniform(50e-6, 125e6); }
  /// 10 Gbit/s (1.25e9 B/s), 20 us.
  [[nodiscard]] static network_model ethernet_10g() { return uniform(20e-6, 1.25e9); }
  /// 100 Gbit/s (12.5e9 B/s), 5 us.
  [[nodiscard]] static network_model ethernet_100g() { return uniform(5e-6, 12.5e9); }

  /// Sets the cost of the directed link from -> to (call twice, swapped, for
  /// both directions). Returns *this for chaining.
  network_model& set_link(int from, int to, link_cost cost) {
    for (link_override& o : overrides) {
      if (o.from == from && o.to == to) {
        o.cost = cost;
        return *this;
      }
    }
    overrides.push_back({from, to, cost});
    return *this;
  }

  /// The cost of the directed link from -> to.
  [[nodiscard]] link_cost link(int from, int to) const noexcept {
    for (auto o = overrides.rbegin(); o != overrides.rend(); ++o) {
      if (o->from == from && o->to == to) return o->cost;
    }
    return default_link;
  }

  /// Throws invalid_argument naming the first bad link. With world_size > 0,
  /// overrides must also name two different ranks of that world.
  void validate(int world_size = 0) const {
    default_link.validate("network_model: default_link");
    for (std::size_t i = 0; i < overrides.size(); ++i) {
      const link_override& o = overrides[i];
      const std::string where = "network_model: overrides[" + std::to_string(i) + "] (" +
                                std::to_string(o.from) + " -> " + std::to_string(o.to) + ")";
      o.cost.validate(where);
      if (o.from < 0 || o.to < 0 || o.from == o.to ||
          (world_size > 0 && (o.from >= world_size || o.to >= world_size))) {
        throw invalid_argument(
            where + ": a link joins two different ranks" +
            (world_size > 0 ? " of the world of " + std::to_string(world_size) : std::string()));
      }
    }
  }
};

/// Rank `inner.rank()` of a world whose messages are charged to a modelled
/// clock. Holds a reference: `inner` must outlive it.
template <Transport Inner>
class simulated_transport {
 public:
  /// Trailer per message: the arrival time (IEEE double, little-endian) and a
  /// 4-byte mark that tells a wrapped message from a raw one.
  static constexpr std::size_t trailer_bytes = 12;

  /// Throws invalid_argument when the model is invalid for inner's world.
  simulated_transport(Inner& inner, network_model model)
      : inner_(&inner), model_(std::move(model)) {
    const int n = size();
    model_.validate(n);
    out_links_.reserve(static_cast<std::size_t>(n));
    for (int to = 0; to < n; ++to) out_links_.push_back(model_.link(rank(), to));
  }
  simulated_transport(const simulated_transport&) = delete;
  simulated_transport& operator=(const simulated_transport&) = delete;

  [[nodiscard]] int rank() const { return static_cast<int>(inner_->rank()); }
  [[nodiscard]] int size() const { return static_cast<int>(inner_->size()); }
  /// Payload bytes this rank has sent (the trailers not included).
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return bytes_sent_; }
  /// This rank's modelled clock: communication plus charged compute.
  [[nodiscard]] double modelled_seconds() const noexcept { return clock_; }
  /// The part of modelled_seconds() charged through charge_compute.
  [[nodiscard]] double compute_seconds() const noexcept { return compute_; }
  [[nodiscard]] const network_model& model() const noexcept { return model_; }
  [[nodiscard]] Inner& inner() noexcept { return *inner_; }
  [[nodiscard]] const Inner& inner() const noexcept { return *inner_; }
  [[nodiscard]] auto timeout() const requires requires(const Inner& i) { i.timeout(); }
  { return inner_->timeout(); }

  /// As Inner's peer_lost (PeerLossTransport).
  [[nodiscard]] bool peer_lost(int peer) const requires requires(const Inner& i) {
    i.peer_lost(peer);
  }
  { return inner_->peer_lost(peer); }

  /// Advances this rank's clock by `seconds` of modelled computation.
  void charge_compute(double seconds) {
    if (!(seconds >= 0) || !std::isfinite(seconds)) {
      throw invalid_argument("rank " + std::to_string(rank()) +
                             ": charge_compute needs a finite, non-negative time, got " +
                             std::to_string(seconds));
    }
    clock_ += seconds;
    compute_ += seconds;
  }

  /// Runs `communicate` (messages on this transport) as if in the background
  /// of this rank's computation: its messages are charged from the current
  /// clock as usual, then the clock returns to where it was; returns the
  /// modelled time at which the communication ended. Call wait_until with it
  /// where the caller waits for the result, so a step costs max(compute,
  /// communication), not their sum (background_channel.hpp does both).
  template <class F>
  double in_background(F&& communicate) {
    const double start = clock_;
    std::forward<F>(communicate)();
    const double end = clock_;
    clock_ = start;
    return end;
  }

  /// Advances this rank's clock to `seconds` if that is later.
  void wait_until(double seconds) { clock_ = std::max(clock_, seconds); }

  /// Sends through Inner with the modelled arrival time appended, and charges
  /// the injection time data.size() / beta to this rank's clock.
  void send(int to, message_tag tag, std::span<const std::byte> data) {
    if (to < 0 || to >= size() || to == rank()) {
      throw invalid_argument("rank " + std::to_string(rank()) + ": send to rank " +
                             std::to_string(to) + " is not a peer (world size " +
                             std::to_string(size()) + ")");
    }
    const link_cost& link = out_links_[static_cast<std::size_t>(to)];
    const double sent = clock_ + link.injection_seconds(data.size());
    const double arrival = sent + link.latency_seconds;
    staging_.resize(data.size() + trailer_bytes);
    if (!data.empty()) std::memcpy(staging_.data(), data.data(), data.size());
    write_trailer(staging_.data() + data.size(), arrival);
    inner_->send(to, tag, std::span<const std::byte>(staging_));
    clock_ = sent;
    bytes_sent_ += data.size();
  }

  /// Receives through Inner, strips the trailer and advances this rank's
  /// clock to the message's arrival if that is later.
  void recv(int from, message_tag tag, std::vector<std::byte>& into) {
    inner_->recv(from, tag, into);
    clock_ = std::max(clock_, take_trailer(from, tag, into));
  }

  /// As Inner's recv_any (real arrival order); returns the sender.
  int recv_any(message_tag tag, std::vector<std::byte>& into) requires RecvAnyTransport<Inner> {
    const int from = static_cast<int>(inner_->recv_any(tag, into));
    clock_ = std::max(clock_, take_trailer(from, tag, into));
    return from;
  }

  /// A message taken by recv_any_unclocked: its sender and modelled arrival.
  struct timed_arrival {
    int from = -1;
    double arrival_seconds = 0;
  };

  /// As recv_any, but the clock is left alone: the caller learns when the
  /// message arrives in modelled time and calls wait_until(arrival) when it
  /// takes it. A parameter server that must process messages in modelled
  /// rather than real order (algorithms/detail/arrival_queue.hpp) holds each
  /// sender's next message until it knows which arrived first.
  timed_arrival recv_any_unclocked(message_tag tag,
                                   std::vector<std::byte>& into) requires RecvAnyTransport<Inner> {
    const int from = static_cast<int>(inner_->recv_any(tag, into));
    return {from, take_trailer(from, tag, into)};
  }

 private:
  static constexpr std::uint32_t mark = 0x45435349u;  // "ISCE" on the wire

  static void write_trailer(std::byte* at, double arrival) noexcept {
    const auto bits = std::bit_cast<std::uint64_t>(arrival);
    for (int i = 0; i < 8; ++i) at[i] = static_cast<std::byte>(bits >> (8 * i));
    for (int i = 0; i < 4; ++i) at[8 + i] = static_cast<std::byte>(mark >> (8 * i));
  }

  // Strips the trailer from `into` and returns the modelled arrival it carried.
  double take_trailer(int from, message_tag tag, std::vector<std::byte>& into) {
    auto broken = [&](const std::string& why) {
      return transport_error("rank " + std::to_string(rank()) + ": message from rank " +
                             std::to_string(from) + " (tag " + detail::tag_text(tag) + ") " + why +
                             " (does every rank wrap its transport in "
                             "simulated_transport?)");
    };
    if (into.size() < trailer_bytes) {
      throw broken("has " + std::to_string(into.size()) + " bytes, fewer than the " +
                   std::to_string(trailer_bytes) + "-byte simulated_transport trailer");
    }
    const std::byte* at = into.data() + (into.size() - trailer_bytes);
    std::uint64_t bits = 0;
    std::uint32_t seen = 0;
    for (int i = 0; i < 8; ++i)
      bits |= std::uint64_t{std::to_integer<std::uint8_t>(at[i])} << (8 * i);
    for (int i = 0; i < 4; ++i) {
      seen |= std::uint32_t{std::to_integer<std::uint8_t>(at[8 + i])} << (8 * i);
    }
    if (seen != mark) throw broken("does not end in a simulated_transport trailer");
    const double arrival = std::bit_cast<double>(bits);
    if (!(arrival >= 0) || !std::isfinite(arrival)) {
      throw broken("carries an invalid modelled arrival time " + std::to_string(arrival));
    }
    into.resize(into.size() - trailer_bytes);
    return arrival;
  }

  Inner* inner_;
  network_model model_;
  std::vector<link_cost> out_links_;  // this rank's link to each rank
  std::vector<std::byte> staging_;    // payload + trailer, reused
  double clock_ = 0;
  double compute_ = 0;
  std::uint64_t bytes_sent_ = 0;
};

template <class Inner>
simulated_transport(Inner&, network_model) -> simulated_transport<Inner>;

}  // namespace ecopt
