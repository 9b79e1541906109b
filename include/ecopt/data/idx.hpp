#pragma once
// Reader for the IDX format of MNIST and Fashion-MNIST, plain or gzip
// compressed (zlib reads both transparently; link with -lz / ZLIB::ZLIB).
//
// An IDX file is: two zero bytes, a type code, the number of dimensions n,
// then n big-endian u32 dimensions, then the elements in row-major order,
// big-endian. Type codes: 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32,
// 0x0E f64.
//
// Every defect is an ecopt::data_error whose message starts with the file
// name and gives the byte offset where relevant (for gzip files, the offset
// in the decompressed stream). The declared size is checked against
// idx_options.max_bytes (which bounds the decoded matrix too) and against what
// the file can hold; only a plain regular file proves its size up front, so
// for gzip files and pipes (a FIFO, /dev/stdin) memory grows with the bytes
// that actually arrive. A lying header never causes a large allocation.
//
// API: read_idx (any file, raw payload), load_idx_images (d x n matrix, one
// image per column), load_idx_labels (Eigen::VectorXi), load_idx_dataset
// (both, counts checked).
#include <zlib.h>

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "ecopt/error.hpp"
#include "ecopt/problem.hpp"

namespace ecopt {

/// The element type of an IDX file (the third magic byte).
enum class idx_type : std::uint8_t {
  u8 = 0x08,
  i8 = 0x09,
  i16 = 0x0B,
  i32 = 0x0C,
  f32 = 0x0D,
  f64 = 0x0E,
};

/// Bytes per element of `type`.
[[nodiscard]] constexpr std::size_t idx_element_size(idx_type type) noexcept {
  switch (type) {
    case idx_type::u8:
    case idx_type::i8:
      return 1;
    case idx_type::i16:
      return 2;
    case idx_type::i32:
    case idx_type::f32:
      return 4;
    case idx_type::f64:
      return 8;
  }
  return 0;
}

struct idx_options {
  /// Largest payload (elements x element size) accepted, checked against the
  /// header before anything is allocated; it bounds the decoded images and
  /// labels (elements x sizeof their scalar) as well.
  std::uint64_t max_bytes = std::uint64_t{1} << 32;
};

/// A whole IDX file: its type, dimensions and payload as stored (big-endian).
struct idx_array {
  idx_type type = idx_type::u8;
  std::vector<std::uint32_t> dims;
  std::vector<unsigned char> bytes;

  /// The number of elements (the product of dims).
  [[nodiscard]] std::size_t size() const noexcept { return bytes.size() / element_size(); }
  [[nodiscard]] std::size_t element_size() const noexcept { return idx_element_size(type); }
  /// Element i (row-major order) converted to double.
  [[nodiscard]] double operator[](std::size_t i) const noexcept;
};

namespace detail {

[[nodiscard]] inline std::string hex_byte(unsigned value) {
  constexpr const char* digits = "0123456789abcdef";
  std::string s = "0x";
  s += digits[(value >> 4U) & 0xFU];
  s += digits[value & 0xFU];
  return s;
}

/// A file read through zlib: gzip-compressed or plain, transparently.
class gz_input {
 public:
  explicit gz_input(const std::filesystem::path& path) : name_(path.string()) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) fail("cannot open: is a directory");
    errno = 0;
    file_.reset(gzopen(name_.c_str(), "rb"));
    if (!file_) {
      const int err = errno;
      fail("cannot open: " +
           (err != 0 ? std::generic_category().message(err) : std::string("out of memory")));
    }
    gzbuffer(file_.get(), 1U << 17U);
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// Whether the file is read as is (not gzip); meaningful after the first read.
  [[nodiscard]] bool direct() const noexcept { return gzdirect(file_.get()) != 0; }
  /// Bytes delivered so far (the offset in the decompressed stream).
  [[nodiscard]] std::uint64_t offset() const noexcept { return offset_; }

