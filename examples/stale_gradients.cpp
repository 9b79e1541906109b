// Reproduction 5: compressed gradient descent with bounded delays (Khirirat,
// Feyzmahdavian, Johansson, "Distributed learning with compressed gradients",
// 2018, arXiv:1806.06573):
//
//   x_{k+1} = x_k - gamma Q(grad f(x_{k - tau_k})),   0 <= tau_k <= tau,
//
// on least squares with a prescribed spectrum (d = 50, condition number 100),
// with full gradients, and one worker whose gradients reach the server tau_k
// rounds late (ecopt::delayed_gradients). For each compressor and tau in
// {0, 1, 4, 16}: the iterations and payload bits until
// f(x_k) - f* <= 1e-6 (f(x_0) - f*), with the step size of the rule below.
//
// The step-size rule (include/ecopt/optimizers/delayed_step_size.hpp, where it
// is derived; the paper's theorem statements could not be re-read, only its
// abstract: explicit step sizes through which the delay bound and the
// compression accuracy set the iteration count):
//   unbiased Q with omega:    gamma = 1 / (2 L (1 + omega)(1 + tau)),
//   contractive C with delta: gamma = 1 / (5 L (1 + tau)),
// guaranteeing E[f(x_k) - f*] <= rho^k (f(x_0) - f*) with
// rho = 1 - mu / (2 L (1 + omega)(1 + tau)), resp. 1 - delta mu / (10 L (1 + tau)):
// iterations linear in (1 + omega)(1 + tau) kappa, resp. (1 + tau) kappa / delta.
//
// Table 3 shows the delay must enter the step: with a fixed delay tau, each
// eigen-component of the error obeys z_{k+1} = z_k - gamma lambda z_{k-tau}, stable
// exactly when gamma lambda < 2 sin(pi / (4 tau + 2)) (the delay-difference
// equation of Levin and May, 1976), so the largest stable step shrinks like 1/tau.
//
// Usage: stale_gradients [target_gap [condition]]   (defaults 1e-6, 100)
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <numbers>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "ecopt/ecopt.hpp"
#include "ecopt/optimizers/delayed_step_size.hpp"
#include "ecopt/parameter_server.hpp"
#include "ecopt/problems/conditioned_least_squares.hpp"
#include "ecopt/problems/delayed.hpp"
#include "ecopt/straggler_model.hpp"
#include "ecopt/transports/simulated_transport.hpp"

