#pragma once
// Synchronous SGD with backup workers (Chen, Pan, Monga, Bengio, Jozefowicz
// 2016, "Revisiting distributed synchronous SGD", arXiv:1604.00981), a server
// schedule of parameter_server (parameter_server.hpp).
//
// N + b workers compute every round; the server steps with the mean of the
// first N updates computed at the round's model and drops the rest. A worker
// whose update comes late (it was still computing the last round's gradient)
// gets the current model at once, so the b slowest workers of a round cost
// nothing but their wasted computation, and a round takes the time of the
// N-th fastest worker instead of the slowest. Late updates are drained and
// counted, never mixed into a later round.
//
// With b = 0 every update is applied, summed in worker order: the run equals
// solver<C, E, O, synchronous> on N ranks bit for bit whenever the
// synchronous exchange also sums in rank order (payloads that are gathered
// and decoded, i.e. every compressor that is not summed by allreduce, and
// any compressor on 2 workers); an allreduce sums in its own tree order.
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/algorithms/detail/server_messages.hpp"
#include "ecopt/error.hpp"

namespace ecopt {

struct backup_workers {
  static constexpr std::string_view name = "backup_workers";

  int backups = 0;  ///< b: updates dropped each round (the slowest b of N + b)

  void validate() const {
    if (backups < 0) {
      throw invalid_argument("backup_workers: backups must be >= 0, got " +
                             std::to_string(backups));
    }
  }

  template <class T>
  struct state {
    std::vector<T> sum;
    std::vector<char> taken;  // taken[w]: w's update is in this round
    std::vector<detail::taken_update> updates;
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim, int workers) const {
    if (backups >= workers) {
      throw invalid_argument("backup_workers: " + std::to_string(backups) +
                             " backups leave no update to aggregate among " +
                             std::to_string(workers) + " workers");
    }
    return state<T>{std::vector<T>(dim), std::vector<char>(static_cast<std::size_t>(workers)),
                    std::vector<detail::taken_update>(static_cast<std::size_t>(workers))};
  }

  template <class T, class Round>
  void serve(Round& r, state<T>& s) const {
    const int workers = r.workers();
    const int aggregated = workers - backups;
    for (int w = 0; w < workers; ++w) r.publish(w, update_fate::none);
    while (!r.finished()) {
      std::fill(s.taken.begin(), s.taken.end(), char{0});
      for (int count = 0; count < aggregated;) {
        const auto u = r.take();
        if (u.version != r.version()) {
          r.drop(u, false);
          continue;
        }
        s.updates[static_cast<std::size_t>(u.worker)] = u;
        s.taken[static_cast<std::size_t>(u.worker)] = 1;
        ++count;
      }
      r.sum_in_worker_order(s.updates, s.taken, std::span<T>(s.sum));
      r.step(std::span<const T>(s.sum), aggregated, aggregated);
      for (int w = 0; w < workers; ++w) {
        if (s.taken[static_cast<std::size_t>(w)] != 0) {
          r.publish(w, update_fate::applied);
        }
      }
    }
  }
};

}  // namespace ecopt
