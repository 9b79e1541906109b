// Write your own compressor: a policy that rounds each value to bfloat16 (the
// top 16 bits of a float32) and sends 16 bits per coordinate. It satisfies
// ecopt::Compressor, so it composes with every compensator and optimizer.
#include <Eigen/Core>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <span>

#include "ecopt/ecopt.hpp"

struct bfloat16_rounding {
  static constexpr std::string_view name = "bfloat16";

  struct state {
    std::size_t dim = 0;
  };
  template <class T>
  state make_state(std::size_t dim) const {
    return {dim};
  }

  std::uint64_t max_bits(std::size_t dim) const { return 16 * dim; }
  std::uint64_t bits(std::size_t dim) const { return 16 * dim; }

  template <class T>
  void encode(std::span<const T> x, state&, ecopt::bit_writer& out,
              const ecopt::round_context&) const {
    for (T v : x) {
      const auto word = std::bit_cast<std::uint32_t>(static_cast<float>(v));
      out.write((word + 0x8000u) >> 16, 16);  // round to nearest
    }
  }

  template <class T>
  void decode_add(ecopt::bit_reader& in, state& s, std::span<T> out, T scale,
                  const ecopt::round_context&) const {
    for (std::size_t j = 0; j < s.dim; ++j) {
      const auto half = static_cast<std::uint32_t>(in.read(16, "bfloat16 value"));
      out[j] += scale * static_cast<T>(std::bit_cast<float>(half << 16));
    }
    in.expect_end("bfloat16");
  }
};
static_assert(ecopt::Compressor<bfloat16_rounding>);

int main() {
  const Eigen::Index d = 20;
  Eigen::MatrixXd h = Eigen::MatrixXd::Identity(d, d);
  h.diagonal() = Eigen::VectorXd::LinSpaced(d, 1.0, 5.0);
  const Eigen::VectorXd b = Eigen::VectorXd::Ones(d);

  const ecopt::solver solver{bfloat16_rounding{}, ecopt::error_feedback{}, ecopt::sgd{.lr = 0.2}};
  auto errors = ecopt::run_threads(2, [&](ecopt::thread_transport& t) {
    ecopt::quadratic<double> problem(h, b);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(d);
    const auto report = solver.run(t, problem, x, {.steps = 300});
    if (t.rank() == 0) {
      std::printf("%s: %llu payload bits per worker\n", bfloat16_rounding::name.data(),
                  static_cast<unsigned long long>(report.payload_bits));
    }
    return (x - problem.minimizer()).norm();
  });
  std::printf("distance to the optimum: %.2e\n", errors[0]);
  return errors[0] < 1e-6 ? 0 : 1;
}
