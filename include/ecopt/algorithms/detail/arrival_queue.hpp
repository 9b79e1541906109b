#pragma once
// arrival_queue<Tr>: the parameter server's view of its workers' messages --
// which workers owe it one (they were sent a model and are computing), and
// the next message to take.
//
// On a real transport (threads, TCP, MPI) the next message is the first to
// arrive. On a simulated_transport (ModelledArrivalTransport) it must be the
// first in *modelled* time, which real arrival order does not give: a worker
// that is slow in the model may be a fast thread. The queue then holds each
// owing worker's message until every owing worker has sent one, and takes
// the earliest in modelled time (a conservative discrete-event step: a worker
// that owes nothing can only send after the server's reply, which leaves at
// the server's clock, so no earlier message can still come). Each worker
// owes at most one message, so the queue holds at most one per worker.
//
// A worker that is lost (PeerLossTransport: its thread returned, its process
// died) is found when a receive fails -- at the transport's deadline at the
// latest -- and forgotten; the queue goes on with the others.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/transport.hpp"

namespace ecopt::detail {

template <RecvAnyTransport Tr>
class arrival_queue {
 public:
  static constexpr bool modelled_order = ModelledArrivalTransport<Tr>;

  /// A message taken from the queue; `bytes` stays valid until the worker is
  /// expected again (swap it out to keep it longer).
  struct arrival {
    int worker = -1;
    std::vector<std::byte>* bytes = nullptr;
  };

  /// Workers are ranks first_worker .. first_worker + workers - 1.
  arrival_queue(Tr& transport, message_tag tag, int workers, int first_worker)
      : transport_(transport),
        tag_(tag),
        first_worker_(first_worker),
        owing_(static_cast<std::size_t>(workers), 0),
        held_(static_cast<std::size_t>(workers), 0),
        arrival_(static_cast<std::size_t>(workers), 0.0),
        bytes_(static_cast<std::size_t>(workers)) {}

  [[nodiscard]] int workers() const noexcept { return static_cast<int>(owing_.size()); }
  [[nodiscard]] int owing() const noexcept { return owing_count_; }
  [[nodiscard]] bool owes(int worker) const { return owing_[index(worker)] != 0; }

  /// The worker was sent something it answers: one message from it is due.
  void expect(int worker) {
    if (owing_[index(worker)] == 0) ++owing_count_;
    owing_[index(worker)] = 1;
  }

  /// Forgets a worker that owes a message but will never send it (lost).
  void forget(int worker) {
    const std::size_t w = index(worker);
    if (owing_[w] != 0) --owing_count_;
    if (held_[w] != 0) --held_count_;
    owing_[w] = 0;
    held_[w] = 0;
  }

  /// Workers found lost (PeerLossTransport), in the order they were found.
  [[nodiscard]] const std::vector<int>& lost() const noexcept { return lost_; }
  [[nodiscard]] bool is_lost(int worker) const {
    return std::find(lost_.begin(), lost_.end(), worker) != lost_.end();
  }
  /// Records a worker as lost (and forgets what it owed).
  void lose(int worker) {
    if (is_lost(worker)) return;
    forget(worker);
    lost_.push_back(worker);
  }

  /// The next message from an owing worker (there must be one): the first to
  /// arrive, in modelled time on a ModelledArrivalTransport. On a
  /// PeerLossTransport, a receive that fails because owing workers are gone
  /// forgets them and waits for the others; when none is left to wait for,
  /// it throws transport_error naming the lost.
  arrival next() {
    for (;;) {
      if (owing_count_ == 0) {
        throw invalid_argument("arrival_queue: no worker owes the server a message");
      }
      try {
        return next_message();
      } catch (const transport_error&) {
        if (!forget_lost()) throw;
        if (owing_count_ == 0) {
          std::string ranks;
          for (const int w : lost_)
            ranks += (ranks.empty() ? "" : ", ") + std::to_string(w + first_worker_);
          throw transport_error(
              "parameter server: every worker it was waiting for is lost (ranks " + ranks + ")");
        }
      }
    }
  }

 private:
  // Forgets the owing workers the transport reports lost; true if any.
  bool forget_lost() {
    bool any = false;
    if constexpr (PeerLossTransport<Tr>) {
      for (int w = 0; w < workers(); ++w) {
        if (owing_[static_cast<std::size_t>(w)] != 0 && transport_.peer_lost(w + first_worker_)) {
          lose(w);
          any = true;
        }
      }
    }
    return any;
  }

  arrival next_message() {
    if constexpr (modelled_order) {
      while (held_count_ < owing_count_) {
        const auto got = transport_.recv_any_unclocked(tag_, scratch_);
        const std::size_t w = admit(static_cast<int>(got.from));
        if (held_[w] != 0) throw unexpected(static_cast<int>(got.from), "a second message");
        held_[w] = 1;
        ++held_count_;
        arrival_[w] = got.arrival_seconds;
        std::swap(scratch_, bytes_[w]);
      }
      std::size_t first = 0;
      double earliest = std::numeric_limits<double>::infinity();
      for (std::size_t w = 0; w < held_.size(); ++w) {
        if (held_[w] != 0 && arrival_[w] < earliest) {
          earliest = arrival_[w];
          first = w;
        }
      }
      transport_.wait_until(earliest);
      held_[first] = 0;
      --held_count_;
      owing_[first] = 0;
      --owing_count_;
      return {static_cast<int>(first), &bytes_[first]};
    } else {
      const int from = static_cast<int>(transport_.recv_any(tag_, scratch_));
      const std::size_t w = admit(from);
      std::swap(scratch_, bytes_[w]);
      owing_[w] = 0;
      --owing_count_;
      return {static_cast<int>(w), &bytes_[w]};
    }
  }

  [[nodiscard]] std::size_t index(int worker) const {
    if (worker < 0 || worker >= workers()) {
      throw invalid_argument("arrival_queue: worker " + std::to_string(worker) +
                             " is not one of the " + std::to_string(workers()));
    }
    return static_cast<std::size_t>(worker);
  }

  transport_error unexpected(int rank, const std::string& what) const {
    return transport_error("parameter server: rank " + std::to_string(rank) + " sent " + what +
                           " while it owed none (a worker answers each model once)");
  }

  std::size_t admit(int rank) const {
    const int w = rank - first_worker_;
    if (w < 0 || w >= workers()) {
      throw transport_error("parameter server: a message from rank " + std::to_string(rank) +
                            ", which is not a worker");
    }
    if (owing_[static_cast<std::size_t>(w)] == 0) throw unexpected(rank, "a message");
    return static_cast<std::size_t>(w);
  }

  Tr& transport_;
  message_tag tag_;
  int first_worker_;
  std::vector<char> owing_, held_;
  std::vector<double> arrival_;
  std::vector<std::vector<std::byte>> bytes_;
  std::vector<std::byte> scratch_;
  std::vector<int> lost_;
  int owing_count_ = 0;
  int held_count_ = 0;
};

}  // namespace ecopt::detail
