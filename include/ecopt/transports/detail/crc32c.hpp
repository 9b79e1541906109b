#pragma once
// CRC-32C (Castagnoli polynomial, reflected 0x82F63B78), the checksum of
// tcp_transport's frames. Chosen over a fast non-cryptographic hash because
// its error-detection guarantees are known (every burst of up to 32 bits and
// every odd number of bit errors is caught) and x86-64 computes it in
// hardware (SSE4.2 `crc32`): 8 bytes per cycle with three interleaved streams.
//
// crc32c("123456789") == 0xE3069283 (the standard check value).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace ecopt::detail {

/// Tables for "slicing by 8": table[k][b] is the CRC register after byte b
/// followed by k zero bytes.
inline constexpr auto crc32c_tables = [] {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  for (std::uint32_t b = 0; b < 256; ++b) {
    std::uint32_t c = b;
    for (int bit = 0; bit < 8; ++bit) c = (c >> 1) ^ ((c & 1u) ? 0x82F63B78u : 0u);
    t[0][b] = c;
  }
  for (std::size_t k = 1; k < 8; ++k) {
    for (std::size_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xffu];
  }
  return t;
}();

/// Portable CRC-32C update (register form: no initial or final inversion).
[[nodiscard]] inline std::uint32_t crc32c_update_portable(std::uint32_t crc, const std::byte* p,
                                                          std::size_t n) noexcept {
  const auto& t = crc32c_tables;
  auto load32 = [](const std::byte* q) {
    // Little-endian, whatever the host order, so the value is the same everywhere.
    return static_cast<std::uint32_t>(q[0]) | (static_cast<std::uint32_t>(q[1]) << 8) |
           (static_cast<std::uint32_t>(q[2]) << 16) | (static_cast<std::uint32_t>(q[3]) << 24);
  };
  while (n >= 8) {
    const std::uint32_t lo = crc ^ load32(p);
    const std::uint32_t hi = load32(p + 4);
    crc = t[7][lo & 0xffu] ^ t[6][(lo >> 8) & 0xffu] ^ t[5][(lo >> 16) & 0xffu] ^ t[4][lo >> 24] ^
          t[3][hi & 0xffu] ^ t[2][(hi >> 8) & 0xffu] ^ t[1][(hi >> 16) & 0xffu] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = (crc >> 8) ^ t[0][(crc ^ static_cast<std::uint32_t>(*p++)) & 0xffu];
  return crc;
}

/// The register after `crc` is fed `bytes` zero bytes: linear in crc, so it is
/// the XOR of the images of crc's set bits, which are tabulated once.
class crc32c_zeros_shift {
 public:
  explicit crc32c_zeros_shift(std::size_t bytes) noexcept {
    static constexpr std::array<std::byte, 64> zeros{};
    for (int bit = 0; bit < 32; ++bit) {
      std::uint32_t c = std::uint32_t{1} << bit;
      for (std::size_t left = bytes; left > 0;) {
        const std::size_t step = left < zeros.size() ? left : zeros.size();
        c = crc32c_update_portable(c, zeros.data(), step);
        left -= step;
      }
      image_[static_cast<std::size_t>(bit)] = c;
    }
  }
  [[nodiscard]] std::uint32_t operator()(std::uint32_t crc) const noexcept {
    std::uint32_t out = 0;
    for (std::size_t bit = 0; crc != 0; ++bit, crc >>= 1) {
      if (crc & 1u) out ^= image_[bit];
    }
    return out;
  }

 private:
  std::array<std::uint32_t, 32> image_{};
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ECOPT_DETAIL_CRC32C_HW 1
/// SSE4.2 CRC-32C update; call only when the CPU supports SSE4.2.
///
/// The crc32 instruction has a latency of 3 cycles but a throughput of one per
/// cycle, so long inputs are cut into blocks of three equal lanes, folded as
/// three independent streams and joined by linearity:
///   crc(c, A B C) = shift(shift(crc(c, A)) ^ crc(0, B)) ^ crc(0, C),
/// where shift feeds one lane's worth of zero bytes -- about 3x one stream.
__attribute__((target("sse4.2"))) inline std::uint32_t crc32c_update_sse42(std::uint32_t crc,
                                                                           const std::byte* p,
                                                                           std::size_t n) noexcept {
  constexpr std::size_t lane = 8192;  // bytes per stream and block; the joins cost ~1%
  std::uint64_t c = crc;
  if (n >= 3 * lane) {
    static const crc32c_zeros_shift shift(lane);
    do {
      std::uint64_t c1 = 0, c2 = 0;
      for (std::size_t i = 0; i < lane; i += 8) {
        std::uint64_t w0, w1, w2;
        std::memcpy(&w0, p + i, 8);
        std::memcpy(&w1, p + lane + i, 8);
        std::memcpy(&w2, p + 2 * lane + i, 8);
        c = __builtin_ia32_crc32di(c, w0);
        c1 = __builtin_ia32_crc32di(c1, w1);
        c2 = __builtin_ia32_crc32di(c2, w2);
      }
      c = shift(shift(static_cast<std::uint32_t>(c)) ^ static_cast<std::uint32_t>(c1)) ^
          static_cast<std::uint32_t>(c2);
      p += 3 * lane;
      n -= 3 * lane;
    } while (n >= 3 * lane);
  }
  while (n >= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);  // x86 is little-endian: same bytes as the portable path
    c = __builtin_ia32_crc32di(c, word);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<std::uint32_t>(c);
  while (n-- > 0) c32 = __builtin_ia32_crc32qi(c32, static_cast<unsigned char>(*p++));
  return c32;
}

[[nodiscard]] inline bool crc32c_hardware_available() noexcept {
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
}

/// Constants of the carry-less multiply ("folding") path below.
///
/// The folding identity (Gopal et al., Intel 2009, "Fast CRC computation for
/// generic polynomials using PCLMULQDQ"): a 128-bit block A = A_hi x^64 + A_lo
/// that sits `bits` bits before block C contributes A x^bits, which is
/// congruent mod P to A_hi (x^(bits+64) mod P) + A_lo (x^bits mod P), a
/// polynomial of degree < 96 that is simply XORed into C. In the reflected
/// bit order of this CRC, a carry-less product of two 64-bit operands comes
/// out multiplied by x once more, hence the exponents bits+63 and bits-1.
namespace crc32c_folding {
/// x^n mod P, P = x^32 + 0x1EDC6F41 (normal bit order: bit k is x^k).
[[nodiscard]] constexpr std::uint64_t x_power_mod(std::size_t n) noexcept {
  std::uint64_t r = 1;
  for (std::size_t i = 0; i < n; ++i) {
    r <<= 1;
    if ((r >> 32) & 1u) r ^= 0x11EDC6F41ull;
  }
  return r;
}
/// A polynomial of degree < 32 as a reflected 64-bit operand (bit i is x^(63-i)).
[[nodiscard]] constexpr std::uint64_t reflected_operand(std::uint64_t p) noexcept {
  std::uint64_t out = 0;
  for (int i = 0; i < 32; ++i) {
    if ((p >> i) & 1u) out |= std::uint64_t{1} << (63 - i);
  }
  return out;
}
/// {multiplier of A_hi (the block's first 8 bytes), multiplier of A_lo}.
[[nodiscard]] constexpr std::array<std::uint64_t, 2> constants(std::size_t bits) noexcept {
  return {reflected_operand(x_power_mod(bits + 63)), reflected_operand(x_power_mod(bits - 1))};
}
inline constexpr std::array<std::uint64_t, 2> over_256_bytes = constants(256 * 8);
inline constexpr std::array<std::uint64_t, 2> over_64_bytes = constants(64 * 8);
}  // namespace crc32c_folding

/// Folds each 128-bit lane of `acc` forward onto the lanes of `next`.
__attribute__((target("avx512f,vpclmulqdq"))) inline __m512i crc32c_fold_512(
    __m512i acc, __m512i multipliers, __m512i next) noexcept {
  const __m512i hi = _mm512_clmulepi64_epi128(acc, multipliers, 0x00);  // first 8 bytes
  const __m512i lo = _mm512_clmulepi64_epi128(acc, multipliers, 0x11);
  return _mm512_ternarylogic_epi64(hi, lo, next, 0x96);  // hi ^ lo ^ next
}

__attribute__((target("avx512f,vpclmulqdq"))) inline __m512i crc32c_multipliers_512(
    const std::array<std::uint64_t, 2>& k) noexcept {
  const auto k0 = static_cast<long long>(k[0]);
  const auto k1 = static_cast<long long>(k[1]);
  return _mm512_set_epi64(k1, k0, k1, k0, k1, k0, k1, k0);
}

/// CRC-32C update by folding 256-byte blocks with 512-bit carry-less
/// multiplies (AVX-512 VPCLMULQDQ): four independent accumulators keep the
/// multipliers busy, so it runs at memory speed rather than at the crc32
/// instruction's 8 bytes per cycle. The folded 64 bytes and the tail go
/// through crc32c_update_sse42. Needs n >= 256 and a CPU with avx512f and
/// vpclmulqdq (crc32c_folding_available).
__attribute__((target("avx512f,vpclmulqdq,sse4.2"))) inline std::uint32_t crc32c_update_vpclmul(
    std::uint32_t crc, const std::byte* p, std::size_t n) noexcept {
  const __m512i over_256 = crc32c_multipliers_512(crc32c_folding::over_256_bytes);
  const __m512i over_64 = crc32c_multipliers_512(crc32c_folding::over_64_bytes);
  // The register's initial value joins the first four bytes (linearity).
  __m512i a0 = _mm512_xor_si512(
      _mm512_loadu_si512(p),
      _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, static_cast<int>(crc)));
  __m512i a1 = _mm512_loadu_si512(p + 64);
  __m512i a2 = _mm512_loadu_si512(p + 128);
  __m512i a3 = _mm512_loadu_si512(p + 192);
  p += 256;
  n -= 256;
  while (n >= 256) {
    a0 = crc32c_fold_512(a0, over_256, _mm512_loadu_si512(p));
    a1 = crc32c_fold_512(a1, over_256, _mm512_loadu_si512(p + 64));
    a2 = crc32c_fold_512(a2, over_256, _mm512_loadu_si512(p + 128));
    a3 = crc32c_fold_512(a3, over_256, _mm512_loadu_si512(p + 192));
    p += 256;
    n -= 256;
  }
  a1 = crc32c_fold_512(a0, over_64, a1);
  a2 = crc32c_fold_512(a1, over_64, a2);
  a3 = crc32c_fold_512(a2, over_64, a3);
  // 64 bytes congruent to everything folded so far; CRC them, then the tail.
  alignas(64) std::byte folded[64];
  _mm512_store_si512(folded, a3);
  return crc32c_update_sse42(crc32c_update_sse42(0, folded, 64), p, n);
}

[[nodiscard]] inline bool crc32c_folding_available() noexcept {
  static const bool available = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("vpclmulqdq") &&
                                __builtin_cpu_supports("sse4.2");
  return available;
}
#else
#define ECOPT_DETAIL_CRC32C_HW 0
[[nodiscard]] inline bool crc32c_hardware_available() noexcept { return false; }
[[nodiscard]] inline bool crc32c_folding_available() noexcept { return false; }
#endif

/// The CRC-32C register after feeding `data` (no initial or final inversion),
/// on the fastest path this CPU has; for checksums computed piece by piece:
/// crc32c(A B) == ~crc32c_update(crc32c_update(0xFFFFFFFF, A), B).
[[nodiscard]] inline std::uint32_t crc32c_update(std::uint32_t crc,
                                                 std::span<const std::byte> data) noexcept {
#if ECOPT_DETAIL_CRC32C_HW
  // Below ~1 KiB the three crc32 streams are as fast and need no set-up.
  if (data.size() >= 1024 && crc32c_folding_available()) {
    return crc32c_update_vpclmul(crc, data.data(), data.size());
  }
  if (crc32c_hardware_available()) return crc32c_update_sse42(crc, data.data(), data.size());
#endif
  return crc32c_update_portable(crc, data.data(), data.size());
}

/// CRC-32C of `data` (initial value and final XOR 0xFFFFFFFF, as in RFC 3720).
[[nodiscard]] inline std::uint32_t crc32c(std::span<const std::byte> data) noexcept {
  return ~crc32c_update(0xFFFFFFFFu, data);
}

}  // namespace ecopt::detail
