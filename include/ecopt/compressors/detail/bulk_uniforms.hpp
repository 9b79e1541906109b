#pragma once
// Uniform random words in bulk for the stochastic quantisers: eight
// interleaved xoshiro128++ generators (Blackman, Vigna 2018, arXiv:1805.01407),
// seeded from the sender's counter_rng stream, so a payload stays a function
// of (seed, rank, round) and a decoder could regenerate it.
//
// Why not counter_rng itself: one SplitMix64 draw costs two dependent 64-bit
// multiplies, about two cycles per coordinate even when sliced three ways, as
// much as all the rest of qsgd's encoding. The eight lanes here are 32-bit
// shifts, xors and adds on two 4-lane vectors.
//
// Word k of the stream is lane k % 8's (k / 8)-th output. The ++ scrambler
// (fill_halves, for_halves) makes every bit usable, so a word may be split
// into two 16-bit uniforms; the + scrambler (fill_top, for_top) is cheaper, but
// only its top bits are good (its lowest bits are weak linear functions of
// the state), so those callers use the top 23.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ecopt/counter_rng.hpp"

namespace ecopt::detail {

class bulk_uniforms {
 public:
  static constexpr std::size_t lanes = 8;

  /// Four 32-bit lanes per vector (GCC/Clang vector extension: SSE2 on x86-64,
  /// NEON on ARM, plain scalar code elsewhere).
  typedef std::uint32_t vec __attribute__((vector_size(16)));

  /// Seeds the lanes with 16 draws of `seed` (a stream keyed by seed, rank, round).
  explicit bulk_uniforms(counter_rng seed) noexcept {
    std::uint32_t w[4][lanes];
    for (std::size_t l = 0; l < lanes; ++l) {
      const std::uint64_t a = seed();
      const std::uint64_t b = seed();
      w[0][l] = static_cast<std::uint32_t>(a);
      w[1][l] = static_cast<std::uint32_t>(a >> 32);
      w[2][l] = static_cast<std::uint32_t>(b);
      w[3][l] = static_cast<std::uint32_t>(b >> 32);
      if ((a | b) == 0) w[0][l] = 1;  // the all-zero state is a fixed point
    }
    for (int i = 0; i < 4; ++i) {
      std::memcpy(&lo_[i], w[i], sizeof(vec));
      std::memcpy(&hi_[i], w[i] + 4, sizeof(vec));
    }
  }

  /// Writes the next n words to u with the cheaper xoshiro128+ output (one
  /// add): only the top bits are good, so callers use at most the top 24.
  void fill_top(std::uint32_t* u, std::size_t n) noexcept {
    generate_plus(n / lanes, [u](std::size_t k, const vec& a, const vec& b) {
      std::memcpy(u + 8 * k, &a, sizeof(vec));
      std::memcpy(u + 8 * k + 4, &b, sizeof(vec));
    });
  }

  /// Calls f(h) for each of the next `groups` groups of 16 uniforms, the values
  /// fill_halves would write: h[0..3] hold uniforms 0-3, 4-7, 8-11, 12-15.
  template <class F>
  void for_halves(std::size_t groups, F f) noexcept {
    generate(groups, [&f](std::size_t, const vec& a, const vec& b) {
      const vec h[4] = {a >> 16, b >> 16, a & 0xffffu, b & 0xffffu};
      f(h);
    });
  }

  /// Calls f(w) for each of the next `groups` groups of 16 words, the values
  /// fill_top would write: w[0..3] hold words 0-3, 4-7, 8-11, 12-15.
  template <class F>
  void for_top(std::size_t groups, F f) noexcept {
    vec w[4];
    generate_plus(2 * groups, [&](std::size_t k, const vec& a, const vec& b) {
      w[2 * (k % 2)] = a;
      w[2 * (k % 2) + 1] = b;
      if (k % 2 == 1) f(static_cast<const vec*>(w));
    });
  }

  /// Writes the next n / 2 words to u as 16-bit uniforms (n a multiple of 16):
  /// each group of 16 takes the high halves of 8 words, then their low halves.
  void fill_halves(std::uint32_t* u, std::size_t n) noexcept {
    generate(n / 16, [u](std::size_t k, const vec& a, const vec& b) {
      const vec h[4] = {a >> 16, b >> 16, a & 0xffffu, b & 0xffffu};
      std::memcpy(u + 16 * k, h, sizeof(h));
    });
  }

 private:
  // Calls put(k, lanes 0-3, lanes 4-7) for the next `steps` outputs of all lanes.
  template <class Put>
  void generate(std::size_t steps, Put put) noexcept {
    vec a0 = lo_[0], a1 = lo_[1], a2 = lo_[2], a3 = lo_[3];
    vec b0 = hi_[0], b1 = hi_[1], b2 = hi_[2], b3 = hi_[3];
    for (std::size_t k = 0; k < steps; ++k) {
      put(k, output(a0, a3), output(b0, b3));
      step(a0, a1, a2, a3);
      step(b0, b1, b2, b3);
    }
    lo_[0] = a0, lo_[1] = a1, lo_[2] = a2, lo_[3] = a3;
    hi_[0] = b0, hi_[1] = b1, hi_[2] = b2, hi_[3] = b3;
  }

  template <class Put>
  void generate_plus(std::size_t steps, Put put) noexcept {
    vec a0 = lo_[0], a1 = lo_[1], a2 = lo_[2], a3 = lo_[3];
    vec b0 = hi_[0], b1 = hi_[1], b2 = hi_[2], b3 = hi_[3];
    for (std::size_t k = 0; k < steps; ++k) {
      put(k, a0 + a3, b0 + b3);
      step(a0, a1, a2, a3);
      step(b0, b1, b2, b3);
    }
    lo_[0] = a0, lo_[1] = a1, lo_[2] = a2, lo_[3] = a3;
    hi_[0] = b0, hi_[1] = b1, hi_[2] = b2, hi_[3] = b3;
  }

  static vec rotl(const vec& v, int k) noexcept { return (v << k) | (v >> (32 - k)); }
  static vec output(const vec& s0, const vec& s3) noexcept { return rotl(s0 + s3, 7) + s0; }
  static void step(vec& s0, vec& s1, vec& s2, vec& s3) noexcept {
    const vec t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11);
  }

  vec lo_[4];  // lanes 0-3: xoshiro128++ state words s0..s3
  vec hi_[4];  // lanes 4-7
};

}  // namespace ecopt::detail
