#pragma once
// gTop-k: global top-k sparsification by a pairwise tree merge of the ranks'
// local top-k sets. Shi, Wang, Zhao, Tang, Wang, Huang, Chu 2019,
// arXiv:1901.04359 (ICDCS 2019); convergence: Shi, Zhao, Wang, Tang, Chu,
// IJCAI 2019, doi:10.24963/ijcai.2019/473.
//
// As a plain Compressor (encode / decode_add) it is top_k with the same
// fields and the same payload: a rank's k largest-magnitude entries.
//
// As an AggregatingCompressor (`aggregate`, called by every rank in the same
// round) it runs the gTop-k merge:
//   1. each rank selects its local top-k (top_k's selection; lower index first
//      on ties) and drops the entries whose float32 value is zero;
//   2. with P2 the largest power of two <= P, rank P2 + i (i < P - P2) first
//      folds its set into rank i;
//   3. in round j = 0 .. log2(P2) - 1 ranks r and r xor 2^j exchange their
//      current sets, and both merge: values at common indices add (float32),
//      zero sums are dropped, and the k entries of largest |value| (lower
//      index first on ties) are kept;
//   4. rank i sends the final set back to rank P2 + i.
// Merging is commutative (a + b == b + a in IEEE arithmetic) and both
// partners select with the same total order, so every rank ends with a
// bitwise identical set G of at most k entries. The merge tree is the one of
// the paper's reduce-to-rank-0 (rank 0 takes rank 2^j's subtree in round j);
// exchanging instead of reducing and broadcasting halves the critical path to
// ceil(log2 P) rounds at the same k log P words per rank, and puts every rank
// at every node of its own path to the root, which error feedback needs
// (below). For P = 2 G is the exact top-k of the sum of the two local sets;
// for P > 2 each merge truncates, so G is a hierarchical approximation.
//
// Outputs: sum[j] += G[j] for j in G (every rank the same bits). own (what
// error feedback subtracts from its memory) is exact: own[j] += float32(x[j])
// iff this rank's value at j is part of G[j], i.e. j was in its local set and
// survived every merge on the path from the rank to the full group. A value
// that was cut at some merge stays in the rank's memory even when j re-entered
// G through another branch (the reference code counts it as sent and loses it,
// papers.md section 11 f). So the sum over ranks of own equals sum up to
// float32 rounding: nothing is lost or counted twice. A rank follows its own
// path in the exchanges for free; a folded rank learns it from one flag bit
// per entry of the final set.
//
// Merge message ("set"): count n in ceil(log2(k+1)) bits; the n indices,
// increasing, in the shared index coding (detail/index_coding.hpp: the
// smallest of fixed width, Rice or gamma gaps, or a bitmap, behind a 2-bit
// tag); n float32 values in index order (finite and nonzero); in the final
// message to a folded rank, n flag bits (1 = the folded rank's value is part of
// the entry). Indices are integers on the wire, exact for every d < 2^32 (the
// reference code packs them into float32s, inexact above 2^24). A rank
// encodes log2(P2) sets per round, plus one flagged set when it has a folded
// partner (a folded rank: one set); `aggregate` returns the bits it encoded,
// at most max_aggregate_bits(d, P) = O(k log P).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/collectives/collective_workspace.hpp"
#include "ecopt/collectives/tags.hpp"
#include "ecopt/compressor.hpp"
#include "ecopt/compressors/detail/index_coding.hpp"
#include "ecopt/compressors/detail/payload.hpp"
#include "ecopt/compressors/top_k.hpp"
#include "ecopt/detail/span_checks.hpp"
#include "ecopt/error.hpp"
#include "ecopt/round_context.hpp"
#include "ecopt/transport.hpp"

namespace ecopt {
namespace detail {

/// The wire coding of a sparse set of at most k (index, float32 value) pairs
/// over [0, dim), optionally with one flag bit per entry (see global_top_k.hpp).
struct sparse_set_codec {
  std::size_t dim = 0;
  std::size_t k = 0;