namespace {

constexpr std::size_t taus[] = {0, 1, 4, 16};

/// The compressor's class and constant: omega (unbiased) or delta (contractive).
struct compression_constant {
  bool unbiased = true;
  double value = 0;  ///< omega or delta
};

template <class C>
compression_constant constant_of(const C& c, std::size_t d) {
  if constexpr (ecopt::UnbiasedCompressor<C>) {
    return {true, c.omega(d)};
  } else {
    static_assert(ecopt::ContractiveCompressor<C>, "the rule needs omega or delta");
    return {false, c.delta(d)};
  }
}

/// The rule's step and guaranteed rate for this compressor.
ecopt::delayed_step_rule rule_for(const compression_constant& q, double l, double mu,
                                  std::size_t tau) {
  return q.unbiased ? ecopt::unbiased_delayed_step(l, mu, tau, q.value)
                    : ecopt::contractive_delayed_step(l, mu, tau, q.value);
}

/// Stops at the target, or when the loss has grown far beyond its start (divergence).
struct reach_or_diverge {
  double target = 0;
  double ceiling = 0;
  ecopt::observer_action on_eval(const ecopt::progress& p) const noexcept {
    return p.loss <= target || !(p.loss < ceiling) ? ecopt::observer_action::stop
                                                   : ecopt::observer_action::proceed;
  }
};

struct outcome {
  bool reached = false;
  std::uint64_t iterations = 0;
  std::uint64_t payload_bits = 0;
};

struct instance {
  ecopt::conditioned_least_squares data;
  double f_star = 0;
  double initial_gap = 0;  ///< f(x_0) - f*, with x_0 = 0
};

template <class Compressor, class Delay>
outcome run(const instance& s, const Compressor& compressor, const Delay& delay, double gamma,
            double target_gap, std::uint64_t max_steps) {
  const ecopt::solver solver{compressor, ecopt::no_compensation{}, ecopt::sgd{.lr = gamma}};
  return ecopt::run_threads(1, [&](ecopt::thread_transport& t) {
    ecopt::delayed_gradients problem(ecopt::quadratic<double>(s.data.hessian, s.data.linear_term),
                                     delay);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(s.data.linear_term.size());
    const reach_or_diverge stop{.target = s.f_star + target_gap * s.initial_gap,
                                .ceiling = s.f_star + 1e4 * s.initial_gap};
    const auto report =
        solver.run(t, problem, x, {.steps = max_steps, .seed = 1, .eval_every = 1}, stop);
    return outcome{report.final_loss() <= stop.target, report.steps, report.payload_bits};
  })[0];
}

std::string cell(const outcome& o) {
  return o.reached ? std::to_string(o.iterations) : std::string("not reached");
}

/// The slope of log y against log x by least squares.
double log_log_slope(const std::vector<double>& x, const std::vector<double>& y) {
  const auto n = static_cast<double>(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double lx = std::log(x[i]), ly = std::log(y[i]);
    sx += lx;
    sy += ly;
    sxx += lx * lx;
    sxy += lx * ly;
  }
  return (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

struct compressor_row {
  std::string label;
  compression_constant constant;
  std::vector<double> iterations;  ///< uniform delays, per tau (0 when not reached)
  std::vector<double> megabits;    ///< payload to the target, uniform delays, per tau
};

template <class Compressor>
compressor_row table_rows(const instance& s, const char* label, const Compressor& compressor,
                          double target_gap) {
  const compression_constant q = constant_of(compressor, s.data.dim());
  compressor_row row{label, q, {}, {}};
  for (const std::size_t tau : taus) {
    const ecopt::delayed_step_rule rule = rule_for(q, s.data.l, s.data.mu, tau);
    const std::uint64_t bound = rule.iterations(target_gap);
    const std::uint64_t cap = 4 * bound;
    const outcome uniform =
        run(s, compressor, ecopt::uniform_delay{.tau = tau, .seed = 2}, rule.step, target_gap, cap);
    const outcome fixed =
        tau == 0 ? uniform
                 : run(s, compressor, ecopt::fixed_delay{.tau = tau}, rule.step, target_gap, cap);
    const outcome undelayed =
        tau == 0 ? uniform
                 : run(s, compressor, ecopt::fixed_delay{.tau = 0}, rule.step, target_gap, cap);
    const double megabits = static_cast<double>(uniform.payload_bits) * 1e-6;
    const double bits_per_message =
        uniform.iterations > 0
            ? static_cast<double>(uniform.payload_bits) / static_cast<double>(uniform.iterations)
            : 0.0;
    std::printf("| %s | %s = %.3g | %.0f | %zu | %.4f | %llu | %s | %s | %s | %.3f |\n", label,
                q.unbiased ? "omega" : "delta", q.value, bits_per_message, tau,
                rule.step * s.data.l, static_cast<unsigned long long>(bound), cell(uniform).c_str(),
                cell(fixed).c_str(), cell(undelayed).c_str(), megabits);
    row.iterations.push_back(uniform.reached ? static_cast<double>(uniform.iterations) : 0.0);
    row.megabits.push_back(uniform.reached ? megabits : 0.0);
  }
  return row;
}

bool all_reached(const compressor_row& r) {
  return std::all_of(r.iterations.begin(), r.iterations.end(), [](double v) { return v > 0; });
}

struct slopes {
  double tau = 0;    ///< mean over the compressors of the slope against 1 + tau
  double omega = 0;  ///< mean over tau of the slope against 1 + omega
};

/// Table 2: how the iterations scale with 1 + tau and with 1 + omega.
slopes print_trend(const std::vector<compressor_row>& rows) {
  slopes mean;
  int tau_count = 0;
  std::vector<double> one_plus_tau;
  for (const std::size_t tau : taus) one_plus_tau.push_back(1.0 + static_cast<double>(tau));
  std::printf(
      "\nTable 2: log-log slopes of the iterations (uniform delays) against 1 + tau, per "
      "compressor, and against 1 + omega, across the unbiased compressors, per tau (1 = "
      "linear)\n\n");
  std::printf("| compressor | slope vs 1 + tau | iterations tau = 16 / tau = 0 |\n|---|---|---|\n");
  for (const auto& r : rows) {
    if (all_reached(r)) {
      const double slope = log_log_slope(one_plus_tau, r.iterations);
      mean.tau += slope;
      ++tau_count;
      std::printf("| %s | %.2f | %.1f |\n", r.label.c_str(), slope,
                  r.iterations.back() / r.iterations[0]);
    } else {
      std::printf("| %s | (a run did not reach the target) | |\n", r.label.c_str());
    }
  }
  std::printf("\n| tau | slope vs 1 + omega (unbiased) |\n|---|---|\n");
  for (std::size_t i = 0; i < std::size(taus); ++i) {
    std::vector<double> x, y;
    for (const auto& r : rows) {
      if (r.constant.unbiased && r.iterations[i] > 0) {
        x.push_back(1.0 + r.constant.value);
        y.push_back(r.iterations[i]);
      }
    }
    const double slope = log_log_slope(x, y);
    mean.omega += slope / static_cast<double>(std::size(taus));
    std::printf("| %zu | %.2f |\n", taus[i], slope);
  }
  mean.tau /= std::max(tau_count, 1);
  return mean;
}

/// Table 3: the delay must enter the step (dense gradients, fixed delays).
/// Returns the iterations at 0.9 times the stability limit, per tau.
std::vector<outcome> print_stability(const instance& s, double target_gap) {
  std::vector<outcome> near_limit;
  std::printf(
      "\nTable 3: dense gradients, fixed delay tau: iterations with the rule's step, with the "
      "tau = 0 rule step 1/(2L), and at 0.9 and 1.1 times the stability limit gamma_max L = "
      "2 sin(pi / (4 tau + 2))\n\n");
  std::printf(
      "| tau | rule gamma L | gamma_max L | rule step | tau = 0 step | 0.9 gamma_max | 1.1 "
      "gamma_max |\n|---|---|---|---|---|---|---|\n");
  const double l = s.data.l;
  const ecopt::no_compression none{};
  for (const std::size_t tau : taus) {
    const double limit = 2.0 * std::sin(std::numbers::pi / (4.0 * static_cast<double>(tau) + 2.0));
    const ecopt::delayed_step_rule rule = ecopt::unbiased_delayed_step(l, s.data.mu, tau, 0.0);
    const ecopt::delayed_step_rule first = ecopt::unbiased_delayed_step(l, s.data.mu, 0, 0.0);
    const std::uint64_t cap = 4 * rule.iterations(target_gap);
    const ecopt::fixed_delay delay{.tau = tau};
    near_limit.push_back(run(s, none, delay, 0.9 * limit / l, target_gap, cap));
    std::printf("| %zu | %.4f | %.4f | %s | %s | %s | %s |\n", tau, rule.step * l, limit,
                cell(run(s, none, delay, rule.step, target_gap, cap)).c_str(),
                cell(run(s, none, delay, first.step, target_gap, cap)).c_str(),
                cell(near_limit.back()).c_str(),
                cell(run(s, none, delay, 1.1 * limit / l, target_gap, cap)).c_str());
  }
  return near_limit;
}

/// One asynchronous run on a parameter server with `workers` workers, each
/// computing the full gradient in modelled time base x (1 + Exp(0.3)).
struct async_outcome {
  outcome result;
  std::uint64_t max_staleness = 0;
  double mean_staleness = 0;
};

async_outcome run_async(const instance& s, int workers, double gamma, std::uint64_t bound,
                        double target_gap, std::uint64_t max_steps) {
  const ecopt::straggler_model compute{
      .base_seconds = 1e-3, .tail_kind = ecopt::compute_tail::exponential, .tail = 0.3, .seed = 4};
  const ecopt::parameter_server server{
      ecopt::no_compression{}, ecopt::no_compensation{}, ecopt::sgd{.lr = gamma},
      ecopt::async_sgd{.max_staleness = bound, .step_rule = ecopt::delay_rule::blind}};
  const reach_or_diverge stop{.target = s.f_star + target_gap * s.initial_gap,
                              .ceiling = s.f_star + 1e4 * s.initial_gap};
  try {
    return ecopt::run_threads(workers + 1, [&](ecopt::thread_transport& t) {
      ecopt::simulated_transport sim(t, ecopt::network_model::uniform(0, 1e300));
      ecopt::quadratic<double> problem(s.data.hessian, s.data.linear_term);
      ecopt::with_compute_time timed(problem, compute, std::max(t.rank() - 1, 0),
                                     ecopt::modelled_compute{&sim});
      Eigen::VectorXd x = Eigen::VectorXd::Zero(s.data.linear_term.size());
      const ecopt::run_options options{.steps = max_steps, .seed = 1, .eval_every = 1};
      const auto report = t.rank() == 0 ? server.run(sim, problem, x, options, stop)
                                        : server.run(sim, timed, x, options);
      async_outcome out;
      out.result = {report.final_loss() <= stop.target, report.steps, 0};
      const auto& h = report.counts.staleness;
      std::uint64_t n = 0;
      for (std::size_t tau = 0; tau < h.size(); ++tau) {
        if (h[tau] > 0) out.max_staleness = tau;
        out.mean_staleness += static_cast<double>(tau * h[tau]);
        n += h[tau];
      }
      out.mean_staleness /= static_cast<double>(std::max<std::uint64_t>(n, 1));
      return out;
    })[0];
  } catch (const ecopt::numeric_error&) {
    return {};  // diverged until a gradient overflowed
  }
}

/// Table 4: real asynchrony. Workers' delays are measured, and the rule's
/// step for the measured bound keeps the iterations linear in it.
std::vector<double> print_async(const instance& s, double target_gap,
                                std::vector<double>& taus_seen) {
  std::printf(
      "\nTable 4: asynchronous SGD on a parameter server (parameter_server + async_sgd), W "
      "workers with full gradients in modelled time 1 ms x (1 + Exp(0.3)): staleness measured "
      "(a first run with a loose bound), then the rule's dense step for the measured bound tau "
      "(no update is dropped: the arrival pattern does not depend on the step), and the tau = 0 "
      "step 1/(2L) applied blind to the delays\n\n");
  std::printf(
      "| W | mean tau | max tau | rule gamma L | rule step | tau = 0 step, blind "
      "|\n|---|---|---|---|---|---|\n");
  std::vector<double> iterations;
  const double l = s.data.l;
  for (const int workers : {1, 2, 4, 8, 16}) {
    const ecopt::delayed_step_rule first = ecopt::unbiased_delayed_step(l, s.data.mu, 0, 0.0);
    const async_outcome probe =
        run_async(s, workers, first.step / (16.0 * workers), 1u << 20, target_gap, 400);
    const std::uint64_t tau = probe.max_staleness;
    const ecopt::delayed_step_rule rule = ecopt::unbiased_delayed_step(l, s.data.mu, tau, 0.0);
    const std::uint64_t cap = 4 * rule.iterations(target_gap);
    const async_outcome ruled = run_async(s, workers, rule.step, tau, target_gap, cap);
    const async_outcome blind = run_async(s, workers, first.step, 1u << 20, target_gap, cap);
    std::printf("| %d | %.2f | %llu | %.4f | %s | %s |\n", workers, ruled.mean_staleness,
                static_cast<unsigned long long>(ruled.max_staleness), rule.step * l,
                cell(ruled.result).c_str(), cell(blind.result).c_str());
    if (ruled.result.reached) {
      iterations.push_back(static_cast<double>(ruled.result.iterations));
      taus_seen.push_back(1.0 + static_cast<double>(ruled.max_staleness));
    }
  }
  return iterations;
}

}  // namespace

int main(int argc, char** argv) try {
  double target_gap = 1e-6;
  double condition = 100.0;
  ecopt_examples::command_line cli(
      "stale_gradients", "compressed gradients with bounded delays and the delay-aware step (R5)");
  cli.option("--target-gap", target_gap, "relative suboptimality to reach, in (0, 1)")
      .option("--condition", condition, "condition number of the quadratic, in [1, 1e4]");
  if (!cli.parse(argc, argv)) return 0;
  if (!(target_gap > 0 && target_gap < 1) || !(condition >= 1 && condition <= 1e4)) {
    std::fprintf(stderr, "stale_gradients: --target-gap in (0, 1), --condition in [1, 1e4]\n");
    return 2;
  }
  constexpr std::size_t d = 50;
  instance s{ecopt::make_conditioned_least_squares(ecopt::log_spaced_spectrum(d, condition),
                                                   {.samples = 4 * d, .rotate = true, .seed = 5}),
             0, 0};
  s.f_star = ecopt::quadratic<double>(s.data.hessian, s.data.linear_term).loss(s.data.optimum);
  s.initial_gap = 0.0 - s.f_star;  // f(0) = 0 in the normal form 1/2 x'Hx - b'x

  std::printf(
      "Compressed gradient descent with bounded delays (Khirirat, Feyzmahdavian, Johansson "
      "2018, arXiv:1806.06573)\n");
  std::printf(
      "least squares, d = %zu, m = %zu, L = %.4g, mu = %.4g, kappa = %.4g, x_0 = 0, full "
      "gradients, one worker; target f(x_k) - f* <= %.0e (f(x_0) - f*)\n",
      d, s.data.samples(), s.data.l, s.data.mu, s.data.condition(), target_gap);
  std::printf(
      "step-size rule (derived in optimizers/delayed_step_size.hpp): unbiased gamma = 1 / (2 L "
      "(1 + omega)(1 + tau)), contractive gamma = 1 / (5 L (1 + tau))\n\n");
  std::printf(
      "Table 1: iterations to the target with the rule's step. uniform: tau_k uniform on "
      "{0..tau}; fixed: tau_k = tau; no delay: tau_k = 0 at the same step; bound: the rule's "
      "guaranteed iterations (in expectation); Mbit: payload to the target, uniform delays\n\n");
  std::printf(
      "| compressor | constant | bits/msg | tau | gamma L | bound | uniform | fixed | no delay | "
      "Mbit |\n|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<compressor_row> rows;
  rows.push_back(table_rows(s, "dense", ecopt::no_compression{}, target_gap));
  rows.push_back(table_rows(s, "rand_k k=25", ecopt::rand_k{.k = 25}, target_gap));
  rows.push_back(table_rows(s, "rand_k k=10", ecopt::rand_k{.k = 10}, target_gap));
  rows.push_back(table_rows(s, "rand_k k=5", ecopt::rand_k{.k = 5}, target_gap));
  rows.push_back(table_rows(s, "qsgd s=4", ecopt::qsgd{.levels = 4}, target_gap));
  rows.push_back(table_rows(s, "qsgd s=1", ecopt::qsgd{.levels = 1}, target_gap));
  rows.push_back(table_rows(s, "top_k k=5", ecopt::top_k{.k = 5}, target_gap));
  rows.push_back(table_rows(s, "scaled_sign", ecopt::scaled_sign{}, target_gap));

  const slopes trend = print_trend(rows);
  const std::vector<outcome> near_limit = print_stability(s, target_gap);

  std::vector<double> one_plus_tau;
  const std::vector<double> async_iterations = print_async(s, target_gap, one_plus_tau);
  if (async_iterations.size() >= 2) {
    std::printf(
        "\nAsynchronous SGD: iterations ~ (1 + measured max tau)^%.2f with the rule's step for "
        "the measured bound\n",
        log_log_slope(one_plus_tau, async_iterations));
  }

  // The summary line, from the numbers above.
  const auto& dense = rows[0];
  const compressor_row* fewest_bits = &dense;
  for (const auto& r : rows) {
    if (r.megabits[0] > 0 && r.megabits[0] < fewest_bits->megabits[0]) fewest_bits = &r;
  }
  std::printf(
      "\nTrend: with the rule's step, iterations ~ (1 + tau)^%.2f (1 + omega)^%.2f: linear in "
      "the delay bound and in the variance factor (dense x%.1f from tau = 0 to 16; rand_k k=5 "
      "x%.1f dense at tau = 0). At that step the delays themselves cost little (uniform ~ fixed "
      "~ no delay), yet the step must shrink with tau: the tau = 0 step 1/(2L) is above the "
      "stability limit for every fixed delay tau >= 3, and even at 0.9 of the largest stable step "
      "the iterations grow x%.1f from tau = 0 "
      "to 16 (Table 3). Fewest bits to the target at tau = 0: %s (%.3f Mbit vs %.3f dense); "
      "rand_k saves none (its 1 + omega = d/k cancels the shorter message).\n",
      trend.tau, trend.omega, dense.iterations[3] / dense.iterations[0],
      rows[3].iterations[0] / dense.iterations[0],
      near_limit.back().reached && near_limit.front().reached
          ? static_cast<double>(near_limit.back().iterations) /
                static_cast<double>(near_limit.front().iterations)
          : 0.0,
      fewest_bits->label.c_str(), fewest_bits->megabits[0], dense.megabits[0]);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "stale_gradients: %s\n", e.what());
  return 2;
}
