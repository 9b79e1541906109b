// bit_writer / bit_reader: exact round trips of any field width and float32
// runs at any alignment, and errors that name the field.
#include <doctest/doctest.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "ecopt/bit_reader.hpp"
#include "ecopt/bit_writer.hpp"
#include "ecopt/counter_rng.hpp"
#include "ecopt/error.hpp"
#include "support/alloc_counter.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace bit_io_test {

namespace {

std::uint64_t low_bits(std::uint64_t v, unsigned width) {
  return width == 64 ? v : (width == 0 ? 0 : v & ((std::uint64_t{1} << width) - 1));
}

/// The decode_error message `f` throws, or "" if it throws nothing.
template <class F>
std::string decode_error_message(F&& f) {
  try {
    f();
  } catch (const ecopt::decode_error& e) {
    return e.what();
  }
  return {};
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("bits_for is ceil(log2 n)") {
  CHECK(ecopt::bits_for(0) == 0);
  CHECK(ecopt::bits_for(1) == 0);
  CHECK(ecopt::bits_for(2) == 1);
  CHECK(ecopt::bits_for(3) == 2);
  CHECK(ecopt::bits_for(4) == 2);
  CHECK(ecopt::bits_for(5) == 3);
  CHECK(ecopt::bits_for(1000) == 10);
  CHECK(ecopt::bits_for(1024) == 10);
  CHECK(ecopt::bits_for(1025) == 11);
  CHECK(ecopt::bits_for(std::uint64_t{1} << 32) == 32);
  CHECK(ecopt::bits_for((std::uint64_t{1} << 32) + 1) == 33);
  CHECK(ecopt::bits_for(std::numeric_limits<std::uint64_t>::max()) == 64);
}

TEST_CASE("random field widths 0..64 round trip exactly") {
  for (std::uint64_t trial = 0; trial < 20; ++trial) {
    auto rng = ecopt::counter_rng::stream(trial, ecopt::stream_purpose::test, 0, 0);
    const std::size_t fields = 1 + static_cast<std::size_t>(rng.below(500));
    std::vector<unsigned> widths(fields);
    std::vector<std::uint64_t> values(fields);
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < fields; ++i) {
      widths[i] = static_cast<unsigned>(rng.below(65));
      values[i] = rng();  // wider than the field: the writer must mask it
      total += widths[i];
    }
    std::vector<std::byte> buf;
    buf.reserve(static_cast<std::size_t>((total + 7) / 8));
    const std::size_t capacity = buf.capacity();
    ecopt::bit_writer w(buf);
    for (std::size_t i = 0; i < fields; ++i) w.write(values[i], widths[i]);
    CHECK(w.bits() == total);
    const auto bytes = w.finish();
    CHECK(bytes.size() == (total + 7) / 8);
    CHECK(buf.capacity() == capacity);

    ecopt::bit_reader r(bytes);
    for (std::size_t i = 0; i < fields; ++i) {
      REQUIRE(r.read(widths[i], "field") == low_bits(values[i], widths[i]));
    }
    CHECK(r.position() == total);
    CHECK_NOTHROW(r.expect_end("test"));
  }
}

TEST_CASE("float32 runs round trip at every bit alignment") {
  auto rng = ecopt::counter_rng::stream(3, ecopt::stream_purpose::test, 0, 0);
  for (unsigned offset = 0; offset < 70; ++offset) {
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{3},
                          std::size_t{9}, std::size_t{300}}) {
      std::vector<float> values(n);
      // Arbitrary bit patterns, NaNs included: the bits must survive unchanged.
      for (auto& v : values) v = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));
      const std::uint64_t head = rng();
      std::vector<std::byte> buf;
      ecopt::bit_writer w(buf);
      w.write(head, offset > 64 ? 64 : offset);
      if (offset > 64) w.write(head, offset - 64);
      w.write_f32s(values);
      w.write(0x5, 3);
      const auto bytes = w.finish();
      CHECK(w.bits() == offset + 32 * n + 3);

      ecopt::bit_reader r(bytes);
      r.read(offset > 64 ? 64 : offset, "head");
      if (offset > 64) r.read(offset - 64, "head");
      std::vector<float> back(n);
      r.read_f32s(back, "values");
      for (std::size_t i = 0; i < n; ++i) {
        REQUIRE(std::bit_cast<std::uint32_t>(back[i]) == std::bit_cast<std::uint32_t>(values[i]));
      }
      CHECK(r.read(3, "tail") == 0x5);
      CHECK_NOTHROW(r.expect_end("test"));
    }
  }
}