  /// Reads up to n bytes; returns fewer only at the end of the data. Throws
  /// data_error on a corrupt or truncated gzip stream or a read error.
  std::size_t read(void* buffer, std::size_t n) {
    auto* out = static_cast<unsigned char*>(buffer);
    std::size_t total = 0;
    while (total < n) {
      const auto want = static_cast<unsigned>(std::min<std::size_t>(n - total, 1U << 30U));
      const int got = gzread(file_.get(), out + total, want);
      if (got > 0) {
        total += static_cast<std::size_t>(got);
        offset_ += static_cast<std::uint64_t>(got);
      }
      if (got < 0 || static_cast<unsigned>(got) < want) {
        check_stream();
        break;
      }
    }
    return total;
  }

  [[noreturn]] void fail(const std::string& what) const { throw data_error(name_ + ": " + what); }

 private:
  void check_stream() const {
    int err = Z_OK;
    const char* message = gzerror(file_.get(), &err);
    if (err == Z_OK) return;
    const std::string where = " at decompressed offset " + std::to_string(offset_);
    std::string detail = message != nullptr ? message : "unknown error";
    if (detail.starts_with(name_ + ": ")) detail.erase(0, name_.size() + 2);
    if (err == Z_BUF_ERROR) fail("truncated gzip stream" + where + " (" + detail + ")");
    if (err == Z_ERRNO) fail("read error" + where + " (" + detail + ")");
    fail("corrupt gzip stream" + where + " (" + detail + ")");
  }

  struct closer {
    void operator()(gzFile f) const noexcept { gzclose(f); }
  };

  std::string name_;
  std::unique_ptr<gzFile_s, closer> file_;
  std::uint64_t offset_ = 0;
};

[[nodiscard]] inline std::uint32_t load_be32(const unsigned char* p) noexcept {
  return (std::uint32_t{p[0]} << 24U) | (std::uint32_t{p[1]} << 16U) | (std::uint32_t{p[2]} << 8U) |
         std::uint32_t{p[3]};
}

[[nodiscard]] inline std::uint64_t load_be64(const unsigned char* p) noexcept {
  return (std::uint64_t{load_be32(p)} << 32U) | load_be32(p + 4);
}

/// Element i of a big-endian payload as double.
[[nodiscard]] inline double idx_value(idx_type type, const unsigned char* data,
                                      std::size_t i) noexcept {
  switch (type) {
    case idx_type::u8:
      return data[i];
    case idx_type::i8:
      return static_cast<std::int8_t>(data[i]);
    case idx_type::i16: {
      const unsigned char* p = data + 2 * i;
      return static_cast<std::int16_t>(static_cast<std::uint16_t>((p[0] << 8U) | p[1]));
    }
    case idx_type::i32:
      return static_cast<std::int32_t>(load_be32(data + 4 * i));
    case idx_type::f32:
      return std::bit_cast<float>(load_be32(data + 4 * i));
    case idx_type::f64:
      return std::bit_cast<double>(load_be64(data + 8 * i));
  }
  return 0;
}

[[nodiscard]] inline bool is_integer_type(idx_type type) noexcept {
  return type == idx_type::u8 || type == idx_type::i8 || type == idx_type::i16 ||
         type == idx_type::i32;
}

[[nodiscard]] inline std::string dims_string(const std::vector<std::uint32_t>& dims) {
  std::string s;
  for (std::size_t k = 0; k < dims.size(); ++k) {
    if (k > 0) s += " x ";
    s += std::to_string(dims[k]);
  }
  return s;
}

}  // namespace detail

inline double idx_array::operator[](std::size_t i) const noexcept {
  return detail::idx_value(type, bytes.data(), i);
}

