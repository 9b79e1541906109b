#pragma once
// Scaled sign, the compressor of EF-SignSGD: C(x) = (||x||_1 / d) sign(x).
// A contraction with delta(x) = ||x||_1^2 / (d ||x||_2^2) >= 1/d.
// Karimireddy, Rebjock, Stich, Jaggi 2019, arXiv:1901.09847.
//
// Payload: the scale as float32, then d sign bits (1 = negative; sign(0) = +).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct scaled_sign {
  static constexpr std::string_view name = "scaled_sign";

  [[nodiscard]] std::uint64_t bits(std::size_t d) const noexcept {
    return static_cast<std::uint64_t>(d) + 32;
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return bits(d); }
  /// The worst case over x of delta_of(x).
  [[nodiscard]] double delta(std::size_t d) const noexcept { return 1.0 / static_cast<double>(d); }

  /// This x's contraction: ||C(x) - x||^2 = (1 - delta_of(x)) ||x||^2 (1 for x = 0, which is
  /// compressed exactly).
  template <class T>
  [[nodiscard]] static double delta_of(std::span<const T> x) noexcept {
    const double l1 = detail::sum_abs(x);
    const double l2 = detail::sum_squares(x);
    if (l2 == 0) return 1.0;
    return l1 * l1 / (static_cast<double>(x.size()) * l2);
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    detail::require_positive_dim(name, dim);
    return state<T>{dim};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context&) const {
    detail::require_size(name, "input", x.size(), s.dim);
    const std::size_t d = s.dim;
    const T* xs = x.data();
    const double l1 = detail::sum_abs(x);
    const auto sc = static_cast<float>(l1 / static_cast<double>(d));
    if (!std::isfinite(sc)) {
      throw numeric_error("scaled_sign: the scale ||x||_1 / d is not a finite float32");
    }
    out.write_f32(sc);
    // 64 signs per write: compare into bytes (vectorises), then pack the bytes.
    unsigned char neg[64];
    for (std::size_t j0 = 0; j0 < d; j0 += 64) {
      const std::size_t n = std::min<std::size_t>(64, d - j0);
      for (std::size_t i = 0; i < n; ++i) neg[i] = xs[j0 + i] < T(0) ? 1 : 0;
      out.write(detail::pack_flags(neg, n), static_cast<unsigned>(n));
    }
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const std::size_t d = s.dim;
    detail::require_payload_bits(in, bits(d), "scaled_sign");
    const float sc = in.read_f32("scaled_sign scale");
    if (!(sc >= 0.0f) || !std::isfinite(sc)) {
      throw decode_error("corrupt scaled_sign payload: scale = " + std::to_string(sc) +
                         " is not a finite non-negative number");
    }
    // Each output adds +-scale * sc: the sign bit is flipped by the payload bit,
    // unpacked to bytes first so the add loop vectorises.
    using bits_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    static_assert(sizeof(T) == sizeof(bits_t));
    constexpr unsigned sign_shift = 8 * sizeof(T) - 1;
    const auto pos = std::bit_cast<bits_t>(static_cast<T>(scale * static_cast<T>(sc)));
    T* o = out.data();
    unsigned char neg[64];
    for (std::size_t j0 = 0; j0 < d; j0 += 64) {
      const std::size_t n = std::min<std::size_t>(64, d - j0);
      detail::unpack_flags(in.read(static_cast<unsigned>(n), "scaled_sign signs"), neg);
      T* oj = o + j0;
      for (std::size_t i = 0; i < n; ++i) {
        oj[i] += std::bit_cast<T>(pos ^ (static_cast<bits_t>(neg[i]) << sign_shift));
      }
    }
    in.expect_end("scaled_sign");
  }
};

static_assert(Compressor<scaled_sign, float> && Compressor<scaled_sign, double>);

}  // namespace ecopt
