// Minibatch SGD, local SGD and accelerated minibatch SGD (AC-SA) at equal
// communication and equal samples, on data of controlled heterogeneity
// (Woodworth, Patel, Srebro 2020, "Minibatch vs Local SGD for Heterogeneous
// Distributed Learning", arXiv:2002.07839; set-up in the shared notes,
// papers.md 15.4, from the derivative code's MNIST construction, applied to
// Fashion-MNIST):
//   - 25 workers, one per pair (even class e, odd class o); the label is
//     "even class" (+1) or "odd class" (-1); features: the training images
//     projected on their 100 principal components (Eigen's self-adjoint
//     eigensolver on the 784 x 784 covariance), scaled to mean squared norm 1;
//   - each worker holds 1,000 samples: a fraction 1 - p from its own pair, p
//     drawn from all the training data (p = 1 homogeneous, p = 0 most
//     heterogeneous); l2-logistic loss (l2 = 1e-6), F* by Newton's method;
//   - R rounds of one model average each, K samples per worker per round:
//     minibatch SGD (K samples at the same point, batch K), local SGD (K steps
//     of batch 1, local_sgd{.period = K}), AC-SA (accelerated_sgd, batch K);
//     each cell's step size is the best of a log-spaced grid.
// Printed: F(x) - F* per (K, R, p) and method, the heterogeneity
// zeta^2 = (1/M) sum_m |grad F_m(x*)|^2 per p, and the paper's claims as
// checks: minibatch SGD varies little with p (< 1.5x); local SGD beats
// minibatch SGD at p = 1 for K >= 25 (<= 0.8x) and loses at p = 0 for K >= 25,
// R <= 25 (>= 1.5x); AC-SA is at least as good as minibatch SGD at p = 0, R <= 25.
//
//   woodworth_comparison [--data DIR] [--samples N] [--grid N] [--seed N]
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "ecopt/ecopt.hpp"
#include "fashion_mnist_data.hpp"

