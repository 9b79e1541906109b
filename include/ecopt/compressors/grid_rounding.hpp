#pragma once
// Deterministic rounding to a fixed grid: C(x)_j = step * round(x_j / step)
// (halves away from zero). Its error is bounded in absolute terms for every x,
//   |C(x)_j - x_j| <= step / 2,   ||C(x) - x|| <= max_error(d) = step sqrt(d) / 2,
// the bounded-error compressor class of the accuracy results of Khirirat,
// Magnusson, Johansson 2021, arXiv:1909.10327 (and their test oracle: with
// Hessian-aided compensation the error floor is gamma * max_error(d)). It is
// neither unbiased nor a contraction (inputs below step/2 round to zero), so
// it declares neither omega nor delta.
//
// Payload: a 6-bit width w (0..32), then the d grid levels round(x_j / step),
// each zigzag-coded (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...) in w bits; w is the
// width of the largest coded level. 6 + w d bits, exact; a vector that rounds
// to zero costs 6 bits. No values travel: the step is part of the policy, so
// both sides must use the same one.
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct grid_rounding {
  static constexpr std::string_view name = "grid_rounding";

  double step = 1e-2;  ///< grid spacing (> 0)

  /// Levels are signed 32-bit integers: |x_j| / step must stay below this.
  static constexpr double max_level = 2147483647.0;
  static constexpr unsigned width_bits = 6;

  void validate() const {
    if (!(step > 0.0) || !std::isfinite(step)) {
      throw invalid_argument("grid_rounding: step = " + std::to_string(step) +
                             " must be positive and finite");
    }
  }

  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept {
    return width_bits + 32 * static_cast<std::uint64_t>(d);
  }
  /// The worst-case ||C(x) - x||_2 over all x.
  [[nodiscard]] double max_error(std::size_t d) const noexcept {
    return 0.5 * step * std::sqrt(static_cast<double>(d));
  }

  template <class T>
  struct state {
    std::vector<std::uint32_t> levels;  ///< zigzag-coded levels of the last encode
    /// Nothing is carried from round to round.
    template <class Archive>
    void persist(Archive&) {}
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    detail::require_positive_dim(name, dim);
    validate();
    return state<T>{std::vector<std::uint32_t>(dim)};
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context&) const {
    const std::size_t d = s.levels.size();
    detail::require_size(name, "input", x.size(), d);
    const double inv_step = 1.0 / step;
    std::uint32_t largest = 0;
    for (std::size_t j = 0; j < d; ++j) {
      const double level = std::round(static_cast<double>(x[j]) * inv_step);
      if (!(std::abs(level) <= max_level)) out_of_range(j, static_cast<double>(x[j]));
      const auto q = static_cast<std::int64_t>(level);
      const auto z = static_cast<std::uint32_t>(q >= 0 ? 2 * q : -2 * q - 1);
      s.levels[j] = z;
      largest |= z;  // the width of the OR is the width of the largest level
    }
    const auto w = static_cast<unsigned>(std::bit_width(largest));
    out.write(w, width_bits);
    if (w == 0) return;
    for (std::size_t j = 0; j < d; ++j) out.write(s.levels[j], w);
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    const std::size_t d = s.levels.size();
    detail::require_size(name, "output", out.size(), d);
    const auto w = static_cast<unsigned>(in.read(width_bits, "grid_rounding width"));
    if (w > 32) {
      throw decode_error("corrupt grid_rounding payload: width = " + std::to_string(w) +
                         " exceeds 32 bits");
    }
    // The whole payload's length is known now: check it before touching out.
    detail::require_payload_bits(in, static_cast<std::uint64_t>(w) * d, "grid_rounding");
    if (w > 0) {
      for (std::size_t j = 0; j < d; ++j) {
        const auto z = static_cast<std::int64_t>(in.read(w, "grid_rounding level"));
        const std::int64_t q = (z & 1) ? -(z >> 1) - 1 : (z >> 1);
        out[j] += scale * static_cast<T>(static_cast<double>(q) * step);
      }
    }
    in.expect_end("grid_rounding");
  }

 private:
  [[noreturn]] void out_of_range(std::size_t j, double value) const {
    throw numeric_error("grid_rounding: x[" + std::to_string(j) + "] = " + std::to_string(value) +
                        " is not finite or exceeds 2^31 - 1 grid steps of " + std::to_string(step) +
                        " (increase step)");
  }
};

static_assert(Compressor<grid_rounding, float> && Compressor<grid_rounding, double>);

}  // namespace ecopt
