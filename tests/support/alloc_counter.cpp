#include "support/alloc_counter.hpp"

#include <atomic>
#include <cstdlib>
#include <limits>
#include <new>

namespace {
thread_local std::uint64_t allocations = 0;
// allocation_limit: sizes from here on are refused.
std::atomic<std::size_t> refused_from{std::numeric_limits<std::size_t>::max()};
thread_local std::uint64_t allocated_bytes = 0;

void* counted_allocate(std::size_t size) {
  ++allocations;
  if (size >= refused_from.load(std::memory_order_relaxed)) throw std::bad_alloc();
  allocated_bytes += size;
  if (size == 0) size = 1;
  if (void* p = std::malloc(size)) return p;
  throw std::bad_alloc();
}

void* counted_allocate_aligned(std::size_t size, std::align_val_t align) {
  ++allocations;
  if (size >= refused_from.load(std::memory_order_relaxed)) throw std::bad_alloc();
  allocated_bytes += size;
  const auto a = static_cast<std::size_t>(align);
  size = (size + a - 1) / a * a;
  if (size == 0) size = a;
  if (void* p = std::aligned_alloc(a, size)) return p;
  throw std::bad_alloc();
}
}  // namespace

std::uint64_t ecopt::test::thread_allocations() noexcept { return allocations; }

ecopt::test::allocation_limit::allocation_limit(std::size_t bytes) noexcept
    : previous_(refused_from.exchange(bytes)) {}
ecopt::test::allocation_limit::~allocation_limit() { refused_from.store(previous_); }
std::uint64_t ecopt::test::thread_allocated_bytes() noexcept { return allocated_bytes; }

void* operator new(std::size_t size) { return counted_allocate(size); }
void* operator new[](std::size_t size) { return counted_allocate(size); }
void* operator new(std::size_t size, std::align_val_t a) {
  return counted_allocate_aligned(size, a);
}
void* operator new[](std::size_t size, std::align_val_t a) {
  return counted_allocate_aligned(size, a);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

// The nothrow forms (std::stable_sort's temporary buffer uses them) must pair
// with the replaced deletes above, so they are replaced too.
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return counted_allocate(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return counted_allocate(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(std::size_t size, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return counted_allocate_aligned(size, a);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return counted_allocate_aligned(size, a);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