namespace {

struct settings {
  std::filesystem::path data = ecopt_examples::fashion_mnist_default_dir;
  std::size_t samples = 1000;  // per worker
  int grid = 8;                // step sizes per cell
  std::uint64_t seed = 1;
};

bool parse(int argc, char** argv, settings& s) {
  ecopt_examples::command_line cli(
      "woodworth_comparison",
      "minibatch vs local vs accelerated minibatch SGD under controlled heterogeneity "
      "(Fashion-MNIST, 25 workers)");
  cli.option("--data", s.data, "directory of the Fashion-MNIST IDX files")
      .option("--samples", s.samples, "samples per worker")
      .option("--grid", s.grid, "step sizes tried per cell (log-spaced)")
      .option("--seed", s.seed, "seed of the data split and the sampling");
  return cli.parse(argc, argv);
}

constexpr int workers = 25;
constexpr Eigen::Index features = 100;
constexpr double l2 = 1e-6;

/// The training images projected on their top principal components, scaled
/// to mean squared norm 1 (d x m), and the even/odd labels.
struct projected {
  Eigen::MatrixXd a;
  Eigen::VectorXi classes;
};

projected project(const ecopt_examples::fashion_mnist_data& data) {
  const Eigen::MatrixXd x = data.train_images.cast<double>();
  const Eigen::VectorXd mean = x.rowwise().mean();
  const Eigen::MatrixXd centred = x.colwise() - mean;
  const Eigen::MatrixXd covariance = centred * centred.transpose() / double(x.cols());
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(covariance);
  // Eigenvalues ascend: the last columns are the top components.
  const Eigen::MatrixXd basis = eig.eigenvectors().rightCols(features);
  projected out{basis.transpose() * centred, data.train_labels};
  const double scale = std::sqrt(double(out.a.cols()) / out.a.colwise().squaredNorm().sum());
  out.a *= scale;
  return out;
}

/// One worker's data: samples as columns, labels +-1.
struct shard_data {
  Eigen::MatrixXd a;
  Eigen::VectorXd y;
};

/// Worker w holds pair (2 (w / 5), 2 (w % 5) + 1); a fraction 1 - p of its
/// samples from its pair (half of each class, disjoint between the workers
/// that share a class), p from all the data.
std::vector<shard_data> split(const projected& data, double p, std::size_t n, std::uint64_t seed) {
  std::vector<std::vector<Eigen::Index>> by_class(10);
  for (Eigen::Index i = 0; i < data.classes.size(); ++i) by_class[data.classes[i]].push_back(i);
  auto rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 0, 0);
  for (auto& members : by_class) {
    for (std::size_t i = members.size(); i > 1; --i)
      std::swap(members[i - 1], members[rng.below(i)]);
  }
  std::vector<std::size_t> used(10, 0);
  std::vector<shard_data> shards;
  const auto own = static_cast<std::size_t>(std::lround((1 - p) * double(n)));
  for (int w = 0; w < workers; ++w) {
    const int even = 2 * (w / 5);
    const int odd = 2 * (w % 5) + 1;
    shard_data s{Eigen::MatrixXd(features, static_cast<Eigen::Index>(n)),
                 Eigen::VectorXd(static_cast<Eigen::Index>(n))};
    auto pool_rng = ecopt::counter_rng::stream(seed, ecopt::stream_purpose::test, 1,
                                               static_cast<std::uint64_t>(w));
    for (std::size_t k = 0; k < n; ++k) {
      Eigen::Index i = 0;
      if (k < own) {
        const int c = k % 2 == 0 ? even : odd;
        i = by_class[c][used[c]++ % by_class[c].size()];
      } else {
        i = static_cast<Eigen::Index>(pool_rng.below(static_cast<std::uint64_t>(data.a.cols())));
      }
      s.a.col(static_cast<Eigen::Index>(k)) = data.a.col(i);
      s.y[static_cast<Eigen::Index>(k)] = data.classes[i] % 2 == 0 ? 1.0 : -1.0;
    }
    shards.push_back(std::move(s));
  }
  return shards;
}

/// F = mean of the workers' l2-logistic losses (equal sample counts: the
/// logistic loss of the union), its minimizer by Newton's method, and the
/// heterogeneity at it.
struct optimum {
  Eigen::VectorXd x;
  double value = 0;
  double zeta2 = 0;
};

optimum solve(const std::vector<shard_data>& shards) {
  auto evaluate = [&](const Eigen::VectorXd& x, Eigen::VectorXd* g, Eigen::MatrixXd* h) {
    double f = 0;
    std::size_t m = 0;
    if (g != nullptr) g->setZero(features);
    if (h != nullptr) h->setZero(features, features);
    for (const auto& s : shards) {
      const Eigen::VectorXd margin = (s.a.transpose() * x).cwiseProduct(s.y);
      for (Eigen::Index i = 0; i < margin.size(); ++i) {
        const double u = -margin[i];
        f += u > 0 ? u + std::log1p(std::exp(-u)) : std::log1p(std::exp(u));
        const double sig = 1 / (1 + std::exp(margin[i]));  // sigmoid(-margin)
        if (g != nullptr) *g -= sig * s.y[i] * s.a.col(i);
        if (h != nullptr) *h += sig * (1 - sig) * s.a.col(i) * s.a.col(i).transpose();
      }
      m += static_cast<std::size_t>(margin.size());
    }
    const double inv = 1.0 / double(m);
    if (g != nullptr) *g = *g * inv + l2 * x;
    if (h != nullptr) {
      *h *= inv;
      h->diagonal().array() += l2;
    }
    return f * inv + 0.5 * l2 * x.squaredNorm();
  };
  optimum out{Eigen::VectorXd::Zero(features)};
  Eigen::VectorXd g;
  Eigen::MatrixXd h;
  for (int it = 0; it < 50; ++it) {
    evaluate(out.x, &g, &h);
    if (g.norm() < 1e-12) break;
    const Eigen::VectorXd step = h.ldlt().solve(g);
    // Backtracking keeps Newton monotone from far away.
    double t = 1;
    const double f0 = evaluate(out.x, nullptr, nullptr);
    while (evaluate(out.x - t * step, nullptr, nullptr) > f0 - 0.25 * t * g.dot(step) && t > 1e-8) {
      t *= 0.5;
    }
    out.x -= t * step;
  }
  out.value = evaluate(out.x, nullptr, nullptr);
  for (const auto& s : shards) {
    Eigen::VectorXd gm = Eigen::VectorXd::Zero(features);
    const Eigen::VectorXd margin = (s.a.transpose() * out.x).cwiseProduct(s.y);
    for (Eigen::Index i = 0; i < margin.size(); ++i) {
      gm -= (1 / (1 + std::exp(margin[i]))) * s.y[i] * s.a.col(i);
    }
    gm = gm / double(margin.size()) + l2 * out.x;
    out.zeta2 += gm.squaredNorm() / workers;
  }
  return out;
}

