#pragma once
// checkpoint: named records of numbers and text, written to and read from a
// stream in a versioned binary format with a checksum, so that a run stopped
// at step k resumes exactly where it was: the exchange's states (error
// memories, PowerSGD's warm start), the optimizer's (momenta), the model and
// whatever the caller adds (the step, the seed).
//
// Format, version 1 (little-endian):
//   "ECOPTCKP" (8 bytes), u32 version, u64 record count, then per record:
//     u32 name length, the name (UTF-8, at most 4096 bytes),
//     u8 type (0x40: text; else 0x10 floating point | 0x20 signed | bytes per
//     value in bits 0-3: 1, 2, 4 or 8), u64 value count, the values;
//   then u32 CRC-32C (Castagnoli) of every byte before it.
// Reading checks the magic, the version, every length against what is left
// (and against max_bytes) before allocating, and the checksum; a record read
// back must have the type and count the reader expects. Every failure is a
// checkpoint_error naming what differs.
//
// A policy state takes part through a member
//   template <class Archive> void persist(Archive& a) { a("memory", memory); ... }
// naming what it carries from round to round (vectors keep the size make_state
// gave them; loading a record of another size is refused). States that keep
// nothing between rounds have an empty persist.
#include <algorithm>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <istream>
#include <map>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "ecopt/error.hpp"
#include "ecopt/transports/detail/crc32c.hpp"

namespace ecopt {

static_assert(std::endian::native == std::endian::little,
              "checkpoints are written little-endian: port the byte order first");

class checkpoint {
 public:
  static constexpr std::uint32_t format_version = 1;
  static constexpr std::string_view magic = "ECOPTCKP";
  static constexpr std::size_t max_name_length = 4096;

  /// Adds (or replaces) a record of numbers.
  template <class V>
  requires std::is_arithmetic_v<V>
  void put(std::string_view name, std::span<const V> values) {
    record& r = slot(name);
    r.type = type_code<V>();
    r.count = values.size();
    r.bytes.resize(values.size_bytes());
    if (!values.empty()) std::memcpy(r.bytes.data(), values.data(), values.size_bytes());
  }
  template <class V>
  requires std::is_arithmetic_v<V>
  void put(std::string_view name, V value) { put(name, std::span<const V>(&value, 1)); }
  void put_text(std::string_view name, std::string_view text) {
    record& r = slot(name);
    r.type = text_type;
    r.count = text.size();
    r.bytes.resize(text.size());
    if (!text.empty()) std::memcpy(r.bytes.data(), text.data(), text.size());
  }

  [[nodiscard]] bool contains(std::string_view name) const { return find(name) != nullptr; }
  /// The number of values (or text bytes) of a record.
  [[nodiscard]] std::size_t count(std::string_view name) const { return require(name).count; }

  /// Reads a record of exactly out.size() values of type V.
  template <class V>
  requires std::is_arithmetic_v<V>
  void get(std::string_view name, std::span<V> out) const {
    const record& r = require(name);
    if (r.type != type_code<V>()) {
      throw checkpoint_error("checkpoint: record '" + std::string(name) + "' holds " +
                             type_name(r.type) + ", expected " + type_name(type_code<V>()));
    }
    if (r.count != out.size()) {
      throw checkpoint_error("checkpoint: record '" + std::string(name) + "' has " +
                             std::to_string(r.count) + " values, expected " +
                             std::to_string(out.size()));
    }
    if (!out.empty()) std::memcpy(out.data(), r.bytes.data(), out.size_bytes());
  }
  template <class V>
  requires std::is_arithmetic_v<V>
  [[nodiscard]] V get(std::string_view name) const {
    V v{};
    get(name, std::span<V>(&v, 1));
    return v;
  }
  [[nodiscard]] std::string get_text(std::string_view name) const {
    const record& r = require(name);
    if (r.type != text_type) {
      throw checkpoint_error("checkpoint: record '" + std::string(name) + "' holds " +
                             type_name(r.type) + ", expected text");
    }
    return {reinterpret_cast<const char*>(r.bytes.data()), r.bytes.size()};
  }
  /// Throws checkpoint_error when the text record differs from `expected`.
  void expect_text(std::string_view name, std::string_view expected) const {
    const std::string found = get_text(name);
    if (found != expected) {
      throw checkpoint_error("checkpoint: " + std::string(name) + " is '" + found +
                             "' in the checkpoint, '" + std::string(expected) + "' here");
    }
  }

  void write(std::ostream& out) const {
    std::vector<std::byte> bytes;
    append(bytes, magic.data(), magic.size());
    append_value(bytes, format_version);
    append_value(bytes, static_cast<std::uint64_t>(records_.size()));
    for (const record& r : records_) {
      append_value(bytes, static_cast<std::uint32_t>(r.name.size()));
      append(bytes, r.name.data(), r.name.size());
      append_value(bytes, r.type);
      append_value(bytes, static_cast<std::uint64_t>(r.count));
      append(bytes, r.bytes.data(), r.bytes.size());
    }
    append_value(bytes, detail::crc32c(std::span<const std::byte>(bytes)));
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    if (!out) throw checkpoint_error("checkpoint: the stream refused the write");
  }

