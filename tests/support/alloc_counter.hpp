#pragma once
// Counts heap allocations made by the calling thread, to prove that hot paths
// do not allocate after warm-up. The global operator new is replaced in
// alloc_counter.cpp.
#include <cstddef>
#include <cstdint>

namespace ecopt::test {

/// Allocations made by this thread since it started.
std::uint64_t thread_allocations() noexcept;
/// Bytes this thread has asked operator new for since it started (frees not subtracted).
std::uint64_t thread_allocated_bytes() noexcept;

/// Counts the allocations made by this thread between construction and count(),
/// and the bytes they asked for (bytes(): bounds what a reader allocates).
class allocation_scope {
 public:
  allocation_scope() noexcept
      : start_(thread_allocations()), start_bytes_(thread_allocated_bytes()) {}
  [[nodiscard]] std::uint64_t count() const noexcept { return thread_allocations() - start_; }
  [[nodiscard]] std::uint64_t bytes() const noexcept {
    return thread_allocated_bytes() - start_bytes_;
  }

 private:
  std::uint64_t start_;
  std::uint64_t start_bytes_;
};

/// While alive, every allocation of at least `bytes`, on any thread, throws
/// std::bad_alloc: drives out-of-memory paths through the real code (one at a
/// time; the previous limit is restored on destruction).
class allocation_limit {
 public:
  explicit allocation_limit(std::size_t bytes) noexcept;
  ~allocation_limit();
  allocation_limit(const allocation_limit&) = delete;
  allocation_limit& operator=(const allocation_limit&) = delete;

 private:
  std::size_t previous_;
};

}  // namespace ecopt::test