TEST_CASE("writing within the reserved capacity does not allocate") {
  std::vector<float> values(1000, 1.5f);
  std::vector<std::byte> buf;
  buf.reserve((7 + 32 * 1000 + 64 * 10 + 7) / 8);
  { ecopt::bit_writer warm(buf); }
  ecopt::test::allocation_scope scope;
  ecopt::bit_writer w(buf);
  w.write(1, 7);
  w.write_f32s(std::span<const float>(values).first(500));
  for (int i = 0; i < 10; ++i) w.write_u64(~std::uint64_t{0});
  w.write(0, 1);
  w.write_f32s(std::span<const float>(values).last(500));
  w.finish();
  CHECK(scope.count() == 0);
}

TEST_CASE("truncated payloads name the field and the offset") {
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  w.write(0x3ff, 10);
  const auto bytes = w.finish();

  ecopt::bit_reader r(bytes);
  CHECK(r.read(8, "first") == 0xff);
  const auto msg = decode_error_message([&] { r.read(9, "second_field"); });
  CHECK(contains(msg, "second_field"));
  CHECK(contains(msg, "bit offset 8"));

  ecopt::bit_reader empty(std::span<const std::byte>{});
  CHECK(contains(decode_error_message([&] { empty.read_f32("scale"); }), "scale"));
  CHECK(contains(decode_error_message([&] { empty.require(1, "norm"); }), "norm"));
  std::vector<float> two(2);
  ecopt::bit_reader r2(bytes);
  CHECK(contains(decode_error_message([&] { r2.read_f32s(two, "values"); }), "values"));
  CHECK_NOTHROW(empty.read(0, "nothing"));
  CHECK_NOTHROW(empty.expect_end("empty"));
}

TEST_CASE("trailing bits are rejected, zero padding is not") {
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  w.write(0xabcde, 20);
  const auto bytes = w.finish();
  REQUIRE(bytes.size() == 3);

  ecopt::bit_reader all(bytes);
  all.read(20, "x");
  CHECK_NOTHROW(all.expect_end("demo"));

  ecopt::bit_reader part(bytes);
  part.read(12, "x");
  const auto msg = decode_error_message([&] { part.expect_end("demo"); });
  CHECK(contains(msg, "demo"));
  CHECK(contains(msg, "12 unexpected bits"));

  std::vector<std::byte> padded(bytes.begin(), bytes.end());
  padded.back() |= std::byte{0x10};  // bit 20, inside the padding
  ecopt::bit_reader dirty(padded);
  dirty.read(20, "x");
  CHECK_THROWS_AS(dirty.expect_end("demo"), ecopt::decode_error);

  padded = std::vector<std::byte>(bytes.begin(), bytes.end());
  padded.push_back(std::byte{0});
  ecopt::bit_reader extra(padded);
  extra.read(20, "x");
  CHECK_THROWS_AS(extra.expect_end("demo"), ecopt::decode_error);
}

TEST_CASE("checked reads: finite floats and bounded indices") {
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  w.write_f32(std::numeric_limits<float>::infinity());
  w.write_f32(2.0f);
  w.write(9, 4);
  w.write(3, 4);
  const auto bytes = w.finish();
  ecopt::bit_reader r(bytes);
  CHECK(contains(decode_error_message([&] { r.read_finite_f32("gain"); }), "gain"));
  CHECK(r.read_finite_f32("gain") == 2.0f);
  CHECK(contains(decode_error_message([&] { r.read_index(4, 9, "idx"); }), "idx = 9"));
  CHECK(r.read_index(4, 9, "idx") == 3);
}

