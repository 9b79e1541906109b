// Reproduction R3 of error-compensated loopless Katyusha (ECLK: Qian,
// Richtarik, Zhang 2021, arXiv:2010.00091): on l2-regularised logistic
// regression split over n = 4 and 8 workers, with TopK and RandK compression
// and error feedback, ECLK reaches a relative suboptimality
// (f - f*) / (f0 - f*) <= 1e-6 in fewer communication rounds than the
// error-compensated baselines of Gorbunov, Kovalev, Makarenko, Richtarik 2020
// (arXiv:2010.12292):
//   EC-GD      solver<C, error_feedback, sgd> on full_batch(problem)
//   EC-SGD     solver<C, error_feedback, sgd> on minibatches of b samples
//   EC-L-SVRG  solver<C, error_feedback, ec_lsvrg>, minibatches of b, snapshot probability p
//   ECLK       solver<C, error_feedback, eclk>, the same b and p
// b is a tenth of a shard and p = b / shard (L-SVRG's choice). TopK and RandK
// keep k = d/10 coordinates (delta = 1/10); RandK is the unscaled contraction
// (rand_k_unscaled) with the indices shared by all ranks, so payloads add up.
// Data: d = 40 Gaussian features with scales 10^(-1.5 j / (d - 1)), N = 4000
// i.i.d. samples, labels of a random linear model with 10% flipped, l2 = 1e-5.
// f* comes from Newton's method on the whole data set.
//
// Step sizes, one rule for all: each method has one step knob, scanned over
// the same grid of multipliers c = 2^4 .. 2^-6, and the best c (fewest rounds
// to the target) is reported. For EC-GD, EC-SGD and EC-L-SVRG the step is
// c / L; for ECLK the parameters are eclk::from(L / c, mu, 1, p), i.e. the
// L-Katyusha parameters at the assumed smoothness L / c. The last row of each
// block is untuned: eclk::from(L, mu, delta, p), the delta-aware parameters.
// L is the smoothness of f (lambda_max(A A') / (4 N) + l2), mu = l2.
// A method that stops improving (no 10% gain in the later half of its run)
// or runs out of rounds shows the lowest gap it reached.
// Bits: payload bits per worker up to the target (mean over workers), with
// ECLK's dense snapshot allreduces (64 d bits each, probability p per round).
//
// What to expect: EC-SGD stalls at its constant-step noise floor. With TopK,
// EC-GD and EC-L-SVRG stall near 5e-6: each worker compresses its own
// gradient, which does not vanish at x* (the shards differ), while ECLK
// compresses only the difference of two sample gradients, which does. With
// shared-index RandK, compression commutes with the sum over workers and EC-GD
// converges, but needs a step about 1/delta times smaller than uncompressed.
// Several minutes on two cores (each configuration scans its step sizes).
//
// Usage: eclk_logistic [max_rounds [libsvm_file [l2]]]
//        (default 30000 rounds; a LIBSVM file, e.g. liblinear's heart_scale,
//        replaces the synthetic data, with l2 = 1e-3 unless given)
#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "ecopt/compensators/error_feedback.hpp"
#include "ecopt/compressors/rand_k.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/data/libsvm.hpp"
#include "ecopt/error.hpp"
#include "ecopt/optimizers/ec_lsvrg.hpp"
#include "ecopt/optimizers/eclk.hpp"
#include "ecopt/optimizers/sgd.hpp"
#include "ecopt/problems/full_batch.hpp"
#include "ecopt/problems/logistic_regression.hpp"
#include "ecopt/problems/shard.hpp"
#include "ecopt/solver.hpp"
#include "ecopt/transports/thread_transport.hpp"

