// Compile-time checks of the five concepts with archetypes: the minimal types
// that model each concept, and for every requirement one archetype that lacks
// exactly that member (which must not model the concept).
// The static_asserts are the test; the doctest case records them at run time.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compensator.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/optimizer.hpp"
#include "ecopt/problem.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transport.hpp"

namespace archetypes {

struct empty_state {};
template <class T>
using cref = Eigen::Ref<const ecopt::vector_t<T>>;
template <class T>
using ref = Eigen::Ref<ecopt::vector_t<T>>;

// --- Compressor ---------------------------------------------------------------
struct compressor {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  std::uint64_t max_bits(std::size_t) const { return 0; }
  template <class T>
  void encode(std::span<const T>, empty_state&, ecopt::bit_writer&,
              const ecopt::round_context&) const {}
  template <class T>
  void decode_add(ecopt::bit_reader&, empty_state&, std::span<T>, T,
                  const ecopt::round_context&) const {}
};
/// Only float payloads: a compressor need not support every scalar type.
struct float_only_compressor {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  std::uint64_t max_bits(std::size_t) const { return 0; }
  void encode(std::span<const float>, empty_state&, ecopt::bit_writer&,
              const ecopt::round_context&) const {}
  void decode_add(ecopt::bit_reader&, empty_state&, std::span<float>, float,
                  const ecopt::round_context&) const {}
};
struct compressor_missing_make_state {
  std::uint64_t max_bits(std::size_t) const { return 0; }
  template <class T, class S>
  void encode(std::span<const T>, S&, ecopt::bit_writer&, const ecopt::round_context&) const {}
  template <class T, class S>
  void decode_add(ecopt::bit_reader&, S&, std::span<T>, T, const ecopt::round_context&) const {}
};
struct compressor_missing_max_bits {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  template <class T>
  void encode(std::span<const T>, empty_state&, ecopt::bit_writer&,
              const ecopt::round_context&) const {}
  template <class T>
  void decode_add(ecopt::bit_reader&, empty_state&, std::span<T>, T,
                  const ecopt::round_context&) const {}
};
struct compressor_missing_encode {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  std::uint64_t max_bits(std::size_t) const { return 0; }
  template <class T>
  void decode_add(ecopt::bit_reader&, empty_state&, std::span<T>, T,
                  const ecopt::round_context&) const {}
};
struct compressor_missing_decode {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  std::uint64_t max_bits(std::size_t) const { return 0; }
  template <class T>
  void encode(std::span<const T>, empty_state&, ecopt::bit_writer&,
              const ecopt::round_context&) const {}
};
/// encode may not mutate the compressor: hyperparameters are shared between threads.
struct compressor_with_non_const_encode {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  std::uint64_t max_bits(std::size_t) const { return 0; }
  template <class T>
  void encode(std::span<const T>, empty_state&, ecopt::bit_writer&, const ecopt::round_context&) {}
  template <class T>
  void decode_add(ecopt::bit_reader&, empty_state&, std::span<T>, T,
                  const ecopt::round_context&) const {}
};
struct compressor_not_copyable : compressor {
  compressor_not_copyable() = default;
  compressor_not_copyable(const compressor_not_copyable&) = delete;
};

static_assert(ecopt::Compressor<compressor>);
static_assert(ecopt::Compressor<compressor, float> && ecopt::Compressor<compressor, double>);
static_assert(ecopt::Compressor<float_only_compressor, float>);
static_assert(!ecopt::Compressor<float_only_compressor, double>);
static_assert(!ecopt::Compressor<compressor, int>, "the scalar type must be floating point");
static_assert(!ecopt::MakesCompressorState<compressor_missing_make_state, float>);
static_assert(!ecopt::Compressor<compressor_missing_make_state>);
static_assert(!ecopt::BoundsPayloadBits<compressor_missing_max_bits>);
static_assert(!ecopt::Compressor<compressor_missing_max_bits>);
static_assert(!ecopt::EncodesPayload<compressor_missing_encode, float>);
static_assert(!ecopt::Compressor<compressor_missing_encode>);
static_assert(!ecopt::DecodesPayload<compressor_missing_decode, float>);
static_assert(!ecopt::Compressor<compressor_missing_decode>);
static_assert(!ecopt::Compressor<compressor_with_non_const_encode>);
static_assert(!ecopt::Compressor<compressor_not_copyable>);
// The optional abilities are optional.
static_assert(!ecopt::FixedSizePayload<compressor> && !ecopt::UnbiasedCompressor<compressor> &&
              !ecopt::ContractiveCompressor<compressor> && !ecopt::SummableCompressor<compressor>);

// --- Compensator -----------------------------------------------------------------
struct compensator {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  template <class T>
  void compensate(std::span<const T>, empty_state&, std::span<T>,
                  const ecopt::round_context&) const {}
  template <class T>
  void update(std::span<const T>, std::span<const T>, empty_state&,
              const ecopt::round_context&) const {}
};
struct compensator_missing_make_state {
  template <class T, class S>
  void compensate(std::span<const T>, S&, std::span<T>, const ecopt::round_context&) const {}
  template <class T, class S>
  void update(std::span<const T>, std::span<const T>, S&, const ecopt::round_context&) const {}
};
struct compensator_missing_compensate {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  template <class T>
  void update(std::span<const T>, std::span<const T>, empty_state&,
              const ecopt::round_context&) const {}
};
struct compensator_missing_update {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  template <class T>
  void compensate(std::span<const T>, empty_state&, std::span<T>,
                  const ecopt::round_context&) const {}
};

static_assert(ecopt::Compensator<compensator>);
static_assert(ecopt::Compensator<compensator, float> && ecopt::Compensator<compensator, double>);
static_assert(!ecopt::MakesCompensatorState<compensator_missing_make_state, float>);
static_assert(!ecopt::Compensator<compensator_missing_make_state>);
static_assert(!ecopt::CompensatesDirection<compensator_missing_compensate, float>);
static_assert(!ecopt::Compensator<compensator_missing_compensate>);
static_assert(!ecopt::UpdatesMemory<compensator_missing_update, float>);
static_assert(!ecopt::Compensator<compensator_missing_update>);

// --- Optimizer -------------------------------------------------------------------
struct optimizer {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  double learning_rate(std::uint64_t) const { return 0.1; }
  template <class T>
  void apply(std::span<T>, std::span<const T>, empty_state&, const ecopt::round_context&) const {}
};
struct optimizer_missing_make_state {
  double learning_rate(std::uint64_t) const { return 0.1; }
  template <class T, class S>
  void apply(std::span<T>, std::span<const T>, S&, const ecopt::round_context&) const {}
};
struct optimizer_missing_learning_rate {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  template <class T>
  void apply(std::span<T>, std::span<const T>, empty_state&, const ecopt::round_context&) const {}
};
struct optimizer_missing_apply {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  double learning_rate(std::uint64_t) const { return 0.1; }
};
struct optimizer_with_void_learning_rate {
  template <class T>
  empty_state make_state(std::size_t) const {
    return {};
  }
  void learning_rate(std::uint64_t) const {}
  template <class T>
  void apply(std::span<T>, std::span<const T>, empty_state&, const ecopt::round_context&) const {}
};

static_assert(ecopt::Optimizer<optimizer>);
static_assert(ecopt::Optimizer<optimizer, float> && ecopt::Optimizer<optimizer, double>);
static_assert(!ecopt::MakesOptimizerState<optimizer_missing_make_state, float>);
static_assert(!ecopt::Optimizer<optimizer_missing_make_state>);
static_assert(!ecopt::HasLearningRate<optimizer_missing_learning_rate>);
static_assert(!ecopt::Optimizer<optimizer_missing_learning_rate>);
static_assert(!ecopt::AppliesDirection<optimizer_missing_apply, float>);
static_assert(!ecopt::Optimizer<optimizer_missing_apply>);
static_assert(!ecopt::Optimizer<optimizer_with_void_learning_rate>);

// --- Transport -------------------------------------------------------------------
struct transport {
  int rank() const { return 0; }
  int size() const { return 1; }
  void send(int, ecopt::message_tag, std::span<const std::byte>) {}
  void recv(int, ecopt::message_tag, std::vector<std::byte>&) {}
  std::uint64_t bytes_sent() const { return 0; }
};
struct transport_missing_rank {
  int size() const { return 1; }
  void send(int, ecopt::message_tag, std::span<const std::byte>) {}
  void recv(int, ecopt::message_tag, std::vector<std::byte>&) {}
  std::uint64_t bytes_sent() const { return 0; }
};
struct transport_missing_size {
  int rank() const { return 0; }
  void send(int, ecopt::message_tag, std::span<const std::byte>) {}
  void recv(int, ecopt::message_tag, std::vector<std::byte>&) {}
  std::uint64_t bytes_sent() const { return 0; }
};
struct transport_missing_send {
  int rank() const { return 0; }
  int size() const { return 1; }
  void recv(int, ecopt::message_tag, std::vector<std::byte>&) {}
  std::uint64_t bytes_sent() const { return 0; }
};
struct transport_missing_recv {
  int rank() const { return 0; }
  int size() const { return 1; }
  void send(int, ecopt::message_tag, std::span<const std::byte>) {}
  std::uint64_t bytes_sent() const { return 0; }
};
struct transport_missing_bytes_sent {
  int rank() const { return 0; }
  int size() const { return 1; }
  void send(int, ecopt::message_tag, std::span<const std::byte>) {}
  void recv(int, ecopt::message_tag, std::vector<std::byte>&) {}
};
/// rank() must be callable on a const transport.
struct transport_with_non_const_rank {
  int rank() { return 0; }
  int size() const { return 1; }
  void send(int, ecopt::message_tag, std::span<const std::byte>) {}
  void recv(int, ecopt::message_tag, std::vector<std::byte>&) {}
  std::uint64_t bytes_sent() const { return 0; }
};

static_assert(ecopt::Transport<transport>);
static_assert(!ecopt::Transport<transport_missing_rank>);
static_assert(!ecopt::Transport<transport_missing_size>);
static_assert(!ecopt::Transport<transport_missing_send>);
static_assert(!ecopt::Transport<transport_missing_recv>);
static_assert(!ecopt::Transport<transport_missing_bytes_sent>);
static_assert(!ecopt::Transport<transport_with_non_const_rank>);

// --- Problem ---------------------------------------------------------------------
template <class T>
struct problem {
  using scalar_type = T;
  std::size_t dim() const { return 1; }
  double loss(cref<T>) { return 0; }
  void gradient(cref<T>, ref<T>) {}
  void stochastic_gradient(cref<T>, ref<T>, ecopt::counter_rng&) {}
};
struct problem_missing_scalar_type {
  std::size_t dim() const { return 1; }
  double loss(cref<double>) { return 0; }
  void gradient(cref<double>, ref<double>) {}
  void stochastic_gradient(cref<double>, ref<double>, ecopt::counter_rng&) {}
};
struct problem_with_integer_scalar_type : problem<double> {
  using scalar_type = int;
};
struct problem_missing_dim {
  using scalar_type = double;
  double loss(cref<double>) { return 0; }
  void gradient(cref<double>, ref<double>) {}
  void stochastic_gradient(cref<double>, ref<double>, ecopt::counter_rng&) {}
};
struct problem_missing_loss {
  using scalar_type = double;
  std::size_t dim() const { return 1; }
  void gradient(cref<double>, ref<double>) {}
  void stochastic_gradient(cref<double>, ref<double>, ecopt::counter_rng&) {}
};
struct problem_missing_gradient {
  using scalar_type = double;
  std::size_t dim() const { return 1; }
  double loss(cref<double>) { return 0; }
  void stochastic_gradient(cref<double>, ref<double>, ecopt::counter_rng&) {}
};
struct problem_missing_stochastic_gradient {
  using scalar_type = double;
  std::size_t dim() const { return 1; }
  double loss(cref<double>) { return 0; }
  void gradient(cref<double>, ref<double>) {}
};
struct problem_with_hessian_diagonal : problem<double> {
  void hessian_diagonal(cref<double>, ref<double>) {}
};

static_assert(ecopt::Problem<problem<float>> && ecopt::Problem<problem<double>>);
static_assert(!ecopt::HasScalarType<problem_missing_scalar_type>);
static_assert(!ecopt::Problem<problem_missing_scalar_type>);
static_assert(!ecopt::Problem<problem_with_integer_scalar_type>);
static_assert(!ecopt::Problem<problem_missing_dim>);
static_assert(!ecopt::Problem<problem_missing_loss>);
static_assert(!ecopt::Problem<problem_missing_gradient>);
static_assert(!ecopt::Problem<problem_missing_stochastic_gradient>);
static_assert(!ecopt::HasHessian<problem<double>> &&
              !ecopt::HasHessianVectorProduct<problem<double>> &&
              !ecopt::HasHessianDiagonal<problem<double>>);
static_assert(ecopt::HasHessianDiagonal<problem_with_hessian_diagonal>);

}  // namespace archetypes

