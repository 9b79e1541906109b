// Predicting communication time with the network model: 64 workers run as
// threads of this process, each behind a simulated_transport that charges
// every message the alpha-beta cost of a 1 Gbit/s or a 100 Gbit/s network
// (Hockney 1994). The same least-squares problem is solved with a dense
// allreduce, top-k + error feedback (Stich, Cordonnier, Jaggi 2018,
// arXiv:1809.07599) and QSGD (Alistarh et al. 2017, arXiv:1610.02132), each
// run until the global loss falls below a target. The table compares them by
// modelled communication time to that target beside the bits they sent.
//
// The model counts communication only (no compute time is charged), with one
// NIC per worker and full-duplex links (see simulated_transport.hpp): it
// predicts what the network would cost, not the wall time of this process.
// At 64 workers and d = 1000 every message is small, so the latency term
// dominates: with 64 = 2^6 workers an allreduce (halving-doubling) sends
// 2 log2(P) = 12 messages per round and an allgather of compressed payloads
// (recursive doubling) log2(P) = 6. At 100 Gbit/s the compressors' rounds
// then cost about half of the dense round, not 1/8 or 1/32; at 1 Gbit/s the
// bandwidth term shows that an allgather's bytes grow with P (each worker
// receives P-1 payloads) while an allreduce's do not. (With a worker count
// that is not a power of two the collectives are rings: 2(P-1) and P-1
// messages.)
//
// Usage: network_model [workers [dimension [max_steps]]]  (defaults 64, 1000, 600)
#include <Eigen/Core>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "ecopt/ecopt.hpp"
#include "ecopt/transports/simulated_transport.hpp"

