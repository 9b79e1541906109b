#pragma once
// SelectsCoordinates: a sparsifier that keeps a fixed number of coordinates
// unchanged and can say which, so another compressor can work on the kept
// values alone (chain.hpp).
//
// Required, for a scalar type T and the policy's state S:
//   std::size_t kept(std::size_t dim) const     -- how many coordinates are kept
//   std::span<const std::uint32_t> select(std::span<const T> x, S&) const
//        -- the kept(dim) indices of x, strictly increasing; the policy's C(x)
//           is x on these indices and zero elsewhere
// The selection may depend on x and the state only (not on the round), so a
// receiver learns it from the wire, not from a shared seed.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "ecopt/compressor.hpp"

namespace ecopt {

template <class A, class T = float>
concept SelectsCoordinates = Compressor<A, T> &&
    requires(const A& a, std::span<const T> x, compressor_state_t<A, T>& s, std::size_t dim) {
  { a.kept(dim) } -> std::convertible_to<std::size_t>;
  { a.select(x, s) } -> std::convertible_to<std::span<const std::uint32_t>>;
};

}  // namespace ecopt
