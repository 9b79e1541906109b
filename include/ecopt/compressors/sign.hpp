#pragma once
// Plain sign, the compressor of signSGD: C(x) = sign(x), one bit per coordinate.
// Bernstein, Wang, Azizzadenesheli, Anandkumar 2018, arXiv:1802.04434.
//
// Neither unbiased nor a contraction (|C(x)_j| = 1 whatever |x_j|), so it
// declares no omega and no delta: the step size alone sets the magnitude
// (x <- x - lr * sign(g)). With error feedback prefer scaled_sign, which is a
// contraction (EF-SignSGD). sign(0) = +1 (a one-bit code cannot send 0), as
// for -0, except that an all-zero vector is sent as zero: a worker with
// nothing to send (a zero gradient or residual) does not push every coordinate
// by the step size. The receivers here average the workers' signs; the
// paper's majority vote (the sign of that sum, sent back down) is not
// implemented.
//
// Payload: one bit "x is not all zero", then d sign bits (1 = negative; all 0
// after a 0 flag), exactly d + 1 bits. Non-finite input throws numeric_error,
// since a NaN has no sign to send.
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

struct sign {
  static constexpr std::string_view name = "sign";

  [[nodiscard]] std::uint64_t bits(std::size_t d) const noexcept {
    return static_cast<std::uint64_t>(d) + 1;
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return bits(d); }

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
    const T* xs = x.data();
    // Usually stops at the first coordinate.
    const bool nonzero = std::any_of(xs, xs + d, [](T v) { return v != T(0); });
    out.write(nonzero ? 1 : 0, 1);
    for (std::size_t j = 0; j < d; j += 64) {
      const std::size_t m = std::min<std::size_t>(64, d - j);
      bool finite = true;
      for (std::size_t i = 0; i < m; ++i) finite &= std::isfinite(xs[j + i]);
      if (!finite) throw_not_finite(xs + j, m, j);
      out.write(detail::negative_bits(xs + j, m), static_cast<unsigned>(m));  // 0 if all zero
    }
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const std::size_t d = s.dim;
    detail::require_payload_bits(in, bits(d), "sign");
    T* o = out.data();
    if (!in.read_bit("sign flag")) {
      for (std::size_t j = 0; j < d; j += 64) {
        if (in.read(static_cast<unsigned>(std::min<std::size_t>(64, d - j)), "sign bits") != 0) {
          throw decode_error("corrupt sign payload: sign bits set after an all-zero flag");
        }
      }
    } else {
      for (std::size_t j = 0; j < d; j += 64) {
        const std::size_t m = std::min<std::size_t>(64, d - j);
        detail::add_signed(in.read(static_cast<unsigned>(m), "sign bits"), m, scale, o + j);
      }
    }
    in.expect_end("sign");
  }

 private:
  template <class T>
  [[noreturn, gnu::cold, gnu::noinline]] static void throw_not_finite(const T* x, std::size_t m,
                                                                      std::size_t at) {
    std::size_t i = 0;
    while (i + 1 < m && std::isfinite(x[i])) ++i;
    throw numeric_error("sign: input[" + std::to_string(at + i) + "] is not finite");
  }
};

static_assert(Compressor<sign, float> && Compressor<sign, double>);

}  // namespace ecopt
