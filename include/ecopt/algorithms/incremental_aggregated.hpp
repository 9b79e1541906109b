#pragma once
// Compressed incremental aggregated gradient (IAG), a server schedule of
// parameter_server (parameter_server.hpp), after Khirirat, Feyzmahdavian,
// Johansson 2018 (arXiv:1806.06573): the server keeps the latest decoded
// update of every worker and, whenever one arrives, replaces that worker's
// entry and steps with the mean of the table,
//   x <- x - gamma (1/n) sum_i Q(g_i(x_{k - tau_i})).
// Every step uses every worker's information, each entry at most about n - 1
// versions old when workers run at similar speeds; a worker that has not
// reported yet counts as 0. The mean is kept as a running sum, refreshed
// exactly from the table every n steps so rounding does not build up.
// Compensators that reconstruct the direction (EF21) are refused: the table
// already plays their part.
#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "ecopt/algorithms/detail/server_messages.hpp"

namespace ecopt {

struct incremental_aggregated {
  static constexpr std::string_view name = "incremental_aggregated";

  template <class T>
  struct state {
    std::vector<T> table;  // workers x dim, row w = w's latest update
    std::vector<T> sum;
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim, int workers) const {
    return state<T>{std::vector<T>(dim * static_cast<std::size_t>(workers), T(0)),
                    std::vector<T>(dim, T(0))};
  }

  template <class T, class Round>
  void serve(Round& r, state<T>& s) const {
    static_assert(!Round::reconstructs,
                  "incremental_aggregated keeps every worker's latest update itself: a "
                  "compensator that reconstructs the direction (ef21) does not compose with it");
    const std::size_t d = r.dim();
    const int workers = r.workers();
    for (int w = 0; w < workers; ++w) r.publish(w, update_fate::none);
    std::uint64_t since_refresh = 0;
    while (!r.finished()) {
      const auto u = r.take();
      const std::span<T> row(s.table.data() + static_cast<std::size_t>(u.worker) * d, d);
      for (std::size_t j = 0; j < d; ++j) s.sum[j] -= row[j];
      std::fill(row.begin(), row.end(), T(0));
      r.decode_add(u, row, T(1));
      if (++since_refresh == static_cast<std::uint64_t>(workers)) {
        since_refresh = 0;
        std::fill(s.sum.begin(), s.sum.end(), T(0));
        for (int w = 0; w < workers; ++w) {
          const T* other = s.table.data() + static_cast<std::size_t>(w) * d;
          for (std::size_t j = 0; j < d; ++j) s.sum[j] += other[j];
        }
      } else {
        for (std::size_t j = 0; j < d; ++j) s.sum[j] += row[j];
      }
      r.step(std::span<const T>(s.sum), workers, 1);
      r.publish(u.worker, update_fate::applied);
    }
  }
};

}  // namespace ecopt
