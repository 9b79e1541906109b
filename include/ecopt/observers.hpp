#pragma once
// Ready-made observers for solver::run. An observer is any object with
// `on_step(const progress&)` (every round) and/or `on_eval(const progress&)`
// (at evaluations, may return observer_action::stop).
#include <cstdio>
#include <string>

#include "ecopt/run_report.hpp"

namespace ecopt {

/// Stops the run once the global loss is at or below `target`.
struct stop_at_loss {
  double target = 0;
  observer_action on_eval(const progress& p) const noexcept {
    return p.loss <= target ? observer_action::stop : observer_action::proceed;
  }
};

/// Prints a one-line progress report on rank 0 at each evaluation.
struct print_progress {
  std::FILE* out = stderr;
  std::string label;
  void on_eval(const progress& p) const {
    if (p.rank != 0) return;
    std::fprintf(out, "\r%s step %llu/%llu  loss %.5f  %.2f Mbit sent  %.1f s   ", label.c_str(),
                 static_cast<unsigned long long>(p.step),
                 static_cast<unsigned long long>(p.total_steps), p.loss,
                 static_cast<double>(p.wire_bits) * 1e-6, p.elapsed_seconds);
    std::fflush(out);
  }
};

}  // namespace ecopt
