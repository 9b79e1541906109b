#pragma once
// PowerSGD: a rank-r approximation of the parameter viewed as a matrix, found
// by one step of subspace (power) iteration warm-started from the previous
// round's Q. Vogels, Karimireddy, Jaggi 2019, arXiv:1905.13727 (Algorithm 1).
//
// The vector x of length d is viewed as the column-major rows x cols matrix M
// formed by its first rows * cols entries; the last d - rows * cols entries
// (the remainder) travel dense. With Q (cols x r) shared by all ranks:
//   P = M Q,  P^ = orthonormalise(P),  Q = M^T P^,  C(x) = P^ Q^T (+ remainder).
// The approximation is the projection P^ P^^T M, so ||C(M) - M|| <= ||M||, but
// how much it captures depends on the warm start: a deterministic, biased
// compressor that declares neither omega nor delta, and wants error feedback.
//
// Shape: `rows` when given (cols = floor(d / rows)); when rows == 0, a
// near-square shape: the rows in [ceil(s/2), s], s = floor(sqrt(d)), with the
// fewest floats r(rows + cols) + remainder (ties: the larger rows). When the
// factors would not be smaller than the matrix, r(rows + cols) >= rows * cols
// (tiny d, or rank >= min(rows, cols)), the whole vector travels dense.
//
// Standalone payload (one worker: encode / decode_add): P^ (rows x r), then Q
// (cols x r), both column-major, then the remainder, all float32:
// exactly 32 (r (rows + cols) + remainder) bits. The decoder needs nothing but
// the payload; it rejects a P^ whose columns are not orthonormal (or zero).
//
// Distributed (`aggregate`, the paper's pair of allreduces): every rank forms
// P_i = M_i Q with the same Q; P = sum_i P_i (one allreduce, the remainders
// ride along); P^ = orthonormalise(P) identically on every rank; Q_i = M_i^T P^;
// Q = sum_i Q_i (second allreduce); the aggregate is P^ Q^T = P^ P^^T sum_i M_i.
// Payload bits per rank: 32 (iterations r (rows + cols) + remainder).
//
// Warm start: next round's Q is this round's final Q (the allreduced one in
// `aggregate`) with unit columns. Scaling Q's columns by positive factors does
// not change P^ (Gram-Schmidt normalises each column), so this is the paper's
// warm start, without Q's magnitude growing like ||M||^k over the rounds. The
// first Q, and any column that became zero, is drawn N(0, 1) from the shared
// stream (seed, round), so all ranks agree without communication. The state
// remembers the Q a round started from: encoding the same (seed, round) again
// gives the same payload; a round that does not follow the previous one (or a
// new seed) starts from a fresh draw.
//
// Orthonormalisation is modified Gram-Schmidt applied twice per column ("twice
// is enough", Giraud, Langou, Rozloznik 2005) with dot products summed in
// double across blocks: no allocation (unlike Eigen's QR), orthonormal to a
// few ulps, and a column that is numerically in the span of the previous ones
// becomes zero (the epfml reference adds 1e-8 to the norm instead).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/collectives/allreduce.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/parameter_layout.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {

/// How power_sgd lays a vector of length d out as a matrix.
struct power_sgd_shape {
  std::size_t rows = 0;       ///< 0 when the whole vector travels dense
  std::size_t cols = 0;       ///< 0 when the whole vector travels dense
  std::size_t rank = 0;       ///< r; 0 when the whole vector travels dense
  std::size_t remainder = 0;  ///< trailing entries sent dense (d - rows * cols)

  [[nodiscard]] bool dense() const noexcept { return rank == 0; }
  /// Floats of the factors P (rows x r) and Q (cols x r).
  [[nodiscard]] std::size_t factor_floats() const noexcept { return rank * (rows + cols); }
  /// Floats of one standalone payload.
  [[nodiscard]] std::size_t payload_floats() const noexcept { return factor_floats() + remainder; }
};

struct power_sgd {
  static constexpr std::string_view name = "power_sgd";
  static constexpr std::size_t max_rank = std::size_t{1} << 16;
  static constexpr std::size_t max_iterations = 64;

  std::size_t rank = 2;        ///< r, the rank of the approximation
  std::size_t rows = 0;        ///< matrix rows; 0 = a near-square shape for d
  std::size_t iterations = 1;  ///< power iterations per round
  bool warm_start = true;      ///< start each round from the previous round's Q

