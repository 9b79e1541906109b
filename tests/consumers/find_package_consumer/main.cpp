// A consumer of an installed ecopt (find_package): its own compressor and its
// own optimizer, composed with ecopt's solver, on two threads.
//
//   bf16_rounding  -- sends each value rounded to bfloat16 (16 bits each)
//   clipped_sgd    -- SGD whose step is clipped to a maximum norm
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string_view>

#include <ecopt/ecopt.hpp>

namespace consumer {

/// Rounds every value to bfloat16 (round to nearest even): 16 bits a value.
struct bf16_rounding {
  static constexpr std::string_view name = "bf16_rounding";
  struct state {};

  template <class T>
  state make_state(std::size_t /*dim*/) const {
    return {};
  }
  std::uint64_t max_bits(std::size_t dim) const { return 16 * static_cast<std::uint64_t>(dim); }
  std::uint64_t bits(std::size_t dim) const { return max_bits(dim); }

  static std::uint16_t to_bf16(float v) {
    const auto u = std::bit_cast<std::uint32_t>(v);
    if (std::isnan(v)) return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // stay a NaN
    const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>((u + rounding) >> 16);
  }
  static float from_bf16(std::uint64_t h) {
    return std::bit_cast<float>(static_cast<std::uint32_t>(h << 16));
  }

  template <class T>
  void encode(std::span<const T> x, state& /*s*/, ecopt::bit_writer& out,
              const ecopt::round_context& /*ctx*/) const {
    for (const T v : x) out.write(to_bf16(static_cast<float>(v)), 16);
  }

  template <class T>
  void decode_add(ecopt::bit_reader& in, state& /*s*/, std::span<T> out, T scale,
                  const ecopt::round_context& /*sender*/) const {
    for (T& o : out) o += scale * static_cast<T>(from_bf16(in.read(16, "bf16 value")));
    in.expect_end("bf16_rounding");
  }
};

/// x <- x - lr * clip(direction), where clip scales the direction down to max_norm.
struct clipped_sgd {
  double lr = 0.01;
  double max_norm = 1.0;
  struct state {};

  template <class T>
  state make_state(std::size_t /*dim*/) const {
    return {};
  }
  double learning_rate(std::uint64_t /*step*/) const { return lr; }

  template <class T>
  void apply(std::span<T> x, std::span<const T> direction, state& /*s*/,
             const ecopt::round_context& ctx) const {
    double norm2 = 0;
    for (const T v : direction) norm2 += static_cast<double>(v) * static_cast<double>(v);
    const double norm = std::sqrt(norm2);
    const double clip = norm > max_norm ? max_norm / norm : 1.0;
    const T step = static_cast<T>(ctx.lr * clip);
    for (std::size_t j = 0; j < x.size(); ++j) x[j] -= step * direction[j];
  }
};

static_assert(ecopt::Compressor<bf16_rounding, float> && ecopt::Compressor<bf16_rounding, double>);
static_assert(ecopt::Optimizer<clipped_sgd, float> && ecopt::Optimizer<clipped_sgd, double>);

}  // namespace consumer

int main() {
  constexpr Eigen::Index d = 8;
  constexpr std::uint64_t steps = 300;
  // A well-conditioned SPD matrix (diagonally dominant), f = 1/2 x'Hx - b'x.
  Eigen::MatrixXd H(d, d);
  for (Eigen::Index i = 0; i < d; ++i) {
    for (Eigen::Index j = 0; j < d; ++j) {
      H(i, j) = i == j ? 2.0 + static_cast<double>(i)
                       : 0.1 / (1.0 + std::abs(static_cast<double>(i - j)));
    }
  }
  const Eigen::VectorXd b = Eigen::VectorXd::LinSpaced(d, 1.0, -1.0);

  struct outcome {
    double error;
    ecopt::run_report report;
  };
  const ecopt::solver s{consumer::bf16_rounding{}, ecopt::no_compensation{},
                        consumer::clipped_sgd{.lr = 0.1}};
  const auto results = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
    ecopt::quadratic<double> p(H, b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
    ecopt::run_report r = s.run(t, p, x, {.steps = steps});
    return outcome{(x - p.minimizer()).norm(), r};
  });

  int failures = 0;
  for (std::size_t rank = 0; rank < results.size(); ++rank) {
    const outcome& o = results[rank];
    const std::uint64_t expected_bits = steps * 16 * static_cast<std::uint64_t>(d);
    std::printf("rank %zu: |x - x*| = %.3e after %llu steps, %llu payload bits (expected %llu)\n",
                rank, o.error, static_cast<unsigned long long>(o.report.steps),
                static_cast<unsigned long long>(o.report.payload_bits),
                static_cast<unsigned long long>(expected_bits));
    if (!(o.error < 1e-3)) ++failures;
    if (o.report.steps != steps || o.report.payload_bits != expected_bits) ++failures;
  }
  if (results.size() != 2) ++failures;
  std::printf("find_package consumer (bf16_rounding + clipped_sgd): %s\n",
              failures == 0 ? "converged" : "FAILED");
  return failures == 0 ? 0 : 1;
}
