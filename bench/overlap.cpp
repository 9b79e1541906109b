// Wall time per period of local SGD and Overlap-Local-SGD with real
// concurrency: the background channel's communication thread against the
// same averaging done in line. Two ranks on threads; a step's compute is a
// sleep of t_c (a device kernel: the core is free meanwhile), and every send
// of the link sleeps bytes / bandwidth before it leaves (a slow NIC), with the
// bandwidth set so that one average of the model takes about ratio * tau * t_c.
// Local SGD should take tau t_c + D per period, Overlap-Local-SGD max(tau t_c, D).
//
//   overlap [--steps 96] [--period 8] [--compute-ms 2] [--dim 262144]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "ecopt/ecopt.hpp"

namespace {

/// A thread_transport whose sends take bytes / bandwidth of wall time.
class slow_link {
 public:
  slow_link(ecopt::thread_transport& inner, double bytes_per_second)
      : inner_(inner), bytes_per_second_(bytes_per_second) {}
  [[nodiscard]] int rank() const { return inner_.rank(); }
  [[nodiscard]] int size() const { return inner_.size(); }
  [[nodiscard]] std::uint64_t bytes_sent() const { return inner_.bytes_sent(); }
  void send(int to, ecopt::message_tag tag, std::span<const std::byte> data) {
    std::this_thread::sleep_for(
        std::chrono::duration<double>(static_cast<double>(data.size()) / bytes_per_second_));
    inner_.send(to, tag, data);
  }
  void recv(int from, ecopt::message_tag tag, std::vector<std::byte>& into) {
    inner_.recv(from, tag, into);
  }

 private:
  ecopt::thread_transport& inner_;
  double bytes_per_second_;
};

/// f(x) = |x|^2 / 2 whose gradient "computes" for t_c (sleeps).
struct sleeping_quadratic {
  using scalar_type = float;
  std::size_t d;
  double compute_seconds;
  [[nodiscard]] std::size_t dim() const { return d; }
  double loss(const Eigen::Ref<const Eigen::VectorXf>& x) { return 0.5 * double(x.squaredNorm()); }
  void gradient(const Eigen::Ref<const Eigen::VectorXf>& x, Eigen::Ref<Eigen::VectorXf> g) {
    g = x;
  }
  void stochastic_gradient(const Eigen::Ref<const Eigen::VectorXf>& x,
                           Eigen::Ref<Eigen::VectorXf> g, ecopt::counter_rng&) {
    std::this_thread::sleep_for(std::chrono::duration<double>(compute_seconds));
    g = x;
  }
};

template <class Solver>
double seconds_per_period(const Solver& solver, std::size_t d, double compute, double bandwidth,
                          std::uint64_t steps, std::uint64_t period) {
  const auto times = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
    slow_link link(t, bandwidth);
    sleeping_quadratic problem{d, compute};
    Eigen::VectorXf x = Eigen::VectorXf::Ones(static_cast<Eigen::Index>(d));
    const auto start = std::chrono::steady_clock::now();
    solver.run(link, problem, x, {.steps = steps, .check_finite = false});
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  });
  return std::max(times[0], times[1]) / static_cast<double>(steps / period);
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t steps = 96, period = 8;
  double compute_ms = 2;
  std::size_t d = 262144;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--steps")
      steps = std::stoull(argv[i + 1]);
    else if (flag == "--period")
      period = std::stoull(argv[i + 1]);
    else if (flag == "--compute-ms")
      compute_ms = std::stod(argv[i + 1]);
    else if (flag == "--dim")
      d = std::stoull(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: overlap [--steps N] [--period N] [--compute-ms X] [--dim N]\n");
      return EXIT_FAILURE;
    }
  }
  const double compute = compute_ms * 1e-3;
  const double period_compute = static_cast<double>(period) * compute;
  std::printf(
      "wall time per period, 2 ranks on threads, tau = %llu, t_c = %g ms (sleep), model of %zu "
      "floats\n\n",
      static_cast<unsigned long long>(period), compute_ms, d);
  std::printf("%8s %14s %14s %16s %16s %12s\n", "D/tau t_c", "local sgd", "overlap", "tau t_c + D",
              "max(tau t_c, D)", "overlap/local");
  const ecopt::sgd opt{.lr = 0.01};
  for (const double ratio : {0.5, 1.0, 2.0}) {
    // Two ranks: each sends d floats (its half of the ring twice) per average.
    const double bytes = 4.0 * static_cast<double>(d);
    const double bandwidth = bytes / (ratio * period_compute);
    const double local =
        seconds_per_period(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, opt,
                                         ecopt::local_sgd{.period = period}},
                           d, compute, bandwidth, steps, period);
    const double overlap =
        seconds_per_period(ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, opt,
                                         ecopt::overlap_local_sgd{.period = period}},
                           d, compute, bandwidth, steps, period);
    const double communication = ratio * period_compute;
    std::printf("%8.1f %12.2fms %12.2fms %14.2fms %14.2fms %12.2f\n", ratio, 1e3 * local,
                1e3 * overlap, 1e3 * (period_compute + communication),
                1e3 * std::max(period_compute, communication), overlap / local);
  }
  return EXIT_SUCCESS;
}