  void validate() const {
    if (rank < 1 || rank > max_rank) {
      throw invalid_argument("power_sgd: rank = " + std::to_string(rank) +
                             " must be in [1, 65536]");
    }
    if (iterations < 1 || iterations > max_iterations) {
      throw invalid_argument("power_sgd: iterations = " + std::to_string(iterations) +
                             " must be in [1, 64]");
    }
  }

  /// The matrix view of a vector of length d (throws when rows > d).
  [[nodiscard]] power_sgd_shape shape(std::size_t d) const {
    if (rows > d) {
      throw invalid_argument("power_sgd: rows = " + std::to_string(rows) +
                             " exceeds the dimension " + std::to_string(d));
    }
    const std::size_t r = rank;
    const auto cost = [&](std::size_t m) { return r * (m + d / m) + d % m; };
    std::size_t best = rows;
    if (best == 0 && d > 0) {
      std::size_t s = static_cast<std::size_t>(std::sqrt(static_cast<double>(d)));
      while (s * s > d) --s;
      while ((s + 1) * (s + 1) <= d) ++s;
      best = s;
      for (std::size_t m = s; m >= (s + 1) / 2 && m >= 1; --m) {
        if (cost(m) < cost(best)) best = m;
      }
    }
    if (best == 0 || cost(best) - d % best >= best * (d / best)) {
      return power_sgd_shape{0, 0, 0, d};
    }
    return power_sgd_shape{best, d / best, r, d % best};
  }

  /// The compressor for one block of a parameter_layout (per_block.hpp): a
  /// matrix block gives its rows (a row-major block is the column-major matrix
  /// of its transpose, whose rank-r approximation is the transpose of the
  /// block's); a vector block is one column, which travels dense.
  [[nodiscard]] power_sgd for_block(const parameter_block& block) const {
    power_sgd c = *this;
    c.rows = block.is_matrix() ? block.column_major_rows() : block.size();
    return c;
  }

  /// Exact standalone payload bits: 32 (r (rows + cols) + remainder).
  [[nodiscard]] std::uint64_t bits(std::size_t d) const {
    return 32 * static_cast<std::uint64_t>(shape(d).payload_floats());
  }
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const { return bits(d); }

  /// Payload bits one rank contributes per `aggregate` round:
  /// 32 (iterations r (rows + cols) + remainder).
  [[nodiscard]] std::uint64_t aggregate_bits(std::size_t d) const {
    const power_sgd_shape sh = shape(d);
    return 32 * (static_cast<std::uint64_t>(iterations) * sh.factor_floats() + sh.remainder);
  }

  /// Fills q (cols x r, column-major) with the shared N(0, 1) draws of
  /// (ctx.seed, ctx.round): the Q a round starts from when there is no warm start.
  template <class T>
  static void draw_q(std::span<T> q, std::size_t cols, const round_context& ctx) {
    for (std::size_t k = 0; cols > 0 && k < q.size() / cols; ++k) {
      draw_column(q.data() + k * cols, cols, k, ctx);
    }
  }

