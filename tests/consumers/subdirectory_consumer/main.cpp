// A consumer that builds ecopt with add_subdirectory: its own compressor and
// its own optimizer, composed with ecopt's solver, on two threads.
//
//   fixed16_quantizer  -- a float32 scale (max |x|) and each value as a signed 16-bit fraction of
//   it momentum_descent   -- heavy-ball momentum, v <- beta v + d, x <- x - lr v
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string_view>
#include <vector>

#include <ecopt/ecopt.hpp>

namespace consumer {

struct fixed16_quantizer {
  static constexpr std::string_view name = "fixed16_quantizer";
  static constexpr std::int64_t levels = 32767;
  struct state {};

  template <class T>
  state make_state(std::size_t /*dim*/) const {
    return {};
  }
  std::uint64_t max_bits(std::size_t dim) const {
    return 32 + 16 * static_cast<std::uint64_t>(dim);
  }

  template <class T>
  void encode(std::span<const T> x, state& /*s*/, ecopt::bit_writer& out,
              const ecopt::round_context& /*ctx*/) const {
    float scale = 0;
    for (const T v : x) scale = std::max(scale, static_cast<float>(std::abs(v)));
    out.write_f32(scale);
    for (const T v : x) {
      const double q = scale > 0 ? std::round(static_cast<double>(v) / scale * levels) : 0.0;
      const auto level = static_cast<std::int64_t>(std::clamp(q, -double(levels), double(levels)));
      out.write(static_cast<std::uint64_t>(level + levels), 16);
    }
  }

  template <class T>
  void decode_add(ecopt::bit_reader& in, state& /*s*/, std::span<T> out, T scale,
                  const ecopt::round_context& /*sender*/) const {
    const float max_abs = in.read_finite_f32("fixed16 scale");
    for (T& o : out) {
      const auto level =
          static_cast<std::int64_t>(in.read_index(16, 2 * levels + 1, "fixed16 level")) - levels;
      o += scale *
           static_cast<T>(static_cast<double>(max_abs) * static_cast<double>(level) / levels);
    }
    in.expect_end("fixed16_quantizer");
  }
};

struct momentum_descent {
  double lr = 0.05;
  double beta = 0.5;

  template <class T>
  struct state {
    std::vector<T> velocity;
  };

  template <class T>
  state<T> make_state(std::size_t dim) const {
    return {std::vector<T>(dim, T(0))};
  }
  double learning_rate(std::uint64_t /*step*/) const { return lr; }

  template <class T>
  void apply(std::span<T> x, std::span<const T> direction, state<T>& s,
             const ecopt::round_context& ctx) const {
    for (std::size_t j = 0; j < x.size(); ++j) {
      s.velocity[j] = static_cast<T>(beta) * s.velocity[j] + direction[j];
      x[j] -= static_cast<T>(ctx.lr) * s.velocity[j];
    }
  }
};

static_assert(ecopt::Compressor<fixed16_quantizer, double>);
static_assert(ecopt::Optimizer<momentum_descent, double>);

}  // namespace consumer

int main() {
  constexpr Eigen::Index d = 6;
  constexpr std::uint64_t steps = 300;
  Eigen::MatrixXd A(d, d);
  for (Eigen::Index i = 0; i < d; ++i) {
    for (Eigen::Index j = 0; j < d; ++j) A(i, j) = std::cos(static_cast<double>(1 + i * d + j));
  }
  const Eigen::MatrixXd H =
      A.transpose() * A / static_cast<double>(d) + Eigen::MatrixXd::Identity(d, d);
  const Eigen::VectorXd b = Eigen::VectorXd::Ones(d);

  struct outcome {
    double error;
    ecopt::run_report report;
  };
  const ecopt::solver s{consumer::fixed16_quantizer{}, ecopt::no_compensation{},
                        consumer::momentum_descent{.lr = 0.1}};
  const auto results = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
    ecopt::quadratic<double> p(H, b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
    ecopt::run_report r = s.run(t, p, x, {.steps = steps, .seed = 7});
    return outcome{(x - p.minimizer()).norm(), r};
  });

  int failures = results.size() == 2 ? 0 : 1;
  for (std::size_t rank = 0; rank < results.size(); ++rank) {
    const outcome& o = results[rank];
    const std::uint64_t expected_bits = steps * (32 + 16 * static_cast<std::uint64_t>(d));
    std::printf("rank %zu: |x - x*| = %.3e after %llu steps, %llu payload bits (expected %llu)\n",
                rank, o.error, static_cast<unsigned long long>(o.report.steps),
                static_cast<unsigned long long>(o.report.payload_bits),
                static_cast<unsigned long long>(expected_bits));
    if (!(o.error < 1e-3)) ++failures;
    if (o.report.steps != steps || o.report.payload_bits != expected_bits) ++failures;
  }
  std::printf("add_subdirectory consumer (fixed16_quantizer + momentum_descent): %s\n",
              failures == 0 ? "converged" : "FAILED");
  return failures == 0 ? 0 : 1;
}
