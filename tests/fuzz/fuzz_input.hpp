#pragma once
// Shared by the libFuzzer harnesses of tests/fuzz: the control bytes at the
// front of an input (which parser, which sizes), a property that failed, and
// an in-memory file for the readers that take a path.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

namespace ecopt::fuzz {

/// One input: control bytes taken from the front, the rest left as the data.
class input {
 public:
  input(const std::uint8_t* data, std::size_t size)
      : bytes_(reinterpret_cast<const std::byte*>(data), size) {}
  /// The next control byte (0 once the input is used up).
  std::uint8_t byte() {
    if (bytes_.empty()) return 0;
    const auto b = static_cast<std::uint8_t>(bytes_.front());
    bytes_ = bytes_.subspan(1);
    return b;
  }
  [[nodiscard]] std::span<const std::byte> rest() const noexcept { return bytes_; }

 private:
  std::span<const std::byte> bytes_;
};

/// A property the harness checks does not hold: libFuzzer reports the abort
/// as a crash and keeps the input.
[[noreturn]] inline void finding(const char* what) {
  std::fprintf(stderr, "ecopt fuzz finding: %s\n", what);
  std::abort();
}

/// A regular file in memory (memfd), reached by a path, for readers that open
/// files: rewritten for each input, no disk involved.
class memory_file {
 public:
  memory_file() : fd_(::memfd_create("ecopt_fuzz", 0)) {
    if (fd_ < 0) finding("memfd_create failed");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~memory_file() { ::close(fd_); }
  memory_file(const memory_file&) = delete;
  memory_file& operator=(const memory_file&) = delete;

  /// The path of the file, now holding exactly `bytes`.
  const std::string& holding(std::span<const std::byte> bytes) {
    if (::ftruncate(fd_, 0) != 0 ||
        ::pwrite(fd_, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) {
      finding("writing the memory file failed");
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

}  // namespace ecopt::fuzz