  template <class T>
  struct state {
    std::size_t dim = 0;
    power_sgd_shape shape;
    std::vector<T> q_start;   ///< cols x r: the Q this round started from
    std::vector<T> q_next;    ///< cols x r: next round's warm start (unit or zero columns)
    std::vector<T> p;         ///< rows x r: P, then P^ (decoder scratch too)
    std::vector<T> q;         ///< cols x r: M^T P^ (decoder scratch too)
    std::vector<float> wire;  ///< aggregate's allreduce buffer; the decoder's remainder
    std::uint64_t seed = 0;
    std::uint64_t round = 0;
    bool started = false;
    /// The warm start and the round it belongs to (p, q and wire are scratch).
    template <class Archive>
    void persist(Archive& a) {
      a("q_start", q_start);
      a("q_next", q_next);
      a("seed", seed);
      a("round", round);
      a("started", started);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_positive_dim(name, dim);
    const power_sgd_shape sh = shape(dim);
    const std::size_t pr = sh.rows * sh.rank;
    const std::size_t qr = sh.cols * sh.rank;
    state<T> s;
    s.dim = dim;
    s.shape = sh;
    s.q_start.resize(qr);
    s.q_next.resize(qr);
    s.p.resize(pr);
    s.q.resize(qr);
    s.wire.resize(sh.dense() ? dim : std::max(pr + sh.remainder, qr));
    return s;
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    const power_sgd_shape& sh = s.shape;
    if (sh.dense()) {
      write_checked(out, x, "input");
      return;
    }
    begin_round(s, ctx);
    std::copy(s.q_start.begin(), s.q_start.end(), s.q.begin());
    for (std::size_t it = 0; it < iterations; ++it) {
      multiply(x.data(), sh, s.q.data(), s.p.data());
      require_finite_input(std::span<const T>(s.p));
      orthonormalise(s.p.data(), sh.rows, sh.rank);
      multiply_transposed(x.data(), sh, s.p.data(), s.q.data());
      if (it + 1 < iterations) normalise_columns(s.q.data(), sh.cols, sh.rank);
    }
    write_checked(out, std::span<const T>(s.p), "P");
    write_checked(out, std::span<const T>(s.q), "Q");
    write_checked(out, x.subspan(sh.rows * sh.cols), "remainder");
    finish_round(s, s.q.data());
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context&) const {
    detail::require_size(name, "output", out.size(), s.dim);
    const power_sgd_shape& sh = s.shape;
    detail::require_payload_bits(in, 32 * static_cast<std::uint64_t>(sh.payload_floats()),
                                 "power_sgd");
    // Everything is read and checked before `out` is touched.
    read_into(in, std::span<T>(s.p), "power_sgd P");
    read_into(in, std::span<T>(s.q), "power_sgd Q");
    const std::span<float> rem(s.wire.data(), sh.remainder);
    in.read_f32s(rem, "power_sgd remainder");
    detail::require_finite(rem, "power_sgd remainder");
    in.expect_end("power_sgd");
    if (!sh.dense()) {
      double bound = 0;  // bounds |scale (P Q^T)_ij|, so the sum cannot overflow T
      for (std::size_t k = 0; k < sh.rank; ++k) {
        check_orthonormal(s.p.data(), sh.rows, k);
        double qmax = 0;
        for (std::size_t j = 0; j < sh.cols; ++j) {
          qmax = std::max(qmax, std::fabs(static_cast<double>(s.q[k * sh.cols + j])));
        }
        bound += qmax * std::fabs(static_cast<double>(scale)) * (1 + orthonormal_tolerance);
      }
      if (!(bound <= static_cast<double>(std::numeric_limits<T>::max()))) {
        throw decode_error("corrupt power_sgd payload: P Q^T would overflow (|Q| up to " +
                           std::to_string(bound) + ")");
      }
      add_outer(out.data(), sh, s.p.data(), s.q.data(), scale);
    }
    T* tail = out.data() + sh.rows * sh.cols;
    for (std::size_t i = 0; i < rem.size(); ++i) tail[i] += scale * static_cast<T>(rem[i]);
  }