namespace {

struct setup {
  int workers = 64;
  Eigen::Index d = 1000;
  std::uint64_t max_steps = 600;
  Eigen::MatrixXd features;  ///< d x m, one sample per column
  Eigen::VectorXd targets;
  double initial_loss = 0;
  double target_loss = 0;
};

/// Stops every worker once the global loss reaches the target.
struct stop_at_target {
  double target;
  ecopt::observer_action on_eval(const ecopt::progress& p) const {
    return p.loss <= target ? ecopt::observer_action::stop : ecopt::observer_action::proceed;
  }
};

struct outcome {
  bool reached = false;
  std::uint64_t steps = 0;
  double modelled_seconds = 0;     ///< communication time to the target (rank 0's clock)
  std::uint64_t payload_bits = 0;  ///< per worker, to the target
  std::uint64_t wire_bits = 0;
};

template <class Solver>
outcome run(const setup& s, const Solver& solver, const ecopt::network_model& network) {
  const double target = s.target_loss;
  const auto reports = ecopt::run_threads(s.workers, [&](ecopt::thread_transport& t) {
    ecopt::simulated_transport net(t, network);
    ecopt::least_squares<double> problem(ecopt::shard_columns(s.features, t.rank(), t.size()),
                                         ecopt::shard_segment(s.targets, t.rank(), t.size()),
                                         {.batch_size = 16});
    Eigen::VectorXd x = Eigen::VectorXd::Zero(s.d);
    return solver.run(net, problem, x, {.steps = s.max_steps, .seed = 1, .eval_every = 5},
                      stop_at_target{target});
  });
  outcome o;
  const ecopt::eval_point& last = reports[0].history.back();
  o.reached = last.loss <= target;
  o.steps = last.step;
  o.modelled_seconds = last.modelled_seconds;
  o.payload_bits = last.payload_bits;
  o.wire_bits = last.wire_bits;
  return o;
}

std::string duration(double seconds) {
  char buf[32];
  if (seconds >= 1) {
    std::snprintf(buf, sizeof buf, "%.2f s", seconds);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f ms", seconds * 1e3);
  }
  return buf;
}

template <class Solver>
void rows(const setup& s, const char* name, const Solver& solver) {
  struct network {
    const char* name;
    ecopt::network_model model;
  };
  for (const network& n : {network{"1 Gbit/s", ecopt::network_model::ethernet_1g()},
                           network{"100 Gbit/s", ecopt::network_model::ethernet_100g()}}) {
    const outcome o = run(s, solver, n.model);
    std::printf("| %-22s | %-10s | %5s%-4llu | %14s | %14s | %13.1f | %13.1f |\n", name, n.name,
                o.reached ? "" : "> ", static_cast<unsigned long long>(o.steps),
                duration(o.modelled_seconds).c_str(),
                duration(o.modelled_seconds / static_cast<double>(o.steps)).c_str(),
                static_cast<double>(o.payload_bits) * 1e-3,
                static_cast<double>(o.wire_bits) * 1e-3);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) try {
  setup s;
  ecopt_examples::command_line cli("network_model",
                                   "bits and modelled time on simulated 1 and 100 Gbit/s networks");
  cli.option("--workers", s.workers, "worker threads (>= 1)")
      .option("--dimension", s.d, "problem dimension (>= 1)")
      .option("--max-steps", s.max_steps, "step budget of each run (>= 1)");
  if (!cli.parse(argc, argv)) return 0;
  if (s.workers < 1 || s.d < 1 || s.max_steps < 1) {
    std::fprintf(stderr, "network_model: --workers, --dimension and --max-steps must be >= 1\n");
    return 2;
  }
  // Noiseless least squares, 8 samples per coordinate: the optimum has loss
  // 0, so the target is a fraction of the starting loss.
  const Eigen::Index m = 8 * s.d;
  auto rng = ecopt::counter_rng::stream(7, ecopt::stream_purpose::test, 0, 0);
  s.features.resize(s.d, m);
  for (Eigen::Index i = 0; i < s.features.size(); ++i) s.features.data()[i] = rng.normal();
  Eigen::VectorXd truth(s.d);
  for (Eigen::Index j = 0; j < s.d; ++j) truth[j] = rng.normal();
  s.targets = s.features.transpose() * truth;
  s.initial_loss = 0.5 * s.targets.squaredNorm() / static_cast<double>(m);
  s.target_loss = 1e-3 * s.initial_loss;

  std::printf(
      "least squares, d = %ld, %ld samples over %d workers (threads), batch 16 per worker;\n"
      "target: loss <= 1e-3 x initial loss (%.3g); evaluated every 5 steps\n"
      "network model: alpha-beta, 1 Gbit/s with 50 us latency, 100 Gbit/s with 5 us\n\n",
      static_cast<long>(s.d), static_cast<long>(m), s.workers, s.target_loss);
  std::printf("| %-22s | %-10s | %9s | %14s | %14s | %13s | %13s |\n", "method", "network", "steps",
              "comm. time", "per step", "payload kbit", "wire kbit");
  std::printf("|%s|%s|%s|%s|%s|%s|%s|\n", std::string(24, '-').c_str(),
              std::string(12, '-').c_str(), std::string(11, '-').c_str(),
              std::string(16, '-').c_str(), std::string(16, '-').c_str(),
              std::string(15, '-').c_str(), std::string(15, '-').c_str());
  rows(s, "dense (allreduce)",
       ecopt::solver{ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.3}});
  rows(s, "top_k 10% + EF",
       ecopt::solver{ecopt::top_k{.ratio = 0.1}, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.3}});
  rows(s, "top_k 1% + EF",
       ecopt::solver{ecopt::top_k{.ratio = 0.01}, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.3}});
  rows(s, "qsgd s=16 (6 bit)",
       ecopt::solver{ecopt::qsgd{.levels = 16}, ecopt::no_compensation{}, ecopt::sgd{.lr = 0.3}});
  std::printf(
      "\ncomm. time: modelled communication time of rank 0 until the evaluation that met the\n"
      "target (evaluations themselves not charged); kbit: per worker, to the same point.\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "network_model: %s\n", e.what());
  return 2;
}