  [[nodiscard]] unsigned count_bits() const noexcept { return bits_for(k + 1); }
  /// Exact bits of the set with indices idx (increasing, below dim).
  [[nodiscard]] std::uint64_t bits(std::span<const std::uint32_t> idx, bool with_flags) const {
    const auto n = static_cast<std::uint64_t>(idx.size());
    return count_bits() + exact_index_bits(idx, dim) + 32 * n + (with_flags ? n : 0);
  }
  /// Bound on bits(idx, with_flags) over all sets of at most k entries: the
  /// index coding never spends more than its tag plus fixed width or a bitmap.
  [[nodiscard]] std::uint64_t max_bits(bool with_flags) const noexcept {
    const auto kk = static_cast<std::uint64_t>(k);
    const std::uint64_t index_bound =
        index_tag_bits + std::min<std::uint64_t>(kk * bits_for(dim), dim);
    return count_bits() + index_bound + 32 * kk + (with_flags ? kk : 0);
  }

  /// Writes n <= k entries (idx increasing, values finite and nonzero); with
  /// `flags`, bit i is set iff flags[i] & flag_mask.
  void write(bit_writer& w, std::size_t n, const std::uint32_t* idx, const float* val,
             const std::uint8_t* flags = nullptr, std::uint8_t flag_mask = 0) const {
    w.write(n, count_bits());
    write_indices(w, std::span<const std::uint32_t>(idx, n), dim);
    w.write_f32s(std::span<const float>(val, n));
    if (flags != nullptr) {
      write_fields(w, n, 1, [flags, flag_mask](std::size_t i) {
        return (flags[i] & flag_mask) != 0 ? 1u : 0u;
      });
    }
  }

  /// Reads a set written by write() into idx/val (room for k each) and, when
  /// `flags` is given, its flag bits (0 or 1). Returns n. Throws decode_error
  /// naming the field for a truncated, padded or inconsistent message.
  std::size_t read(bit_reader& in, std::uint32_t* idx, float* val,
                   std::uint8_t* flags = nullptr) const {
    const std::uint64_t count = in.read(count_bits(), "global_top_k count");
    if (count > k) {
      throw decode_error("corrupt global_top_k set: count = " + std::to_string(count) +
                         " exceeds k = " + std::to_string(k));
    }
    const auto n = static_cast<std::size_t>(count);
    read_indices(in, dim, std::span<std::uint32_t>(idx, n), "global_top_k set");
    in.require(32 * static_cast<std::uint64_t>(n) + (flags != nullptr ? n : 0),
               "global_top_k values");
    read_values(in, n, "global_top_k value", [val](std::size_t at, std::span<const float> v) {
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] == 0.0f) {
          throw decode_error("corrupt global_top_k set: value[" + std::to_string(at + i) +
                             "] is zero (sets hold nonzero entries only)");
        }
        val[at + i] = v[i];
      }
    });
    if (flags != nullptr) {
      read_fields(in, n, 1, "global_top_k flag", [flags](std::size_t i, std::uint64_t v) {
        flags[i] = static_cast<std::uint8_t>(v);
      });
    }
    in.expect_end("global_top_k set");
    return n;
  }
};

}  // namespace detail

struct global_top_k {
  static constexpr std::string_view name = "global_top_k";

  double ratio = 0.01;  ///< fraction of coordinates kept (used when k == 0)
  std::size_t k = 0;    ///< number kept; overrides ratio when nonzero

  /// Tags of the merge messages: fold into the core, exchange, result to a folded rank.
  static constexpr message_tag fold_tag =
      static_cast<message_tag>(collective_tag::global_top_k) + 1;
  static constexpr message_tag exchange_tag =
      static_cast<message_tag>(collective_tag::global_top_k) + 2;
  static constexpr message_tag result_tag =
      static_cast<message_tag>(collective_tag::global_top_k) + 3;

  void validate() const { detail::validate_ratio(name, ratio); }

  /// The local compressor: top_k with the same fields.
  [[nodiscard]] top_k local() const noexcept { return top_k{.ratio = ratio, .k = k}; }
  /// Effective k for dimension d: clamp(k ? k : round(ratio * d), 1, d).
  [[nodiscard]] std::size_t kept(std::size_t d) const noexcept { return local().kept(d); }