  /// The distributed PowerSGD round (Algorithm 1 of the paper), called by every
  /// rank with its own x: sum += P^ Q^T over all ranks (+ the remainders' sum),
  /// own += this rank's share of it. Every rank ends with a bitwise identical sum.
  ///
  /// Error feedback: `own` is the decompressed MEAN approximation P^ Q^T / world,
  /// not this rank's own P^ Q_i^T, so an error_feedback memory becomes
  /// e_i = M_i - P^ Q_mean^T (Algorithm 2, line 9, as the authors' code does:
  /// `mem = tensor - out` after Q is averaged). The sum of the memories is then
  /// exactly what the aggregate missed, sum_i M_i - P^ P^^T sum_i M_i, which is
  /// what error feedback must carry to the next round. (The memories' spread,
  /// e_i - e_j, accumulates the ranks' gradient differences g_i - g_j and is
  /// never corrected; it cancels in the sum, up to float32 rounding of P_i.)
  /// The remainder travels exactly, so its share of `own` is this rank's own
  /// remainder (zero memory, as the reference does for uncompressed tensors).
  template <class T, Transport Tr>
  std::uint64_t aggregate(Tr& transport, std::span<const T> x, state<T>& s, std::span<T> own,
                          std::span<T> sum, collective_workspace& workspace,
                          const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    detail::require_size(name, "own output", own.size(), s.dim);
    detail::require_size(name, "sum output", sum.size(), s.dim);
    const power_sgd_shape& sh = s.shape;
    const std::size_t pr = sh.rows * sh.rank;
    const std::size_t qr = sh.cols * sh.rank;
    const std::size_t body = sh.rows * sh.cols;
    float* wire = s.wire.data();
    std::uint64_t floats = 0;

    // The remainder (the whole vector when dense) rides with the first P.
    const std::size_t rem_at = sh.dense() ? 0 : pr;
    for (std::size_t i = 0; i < sh.remainder; ++i) {
      wire[rem_at + i] = static_cast<float>(x[body + i]);
      own[body + i] += static_cast<T>(wire[rem_at + i]);
    }
    if (sh.dense()) {
      reduce(transport, std::span<float>(wire, sh.remainder), workspace, "the summed input");
      for (std::size_t i = 0; i < sh.remainder; ++i) sum[i] += static_cast<T>(wire[i]);
      return 32 * static_cast<std::uint64_t>(sh.remainder);
    }

    begin_round(s, ctx);
    std::copy(s.q_start.begin(), s.q_start.end(), s.q.begin());
    for (std::size_t it = 0; it < iterations; ++it) {
      multiply(x.data(), sh, s.q.data(), s.p.data());
      for (std::size_t i = 0; i < pr; ++i) wire[i] = static_cast<float>(s.p[i]);
      const std::size_t n = pr + (it == 0 ? sh.remainder : 0);
      reduce(transport, std::span<float>(wire, n), workspace, "the summed P");
      floats += n;
      if (it == 0) {
        for (std::size_t i = 0; i < sh.remainder; ++i)
          sum[body + i] += static_cast<T>(wire[pr + i]);
      }
      for (std::size_t i = 0; i < pr; ++i) s.p[i] = static_cast<T>(wire[i]);
      orthonormalise(s.p.data(), sh.rows, sh.rank);  // the same bits on every rank
      multiply_transposed(x.data(), sh, s.p.data(), s.q.data());
      for (std::size_t i = 0; i < qr; ++i) wire[i] = static_cast<float>(s.q[i]);
      reduce(transport, std::span<float>(wire, qr), workspace, "the summed Q");
      floats += qr;
      for (std::size_t i = 0; i < qr; ++i) s.q[i] = static_cast<T>(wire[i]);
      if (it + 1 < iterations) normalise_columns(s.q.data(), sh.cols, sh.rank);
    }
    add_outer(sum.data(), sh, s.p.data(), s.q.data(), T(1));
    add_outer(own.data(), sh, s.p.data(), s.q.data(), T(1) / static_cast<T>(transport.size()));
    finish_round(s, s.q.data());
    return 32 * floats;
  }

  // --- The same round phase by phase (PhasedAggregation, compressor.hpp) --------------
  // per_block fuses phase k of every weight matrix into one allreduce: PowerSGD
  // over all layers of a model costs two allreduces per round, not two per layer.
  // Phase 2i carries P of iteration i (phase 0 also the remainder, or the whole
  // vector when dense), phase 2i + 1 its Q. Run over one matrix with one
  // allreduce per phase, this is `aggregate`, bit for bit.

  template <class T>
  [[nodiscard]] std::size_t phases(const state<T>& s) const noexcept {
    return s.shape.dense() ? 1 : 2 * iterations;
  }

  template <class T>
  [[nodiscard]] std::size_t phase_floats(const state<T>& s, std::size_t phase) const noexcept {
    const power_sgd_shape& sh = s.shape;
    if (sh.dense()) return sh.remainder;
    if (phase % 2 == 1) return sh.cols * sh.rank;
    return sh.rows * sh.rank + (phase == 0 ? sh.remainder : 0);
  }

