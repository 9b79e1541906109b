#pragma once
// The uncompressed baseline: d float32 values, omega = 0 and delta = 1.
// Payloads are dense, so they add in compressed form (allreduce).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/round_context.hpp"

namespace ecopt {

struct no_compression {
  static constexpr std::string_view name = "no_compression";

  template <class T>
  using state = detail::dim_state<T>;

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    return detail::make_dim_state<T>(name, dim);
  }

  [[nodiscard]] std::uint64_t bits(std::size_t d) const noexcept {
    return 32 * static_cast<std::uint64_t>(d);
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return bits(d); }
  [[nodiscard]] double omega(std::size_t) const noexcept { return 0.0; }
  [[nodiscard]] double delta(std::size_t) const noexcept { return 1.0; }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context&) const {
    detail::require_size(name, "input", x.size(), s.dim);
    detail::write_values(out, x);
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    detail::require_payload_bits(in, bits(s.dim), "no_compression");
    T* o = out.data();
    detail::read_values(in, s.dim, "value", [o, scale](std::size_t at, std::span<const float> v) {
      for (std::size_t i = 0; i < v.size(); ++i) o[at + i] += scale * static_cast<T>(v[i]);
    });
    in.expect_end("no_compression");
  }

  [[nodiscard]] bool summable() const noexcept { return true; }
  [[nodiscard]] std::size_t summable_size(std::size_t d) const noexcept { return d; }

  template <class T>
  void encode_summable(std::span<const T> x, state<T>& s, std::span<float> buf,
                       const round_context&) const {
    detail::require_size(name, "input", x.size(), s.dim);
    detail::require_size(name, "summable buffer", buf.size(), s.dim);
    for (std::size_t j = 0; j < x.size(); ++j) buf[j] = static_cast<float>(x[j]);
  }

  template <class T>
  void decode_summed(std::span<const float> buf, state<T>& s, std::span<T> out, T scale,
                     const round_context&) const {
    detail::require_size(name, "summed buffer", buf.size(), s.dim);
    detail::require_size(name, "output", out.size(), s.dim);
    detail::require_finite(buf, "summed value");
    for (std::size_t j = 0; j < buf.size(); ++j) out[j] += scale * static_cast<T>(buf[j]);
  }
};

static_assert(Compressor<no_compression, float> && Compressor<no_compression, double>);

}  // namespace ecopt
