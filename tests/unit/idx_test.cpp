// Tests of the IDX reader: round trips of every element type from plain and
// gzip files, every error case (with the file name and offset in the
// message), and the real Fashion-MNIST files when they are installed.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <Eigen/Core>
#include <atomic>
#include <bit>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "ecopt/data/idx.hpp"
#include "ecopt/error.hpp"
#include "support/alloc_counter.hpp"
#include "support/temp_dir.hpp"

// Everything of this file lives in its own namespace, so that test files can share a
// translation unit (the unity build in tests/CMakeLists.txt).
namespace idx_test {

namespace {

namespace fs = std::filesystem;
using bytes = std::vector<unsigned char>;

using ecopt::test::temp_dir;

fs::path write_plain(const fs::path& path, const bytes& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
  return path;
}

fs::path write_gzip(const fs::path& path, const bytes& data) {
  gzFile f = gzopen(path.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, data.data(), static_cast<unsigned>(data.size())) ==
          static_cast<int>(data.size()));
  REQUIRE(gzclose(f) == Z_OK);
  return path;
}

bytes read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void put_be32(bytes& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) {
    out.push_back(static_cast<unsigned char>((v >> static_cast<unsigned>(shift)) & 0xFFU));
  }
}

/// An IDX header.
bytes header(std::uint8_t type, std::initializer_list<std::uint32_t> dims) {
  bytes out = {0, 0, type, static_cast<unsigned char>(dims.size())};
  for (const std::uint32_t d : dims) put_be32(out, d);
  return out;
}