TEST_SUITE("static") {
  TEST_CASE("the concept archetypes model their concepts and each incomplete one does not") {
    CHECK(ecopt::Compressor<archetypes::compressor, float>);
    CHECK(ecopt::Compressor<archetypes::compressor, double>);
    CHECK_FALSE(ecopt::Compressor<archetypes::compressor_missing_decode>);
    CHECK(ecopt::Compensator<archetypes::compensator>);
    CHECK_FALSE(ecopt::Compensator<archetypes::compensator_missing_update>);
    CHECK(ecopt::Optimizer<archetypes::optimizer>);
    CHECK_FALSE(ecopt::Optimizer<archetypes::optimizer_missing_apply>);
    CHECK(ecopt::Transport<archetypes::transport>);
    CHECK_FALSE(ecopt::Transport<archetypes::transport_missing_recv>);
    CHECK(ecopt::Problem<archetypes::problem<double>>);
    CHECK_FALSE(ecopt::Problem<archetypes::problem_missing_stochastic_gradient>);
  }

  TEST_CASE("the compressor archetype's state type is what make_state returns") {
    using state = ecopt::compressor_state_t<archetypes::compressor, double>;
    CHECK(std::is_same_v<state, archetypes::empty_state>);
    CHECK(std::is_same_v<ecopt::problem_scalar_t<archetypes::problem<float>>, float>);
  }
}