  /// Reads a checkpoint of at most max_bytes bytes from `in`.
  [[nodiscard]] static checkpoint read(std::istream& in,
                                       std::uint64_t max_bytes = std::uint64_t{1} << 34) {
    reader r{in, max_bytes, {}};
    char head[8];
    r.take(head, sizeof head, "the magic");
    if (std::string_view(head, sizeof head) != magic) {
      throw checkpoint_error("checkpoint: not an ecopt checkpoint (bad magic)");
    }
    const auto version = r.value<std::uint32_t>("the version");
    if (version != format_version) {
      throw checkpoint_error("checkpoint: format version " + std::to_string(version) +
                             ", this build reads version " + std::to_string(format_version));
    }
    const auto count = r.value<std::uint64_t>("the record count");
    checkpoint c;
    for (std::uint64_t i = 0; i < count; ++i) {
      const std::string where = "record " + std::to_string(i);
      const auto length = r.value<std::uint32_t>((where + "'s name length").c_str());
      if (length > max_name_length) {
        throw checkpoint_error("checkpoint: " + where + "'s name is " + std::to_string(length) +
                               " bytes long (at most " + std::to_string(max_name_length) + ")");
      }
      record rec;
      rec.name.resize(length);
      r.take(rec.name.data(), length, (where + "'s name").c_str());
      rec.type = r.value<std::uint8_t>(("record '" + rec.name + "''s type").c_str());
      if (!valid_type(rec.type)) {
        throw checkpoint_error("checkpoint: record '" + rec.name + "' has unknown type " +
                               std::to_string(rec.type));
      }
      rec.count = r.value<std::uint64_t>(("record '" + rec.name + "''s count").c_str());
      const std::uint64_t width = rec.type == text_type ? 1 : (rec.type & 0x0F);
      if (rec.count > (max_bytes - r.consumed) / width) {
        throw checkpoint_error("checkpoint: record '" + rec.name + "' declares " +
                               std::to_string(rec.count) + " values, more than the checkpoint " +
                               "can hold");
      }
      r.take_bytes(rec.bytes, rec.count * width, ("record '" + rec.name + "''s values").c_str());
      if (!c.index_.emplace(rec.name, c.records_.size()).second) {
        throw checkpoint_error("checkpoint: record '" + rec.name + "' appears twice");
      }
      c.records_.push_back(std::move(rec));
    }
    const std::uint32_t computed = detail::crc32c(std::span<const std::byte>(r.seen));
    const auto stored = r.value<std::uint32_t>("the checksum");
    if (stored != computed) {
      throw checkpoint_error("checkpoint: corrupt (CRC-32C " + std::to_string(stored) +
                             " stored, " + std::to_string(computed) + " computed)");
    }
    return c;
  }

 private:
  static constexpr std::uint8_t text_type = 0x40;

  struct record {
    std::string name;
    std::uint8_t type = 0;
    std::uint64_t count = 0;
    std::vector<std::byte> bytes;
  };

  template <class V>
  static constexpr std::uint8_t type_code() {
    using U = std::conditional_t<std::is_same_v<V, bool>, std::uint8_t, V>;
    return static_cast<std::uint8_t>((std::is_floating_point_v<U> ? 0x10 : 0) |
                                     (std::is_signed_v<U> ? 0x20 : 0) | sizeof(U));
  }
  static bool valid_type(std::uint8_t t) {
    if (t == text_type) return true;
    const unsigned width = t & 0x0F;
    if ((t & 0xC0) != 0 || (width != 1 && width != 2 && width != 4 && width != 8)) return false;
    return (t & 0x10) == 0 || (width >= 4 && (t & 0x20) != 0);
  }
  static std::string type_name(std::uint8_t t) {
    if (t == text_type) return "text";
    return std::string((t & 0x10) ? "float" : ((t & 0x20) ? "int" : "uint")) +
           std::to_string(8 * (t & 0x0F)) + " values";
  }

  // By name through the index: reading n records, or n lookups, costs
  // O(n log n), not O(n^2) (a hostile file of many tiny records must not stall).
  const record* find(std::string_view name) const {
    const auto at = index_.find(name);
    return at == index_.end() ? nullptr : &records_[at->second];
  }
  const record& require(std::string_view name) const {
    const record* r = find(name);
    if (r == nullptr) {
      throw checkpoint_error("checkpoint: no record '" + std::string(name) + "'");
    }
    return *r;
  }
  record& slot(std::string_view name) {
    if (name.size() > max_name_length) {
      throw invalid_argument("checkpoint: a record name is longer than 4096 bytes");
    }
    const auto at = index_.find(name);
    if (at != index_.end()) return records_[at->second];
    index_.emplace(std::string(name), records_.size());
    records_.push_back({std::string(name), 0, 0, {}});
    return records_.back();
  }

  static void append(std::vector<std::byte>& out, const void* p, std::size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    out.insert(out.end(), b, b + n);
  }
  template <class V>
  static void append_value(std::vector<std::byte>& out, V v) {
    append(out, &v, sizeof v);
  }