namespace {

constexpr double target = 1e-6;

/// Features (d x N, a sample per column), -1/+1 labels, and the constants of
/// f(x) = 1/N sum_i log(1 + exp(-y_i a_i'x)) + l2/2 |x|^2.
struct dataset {
  std::string name;
  Eigen::MatrixXd a;
  Eigen::VectorXd y;
  double l2 = 0;
  double smoothness = 0;  ///< L of f: lambda_max(A A') / (4 N) + l2
  double f_star = 0;
  double f0 = 0;  ///< f(0)
};

/// Synthetic features: feature j of d has scale 10^(-decades j / (d - 1)), so
/// the data part of the Hessian has a condition number of about 10^(2 decades).
Eigen::MatrixXd synthetic_features(Eigen::Index d, Eigen::Index n, double decades,
                                   ecopt::counter_rng& rng) {
  Eigen::MatrixXd a(d, n);
  for (Eigen::Index i = 0; i < n; ++i) {
    for (Eigen::Index j = 0; j < d; ++j) {
      const double exponent = -decades * static_cast<double>(j) / static_cast<double>(d - 1);
      a(j, i) = rng.normal() * std::pow(10.0, exponent);
    }
  }
  return a;
}

void finish(dataset& data) {
  const auto n = static_cast<double>(data.a.cols());
  // lambda_max(A A' / N) by power iteration (the Gram matrix is positive semidefinite).
  const Eigen::MatrixXd gram = data.a * data.a.transpose() / n;
  Eigen::VectorXd v = Eigen::VectorXd::Ones(gram.rows());
  double lambda = 0;
  for (int it = 0; it < 1000; ++it) {
    const Eigen::VectorXd next = gram * v;
    const double estimate = next.norm() / v.norm();
    v = next / next.norm();
    if (std::abs(estimate - lambda) <= 1e-12 * estimate) break;
    lambda = estimate;
  }
  data.smoothness = lambda / 4 + data.l2;

  // f* by Newton's method with backtracking, on the whole data set.
  ecopt::logistic_regression<double> whole(data.a, data.y, {.l2 = data.l2});
  const Eigen::Index d = data.a.rows();
  Eigen::VectorXd x = Eigen::VectorXd::Zero(d), g(d), trial(d);
  Eigen::MatrixXd h(d, d);
  data.f0 = whole.loss(x);
  double f = data.f0;
  for (int it = 0; it < 100; ++it) {
    whole.gradient(x, g);
    if (g.norm() < 1e-13) break;
    whole.hessian(x, h);
    const Eigen::VectorXd step = h.ldlt().solve(g);
    // Backtracking while the Newton decrement is resolvable in the loss; near
    // the optimum the full step is taken (quadratic convergence).
    double t = 1;
    trial = x - step;
    while (g.dot(step) > 1e-12 && whole.loss(trial) > f - 1e-4 * t * g.dot(step) && t > 1e-10) {
      t /= 2;
      trial = x - t * step;
    }
    x = trial;
    f = whole.loss(x);
  }
  whole.gradient(x, g);
  if (g.norm() > 1e-10) throw ecopt::numeric_error("Newton's method did not converge for f*");
  data.f_star = f;
}

/// Labels from a random linear model with 10% of them flipped; the samples are
/// i.i.d., so contiguous shards are alike.
dataset synthetic(Eigen::Index d, Eigen::Index n, double decades, double l2, std::uint64_t seed) {
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
  dataset data;
  data.name = "synthetic";
  data.a = synthetic_features(d, n, decades, rng);
  Eigen::VectorXd truth(d);
  for (Eigen::Index j = 0; j < d; ++j) truth[j] = rng.normal();
  data.y.resize(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const double score = data.a.col(i).dot(truth);
    const bool flip = rng.uniform() < 0.1;
    data.y[i] = ((score >= 0) != flip) ? 1.0 : -1.0;
  }
  data.l2 = l2;
  finish(data);
  return data;
}

/// A LIBSVM file, truncated to a multiple of 8 samples so shards are equal.
dataset from_libsvm(const std::string& path, double l2) {
  const auto file = ecopt::read_libsvm<double>(path);
  dataset data;
  data.name = path;
  const Eigen::Index n = static_cast<Eigen::Index>(file.labels.size()) / 8 * 8;
  data.a = file.features.leftCols(n);
  data.y = file.labels.head(n);
  data.l2 = l2;
  finish(data);
  return data;
}

/// Rounds and bits to the target, if reached; else the smallest gap seen.
struct outcome {
  std::optional<std::uint64_t> rounds;
  double bits = 0;  ///< payload bits per worker up to the target (mean over workers)
  double multiplier = 0;
  double best_gap = std::numeric_limits<double>::infinity();
};

/// Stops at the target, on divergence, or when the gap has not improved by 10%
/// over the later half of the run, and at least 5000 rounds (a constant-step
/// EC-SGD floor).
struct relative_target {
  const dataset* data;
  double best = std::numeric_limits<double>::infinity();
  std::uint64_t improved_at = 0;

