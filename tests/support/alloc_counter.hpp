// A counting replacement of the global operator new / delete, for tests that assert a call
// allocates nothing. Include it from exactly one translation unit of a test binary (every test
// file here is its own binary). Allocations are counted only while g_count_allocs is true.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

// The replacements pair malloc/aligned_alloc with free by design; GCC's heuristic flags the free.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

inline std::atomic<bool> g_count_allocs{false};
inline std::atomic<long> g_allocs{0};       // allocations while counting
inline std::atomic<long> g_alloc_bytes{0};  // their bytes

namespace mla::testing {
inline void* counted_alloc(std::size_t n, std::size_t align) {
  if (g_count_allocs.load(std::memory_order_relaxed)) {
    g_allocs.fetch_add(1, std::memory_order_relaxed);
    g_alloc_bytes.fetch_add(static_cast<long>(n), std::memory_order_relaxed);
  }
  if (n == 0) n = 1;
  void* p = align > alignof(std::max_align_t)
                ? std::aligned_alloc(align, (n + align - 1) / align * align)
                : std::malloc(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
inline void* counted_alloc_nothrow(std::size_t n) noexcept {
  try {
    return counted_alloc(n, 0);
  } catch (...) {
    return nullptr;
  }
}
}  // namespace mla::testing

void* operator new(std::size_t n) { return mla::testing::counted_alloc(n, 0); }
void* operator new[](std::size_t n) { return mla::testing::counted_alloc(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) {
  return mla::testing::counted_alloc(n, std::size_t(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return mla::testing::counted_alloc(n, std::size_t(a));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return mla::testing::counted_alloc_nothrow(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return mla::testing::counted_alloc_nothrow(n);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
