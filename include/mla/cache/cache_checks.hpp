// The checks every cache makes on reserve, truncate and append, with the messages naming the
// cache, the value and what was expected (std::invalid_argument, before anything changes), and
// the length bookkeeping the contiguous caches share.
#pragma once

#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla::internal {

/// reserve(new_capacity): the capacity must be non-negative.
inline void check_cache_reserve(const char* cache, Index new_capacity) {
  MLA_CHECK_ARG(new_capacity >= 0, cache, "::reserve: capacity (", new_capacity,
                ") must be non-negative");
}

/// truncate(new_size): the new size must be in [0, size].
inline void check_cache_truncate(const char* cache, Index new_size, Index size) {
  MLA_CHECK_ARG(new_size >= 0 && new_size <= size, cache, "::truncate: new size (", new_size,
                ") must be in [0, ", size, "]");
}

/// append of `n` tokens to a contiguous cache holding `size` of `capacity`.
inline void check_cache_room(const char* cache, Index n, Index size, Index capacity) {
  MLA_CHECK_ARG(n >= 0 && n <= capacity - size, cache, " overflow: appending ", n, " tokens to ",
                size, " stored with capacity ", capacity, "; call reserve() to grow the cache");
}

/// Size and capacity of a contiguous cache (LatentCache, Fp8LatentCache, KvCache) and the calls
/// that only move them; the cache's reserve() and append() own the storage.
class ContiguousCacheLength {
 public:
  /// Tokens stored.
  Index size() const { return size_; }
  /// Tokens the storage has room for.
  Index capacity() const { return capacity_; }
  /// Forgets all tokens (keeps the allocation).
  void clear() { size_ = 0; }
  /// Drops tokens past `new_size` (e.g. rejected speculative tokens).
  void truncate(Index new_size) {
    check_cache_truncate(name_, new_size, size_);
    size_ = new_size;
  }
  /// Throws std::invalid_argument unless `n` more tokens fit.
  void check_room(Index n) const { check_cache_room(name_, n, size_, capacity_); }

 protected:
  /// `name`: the cache's type as error messages call it (a string literal).
  explicit ContiguousCacheLength(const char* name) : name_(name) {}
  /// reserve()'s first step: checks `new_capacity`, and says whether the storage must grow.
  bool must_grow_to(Index new_capacity) const {
    check_cache_reserve(name_, new_capacity);
    return new_capacity > capacity_;
  }

  const char* name_;
  Index size_ = 0, capacity_ = 0;
};

}  // namespace mla::internal