/// F(x) - F* of one method's run, the best over the step-size grid.
template <class MakeSolver>
double best_gap(const std::vector<shard_data>& shards, const optimum& best, std::size_t batch,
                std::uint64_t steps, const std::vector<double>& grid, std::uint64_t seed,
                MakeSolver make) {
  double gap = std::numeric_limits<double>::infinity();
  for (const double lr : grid) {
    const auto solver = make(lr);
    const auto losses = ecopt::run_threads(workers, [&](ecopt::thread_transport& t) {
      const auto& s = shards[static_cast<std::size_t>(t.rank())];
      ecopt::logistic_regression<double> problem(s.a, s.y, {.l2 = l2, .batch_size = batch});
      Eigen::VectorXd x = Eigen::VectorXd::Zero(features);
      const auto report =
          solver.run(t, problem, x, {.steps = steps, .seed = seed, .check_finite = false});
      return report.final_loss();
    });
    if (std::isfinite(losses[0])) gap = std::min(gap, losses[0] - best.value);
  }
  return gap;
}

}  // namespace

int main(int argc, char** argv) try {
  settings s;
  if (!parse(argc, argv, s)) return EXIT_SUCCESS;
  const auto data = ecopt_examples::load_fashion_mnist(s.data);
  const projected pca = project(data);
  std::vector<double> grid;
  for (int i = 0; i < s.grid; ++i) {
    grid.push_back(std::pow(10.0, -2.0 + 3.0 * i / std::max(1, s.grid - 1)));  // 0.01 .. 10
  }
  const std::vector<double> ps{0.0, 0.5, 1.0};
  const std::vector<std::uint64_t> ks{1, 5, 25, 100};
  const std::vector<std::uint64_t> rs{10, 25, 50};
  std::printf(
      "Woodworth et al.: 25 workers, Fashion-MNIST even vs odd classes, PCA to %lld "
      "dimensions, %zu samples per worker, l2-logistic (l2 = %g), %d step sizes per cell\n\n",
      static_cast<long long>(features), s.samples, l2, s.grid);

  // gaps[p][k][r][method]
  double gaps[3][4][3][3];
  for (std::size_t pi = 0; pi < ps.size(); ++pi) {
    const auto shards = split(pca, ps[pi], s.samples, s.seed);
    const optimum best = solve(shards);
    std::printf("p = %.1f: F* = %.6f, zeta^2 = %.4g\n", ps[pi], best.value, best.zeta2);
    for (std::size_t ki = 0; ki < ks.size(); ++ki) {
      for (std::size_t ri = 0; ri < rs.size(); ++ri) {
        const std::uint64_t k = ks[ki];
        const std::uint64_t r = rs[ri];
        const ecopt::no_compression dense;
        const ecopt::no_compensation none;
        gaps[pi][ki][ri][0] = best_gap(shards, best, k, r, grid, s.seed, [&](double lr) {
          return ecopt::solver{dense, none, ecopt::sgd{.lr = lr}};
        });
        gaps[pi][ki][ri][1] = best_gap(shards, best, 1, r * k, grid, s.seed, [&](double lr) {
          return ecopt::solver{dense, none, ecopt::sgd{.lr = lr}, ecopt::local_sgd{.period = k}};
        });
        gaps[pi][ki][ri][2] = best_gap(shards, best, k, r, grid, s.seed, [&](double lr) {
          return ecopt::solver{dense, none, ecopt::accelerated_sgd{.lr = lr}};
        });
        std::fprintf(stderr, "\rp=%.1f K=%llu R=%llu done   ", ps[pi],
                     static_cast<unsigned long long>(k), static_cast<unsigned long long>(r));
      }
    }
  }
  std::fprintf(stderr, "\n");

  std::printf("\nF(x) - F* (best step size per cell): minibatch / local / accelerated minibatch\n");
  std::printf("%5s %4s", "K", "R");
  for (const double p : ps)
    std::printf("   %-33s", ("p = " + std::to_string(p).substr(0, 3)).c_str());
  std::printf("\n");
  for (std::size_t ki = 0; ki < ks.size(); ++ki) {
    for (std::size_t ri = 0; ri < rs.size(); ++ri) {
      std::printf("%5llu %4llu", static_cast<unsigned long long>(ks[ki]),
                  static_cast<unsigned long long>(rs[ri]));
      for (std::size_t pi = 0; pi < ps.size(); ++pi) {
        std::printf("   %9.3g %9.3g %9.3g    ", gaps[pi][ki][ri][0], gaps[pi][ki][ri][1],
                    gaps[pi][ki][ri][2]);
      }
      std::printf("\n");
    }
  }

  // The claims.
  int checked = 0, held = 0;
  auto claim = [&](bool ok) {
    ++checked;
    held += ok ? 1 : 0;
    return ok;
  };
  bool minibatch_flat = true, local_wins = true, local_loses = true, accelerated_ok = true;
  for (std::size_t ki = 0; ki < ks.size(); ++ki) {
    for (std::size_t ri = 0; ri < rs.size(); ++ri) {
      const double lo = std::min({gaps[0][ki][ri][0], gaps[1][ki][ri][0], gaps[2][ki][ri][0]});
      const double hi = std::max({gaps[0][ki][ri][0], gaps[1][ki][ri][0], gaps[2][ki][ri][0]});
      minibatch_flat = claim(hi < 1.5 * lo) && minibatch_flat;
      if (ks[ki] >= 25) {
        local_wins = claim(gaps[2][ki][ri][1] <= 0.8 * gaps[2][ki][ri][0]) && local_wins;
        if (rs[ri] <= 25) {
          local_loses = claim(gaps[0][ki][ri][1] >= 1.5 * gaps[0][ki][ri][0]) && local_loses;
        }
      }
      if (rs[ri] <= 25) {
        accelerated_ok = claim(gaps[0][ki][ri][2] <= gaps[0][ki][ri][0]) && accelerated_ok;
      }
    }
  }
  std::printf(
      "\nclaims: minibatch SGD varies < 1.5x with p: %s; local SGD <= 0.8x minibatch at p = 1, "
      "K >= 25: %s; local SGD >= 1.5x minibatch at p = 0, K >= 25, R <= 25: %s; AC-SA <= "
      "minibatch at p = 0, R <= 25: %s (%d of %d cell checks hold)\n",
      minibatch_flat ? "yes" : "NO", local_wins ? "yes" : "NO", local_loses ? "yes" : "NO",
      accelerated_ok ? "yes" : "NO", held, checked);
  return minibatch_flat && local_wins && local_loses && accelerated_ok ? EXIT_SUCCESS
                                                                       : EXIT_FAILURE;
} catch (const std::exception& e) {
  std::fprintf(stderr, "woodworth_comparison: %s\n", e.what());
  return EXIT_FAILURE;
}