  /// Writes this rank's floats of `phase` to `out` (own += what it sends exactly).
  template <class T>
  void phase_begin(std::span<const T> x, state<T>& s, std::size_t phase, std::span<float> out,
                   std::span<T> own, const round_context& ctx) const {
    detail::require_size(name, "input", x.size(), s.dim);
    detail::require_size(name, "phase buffer", out.size(), phase_floats(s, phase));
    const power_sgd_shape& sh = s.shape;
    const std::size_t pr = sh.rows * sh.rank;
    const std::size_t body = sh.rows * sh.cols;
    if (phase == 0) {
      const std::size_t rem_at = sh.dense() ? 0 : pr;
      for (std::size_t i = 0; i < sh.remainder; ++i) {
        out[rem_at + i] = static_cast<float>(x[body + i]);
        own[body + i] += static_cast<T>(out[rem_at + i]);
      }
      if (sh.dense()) return;
      begin_round(s, ctx);
      std::copy(s.q_start.begin(), s.q_start.end(), s.q.begin());
    }
    if (phase % 2 == 0) {
      multiply(x.data(), sh, s.q.data(), s.p.data());
      for (std::size_t i = 0; i < pr; ++i) out[i] = static_cast<float>(s.p[i]);
    } else {
      multiply_transposed(x.data(), sh, s.p.data(), s.q.data());
      for (std::size_t i = 0; i < s.q.size(); ++i) out[i] = static_cast<float>(s.q[i]);
    }
  }

  /// Reads the ranks' sum of `phase`; after the last phase, sum += P^ Q^T and
  /// own += P^ Q^T / world (as `aggregate`).
  template <class T>
  void phase_end(state<T>& s, std::size_t phase, std::span<const float> summed, std::span<T> own,
                 std::span<T> sum, const round_context& ctx) const {
    detail::require_size(name, "summed phase", summed.size(), phase_floats(s, phase));
    for (const float f : summed) {
      if (detail::not_finite_bits(f)) {
        throw numeric_error(std::string("power_sgd: the summed ") + (phase % 2 == 0 ? "P" : "Q") +
                            " is not finite (a rank's input is non-finite or overflows float32)");
      }
    }
    const power_sgd_shape& sh = s.shape;
    const std::size_t pr = sh.rows * sh.rank;
    const std::size_t body = sh.rows * sh.cols;
    if (sh.dense()) {
      for (std::size_t i = 0; i < sh.remainder; ++i) sum[i] += static_cast<T>(summed[i]);
      return;
    }
    if (phase % 2 == 0) {
      if (phase == 0) {
        for (std::size_t i = 0; i < sh.remainder; ++i)
          sum[body + i] += static_cast<T>(summed[pr + i]);
      }
      for (std::size_t i = 0; i < pr; ++i) s.p[i] = static_cast<T>(summed[i]);
      orthonormalise(s.p.data(), sh.rows, sh.rank);  // the same bits on every rank
      return;
    }
    for (std::size_t i = 0; i < s.q.size(); ++i) s.q[i] = static_cast<T>(summed[i]);
    if (phase + 1 < phases(s)) {
      normalise_columns(s.q.data(), sh.cols, sh.rank);
      return;
    }
    add_outer(sum.data(), sh, s.p.data(), s.q.data(), T(1));
    add_outer(own.data(), sh, s.p.data(), s.q.data(), T(1) / static_cast<T>(ctx.world));
    finish_round(s, s.q.data());
  }

 private:
  /// Key of the shared Q draws (column k uses key + k), apart from other shared streams.
  static constexpr std::uint64_t q_stream_key = 0x7073'6764'0000'0000ULL;
  /// Slack of the decoder's orthonormality check (the encoder achieves a few ulps).
  static constexpr double orthonormal_tolerance = 1e-3;

  template <class T>
  static void draw_column(T* q, std::size_t cols, std::size_t k, const round_context& ctx) {
    counter_rng rng = counter_rng::stream(ctx.seed, stream_purpose::shared_compression,
                                          q_stream_key + k, ctx.round);
    for (std::size_t j = 0; j < cols; ++j) q[j] = static_cast<T>(rng.normal());
  }

  // Chooses the Q this round starts from (see the header comment).
  template <class T>
  void begin_round(state<T>& s, const round_context& ctx) const {
    const std::size_t cols = s.shape.cols;
    const std::size_t r = s.shape.rank;
    const bool same_run = s.started && ctx.seed == s.seed;
    const bool repeat = same_run && ctx.round == s.round;
    const bool next = same_run && s.round != std::numeric_limits<std::uint64_t>::max() &&
                      ctx.round == s.round + 1;
    if (!repeat) {
      if (warm_start && next) {
        std::copy(s.q_next.begin(), s.q_next.end(), s.q_start.begin());
      } else {
        for (std::size_t k = 0; k < r; ++k) draw_column(s.q_start.data() + k * cols, cols, k, ctx);
      }
      // A zero column would stay zero forever: draw it afresh.
      for (std::size_t k = 0; k < r; ++k) {
        T* col = s.q_start.data() + k * cols;
        if (std::all_of(col, col + cols, [](T v) { return v == T(0); })) {
          draw_column(col, cols, k, ctx);
        }
      }
    }
    s.started = true;
    s.seed = ctx.seed;
    s.round = ctx.round;
  }