TEST_CASE("packed runs equal one write per field, at every width and alignment") {
  auto rng = ecopt::counter_rng::stream(11, ecopt::stream_purpose::test, 0, 0);
  for (unsigned width = 1; width <= 32; ++width) {
    for (const unsigned offset : {0u, 1u, 7u, 8u, 13u, 63u, 64u, 65u}) {
      // Lengths around the word and staging boundaries (64 fields, 64 words).
      for (const std::size_t n :
           {std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{8}, std::size_t{63},
            std::size_t{64}, std::size_t{65}, std::size_t{1000}, std::size_t{4097}}) {
        CAPTURE(width);
        CAPTURE(offset);
        CAPTURE(n);
        std::vector<std::uint32_t> fields(n);
        for (auto& f : fields) f = static_cast<std::uint32_t>(rng());  // high bits are ignored
        const std::uint64_t head = rng();
        std::vector<std::byte> expected_buf;
        ecopt::bit_writer e(expected_buf);
        e.write(head, offset > 64 ? 64 : offset);
        if (offset > 64) e.write(head, offset - 64);
        for (const auto f : fields) e.write(f, width);
        e.write(0x5, 3);
        e.finish();

        std::vector<std::byte> buf;
        ecopt::bit_writer w(buf);
        w.write(head, offset > 64 ? 64 : offset);
        if (offset > 64) w.write(head, offset - 64);
        w.write_packed(fields, width);
        w.write(0x5, 3);
        REQUIRE(w.bits() == offset + n * width + 3);
        const auto bytes = w.finish();
        REQUIRE(std::vector<std::byte>(bytes.begin(), bytes.end()) == expected_buf);

        ecopt::bit_reader r(bytes);
        r.read(offset > 64 ? 64 : offset, "head");
        if (offset > 64) r.read(offset - 64, "head");
        std::vector<std::uint32_t> back(n);
        r.read_packed(back, width, "fields");
        bool same = true;
        for (std::size_t i = 0; i < n; ++i) same = same && back[i] == low_bits(fields[i], width);
        REQUIRE(same);
        CHECK(r.read(3, "tail") == 0x5);
        CHECK_NOTHROW(r.expect_end("test"));

        if (width <= 8) {  // the same run from and to bytes
          std::vector<std::uint8_t> small(n);
          for (std::size_t i = 0; i < n; ++i) small[i] = static_cast<std::uint8_t>(fields[i]);
          std::vector<std::byte> buf8;
          ecopt::bit_writer w8(buf8);
          w8.write(head, offset > 64 ? 64 : offset);
          if (offset > 64) w8.write(head, offset - 64);
          w8.write_packed(small, width);
          w8.write(0x5, 3);
          const auto bytes8 = w8.finish();
          REQUIRE(std::vector<std::byte>(bytes8.begin(), bytes8.end()) == expected_buf);
          ecopt::bit_reader r8(bytes8);
          r8.read(offset > 64 ? 64 : offset, "head");
          if (offset > 64) r8.read(offset - 64, "head");
          std::vector<std::uint8_t> back8(n);
          r8.read_packed(back8, width, "fields");
          bool same8 = true;
          for (std::size_t i = 0; i < n; ++i)
            same8 = same8 && back8[i] == low_bits(fields[i], width);
          REQUIRE(same8);
          CHECK(r8.read(3, "tail") == 0x5);
        }
      }
    }
  }
}

TEST_CASE("byte runs round trip at every alignment") {
  auto rng = ecopt::counter_rng::stream(12, ecopt::stream_purpose::test, 0, 0);
  for (unsigned offset = 0; offset < 17; ++offset) {
    for (const std::size_t n :
         {std::size_t{0}, std::size_t{1}, std::size_t{9}, std::size_t{1000}}) {
      std::vector<std::uint8_t> bytes(n);
      for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
      std::vector<std::byte> buf;
      ecopt::bit_writer w(buf);
      w.write(0x1234, offset);
      w.write_bytes(bytes);
      w.write(1, 1);
      const auto payload = w.finish();
      CHECK(w.bits() == offset + 8 * n + 1);
      ecopt::bit_reader r(payload);
      CHECK(r.read(offset, "head") == low_bits(0x1234, offset));
      std::vector<std::uint8_t> back(n);
      r.read_bytes(back, "bytes");
      CHECK(back == bytes);
      CHECK(r.read(1, "tail") == 1);
      CHECK_NOTHROW(r.expect_end("test"));
    }
  }
}

TEST_CASE("packed and byte runs check their length once and name the field") {
  std::vector<std::byte> buf;
  ecopt::bit_writer w(buf);
  const std::vector<std::uint32_t> fields(10, 5);
  w.write_packed(fields, 3);  // 30 bits
  const auto bytes = w.finish();
  ecopt::bit_reader r(bytes);
  std::vector<std::uint32_t> eleven(11);
  const auto msg = decode_error_message([&] { r.read_packed(eleven, 3, "level"); });
  CHECK(contains(msg, "level"));
  CHECK(contains(msg, "needed 33 bits"));
  CHECK(r.position() == 0);  // nothing consumed
  std::vector<std::uint8_t> five(5);
  CHECK(contains(decode_error_message([&] { r.read_bytes(five, "code"); }), "code"));
  std::vector<std::uint32_t> ten(10);
  r.read_packed(ten, 3, "level");
  CHECK(ten == fields);
}

TEST_CASE("packed runs within the reserved capacity do not allocate") {
  std::vector<std::uint32_t> fields(5000, 3);
  std::vector<std::uint8_t> bytes(700, 9);
  std::vector<std::byte> buf;
  buf.reserve((1 + 5000 * 5 + 8 * 700 + 7) / 8);
  { ecopt::bit_writer warm(buf); }
  ecopt::test::allocation_scope scope;
  ecopt::bit_writer w(buf);
  w.write(1, 1);
  w.write_packed(fields, 5);
  w.write_bytes(bytes);
  w.finish();
  CHECK(scope.count() == 0);
}

}  // namespace bit_io_test
