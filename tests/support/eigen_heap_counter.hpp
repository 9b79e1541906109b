#pragma once
// Counts Eigen's heap allocations, which go through std::malloc and so escape
// the operator-new counter of alloc_counter.cpp, to prove that hot paths built
// on Eigen do not allocate.
//
// Include this header FIRST in a test file, before any header that includes
// Eigen: it builds Eigen with EIGEN_RUNTIME_NO_MALLOC and an eigen_assert that
// counts the "heap allocation is forbidden" assertions instead of aborting, so
// eigen_heap_scope counts Eigen's heap allocations (in Release too). Under
// AddressSanitizer it also counts every malloc through the sanitizer's hooks.
//
// Every test file that instruments Eigen does so through this header, so in a
// test binary made of several such files the counter and the assertion
// handler below are one entity whichever copy of Eigen's inline functions the
// linker keeps.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace ecopt_test_eigen {
inline int heap_allocations = 0;
inline void assertion_failed(const char* expr, const char* file, int line) {
  if (std::strstr(expr, "heap allocation is forbidden") != nullptr) {
    ++heap_allocations;
    return;
  }
  std::fprintf(stderr, "%s:%d: Eigen assertion failed: %s\n", file, line, expr);
  std::abort();
}
}  // namespace ecopt_test_eigen

#define EIGEN_RUNTIME_NO_MALLOC
#define eigen_assert(x) \
  ((x) ? static_cast<void>(0) : ::ecopt_test_eigen::assertion_failed(#x, __FILE__, __LINE__))

#include <doctest/doctest.h>

#include <Eigen/Core>

#if defined(__SANITIZE_ADDRESS__)
#define ECOPT_TEST_EIGEN_HEAP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ECOPT_TEST_EIGEN_HEAP_ASAN 1
#endif
#endif

#if defined(ECOPT_TEST_EIGEN_HEAP_ASAN)
#if __has_include(<sanitizer/allocator_interface.h>)
#include <sanitizer/allocator_interface.h>
#else
// GCC does not ship this header of the sanitizer runtime's interface.
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*,
                                                                             std::size_t),
                                                         void (*free_hook)(const volatile void*));
#endif
#endif

namespace ecopt::test {

#if defined(ECOPT_TEST_EIGEN_HEAP_ASAN)
// Under AddressSanitizer every malloc (Eigen's included) passes through these
// hooks, whichever copy of Eigen's inline functions the linker kept.
inline std::uint64_t sanitizer_mallocs = 0;
inline void count_sanitizer_malloc(const volatile void* /*ptr*/, std::size_t /*size*/) {
  ++sanitizer_mallocs;
}
inline void ignore_sanitizer_free(const volatile void* /*ptr*/) {}
[[maybe_unused]] inline const bool sanitizer_hooks_installed =
    __sanitizer_install_malloc_and_free_hooks(count_sanitizer_malloc, ignore_sanitizer_free) != 0;
#else
inline constexpr std::uint64_t sanitizer_mallocs = 0;
#endif

/// Counts heap allocations that bypass operator new (Eigen's std::malloc)
/// between construction and count(), and forbids them to Eigen meanwhile.
class eigen_heap_scope {
 public:
  eigen_heap_scope() noexcept
      : eigen_start_(ecopt_test_eigen::heap_allocations), malloc_start_(sanitizer_mallocs) {
    Eigen::internal::set_is_malloc_allowed(false);
  }
  ~eigen_heap_scope() { Eigen::internal::set_is_malloc_allowed(true); }
  eigen_heap_scope(const eigen_heap_scope&) = delete;
  eigen_heap_scope& operator=(const eigen_heap_scope&) = delete;
  [[nodiscard]] std::uint64_t count() const noexcept {
    return static_cast<std::uint64_t>(ecopt_test_eigen::heap_allocations - eigen_start_) +
           (sanitizer_mallocs - malloc_start_);
  }

 private:
  int eigen_start_;
  std::uint64_t malloc_start_;
};

/// Whether eigen_heap_scope sees Eigen's allocations in this binary. In a test
/// binary made of several files the linker may keep another file's
/// (uninstrumented) copy of Eigen's inline allocation functions (typically at
/// -O0); then, unless the sanitizer hooks are there, only operator new can be
/// checked, and a message says so once.
inline bool eigen_heap_counting_active() {
  static const bool active = [] {
#if defined(ECOPT_TEST_EIGEN_HEAP_ASAN)
    (void)sanitizer_hooks_installed;  // odr-use: makes sure the hooks are installed
#endif
    const eigen_heap_scope scope;
    const Eigen::MatrixXd probe(64, 64);
    const bool seen = scope.count() > 0;
    if (!seen) {
      MESSAGE(
          "Eigen's heap allocations are not visible in this binary (uninstrumented Eigen "
          "copy linked, no sanitizer hooks): checking operator new only");
    }
    return seen;
  }();
  return active;
}

}  // namespace ecopt::test
