// The checks every cache makes on reserve, truncate and append, with the messages naming the
// cache, the value and what was expected (std::invalid_argument, before anything changes).
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

}  // namespace mla::internal