  // The plain Compressor members are top_k's.
  [[nodiscard]] std::uint64_t max_bits(std::size_t d) const noexcept { return local().max_bits(d); }
  [[nodiscard]] double delta(std::size_t d) const noexcept { return local().delta(d); }

  /// The coding of the merge messages for dimension d.
  [[nodiscard]] detail::sparse_set_codec codec(std::size_t d) const noexcept {
    return {d, kept(d)};
  }
  /// Bound on the bits one rank encodes in one aggregate call in a world of P ranks.
  [[nodiscard]] std::uint64_t max_aggregate_bits(std::size_t d, int world) const noexcept {
    if (world <= 1) return 0;
    const auto p = static_cast<unsigned>(world);
    const unsigned core = std::bit_floor(p);
    const detail::sparse_set_codec c = codec(d);
    const std::uint64_t rounds = static_cast<unsigned>(std::countr_zero(core));
    return rounds * c.max_bits(false) + (core != p ? c.max_bits(true) : 0);
  }

  template <class T>
  struct state {
    top_k::state<T> local;              ///< top_k's selection state
    std::vector<std::byte> message;     ///< outgoing merge message
    std::vector<std::uint32_t> idx;     ///< current set: indices, increasing (room for 2k)
    std::vector<float> val;             ///< current set: values
    std::vector<std::uint8_t> owner;    ///< current set: whose values it holds (mine, folded)
    std::vector<std::uint32_t> u_idx;   ///< merge output: indices (room for 2k)
    std::vector<float> u_val;           ///< merge output: values
    std::vector<std::uint8_t> u_owner;  ///< merge output: owners
    std::vector<std::uint32_t> in_idx;  ///< received set: indices (room for k)
    std::vector<float> in_val;          ///< received set: values
    std::vector<std::uint8_t> in_flag;  ///< received set: flags (result message)
    std::vector<std::uint64_t> keys;    ///< selection keys of the merge output (2k)
    /// Only top_k's state carries over; the merge buffers are per round.
    template <class Archive>
    void persist(Archive& a) {
      a.nest("local", local);
    }
  };

  template <class T>
  [[nodiscard]] state<T> make_state(std::size_t dim) const {
    validate();
    detail::require_index_dim(name, dim);
    const std::size_t kk = kept(dim);
    state<T> s;
    s.local = local().template make_state<T>(dim);
    s.message.reserve(static_cast<std::size_t>((codec(dim).max_bits(true) + 7) / 8 + 8));
    s.idx.resize(2 * kk);
    s.val.resize(2 * kk);
    s.owner.resize(2 * kk);
    s.u_idx.resize(2 * kk);
    s.u_val.resize(2 * kk);
    s.u_owner.resize(2 * kk);
    s.in_idx.resize(kk);
    s.in_val.resize(kk);
    s.in_flag.resize(kk);
    s.keys.resize(2 * kk);
    return s;
  }

  template <class T>
  void encode(std::span<const T> x, state<T>& s, bit_writer& out, const round_context& ctx) const {
    local().encode(x, s.local, out, ctx);
  }

  template <class T>
  void decode_add(bit_reader& in, state<T>& s, std::span<T> out, T scale,
                  const round_context& sender) const {
    local().decode_add(in, s.local, out, scale, sender);
  }