namespace detail {

/// An IDX file being read: the header is parsed and checked on construction,
/// then the payload is streamed with read_payload (or read whole with
/// read_all) and the end checked with finish. The declared size is checked
/// against idx_options.max_bytes and against what the file on disk can hold
/// (its size when plain; 1032 times its size, deflate's largest ratio, when
/// compressed). Only a plain regular file proves its size (size_proven());
/// anything else is read into memory that grows with what arrives.
class idx_stream {
 public:
  idx_stream(const std::filesystem::path& path, const idx_options& options)
      : in_(path), max_bytes_(options.max_bytes) {
    unsigned char magic[4] = {};
    const std::size_t got_magic = in_.read(magic, 4);
    if (got_magic < 4) {
      in_.fail("file ends after " + std::to_string(got_magic) +
               " bytes, inside the 4-byte magic number (not an IDX file)");
    }
    if (magic[0] != 0 || magic[1] != 0) {
      in_.fail("bad magic number at offset 0: expected 0x00 0x00 <type> <ndims>, got " +
               hex_byte(magic[0]) + " " + hex_byte(magic[1]) + " " + hex_byte(magic[2]) + " " +
               hex_byte(magic[3]) + " (not an IDX file)");
    }
    type_ = static_cast<idx_type>(magic[2]);
    if (idx_element_size(type_) == 0) {
      in_.fail("unknown IDX type code " + hex_byte(magic[2]) +
               " at offset 2 (expected 0x08, 0x09, 0x0b, 0x0c, 0x0d or 0x0e)");
    }
    const unsigned ndims = magic[3];
    if (ndims == 0) in_.fail("the number of dimensions (offset 3) is 0");

    header_bytes_ = 4 + 4 * std::size_t{ndims};
    unsigned char dim_bytes[4 * 255] = {};
    const std::size_t got_dims = in_.read(dim_bytes, 4 * std::size_t{ndims});
    if (got_dims < 4 * std::size_t{ndims}) {
      in_.fail("file ends after " + std::to_string(4 + got_dims) + " bytes, inside the " +
               std::to_string(header_bytes_) + "-byte header (" + std::to_string(ndims) +
               " dimensions)");
    }
    dims_.resize(ndims);
    for (unsigned k = 0; k < ndims; ++k) {
      dims_[k] = load_be32(dim_bytes + 4 * std::size_t{k});
      if (dims_[k] == 0) {
        in_.fail("dimension " + std::to_string(k) + " (at offset " + std::to_string(4 + 4 * k) +
                 ") is 0");
      }
    }
    const std::size_t element_size = idx_element_size(type_);
    const std::uint64_t max_elements = options.max_bytes / element_size;
    elements_ = 1;
    for (const std::uint32_t dim : dims_) {
      if (elements_ > max_elements / dim) {  // above the limit, and never overflows
        in_.fail("the header declares " + dims_string(dims_) + " elements of " +
                 std::to_string(element_size) + " byte(s), more than the limit of " +
                 std::to_string(options.max_bytes) + " bytes (idx_options.max_bytes)");
      }
      elements_ *= dim;
    }
    payload_bytes_ = elements_ * element_size;

    // file_size fails for a FIFO or a terminal: their size is never proven.
    std::error_code ec;
    const std::uintmax_t file_bytes = std::filesystem::file_size(path, ec);
    if (!ec) {
      if (in_.direct() && header_bytes_ + payload_bytes_ > file_bytes) {
        truncated(file_bytes - std::min<std::uintmax_t>(file_bytes, header_bytes_));
      }
      size_proven_ = in_.direct();
      constexpr std::uint64_t max_deflate_ratio = 1032;
      if (!in_.direct() && payload_bytes_ / max_deflate_ratio > file_bytes) {
        in_.fail("truncated: the header declares " + std::to_string(payload_bytes_) +
                 " bytes of data (" + dims_string(dims_) + " elements), more than the " +
                 std::to_string(file_bytes) + "-byte compressed file can hold");
      }
    }
  }

  [[nodiscard]] idx_type type() const noexcept { return type_; }
  [[nodiscard]] const std::vector<std::uint32_t>& dims() const noexcept { return dims_; }
  [[nodiscard]] std::uint64_t elements() const noexcept { return elements_; }
  [[nodiscard]] std::uint64_t payload_bytes() const noexcept { return payload_bytes_; }
  [[nodiscard]] const std::string& name() const noexcept { return in_.name(); }
  /// Whether the file is known to hold the whole payload (a plain regular
  /// file): only then may a reader allocate for it before reading it.
  [[nodiscard]] bool size_proven() const noexcept { return size_proven_; }
  [[noreturn]] void fail_here(const std::string& what) const { in_.fail(what); }