  // Reads from the stream, keeps what it read (for the checksum), and refuses
  // to go past max_bytes.
  struct reader {
    std::istream& in;
    std::uint64_t max_bytes;
    std::vector<std::byte> seen;
    std::uint64_t consumed = 0;

    void take(void* out, std::uint64_t n, const char* what) {
      if (n > max_bytes - consumed) {
        throw checkpoint_error(std::string("checkpoint: ") + what + " would pass max_bytes (" +
                               std::to_string(max_bytes) + ")");
      }
      const std::size_t at = seen.size();
      seen.resize(at + static_cast<std::size_t>(n));
      in.read(reinterpret_cast<char*>(seen.data() + at), static_cast<std::streamsize>(n));
      if (static_cast<std::uint64_t>(in.gcount()) != n) {
        throw checkpoint_error(std::string("checkpoint: truncated in ") + what + " (byte " +
                               std::to_string(consumed + static_cast<std::uint64_t>(in.gcount())) +
                               ")");
      }
      if (n != 0) std::memcpy(out, seen.data() + at, static_cast<std::size_t>(n));
      consumed += n;
    }
    void take_bytes(std::vector<std::byte>& out, std::uint64_t n, const char* what) {
      // Grows in steps of at most 1 MiB, so a forged count costs only what arrives.
      out.clear();
      std::uint64_t done = 0;
      while (done < n) {
        const std::uint64_t step = std::min<std::uint64_t>(n - done, std::uint64_t{1} << 20);
        out.resize(static_cast<std::size_t>(done + step));
        take(out.data() + done, step, what);
        done += step;
      }
    }
    template <class V>
    V value(const char* what) {
      V v{};
      take(&v, sizeof v, what);
      return v;
    }
  };

  std::vector<record> records_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in records_
};

namespace detail {

/// Saves a state's persist() fields under `prefix`.
class checkpoint_saver {
 public:
  checkpoint_saver(checkpoint& c, std::string prefix) : c_(c), prefix_(std::move(prefix)) {}
  template <class V>
  requires std::is_arithmetic_v<V>
  void operator()(std::string_view name, const std::vector<V>& v) {
    c_.put(prefix_ + std::string(name), std::span<const V>(v));
  }
  template <class V>
  requires std::is_arithmetic_v<V>
  void operator()(std::string_view name, const V& v) { c_.put(prefix_ + std::string(name), v); }
  /// An Eigen vector or matrix: its coefficients in storage order.
  template <class Derived>
  void operator()(std::string_view name, const Eigen::PlainObjectBase<Derived>& m) {
    using V = typename Derived::Scalar;
    c_.put(prefix_ + std::string(name),
           std::span<const V>(m.data(), static_cast<std::size_t>(m.size())));
  }
  void text(std::string_view name, std::string_view expected) {
    c_.put_text(prefix_ + std::string(name), expected);
  }
  template <class State>
  void nest(std::string_view name, State& s) {
    checkpoint_saver inner(c_, prefix_ + std::string(name) + ".");
    s.persist(inner);
  }

 private:
  checkpoint& c_;
  std::string prefix_;
};

/// Loads a state's persist() fields from under `prefix`; sizes must match.
class checkpoint_loader {
 public:
  checkpoint_loader(const checkpoint& c, std::string prefix) : c_(c), prefix_(std::move(prefix)) {}
  template <class V>
  requires std::is_arithmetic_v<V>
  void operator()(std::string_view name, std::vector<V>& v) {
    c_.get(prefix_ + std::string(name), std::span<V>(v));
  }
  template <class V>
  requires std::is_arithmetic_v<V>
  void operator()(std::string_view name, V& v) { v = c_.get<V>(prefix_ + std::string(name)); }
  /// An Eigen vector or matrix of the size make_state gave it.
  template <class Derived>
  void operator()(std::string_view name, Eigen::PlainObjectBase<Derived>& m) {
    using V = typename Derived::Scalar;
    c_.get(prefix_ + std::string(name), std::span<V>(m.data(), static_cast<std::size_t>(m.size())));
  }
  void text(std::string_view name, std::string_view expected) {
    c_.expect_text(prefix_ + std::string(name), expected);
  }
  template <class State>
  void nest(std::string_view name, State& s) {
    checkpoint_loader inner(c_, prefix_ + std::string(name) + ".");
    s.persist(inner);
  }

 private:
  const checkpoint& c_;
  std::string prefix_;
};

}  // namespace detail

/// States that say what they carry between rounds (see the header comment).
template <class State>
concept PersistentState = requires(State& s, detail::checkpoint_saver& save,
                                   detail::checkpoint_loader& load) {
  s.persist(save);
  s.persist(load);
};

/// Saves / loads one state under `prefix` (e.g. "optimizer.").
template <PersistentState State>
void save_state(checkpoint& c, std::string prefix, State& s) {
  detail::checkpoint_saver a(c, std::move(prefix));
  s.persist(a);
}
template <PersistentState State>
void load_state(const checkpoint& c, std::string prefix, State& s) {
  detail::checkpoint_loader a(c, std::move(prefix));
  s.persist(a);
}

}  // namespace ecopt