  ecopt::observer_action on_eval(const ecopt::progress& p) {
    const double gap = (p.loss - data->f_star) / (data->f0 - data->f_star);
    if (gap < 0.9 * best) {
      best = gap;
      improved_at = p.step;
    }
    const bool done = gap <= target || !std::isfinite(gap) || gap > 1e3 ||
                      p.step - improved_at > std::max<std::uint64_t>(5000, improved_at);
    return done ? ecopt::observer_action::stop : ecopt::observer_action::proceed;
  }
};

enum class gradients { full, minibatch };

template <class C, class O>
outcome run(const dataset& data, int world, const C& compressor, const O& optimizer, gradients kind,
            std::size_t batch, std::uint64_t budget, std::uint64_t eval_every) {
  const ecopt::solver solver{compressor, ecopt::error_feedback{}, optimizer};
  std::vector<ecopt::run_report> reports;
  try {
    reports = ecopt::run_threads(world, [&](ecopt::thread_transport& t) {
      const auto columns = ecopt::shard_columns(data.a, t.rank(), t.size());
      const auto labels = ecopt::shard_segment(data.y, t.rank(), t.size());
      ecopt::logistic_regression<double> problem(columns, labels,
                                                 {.l2 = data.l2, .batch_size = batch});
      Eigen::VectorXd x = Eigen::VectorXd::Zero(data.a.rows());
      const ecopt::run_options options{.steps = budget, .seed = 5, .eval_every = eval_every};
      if (kind == gradients::full) {
        ecopt::full_batch full(problem);
        return solver.run(t, full, x, options, relative_target{&data});
      }
      return solver.run(t, problem, x, options, relative_target{&data});
    });
  } catch (const ecopt::numeric_error&) {
    return {};  // diverged
  }
  outcome o;
  const auto& history = reports[0].history;
  for (std::size_t e = 0; e < history.size(); ++e) {
    const double gap = (history[e].loss - data.f_star) / (data.f0 - data.f_star);
    if (std::isfinite(gap)) o.best_gap = std::min(o.best_gap, gap);
    if (gap <= target) {
      o.rounds = history[e].step;
      for (const auto& r : reports) o.bits += static_cast<double>(r.history[e].payload_bits);
      o.bits /= static_cast<double>(reports.size());
      break;
    }
  }
  return o;
}

/// The best outcome over the multipliers c = 2^4, 2^3, ..., 2^-6 of one
/// method's step knob; make(c) builds the optimizer. The scan evaluates every
/// 10 rounds and ends once it is past the best c (rounds to the target, or
/// else the lowest gap reached, are unimodal in c); the best c is then rerun
/// with an evaluation every round for the exact count.
template <class C, class Make>
outcome tuned(const dataset& data, int world, const C& compressor, Make make, gradients kind,
              std::size_t batch, std::uint64_t budget) {
  outcome best;
  double floor = std::numeric_limits<double>::infinity();
  for (int e = 4; e >= -6; --e) {
    const double c = std::ldexp(1.0, e);
    const std::uint64_t limit = best.rounds ? *best.rounds : budget;
    const outcome o = run(data, world, compressor, make(c), kind, batch, limit, 10);
    if (o.rounds && (!best.rounds || *o.rounds < *best.rounds)) {
      best = o;
      best.multiplier = c;
    } else if (best.rounds || (floor < 0.5 && o.best_gap > 2 * floor)) {
      break;  // past the best c: fewer rounds, or a lower gap, came before
    }
    floor = std::min(floor, o.best_gap);
  }
  if (!best.rounds) {
    best.best_gap = floor;
    return best;
  }
  outcome exact = run(data, world, compressor, make(best.multiplier), kind, batch, *best.rounds, 1);
  exact.multiplier = best.multiplier;
  return exact;
}

/// Rounds to the target, or the smallest gap reached (before the budget ran
/// out or the gap stalled).
std::string rounds_cell(const outcome& o) {
  if (o.rounds) return std::to_string(*o.rounds);
  char buf[64];
  std::snprintf(buf, sizeof buf, "not reached (best %.1e)", o.best_gap);
  return buf;
}

std::string bits_cell(const outcome& o) {
  if (!o.rounds) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", o.bits);
  return buf;
}

std::string multiplier_cell(const outcome& o) {
  if (!o.rounds) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "2^%d", static_cast<int>(std::lround(std::log2(o.multiplier))));
  return buf;
}

