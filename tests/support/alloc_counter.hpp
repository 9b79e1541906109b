#pragma once
// Counts heap allocations made by the calling thread, to prove that hot paths
// do not allocate after warm-up. The global operator new is replaced in
// alloc_counter.cpp.
#include <cstdint>

namespace ecopt::test {

/// Allocations made by this thread since it started.
std::uint64_t thread_allocations() noexcept;

/// Counts the allocations made by this thread between construction and count().
class allocation_scope {
 public:
  allocation_scope() noexcept : start_(thread_allocations()) {}
  [[nodiscard]] std::uint64_t count() const noexcept { return thread_allocations() - start_; }

 private:
  std::uint64_t start_;
};

}  // namespace ecopt::test
