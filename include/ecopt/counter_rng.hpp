#pragma once
// A counter-based random stream: the n-th draw is a pure function of a 64-bit
// key and n (the SplitMix64 output function, Steele, Lea, Flood 2014). Keys are
// derived from (seed, purpose, rank, round), so every worker can regenerate
// another worker's draws, and shared draws (RandK indices) agree on all ranks
// without communication.
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>

namespace ecopt {

/// What a random stream is used for; part of the key so streams never collide.
enum class stream_purpose : std::uint64_t {
  compression = 1,         ///< a worker's private draws (stochastic rounding)
  shared_compression = 2,  ///< draws every rank makes identically (shared RandK indices)
  sampling = 3,            ///< minibatch sampling in a problem
  algorithm = 4,           ///< coins of an algorithm (snapshots, schedules)
  test = 5,                ///< draws in tests and benchmarks
  stragglers = 6,          ///< compute times of straggler_model
};

namespace detail {
__extension__ typedef unsigned __int128 uint128;

[[nodiscard]] constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace detail

class counter_rng {
 public:
  using result_type = std::uint64_t;
  static constexpr std::uint64_t golden_gamma = 0x9e3779b97f4a7c15ULL;

  constexpr explicit counter_rng(std::uint64_t key = 0) noexcept : state_(key) {}

  /// The stream keyed by (seed, purpose, rank, round).
  [[nodiscard]] static constexpr counter_rng stream(std::uint64_t seed, stream_purpose purpose,
                                                    std::uint64_t rank,
                                                    std::uint64_t round) noexcept {
    std::uint64_t k = detail::mix64(seed + golden_gamma);
    k = detail::mix64(k ^ (static_cast<std::uint64_t>(purpose) * golden_gamma));
    k = detail::mix64(k ^ (rank + 1) * 0xd1b54a32d192ed03ULL);
    k = detail::mix64(k ^ (round + 1) * 0x8cb92ba72f3d8dd7ULL);
    return counter_rng{k};
  }

  static constexpr result_type min() noexcept { return 0; }
  static constexpr result_type max() noexcept { return std::numeric_limits<result_type>::max(); }

  constexpr result_type operator()() noexcept {
    state_ += golden_gamma;
    return detail::mix64(state_);
  }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() noexcept { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }
  /// Uniform in [0, 1) with 24 random bits.
  float uniform_float() noexcept { return static_cast<float>((*this)() >> 40) * 0x1.0p-24f; }

  /// Uniform integer in [0, n), n > 0, without modulo bias (Lemire 2019, arXiv:1805.10941).
  std::uint64_t below(std::uint64_t n) noexcept {
    detail::uint128 m = static_cast<detail::uint128>((*this)()) * n;
    auto low = static_cast<std::uint64_t>(m);
    if (low < n) {
      const std::uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<detail::uint128>((*this)()) * n;
        low = static_cast<std::uint64_t>(m);
      }
    }
    return static_cast<std::uint64_t>(m >> 64);
  }

  /// Standard normal by Box-Muller (used by tests and synthetic problems).
  double normal() noexcept {
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::uint64_t state_;
};

}  // namespace ecopt