constexpr const char* untuned = "untuned";

template <class C>
void rows(const dataset& data, int world, const char* compressor_name, const C& compressor,
          double delta, std::uint64_t budget) {
  const auto local = static_cast<std::size_t>(data.a.cols()) / static_cast<std::size_t>(world);
  const std::size_t batch = std::max<std::size_t>(1, local / 10);
  const double p = static_cast<double>(batch) / static_cast<double>(local);
  const double l = data.smoothness;
  const double mu = data.l2;
  auto print = [&](const char* method, const outcome& o, const char* step = nullptr) {
    std::printf("| %d | %s | %s | %s | %s | %s |\n", world, compressor_name, method,
                rounds_cell(o).c_str(), bits_cell(o).c_str(),
                step != nullptr ? step : multiplier_cell(o).c_str());
    std::fflush(stdout);
  };
  print("EC-GD", tuned(
                     data, world, compressor, [&](double c) { return ecopt::sgd{.lr = c / l}; },
                     gradients::full, batch, budget));
  print("EC-SGD", tuned(
                      data, world, compressor, [&](double c) { return ecopt::sgd{.lr = c / l}; },
                      gradients::minibatch, batch, budget));
  print("EC-L-SVRG",
        tuned(
            data, world, compressor,
            [&](double c) { return ecopt::ec_lsvrg{.lr = c / l, .p = p, .batch_size = batch}; },
            gradients::minibatch, batch, budget));
  print("ECLK", tuned(
                    data, world, compressor,
                    [&](double c) { return ecopt::eclk::from(l / c, mu, 1.0, p, batch); },
                    gradients::minibatch, batch, budget));
  print("ECLK, from(L, mu, delta, p)",
        run(data, world, compressor, ecopt::eclk::from(l, mu, delta, p, batch),
            gradients::minibatch, batch, budget, 1),
        untuned);
}

}  // namespace

int main(int argc, char** argv) try {
  std::uint64_t budget = 30000;
  std::string libsvm_file;
  double libsvm_l2 = 1e-3;
  ecopt_examples::command_line cli(
      "eclk_logistic", "ECLK against EC-GD, EC-SGD and EC-L-SVRG on l2-logistic regression (R3)");
  cli.option("--max-rounds", budget, "round budget of each method (>= 10)")
      .option("--libsvm", libsvm_file, "a LIBSVM file instead of the synthetic data")
      .option("--l2", libsvm_l2, "l2 coefficient for the LIBSVM data (> 0)");
  if (!cli.parse(argc, argv)) return 0;
  if (budget < 10) throw ecopt::invalid_argument("--max-rounds must be at least 10");
  if (!(libsvm_l2 > 0)) throw ecopt::invalid_argument("--l2 must be > 0");
  const dataset data = !libsvm_file.empty() ? from_libsvm(libsvm_file.c_str(), libsvm_l2)
                                            : synthetic(40, 4000, 1.5, 1e-5, 3);
  const auto d = static_cast<std::size_t>(data.a.rows());
  const std::size_t k = std::max<std::size_t>(1, d / 10);
  const double delta = static_cast<double>(k) / static_cast<double>(d);
  std::printf("%s: d = %zu, N = %lld, l2 = mu = %.3g, L = %.4g, kappa = L/mu = %.3g, f* = %.10f\n",
              data.name.c_str(), d, static_cast<long long>(data.a.cols()), data.l2, data.smoothness,
              data.smoothness / data.l2, data.f_star);
  std::printf(
      "target (f - f*) / (f0 - f*) <= %.0e; k = %zu of d (delta = %.3g); minibatch b = shard/10, "
      "p = b / shard; step multiplier c tuned over 2^4..2^-6\n\n",
      target, k, delta);
  std::printf("| workers | compressor | method | rounds | bits/worker | best c |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const int world : {4, 8}) {
    rows(data, world, "top_k", ecopt::top_k{.k = k}, delta, budget);
    rows(data, world, "rand_k", ecopt::rand_k_unscaled{.k = k}, delta, budget);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "eclk_logistic: %s\n", e.what());
  return 2;
}
