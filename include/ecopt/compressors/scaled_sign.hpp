#pragma once
// Scaled sign, the compressor of EF-SignSGD: C(x) = (||x||_1 / d) sign(x),
// optionally per bucket of b coordinates, each with its own scale ||x_B||_1 / |B|.
// Karimireddy, Rebjock, Stich, Jaggi 2019, arXiv:1901.09847.
//
// A contraction: a bucket B loses exactly (1 - ||x_B||_1^2 / (|B| ||x_B||^2)) of
// its energy, and ||x_B||_1^2 >= ||x_B||^2, so delta(x) >= 1/b for buckets of
// b coordinates. The declared delta(d) = 1/b is that worst case (all energy in
// one coordinate per bucket); the achieved delta is data dependent, typically
// near 2/pi for Gaussian-like vectors: delta_of(x) and achieved_delta(x) give it.
// Smaller buckets raise the worst case (b = 1 is exact) at 32 bits per bucket.
//
// Payload, per bucket: the scale as float32, then one sign bit per coordinate
// (1 = negative; sign(0) = +). Exactly d + 32 * buckets bits.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/compressors/detail/sign_bits.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct scaled_sign {
  static constexpr std::string_view name = "scaled_sign";

  std::size_t bucket_size = 0;  ///< coordinates per scale; 0 = the whole vector

  /// Coordinates per bucket for dimension d (the last bucket may be shorter).
  [[nodiscard]] std::size_t bucket(std::size_t d) const noexcept {
    return bucket_size == 0 || bucket_size > d ? d : bucket_size;
  }
  [[nodiscard]] std::size_t num_buckets(std::size_t d) const noexcept {
    const std::size_t b = bucket(d);
    return b == 0 ? 0 : (d + b - 1) / b;
  }

  [[nodiscard]] std::uint64_t bits(std::size_t d) const noexcept {
    return static_cast<std::uint64_t>(d) + 32 * static_cast<std::uint64_t>(num_buckets(d));
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return bits(d); }
  /// The worst case over x of achieved_delta(x): 1 / bucket(d).
  [[nodiscard]] double delta(std::size_t d) const noexcept {
    return 1.0 / static_cast<double>(bucket(d));
  }

  /// This x's contraction with one scale for the whole vector:
  /// ||C(x) - x||^2 = (1 - delta_of(x)) ||x||^2 (1 for x = 0, which is compressed exactly).
  template <class T>
  [[nodiscard]] static double delta_of(std::span<const T> x) noexcept {
    const double l1 = detail::sum_abs(x);
    const double l2 = detail::sum_squares(x);
    if (l2 == 0) return 1.0;
    return l1 * l1 / (static_cast<double>(x.size()) * l2);
  }

  /// This x's contraction with this policy's buckets: 1 - ||C(x) - x||^2 / ||x||^2
  /// (up to the float32 rounding of the scales; 1 for x = 0).
  template <class T>
  [[nodiscard]] double achieved_delta(std::span<const T> x) const noexcept {
    const std::size_t d = x.size();
    const std::size_t b = bucket(d);
    double kept = 0;
    double total = 0;
    for (std::size_t b0 = 0; b0 < d; b0 += b) {
      const auto xb = x.subspan(b0, std::min(b, d - b0));
      const double l1 = detail::sum_abs(xb);
      kept += l1 * l1 / static_cast<double>(xb.size());
      total += detail::sum_squares(xb);
    }
    return total == 0 ? 1.0 : kept / total;
  }

  template <class T>
  using state = detail::dim_state<T>;

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    return detail::make_dim_state<T>(name, dim);
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context&) const {
    detail::require_size(name, "input", x.size(), s.dim);
    const std::size_t d = s.dim;
    const std::size_t b = bucket(d);
    const T* xs = x.data();
    for (std::size_t b0 = 0; b0 < d; b0 += b) {
      const std::size_t n = std::min(b, d - b0);
      const double l1 = detail::sum_abs(std::span<const T>(xs + b0, n));
      const auto sc = static_cast<float>(l1 / static_cast<double>(n));
      if (!std::isfinite(sc)) {
        throw numeric_error("scaled_sign: the scale ||x_B||_1 / |B| of bucket " +
                            std::to_string(b0 / b) +
                            " is not a finite float32 (non-finite or huge input)");
      }
      out.write_f32(sc);
      for (std::size_t j = 0; j < n; j += 64) {
        const std::size_t m = std::min<std::size_t>(64, n - j);
        out.write(detail::negative_bits(xs + b0 + j, m), static_cast<unsigned>(m));
      }
    }
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const std::size_t d = s.dim;
    detail::require_payload_bits(in, bits(d), "scaled_sign");
    const std::size_t b = bucket(d);
    T* o = out.data();
    for (std::size_t b0 = 0; b0 < d; b0 += b) {
      const std::size_t n = std::min(b, d - b0);
      const float sc = in.read_f32("scaled_sign scale");
      if (!(sc >= 0.0f) || !std::isfinite(sc)) {
        throw decode_error("corrupt scaled_sign payload: scale[" + std::to_string(b0 / b) +
                           "] = " + std::to_string(sc) + " is not a finite non-negative number");
      }
      const T v = scale * static_cast<T>(sc);
      for (std::size_t j = 0; j < n; j += 64) {
        const std::size_t m = std::min<std::size_t>(64, n - j);
        detail::add_signed(in.read(static_cast<unsigned>(m), "scaled_sign signs"), m, v,
                           o + b0 + j);
      }
    }
    in.expect_end("scaled_sign");
  }
};

static_assert(Compressor<scaled_sign, float> && Compressor<scaled_sign, double>);

}  // namespace ecopt
