// libFuzzer harness: every compressor of the registry (compressors/all.hpp)
// decodes a hostile payload. Control bytes: the compressor and scalar type,
// the dimension, the ratio (for sparsifiers), the sender's seed, round and
// rank, and whether the bytes are a payload (decode_add) or a summed buffer
// (decode_summed, for summable compressors). A decoder may refuse the bytes
// only with decode_error; what it accepts must decode to finite values.
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "ecopt/compressors/all.hpp"
#include "ecopt/error.hpp"
#include "fuzz_input.hpp"

namespace {

using ecopt::fuzz::finding;
using ecopt::fuzz::input;

constexpr std::size_t dims[] = {1, 2, 3, 5, 8, 16, 31, 64, 100, 257, 1024, 4099};
constexpr double ratios[] = {0.01, 0.1, 0.5, 1.0};

template <class C, class T>
void require_finite(const std::vector<T>& out, const char* what) {
  for (const T v : out) {
    if (!std::isfinite(v)) {
      const std::string message =
          std::string(C::name) + (sizeof(T) == 4 ? " (float)" : " (double)") + ": " + what;
      finding(message.c_str());
    }
  }
}

template <class C, class T>
void decode(input& in) {
  const std::size_t dim = dims[in.byte() % std::size(dims)];
  C c{};
  const double ratio = ratios[in.byte() % std::size(ratios)];
  if constexpr (requires { c.ratio = ratio; }) c.ratio = ratio;
  const ecopt::round_context sender{
      .seed = in.byte(), .round = in.byte(), .rank = in.byte() % 4, .world = 4};
  const bool summed = (in.byte() & 1) != 0;
  std::optional<ecopt::compressor_state_t<C, T>> state;
  try {
    state.emplace(c.template make_state<T>(dim));
  } catch (const ecopt::invalid_argument&) {
    return;  // a dimension this compressor does not take
  }
  std::vector<T> out(dim, T(0));
  if constexpr (requires(std::span<const float> buf) {
                  c.summable();
                  c.summable_size(dim);
                  c.decode_summed(buf, *state, std::span<T>(out), T(1), sender);
                }) {
    if (summed && c.summable()) {
      std::vector<float> buf(c.summable_size(dim));
      if (in.rest().size() < buf.size() * sizeof(float)) return;
      std::memcpy(buf.data(), in.rest().data(), buf.size() * sizeof(float));
      try {
        c.decode_summed(std::span<const float>(buf), *state, std::span<T>(out), T(1), sender);
      } catch (const ecopt::decode_error&) {
        return;
      }
      require_finite<C>(out, "decode_summed accepted a buffer and gave a non-finite value");
      return;
    }
  }
  ecopt::bit_reader reader(in.rest());
  try {
    c.decode_add(reader, *state, std::span<T>(out), T(1), sender);
  } catch (const ecopt::decode_error&) {
    return;
  }
  require_finite<C>(out, "decode_add accepted a payload and gave a non-finite value");
}

using decoder = void (*)(input&);

template <std::size_t... I>
constexpr auto decoders(std::index_sequence<I...>) {
  using all = ecopt::all_compressors;
  return std::array<decoder, 2 * sizeof...(I)>{&decode<std::tuple_element_t<I, all>, float>...,
                                               &decode<std::tuple_element_t<I, all>, double>...};
}

constexpr auto table =
    decoders(std::make_index_sequence<std::tuple_size_v<ecopt::all_compressors>>{});

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  input in(data, size);
  table[in.byte() % table.size()](in);
  return 0;
}