  /// Checks that the payload decoded as `what` (elements x `scalar_bytes`)
  /// stays within idx_options.max_bytes: a u8 file loaded as double takes 8x
  /// its payload.
  void require_decoded_within_limit(std::size_t scalar_bytes, const std::string& what) const {
    if (elements_ > max_bytes_ / scalar_bytes) {
      in_.fail("the " + what + " (" + dims_string(dims_) + " values of " +
               std::to_string(scalar_bytes) + " bytes) would be larger than the limit of " +
               std::to_string(max_bytes_) + " bytes (idx_options.max_bytes)");
    }
  }

  /// The whole payload. Allocated at once when size_proven(); otherwise grown
  /// by doubling as bytes arrive, so a header that lies on a pipe or in a
  /// gzip stream costs at most twice what was really sent.
  [[nodiscard]] std::vector<unsigned char> read_all() {
    constexpr std::size_t first_step = std::size_t{1} << 16U;
    const auto total = static_cast<std::size_t>(payload_bytes_);
    std::vector<unsigned char> out;
    for (std::size_t next = size_proven_ ? total : std::min(total, first_step);;
         next = std::min(total, 2 * next)) {
      const std::size_t have = out.size();
      out.resize(next);
      read_payload(out.data() + have, next - have);
      if (next == total) return out;
    }
  }

  /// Reads the next n bytes of the payload into out; throws on truncation.
  void read_payload(unsigned char* out, std::size_t n) {
    const std::size_t got = in_.read(out, n);
    if (got < n) truncated(in_.offset() - header_bytes_);
  }

  /// Checks that nothing follows the payload.
  void finish() {
    unsigned char extra = 0;
    if (in_.read(&extra, 1) != 0) {
      in_.fail("trailing bytes after the end of the data at offset " +
               std::to_string(header_bytes_ + payload_bytes_) + " (the header declares " +
               dims_string(dims_) + ")");
    }
  }

 private:
  [[noreturn]] void truncated(std::uint64_t have) const {
    in_.fail("truncated: expected " + std::to_string(payload_bytes_) + " bytes of data after the " +
             std::to_string(header_bytes_) + "-byte header (" + dims_string(dims_) +
             " elements of " + std::to_string(idx_element_size(type_)) +
             " byte(s)), file ends after " + std::to_string(have) + " bytes of data (at offset " +
             std::to_string(header_bytes_ + have) + ")");
  }

  gz_input in_;
  std::uint64_t max_bytes_;
  bool size_proven_ = false;
  idx_type type_ = idx_type::u8;
  std::vector<std::uint32_t> dims_;
  std::size_t header_bytes_ = 0;
  std::uint64_t elements_ = 0;
  std::uint64_t payload_bytes_ = 0;
};

}  // namespace detail

/// Reads a whole IDX file (plain or gzip).
[[nodiscard]] inline idx_array read_idx(const std::filesystem::path& path,
                                        const idx_options& options = {}) {
  detail::idx_stream in(path, options);
  idx_array out;
  out.type = in.type();
  out.dims = in.dims();
  out.bytes = in.read_all();
  in.finish();
  return out;
}