  /// The gTop-k merge (see the top of this header). Collective: every rank of
  /// `transport` calls it in the same round. sum += G, own += this rank's part
  /// of G; returns the bits of the sets this rank encoded.
  template <Transport Tr, class T>
  std::uint64_t aggregate(Tr& transport, std::span<const T> x, state<T>& s, std::span<T> own,
                          std::span<T> sum, collective_workspace& ws,
                          const round_context& ctx) const {
    const std::size_t d = s.local.dim;
    detail::require_size(name, "input", x.size(), d);
    detail::require_size(name, "own", own.size(), d);
    detail::require_size(name, "sum", sum.size(), d);
    const int rank = transport.rank();
    const int world = transport.size();
    const int core = static_cast<int>(std::bit_floor(static_cast<unsigned>(world)));
    const detail::sparse_set_codec c = codec(d);

    std::size_t n = select_local(x, s);
    std::uint64_t bits = 0;
    auto send_set = [&](int to, message_tag tag, bool with_flags) {
      bit_writer w(s.message);
      c.write(w, n, s.idx.data(), s.val.data(), with_flags ? s.owner.data() : nullptr, folded);
      bits += w.bits();
      transport.send(to, tag, w.finish());
    };
    auto receive_set = [&](int from, message_tag tag, bool with_flags) {
      transport.recv(from, tag, ws.recv);
      bit_reader r(ws.recv);
      try {
        return c.read(r, s.in_idx.data(), s.in_val.data(), with_flags ? s.in_flag.data() : nullptr);
      } catch (const decode_error& e) {
        throw decode_error("global_top_k: rank " + std::to_string(rank) + ", step " +
                           std::to_string(ctx.round) + ": merge message from rank " +
                           std::to_string(from) + ": " + e.what());
      }
    };

    if (rank >= core) {  // folded: hand the set to rank - core, get G back
      const int partner = rank - core;
      send_set(partner, fold_tag, false);
      const std::size_t m = receive_set(partner, result_tag, true);
      add_folded_result(x, s, n, m, own, sum, rank, partner, ctx);
      return bits;
    }
    const bool has_folded = rank + core < world;
    if (has_folded) {
      const std::size_t m = receive_set(rank + core, fold_tag, false);
      n = merge(s, n, m, folded);
    }
    for (int mask = 1; mask < core; mask <<= 1) {
      const int partner = rank ^ mask;
      send_set(partner, exchange_tag, false);
      const std::size_t m = receive_set(partner, exchange_tag, false);
      n = merge(s, n, m, 0);
    }
    if (has_folded) send_set(rank + core, result_tag, true);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t j = s.idx[i];
      sum[j] += static_cast<T>(s.val[i]);
      if (s.owner[i] & mine) own[j] += static_cast<T>(static_cast<float>(x[j]));
    }
    return bits;
  }

 private:
  static constexpr std::uint8_t mine = 1;    // the set holds this rank's value here
  static constexpr std::uint8_t folded = 2;  // ... and/or this rank's folded partner's

  // The local set: top_k's selection as float32, without zeros. Returns its size.
  // The kept entries are the largest, so the finiteness check also catches
  // any NaN or infinity elsewhere in x.
  template <class T>
  std::size_t select_local(std::span<const T> x, state<T>& s) const {
    std::size_t n = 0;
    for (const std::uint32_t j : local().select(x, s.local)) {
      const auto v = static_cast<float>(x[j]);
      if (detail::not_finite_bits(v)) throw_not_finite_input(j, static_cast<double>(x[j]));
      if (v == 0.0f) continue;
      s.idx[n] = j;
      s.val[n] = v;
      s.owner[n] = mine;
      ++n;
    }
    return n;
  }

  // Merges the received set (in_idx/in_val, m entries, owned as `incoming`)
  // into the current one (n entries): common indices add, zero sums go, then
  // the k largest |value| stay (lower index first on ties). Returns the new size.
  template <class T>
  static std::size_t merge(state<T>& s, std::size_t n, std::size_t m, std::uint8_t incoming) {
    const std::uint32_t* ai = s.idx.data();
    const float* av = s.val.data();
    const std::uint8_t* ao = s.owner.data();
    const std::uint32_t* bi = s.in_idx.data();
    const float* bv = s.in_val.data();
    std::uint32_t* ui = s.u_idx.data();
    float* uv = s.u_val.data();
    std::uint8_t* uo = s.u_owner.data();
    std::size_t u = 0;
    const auto put = [&](std::uint32_t j, float v, std::uint8_t o) {
      ui[u] = j;
      uv[u] = v;
      uo[u] = o;
      ++u;
    };
    std::size_t a = 0;
    std::size_t b = 0;
    while (a < n && b < m) {
      if (ai[a] < bi[b]) {
        put(ai[a], av[a], ao[a]);
        ++a;
      } else if (bi[b] < ai[a]) {
        put(bi[b], bv[b], incoming);
        ++b;
      } else {
        const float v = av[a] + bv[b];
        if (detail::not_finite_bits(v)) throw_overflow(ai[a], av[a], bv[b]);
        if (v != 0.0f) put(ai[a], v, static_cast<std::uint8_t>(ao[a] | incoming));
        ++a;
        ++b;
      }
    }
    for (; a < n; ++a) put(ai[a], av[a], ao[a]);
    for (; b < m; ++b) put(bi[b], bv[b], incoming);

    const std::size_t kk = s.local.k;
    if (u > kk) {
      // Key: |value| bits above the complemented index, so that a larger key is
      // the larger magnitude, or the lower index among equal magnitudes. Keys
      // are distinct, so the k-th largest splits the set exactly.
      std::uint64_t* keys = s.keys.data();
      for (std::size_t i = 0; i < u; ++i) keys[i] = key_of(ui[i], uv[i]);
      std::nth_element(keys, keys + (kk - 1), keys + u, std::greater<>());
      const std::uint64_t threshold = keys[kk - 1];
      std::size_t w = 0;
      for (std::size_t i = 0; i < u; ++i) {
        if (key_of(ui[i], uv[i]) < threshold) continue;
        ui[w] = ui[i];
        uv[w] = uv[i];
        uo[w] = uo[i];
        ++w;
      }
      u = w;
    }
    s.idx.swap(s.u_idx);
    s.val.swap(s.u_val);
    s.owner.swap(s.u_owner);
    return u;
  }

  [[nodiscard]] static std::uint64_t key_of(std::uint32_t index, float v) noexcept {
    const std::uint32_t magnitude = std::bit_cast<std::uint32_t>(v) & 0x7fffffffu;
    return (std::uint64_t{magnitude} << 32) | (~index);
  }

  // A folded rank adds G (in_idx/in_val) to sum, and its own values at the
  // flagged entries to own; a flag must name an index of its local set.
  template <class T>
  static void add_folded_result(std::span<const T> x, const state<T>& s, std::size_t n,
                                std::size_t m, std::span<T> own, std::span<T> sum, int rank,
                                int partner, const round_context& ctx) {
    std::size_t a = 0;
    for (std::size_t i = 0; i < m; ++i) {
      const std::uint32_t j = s.in_idx[i];
      if (s.in_flag[i] == 0) continue;
      while (a < n && s.idx[a] < j) ++a;
      if (a == n || s.idx[a] != j) {
        throw decode_error("global_top_k: rank " + std::to_string(rank) + ", step " +
                           std::to_string(ctx.round) + ": merge message from rank " +
                           std::to_string(partner) + ": corrupt global_top_k set: flag[" +
                           std::to_string(i) + "] claims index " + std::to_string(j) +
                           ", which this rank did not send");
      }
    }
    for (std::size_t i = 0; i < m; ++i) {
      const std::uint32_t j = s.in_idx[i];
      sum[j] += static_cast<T>(s.in_val[i]);
      if (s.in_flag[i] != 0) own[j] += static_cast<T>(static_cast<float>(x[j]));
    }
  }

  [[noreturn, gnu::cold]] static void throw_not_finite_input(std::uint32_t j, double v) {
    throw numeric_error("global_top_k: input[" + std::to_string(j) + "] = " + std::to_string(v) +
                        " is not finite as float32 (NaN, infinity or beyond the float32 range)");
  }
  [[noreturn, gnu::cold]] static void throw_overflow(std::uint32_t j, float a, float b) {
    throw numeric_error("global_top_k: merging index " + std::to_string(j) +
                        " overflows float32 (" + std::to_string(a) + " + " + std::to_string(b) +
                        ")");
  }
};

static_assert(Compressor<global_top_k, float> && Compressor<global_top_k, double>);

}  // namespace ecopt