  template <class T>
  void finish_round(state<T>& s, const T* q) const {
    if (!warm_start) return;
    std::copy(q, q + s.q_next.size(), s.q_next.begin());
    normalise_columns(s.q_next.data(), s.shape.cols, s.shape.rank);
  }

  // The kernels below stream M once per product. They are written with GCC /
  // Clang vector extensions (16-byte vectors, unaligned loads through memcpy)
  // so that they vectorise at any optimisation level, and so that the
  // summation order depends on the lengths only, never on the addresses: a
  // payload is a function of the input values. Other compilers get the same
  // arithmetic in scalar loops.
#if defined(__GNUC__) || defined(__clang__)
  template <class T>
  struct vec_of {
    typedef T type __attribute__((vector_size(16)));
  };
  template <class T>
  using vec = typename vec_of<T>::type;
  template <class T>
  static constexpr std::size_t width = 16 / sizeof(T);

  template <class T>
  static vec<T> load(const T* p) noexcept {
    vec<T> v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  template <class T>
  static void store(T* p, const vec<T>& v) noexcept {
    std::memcpy(p, &v, sizeof v);
  }
#define ECOPT_POWER_SGD_VECTORS 1
#endif

  /// Products per accumulator summed in T before they are added in double.
  static constexpr std::size_t block = 256;

  /// sum_i a_i b_i: 4 vectors of partial sums in T over blocks of 256 steps,
  /// each block's partial sums added into double lanes (16 for float, 8 for
  /// double), then the lanes pairwise.
  template <class T>
  static double dot(const T* a, const T* b, std::size_t n) noexcept {
    constexpr std::size_t w = 16 / sizeof(T);
    constexpr std::size_t step = 4 * w;
    double total[step] = {};
    std::size_t i = 0;
    while (i + step <= n) {
      const std::size_t end = i + std::min(block * step, (n - i) / step * step);
#ifdef ECOPT_POWER_SGD_VECTORS
      vec<T> acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
      for (; i < end; i += step) {
        acc0 += load(a + i) * load(b + i);
        acc1 += load(a + i + w) * load(b + i + w);
        acc2 += load(a + i + 2 * w) * load(b + i + 2 * w);
        acc3 += load(a + i + 3 * w) * load(b + i + 3 * w);
      }
      for (std::size_t t = 0; t < w; ++t) {
        total[t] += static_cast<double>(acc0[t]);
        total[w + t] += static_cast<double>(acc1[t]);
        total[2 * w + t] += static_cast<double>(acc2[t]);
        total[3 * w + t] += static_cast<double>(acc3[t]);
      }
#else
      T acc[step] = {};
      for (; i < end; i += step) {
        for (std::size_t t = 0; t < step; ++t) acc[t] += a[i + t] * b[i + t];
      }
      for (std::size_t t = 0; t < step; ++t) total[t] += static_cast<double>(acc[t]);
#endif
    }
    for (std::size_t t = 0; i + t < n; ++t) {
      total[t] += static_cast<double>(a[i + t]) * static_cast<double>(b[i + t]);
    }
    for (std::size_t half = step / 2; half > 0; half /= 2) {
      for (std::size_t t = 0; t < half; ++t) total[t] += total[t + half];
    }
    return total[0];
  }

  // P = M Q, a block of four columns of M at a time (read from memory once,
  // then from cache for each column of P).
  template <class T>
  static void multiply(const T* m, const power_sgd_shape& sh, const T* q, T* p) noexcept {
    const std::size_t rows = sh.rows;
    const std::size_t cols = sh.cols;
    std::fill_n(p, rows * sh.rank, T(0));
    std::size_t j = 0;
    for (; j + 4 <= cols; j += 4) {
      const T* m0 = m + j * rows;
      const T* m1 = m0 + rows;
      const T* m2 = m1 + rows;
      const T* m3 = m2 + rows;
      for (std::size_t k = 0; k < sh.rank; ++k) {
        T* pk = p + k * rows;
        const T* qk = q + k * cols + j;
        const T c0 = qk[0], c1 = qk[1], c2 = qk[2], c3 = qk[3];
        std::size_t i = 0;
#ifdef ECOPT_POWER_SGD_VECTORS
        for (; i + width<T> <= rows; i += width<T>) {
          store(pk + i, load(pk + i) + ((c0 * load(m0 + i) + c1 * load(m1 + i)) +
                                        (c2 * load(m2 + i) + c3 * load(m3 + i))));
        }
#endif
        for (; i < rows; ++i) pk[i] += (c0 * m0[i] + c1 * m1[i]) + (c2 * m2[i] + c3 * m3[i]);
      }
    }
    for (; j < cols; ++j) {
      const T* mj = m + j * rows;
      for (std::size_t k = 0; k < sh.rank; ++k) {
        T* pk = p + k * rows;
        const T c = q[k * cols + j];
        std::size_t i = 0;
#ifdef ECOPT_POWER_SGD_VECTORS
        for (; i + width<T> <= rows; i += width<T>) store(pk + i, load(pk + i) + c * load(mj + i));
#endif
        for (; i < rows; ++i) pk[i] += c * mj[i];
      }
    }
  }

  // Q = M^T P; column j of M stays in cache for its r dot products.
  template <class T>
  static void multiply_transposed(const T* m, const power_sgd_shape& sh, const T* p,
                                  T* q) noexcept {
    const std::size_t rows = sh.rows;
    const std::size_t cols = sh.cols;
    for (std::size_t j = 0; j < cols; ++j) {
      const T* mj = m + j * rows;
      for (std::size_t k = 0; k < sh.rank; ++k) {
        q[k * cols + j] = static_cast<T>(dot(mj, p + k * rows, rows));
      }
    }
  }

  // out (as a rows x cols matrix) += scale P Q^T, two columns of P at a time.
  template <class T>
  static void add_outer(T* out, const power_sgd_shape& sh, const T* p, const T* q,
                        T scale) noexcept {
    const std::size_t rows = sh.rows;
    const std::size_t cols = sh.cols;
    for (std::size_t j = 0; j < cols; ++j) {
      T* oj = out + j * rows;
      std::size_t k = 0;
      for (; k + 2 <= sh.rank; k += 2) {
        const T c0 = scale * q[k * cols + j];
        const T c1 = scale * q[(k + 1) * cols + j];
        const T* p0 = p + k * rows;
        const T* p1 = p0 + rows;
        std::size_t i = 0;
#ifdef ECOPT_POWER_SGD_VECTORS
        for (; i + width<T> <= rows; i += width<T>) {
          store(oj + i, load(oj + i) + (c0 * load(p0 + i) + c1 * load(p1 + i)));
        }
#endif
        for (; i < rows; ++i) oj[i] += c0 * p0[i] + c1 * p1[i];
      }
      if (k < sh.rank) {
        const T c = scale * q[k * cols + j];
        const T* pk = p + k * rows;
        std::size_t i = 0;
#ifdef ECOPT_POWER_SGD_VECTORS
        for (; i + width<T> <= rows; i += width<T>) store(oj + i, load(oj + i) + c * load(pk + i));
#endif
        for (; i < rows; ++i) oj[i] += c * pk[i];
      }
    }
  }

  // In place: the columns of p (n x r) become orthonormal or zero, spanning
  // what they spanned (to working precision).
  template <class T>
  static void orthonormalise(T* p, std::size_t n, std::size_t r) noexcept {
    constexpr double noise = 64 * static_cast<double>(std::numeric_limits<T>::epsilon());
    for (std::size_t k = 0; k < r; ++k) {
      T* col = p + k * n;
      // Scaling a column does not change the result; entries in [-1, 1] keep
      // the squared norms far from overflow (and underflow).
      double largest = 0;
      for (std::size_t i = 0; i < n; ++i) {
        largest = std::max(largest, std::fabs(static_cast<double>(col[i])));
      }
      if (largest > 0 && std::isfinite(largest)) {
        for (std::size_t i = 0; i < n; ++i) col[i] = static_cast<T>(col[i] / largest);
      }
      const double n0 = std::sqrt(dot(col, col, n));
      double before = n0;
      double after = n0;
      for (int pass = 0; pass < 2 && after > 0; ++pass) {
        for (std::size_t l = 0; l < k; ++l) {
          const T* prev = p + l * n;
          const T c = static_cast<T>(dot(prev, col, n));
          if (c == T(0)) continue;
          for (std::size_t i = 0; i < n; ++i) col[i] -= c * prev[i];
        }
        before = after;
        after = std::sqrt(dot(col, col, n));
      }
      // Zero when nothing is left but rounding noise, or the second pass still
      // cancelled much (Kahan's criterion): the column is in the span already.
      if (!(after > noise * n0) || !(after >= 0.5 * before) || !std::isfinite(after)) {
        std::fill_n(col, n, T(0));
        continue;
      }
      const T inv = static_cast<T>(1.0 / after);
      for (std::size_t i = 0; i < n; ++i) col[i] *= inv;
    }
  }

  // Scales each column of q (n x r) to unit length; zero columns stay zero.
  template <class T>
  static void normalise_columns(T* q, std::size_t n, std::size_t r) noexcept {
    for (std::size_t k = 0; k < r; ++k) {
      T* col = q + k * n;
      const double norm = std::sqrt(dot(col, col, n));
      if (!(norm > 0) || !std::isfinite(norm)) continue;
      const T inv = static_cast<T>(1.0 / norm);
      for (std::size_t i = 0; i < n; ++i) col[i] *= inv;
    }
  }

  // The decoder's check that column k of p (n x r) is zero or a unit vector
  // orthogonal to the columns before it.
  template <class T>
  static void check_orthonormal(const T* p, std::size_t n, std::size_t k) {
    const T* col = p + k * n;
    const double nn = dot(col, col, n);
    if (nn != 0 && !(std::fabs(nn - 1) <= orthonormal_tolerance)) {
      throw decode_error("corrupt power_sgd payload: column " + std::to_string(k) +
                         " of P has squared norm " + std::to_string(nn) + ", expected 0 or 1");
    }
    for (std::size_t l = 0; l < k; ++l) {
      const double c = dot(p + l * n, col, n);
      if (!(std::fabs(c) <= orthonormal_tolerance)) {
        throw decode_error("corrupt power_sgd payload: columns " + std::to_string(l) + " and " +
                           std::to_string(k) + " of P are not orthogonal (dot " +
                           std::to_string(c) + ")");
      }
    }
  }

  template <class T>
  static void require_finite_input(std::span<const T> p) {
    for (const T v : p) {
      if (!std::isfinite(v)) {
        throw numeric_error(
            "power_sgd: M Q is not finite (the input has a non-finite entry, or overflows)");
      }
    }
  }

  // Appends v as float32, refusing values that are not finite as float32.
  template <class T>
  static void write_checked(bit_writer& out, std::span<const T> v, const char* what) {
    float buf[detail::value_chunk];
    for (std::size_t at = 0; at < v.size(); at += detail::value_chunk) {
      const std::size_t m = std::min(detail::value_chunk, v.size() - at);
      bool bad = false;
      for (std::size_t i = 0; i < m; ++i) {
        buf[i] = static_cast<float>(v[at + i]);
        bad |= detail::not_finite_bits(buf[i]);
      }
      if (bad) {
        throw numeric_error(std::string("power_sgd: ") + what +
                            " has an entry that is not a finite float32 (non-finite or huge "
                            "input)");
      }
      out.write_f32s(std::span<const float>(buf, m));
    }
  }

  template <class T>
  static void read_into(bit_reader& in, std::span<T> to, const char* field) {
    T* o = to.data();
    detail::read_values(in, to.size(), field, [o](std::size_t at, std::span<const float> v) {
      for (std::size_t i = 0; i < v.size(); ++i) o[at + i] = static_cast<T>(v[i]);
    });
  }

  // allreduce_sum, then the same finiteness verdict on every rank (all hold the same bits).
  template <Transport Tr>
  static void reduce(Tr& transport, std::span<float> v, collective_workspace& workspace,
                     const char* what) {
    allreduce_sum(transport, v, workspace);
    for (const float f : v) {
      if (detail::not_finite_bits(f)) {
        throw numeric_error(std::string("power_sgd: ") + what +
                            " is not finite (a rank's input is non-finite or overflows float32)");
      }
    }
  }
};

#undef ECOPT_POWER_SGD_VECTORS

static_assert(Compressor<power_sgd, float> && Compressor<power_sgd, double>);

}  // namespace ecopt