/// Images from an IDX file of n x (dims...) elements, as a d x n matrix with
/// one image per column (d = the product of the trailing dims, pixels in file
/// order), each value multiplied by `scale` (default 1/255: u8 pixels in [0, 1]).
/// A plain file is streamed straight into the matrix; a gzip file or a pipe is
/// read whole first, so the matrix is allocated only for data that arrived.
template <class T = double>
[[nodiscard]] matrix_t<T> load_idx_images(const std::filesystem::path& path,
                                          T scale = T(1) / T(255),
                                          const idx_options& options = {}) {
  detail::idx_stream in(path, options);
  if (in.dims().size() < 2) {
    in.fail_here("expected images (at least 2 dimensions: count x ...), got 1 dimension (" +
                 detail::dims_string(in.dims()) + "; a labels file?)");
  }
  in.require_decoded_within_limit(sizeof(T), "image matrix");
  const auto n = static_cast<Eigen::Index>(in.dims()[0]);
  const auto d = static_cast<Eigen::Index>(in.elements() / in.dims()[0]);
  const idx_type type = in.type();
  const std::size_t element_size = idx_element_size(type);
  T table[256] = {};
  if (type == idx_type::u8) {
    for (int v = 0; v < 256; ++v) table[v] = static_cast<T>(v) * scale;
  }
  // Converts `count` elements at `src` to out[first ...].
  const auto convert = [&](T* out, const unsigned char* src, std::size_t first, std::size_t count) {
    if (type == idx_type::u8) {
      for (std::size_t i = 0; i < count; ++i) out[first + i] = table[src[i]];
    } else {
      for (std::size_t i = 0; i < count; ++i) {
        out[first + i] = static_cast<T>(detail::idx_value(type, src, i)) * scale;
      }
    }
  };
  const auto total = static_cast<std::size_t>(in.elements());
  if (!in.size_proven()) {
    const std::vector<unsigned char> payload = in.read_all();
    in.finish();
    matrix_t<T> images(d, n);
    convert(images.data(), payload.data(), 0, total);
    return images;
  }
  matrix_t<T> images(d, n);
  constexpr std::size_t chunk_elements = std::size_t{1} << 16U;
  std::vector<unsigned char> buffer(chunk_elements * element_size);
  for (std::size_t first = 0; first < total; first += chunk_elements) {
    const std::size_t count = std::min(chunk_elements, total - first);
    in.read_payload(buffer.data(), count * element_size);
    convert(images.data(), buffer.data(), first, count);
  }
  in.finish();
  return images;
}

/// Labels from a one-dimensional IDX file of an integer type.
[[nodiscard]] inline Eigen::VectorXi load_idx_labels(const std::filesystem::path& path,
                                                     const idx_options& options = {}) {
  detail::idx_stream in(path, options);
  if (in.dims().size() != 1) {
    in.fail_here("expected labels (1 dimension), got " + std::to_string(in.dims().size()) +
                 " dimensions (" + detail::dims_string(in.dims()) + "; an images file?)");
  }
  if (!detail::is_integer_type(in.type())) {
    in.fail_here("labels must have an integer type, got type code " +
                 detail::hex_byte(static_cast<unsigned>(in.type())) + " at offset 2");
  }
  in.require_decoded_within_limit(sizeof(int), "label vector");
  const std::vector<unsigned char> bytes = in.read_all();
  in.finish();
  Eigen::VectorXi labels(static_cast<Eigen::Index>(in.elements()));
  for (Eigen::Index i = 0; i < labels.size(); ++i) {
    labels[i] =
        static_cast<int>(detail::idx_value(in.type(), bytes.data(), static_cast<std::size_t>(i)));
  }
  return labels;
}

/// Images (d x n) and their n labels.
template <class T = double>
struct idx_dataset {
  matrix_t<T> images;
  Eigen::VectorXi labels;
};

/// Loads an images file and a labels file and checks that the counts agree.
template <class T = double>
[[nodiscard]] idx_dataset<T> load_idx_dataset(const std::filesystem::path& images_path,
                                              const std::filesystem::path& labels_path,
                                              T scale = T(1) / T(255),
                                              const idx_options& options = {}) {
  idx_dataset<T> out{load_idx_images<T>(images_path, scale, options),
                     load_idx_labels(labels_path, options)};
  if (out.images.cols() != out.labels.size()) {
    throw data_error(images_path.string() + " has " + std::to_string(out.images.cols()) +
                     " images but " + labels_path.string() + " has " +
                     std::to_string(out.labels.size()) + " labels");
  }
  return out;
}

}  // namespace ecopt