bytes concat(bytes a, const bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

/// The message of the data_error that f throws ("" if none).
template <class F>
std::string data_message(F&& f) {
  try {
    f();
  } catch (const ecopt::data_error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

/// A FIFO at `path` that a child process fills with `data` and then closes: a
/// file whose size the reader cannot know (as /dev/stdin fed by a pipe).
class fifo_feed {
 public:
  fifo_feed(const fs::path& path, const bytes& data) {
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    const std::string name = path.string();
    child_ = ::fork();
    REQUIRE(child_ >= 0);
    if (child_ == 0) {  // only async-signal-safe calls in the child
      const int fd = ::open(name.c_str(), O_WRONLY);
      std::size_t done = 0;
      while (fd >= 0 && done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n <= 0) break;
        done += static_cast<std::size_t>(n);
      }
      ::_exit(done == data.size() ? 0 : 1);
    }
  }
  /// The writer is done by the time the reader has seen the end; a reader that
  /// never opened the FIFO leaves it blocked, hence the kill.
  ~fifo_feed() {
    ::kill(child_, SIGKILL);
    ::waitpid(child_, nullptr, 0);
  }
  fifo_feed(const fifo_feed&) = delete;
  fifo_feed& operator=(const fifo_feed&) = delete;

 private:
  pid_t child_ = -1;
};

}  // namespace

TEST_SUITE_BEGIN("data");

TEST_CASE("IDX u8 images and labels round-trip, plain and gzip") {
  const temp_dir dir;
  // 3 images of 2 x 2 pixels
  const bytes pixels = {0, 255, 1, 2, 10, 20, 30, 40, 128, 64, 32, 16};
  const bytes images = concat(header(0x08, {3, 2, 2}), pixels);
  const bytes labels = concat(header(0x08, {3}), {7, 0, 9});
  for (const bool gz : {false, true}) {
    CAPTURE(gz);
    const auto write = gz ? write_gzip : write_plain;
    const fs::path ip = write(dir.file(gz ? "img.gz" : "img"), images);
    const fs::path lp = write(dir.file(gz ? "lab.gz" : "lab"), labels);

    const Eigen::MatrixXd m = ecopt::load_idx_images(ip);
    REQUIRE(m.rows() == 4);
    REQUIRE(m.cols() == 3);
    for (std::size_t k = 0; k < pixels.size(); ++k) {
      CHECK(m.data()[k] == doctest::Approx(pixels[k] / 255.0));
    }
    CHECK(m(1, 0) == 1.0);  // image 0, pixel (0, 1)
    const Eigen::MatrixXf raw = ecopt::load_idx_images<float>(ip, 1.0F);
    CHECK(raw(3, 2) == 16.0F);

    const Eigen::VectorXi y = ecopt::load_idx_labels(lp);
    CHECK(y == (Eigen::VectorXi(3) << 7, 0, 9).finished());

    const auto both = ecopt::load_idx_dataset<float>(ip, lp);
    CHECK(both.images.cols() == 3);
    CHECK(both.labels.size() == 3);

    const ecopt::idx_array a = ecopt::read_idx(ip);
    CHECK(a.type == ecopt::idx_type::u8);
    CHECK(a.dims == std::vector<std::uint32_t>{3, 2, 2});
    CHECK(a.size() == 12);
    CHECK(a[1] == 255.0);
  }
}

TEST_CASE("IDX signed and floating-point element types") {
  const temp_dir dir;
  bytes i8 = header(0x09, {2, 2});
  for (const int v : {-128, -1, 0, 127}) i8.push_back(static_cast<unsigned char>(v));
  bytes i16 = header(0x0B, {1, 3});
  for (const int v : {-2, 300, -32768}) {
    const auto u = static_cast<std::uint16_t>(v);
    i16.push_back(static_cast<unsigned char>(u >> 8U));
    i16.push_back(static_cast<unsigned char>(u & 0xFFU));
  }
  bytes i32 = header(0x0C, {2});
  put_be32(i32, static_cast<std::uint32_t>(-70000));
  put_be32(i32, 5);
  bytes f32 = header(0x0D, {1, 2});
  put_be32(f32, std::bit_cast<std::uint32_t>(1.5F));
  put_be32(f32, std::bit_cast<std::uint32_t>(-0.25F));
  bytes f64 = header(0x0E, {1, 1});
  const auto bits = std::bit_cast<std::uint64_t>(3.141592653589793);
  put_be32(f64, static_cast<std::uint32_t>(bits >> 32U));
  put_be32(f64, static_cast<std::uint32_t>(bits & 0xFFFFFFFFU));

  const Eigen::MatrixXd m8 = ecopt::load_idx_images(write_plain(dir.file("i8"), i8), 1.0);
  CHECK(m8 == (Eigen::MatrixXd(2, 2) << -128, 0, -1, 127).finished());
  const Eigen::MatrixXd m16 = ecopt::load_idx_images(write_gzip(dir.file("i16.gz"), i16), 1.0);
  CHECK(m16 == (Eigen::MatrixXd(3, 1) << -2, 300, -32768).finished());
  const ecopt::idx_array a32 = ecopt::read_idx(write_plain(dir.file("i32"), i32));
  CHECK(a32.type == ecopt::idx_type::i32);
  CHECK(a32[0] == -70000.0);
  CHECK(a32[1] == 5.0);
  CHECK(ecopt::load_idx_labels(dir.file("i32")) == (Eigen::VectorXi(2) << -70000, 5).finished());
  const Eigen::MatrixXd mf = ecopt::load_idx_images(write_plain(dir.file("f32"), f32), 2.0);
  CHECK(mf == (Eigen::MatrixXd(2, 1) << 3.0, -0.5).finished());
  const Eigen::MatrixXd md = ecopt::load_idx_images(write_plain(dir.file("f64"), f64), 1.0);
  CHECK(md(0, 0) == 3.141592653589793);
}

TEST_CASE("IDX errors name the file and the offset") {
  const temp_dir dir;
  const bytes good = concat(header(0x08, {3, 2, 2}), bytes(12, 7));

  SUBCASE("missing file") {
    const fs::path p = dir.file("does_not_exist.idx");
    const std::string msg = data_message([&] { (void)ecopt::read_idx(p); });
    CHECK(contains(msg, p.string()));
    CHECK(contains(msg, "cannot open"));
    CHECK_THROWS_AS((void)ecopt::load_idx_images(p), ecopt::data_error);
    CHECK_THROWS_AS((void)ecopt::read_idx(dir.file("")), ecopt::data_error);  // a directory
  }
  SUBCASE("bad magic") {
    const fs::path p = write_plain(dir.file("magic"), concat({1, 0, 8, 1, 0, 0, 0, 1}, {5}));
    const std::string msg = data_message([&] { (void)ecopt::read_idx(p); });
    CHECK(contains(msg, p.string()));
    CHECK(contains(msg, "bad magic"));
    CHECK(contains(msg, "offset 0"));
  }
  SUBCASE("file shorter than the magic number") {
    const fs::path p = write_plain(dir.file("short"), {0, 0});
    CHECK(contains(data_message([&] { (void)ecopt::read_idx(p); }), "ends after 2 bytes"));
    const fs::path e = write_plain(dir.file("empty"), {});
    CHECK(contains(data_message([&] { (void)ecopt::read_idx(e); }), "ends after 0 bytes"));
  }
  SUBCASE("unknown type code") {
    const fs::path p = write_plain(dir.file("type"), concat(header(0x07, {1}), {1}));
    const std::string msg = data_message([&] { (void)ecopt::read_idx(p); });
    CHECK(contains(msg, p.string()));
    CHECK(contains(msg, "unknown IDX type code 0x07 at offset 2"));
  }
  SUBCASE("zero dimensions") {
    const fs::path p = write_plain(dir.file("ndims"), {0, 0, 8, 0});
    CHECK(contains(data_message([&] { (void)ecopt::read_idx(p); }), "number of dimensions"));
    const fs::path z = write_plain(dir.file("zero"), header(0x08, {3, 0, 2}));
    const std::string msg = data_message([&] { (void)ecopt::read_idx(z); });
    CHECK(contains(msg, z.string()));
    CHECK(contains(msg, "dimension 1 (at offset 8) is 0"));
  }
  SUBCASE("huge dimensions are rejected before allocating") {
    const fs::path p = write_plain(
        dir.file("huge"), header(0x0E, {0xFFFFFFFFU, 0xFFFFFFFFU, 0xFFFFFFFFU}));  // overflows
    const std::string msg = data_message([&] { (void)ecopt::read_idx(p); });
    CHECK(contains(msg, p.string()));
    CHECK(contains(msg, "idx_options.max_bytes"));
    const fs::path q = write_plain(dir.file("big"), header(0x08, {60000, 28, 28}));
    CHECK(contains(data_message([&] { (void)ecopt::read_idx(q, {.max_bytes = 1000}); }),
                   "60000 x 28 x 28"));
    // within the limit, but the data is absent: no 47 MB allocation, a truncation error
    CHECK(contains(data_message([&] { (void)ecopt::read_idx(q); }), "file ends after 0"));
    const fs::path g = write_gzip(dir.file("big.gz"), header(0x08, {60000, 28, 28}));
    const std::string gz_msg = data_message([&] { (void)ecopt::load_idx_images(g); });
    CHECK(contains(gz_msg, g.string()));
    CHECK(contains(gz_msg, "compressed file can hold"));
  }
  SUBCASE("truncated header") {
    const bytes h = header(0x08, {3, 2, 2});
    const fs::path p = write_plain(dir.file("header"), bytes(h.begin(), h.begin() + 10));
    const std::string msg = data_message([&] { (void)ecopt::read_idx(p); });
    CHECK(contains(msg, "ends after 10 bytes, inside the 16-byte header"));
  }
  SUBCASE("truncated data") {
    for (const bool gz : {false, true}) {
      const bytes cut(good.begin(), good.end() - 7);
      const fs::path p =
          gz ? write_gzip(dir.file("cut.gz"), cut) : write_plain(dir.file("cut"), cut);
      const std::string msg = data_message([&] { (void)ecopt::load_idx_images(p); });
      CHECK(contains(msg, p.string()));
      CHECK(contains(msg, "expected 12 bytes of data after the 16-byte header"));
      CHECK(contains(msg, "file ends after 5"));
      CHECK(contains(msg, "offset 21"));
    }
  }
  SUBCASE("trailing bytes") {
    for (const bool gz : {false, true}) {
      const bytes longer = concat(good, {1, 2});
      const fs::path p =
          gz ? write_gzip(dir.file("trail.gz"), longer) : write_plain(dir.file("trail"), longer);
      const std::string msg = data_message([&] { (void)ecopt::read_idx(p); });
      CHECK(contains(msg, p.string()));
      CHECK(contains(msg, "trailing bytes"));
      CHECK(contains(msg, "offset 28"));
      CHECK_THROWS_AS((void)ecopt::load_idx_images(p), ecopt::data_error);
    }
  }
  SUBCASE("corrupt gzip stream") {
    // a payload zlib cannot compress much, so the damage lands in the deflate data
    bytes payload = header(0x08, {100, 100});
    std::uint32_t state = 12345;
    for (int k = 0; k < 10000; ++k) {
      state = state * 1664525U + 1013904223U;
      payload.push_back(static_cast<unsigned char>(state >> 24U));
    }
    const bytes gz = read_file(write_gzip(dir.file("src.gz"), payload));
    REQUIRE(gz.size() > 1000);

    bytes bad_crc = gz;
    bad_crc[gz.size() - 6] ^= 0xFFU;  // inside the CRC-32 of the trailer
    const fs::path p = write_plain(dir.file("crc.gz"), bad_crc);
    const std::string msg = data_message([&] { (void)ecopt::read_idx(p); });
    CHECK(contains(msg, p.string()));
    CHECK(contains(msg, "corrupt gzip stream"));

    bytes bad_data = gz;
    for (std::size_t k = 400; k < 420; ++k) bad_data[k] ^= 0x5AU;
    const fs::path q = write_plain(dir.file("data.gz"), bad_data);
    CHECK(contains(data_message([&] { (void)ecopt::read_idx(q); }), q.string()));

    const fs::path r = write_plain(dir.file("half.gz"), bytes(gz.begin(), gz.begin() + 600));
    const std::string half = data_message([&] { (void)ecopt::read_idx(r); });
    CHECK(contains(half, r.string()));
    CHECK(contains(half, "truncated gzip stream"));
  }
  SUBCASE("images and labels of the wrong shape or count") {
    const fs::path img = write_plain(dir.file("img"), good);
    const fs::path lab = write_plain(dir.file("lab"), concat(header(0x08, {2}), {1, 2}));
    const std::string mismatch = data_message([&] { (void)ecopt::load_idx_dataset(img, lab); });
    CHECK(contains(mismatch, img.string()));
    CHECK(contains(mismatch, lab.string()));
    CHECK(contains(mismatch, "3 images"));
    CHECK(contains(mismatch, "2 labels"));
    CHECK(contains(data_message([&] { (void)ecopt::load_idx_labels(img); }), "1 dimension"));
    CHECK(contains(data_message([&] { (void)ecopt::load_idx_images(lab); }), "at least 2"));
    bytes float_labels = header(0x0D, {1});
    put_be32(float_labels, std::bit_cast<std::uint32_t>(1.0F));
    const fs::path fl = write_plain(dir.file("float_labels"), float_labels);
    CHECK(contains(data_message([&] { (void)ecopt::load_idx_labels(fl); }), "integer type"));
  }
}

TEST_CASE("IDX from a pipe: memory grows with the bytes that arrive, not with the header") {
  const temp_dir dir;
  // 112 bytes whose header declares 2^14 x 2^14 u8 elements (256 MiB): the FIFO has no
  // size to check the header against.
  const bytes lying = concat(header(0x08, {1U << 14U, 1U << 14U}), bytes(100, 7));
  REQUIRE(lying.size() == 112);
  {
    const fifo_feed feed(dir.file("read_idx"), lying);
    const ecopt::test::allocation_scope scope;
    const std::string msg = data_message([&] { (void)ecopt::read_idx(dir.file("read_idx")); });
    CHECK(contains(msg, "truncated: expected 268435456 bytes"));
    CHECK(contains(msg, "file ends after 100 bytes of data"));
    CHECK(scope.bytes() < (std::size_t{1} << 20U));
  }
  {
    const bytes labels = concat(header(0x08, {1U << 28U}), bytes(100, 7));
    const fifo_feed feed(dir.file("labels"), labels);
    const ecopt::test::allocation_scope scope;
    const std::string msg = data_message([&] { (void)ecopt::load_idx_labels(dir.file("labels")); });
    CHECK(contains(msg, "file ends after 100 bytes of data"));
    CHECK(scope.bytes() < (std::size_t{1} << 20U));
  }
  // 2^42 pixels (32 TiB as double) under a limit that allows them: allocating the
  // matrix up front would throw std::bad_alloc; the truncation is found first.
  {
    const bytes huge = concat(header(0x08, {1U << 14U, 1U << 14U, 1U << 14U}), bytes(100, 7));
    const fifo_feed feed(dir.file("images"), huge);
    const ecopt::test::allocation_scope scope;
    const std::string msg = data_message([&] {
      (void)ecopt::load_idx_images(dir.file("images"), 1.0, {.max_bytes = ~std::uint64_t{0}});
    });
    CHECK(contains(msg, dir.file("images").string()));
    CHECK(contains(msg, "file ends after 100 bytes of data"));
    CHECK(scope.bytes() < (std::size_t{1} << 20U));
  }
  // An honest pipe reads like the file, across several growth steps.
  bytes pixels(300 * 28 * 28);
  for (std::size_t k = 0; k < pixels.size(); ++k) pixels[k] = static_cast<unsigned char>(k * 31);
  const bytes images = concat(header(0x08, {300, 28, 28}), pixels);
  const Eigen::MatrixXf from_file =
      ecopt::load_idx_images<float>(write_plain(dir.file("plain"), images));
  const fifo_feed feed(dir.file("honest"), images);
  CHECK(ecopt::load_idx_images<float>(dir.file("honest")) == from_file);
  const fifo_feed raw_feed(dir.file("honest_raw"), images);
  CHECK(ecopt::read_idx(dir.file("honest_raw")).bytes == pixels);
}

TEST_CASE("IDX: max_bytes bounds the decoded images and labels, not only the payload") {
  const temp_dir dir;
  const fs::path img =
      write_plain(dir.file("img"), concat(header(0x08, {10, 10, 10}), bytes(1000)));
  // 1000 u8 pixels fit a 1000-byte limit; as 8000 bytes of double they do not.
  CHECK(ecopt::read_idx(img, {.max_bytes = 1000}).bytes.size() == 1000);
  const std::string msg =
      data_message([&] { (void)ecopt::load_idx_images(img, 1.0, {.max_bytes = 1000}); });
  CHECK(contains(msg, img.string()));
  CHECK(contains(msg, "image matrix (10 x 10 x 10 values of 8 bytes)"));
  CHECK(contains(msg, "idx_options.max_bytes"));
  CHECK(ecopt::load_idx_images<float>(img, 1.0F, {.max_bytes = 4000}).size() == 1000);
  const fs::path lab = write_plain(dir.file("lab"), concat(header(0x08, {1000}), bytes(1000)));
  CHECK(contains(data_message([&] { (void)ecopt::load_idx_labels(lab, {.max_bytes = 1000}); }),
                 "label vector"));
  CHECK(ecopt::load_idx_labels(lab, {.max_bytes = 4000}).size() == 1000);
}

TEST_CASE("IDX: the Fashion-MNIST test set, when installed") {
  const fs::path root = "/usr/share/datasets/fashion-mnist";
  const fs::path images = root / "t10k-images-idx3-ubyte.gz";
  const fs::path labels = root / "t10k-labels-idx1-ubyte.gz";
  if (!fs::exists(images) || !fs::exists(labels)) {
    MESSAGE("Fashion-MNIST not found under " << root.string() << "; skipped");
    return;
  }
  const Eigen::VectorXi y = ecopt::load_idx_labels(labels);
  REQUIRE(y.size() == 10000);
  CHECK(y.minCoeff() == 0);
  CHECK(y.maxCoeff() == 9);
  for (int c = 0; c < 10; ++c) CHECK((y.array() == c).count() == 1000);

  const auto data = ecopt::load_idx_dataset<float>(images, labels);
  CHECK(data.images.rows() == 784);
  CHECK(data.images.cols() == 10000);
  CHECK(data.images.minCoeff() == 0.0F);
  CHECK(data.images.maxCoeff() == 1.0F);
}

TEST_SUITE_END();

}  // namespace idx_test
