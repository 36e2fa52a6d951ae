// Key/value cache for MHA and GQA layers (and for MLA's naive path with a decompressed cache):
// preallocated to a capacity, filled by explicit appends, grown only by an explicit reserve().
//
// Layout is head-major, K [kv_heads, capacity, head_dim] and V [kv_heads, capacity, v_dim], so a
// decode kernel streams each KV head's keys contiguously once for all the query heads of its
// group. The element type may be narrower than the compute type (e.g. bfloat16 under float).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mla/cache/cache_checks.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla {

template <class T>
class KvCache : public internal::ContiguousCacheLength {
 public:
  using Element = T;

  KvCache() : ContiguousCacheLength("KvCache") {}
  /// Cache for `kv_heads` heads of key width `head_dim` and value width `v_dim`, with room for
  /// `capacity` tokens allocated up front.
  KvCache(Index kv_heads, Index head_dim, Index v_dim, Index capacity)
      : ContiguousCacheLength("KvCache"), kv_heads_(kv_heads), head_dim_(head_dim),
        v_dim_(v_dim) {
    MLA_CHECK_ARG(kv_heads > 0 && head_dim > 0 && v_dim > 0, "KvCache: kv_heads (", kv_heads,
                  "), head_dim (", head_dim, ") and v_dim (", v_dim, ") must be positive");
    internal::checked_mul("KvCache: values per token kv_heads * (head_dim + v_dim)",
                          {kv_heads, internal::checked_add("KvCache: head_dim + v_dim",
                                                           {head_dim, v_dim})});
    reserve(capacity);
  }

  Index kv_heads() const { return kv_heads_; }
  Index head_dim() const { return head_dim_; }
  Index v_dim() const { return v_dim_; }
  /// Elements per token per layer: K and V of every KV head.
  Index values_per_token() const { return kv_heads_ * (head_dim_ + v_dim_); }
  /// Exact bytes one token occupies in this cache.
  std::size_t bytes_per_token() const {
    return static_cast<std::size_t>(values_per_token()) * sizeof(T);
  }
  /// Bytes actually allocated (capacity x bytes_per_token).
  std::size_t bytes_allocated() const { return (k_.capacity() + v_.capacity()) * sizeof(T); }

  /// Grows the storage to hold `new_capacity` tokens (never shrinks); keeps the contents.
  /// This is the only call that allocates.
  void reserve(Index new_capacity) {
    if (!must_grow_to(new_capacity)) return;
    std::vector<T> k(static_cast<std::size_t>(internal::checked_elements<T>(
        "KvCache::reserve: K elements kv_heads * capacity * head_dim",
        {kv_heads_, new_capacity, head_dim_})));
    std::vector<T> v(static_cast<std::size_t>(internal::checked_elements<T>(
        "KvCache::reserve: V elements kv_heads * capacity * v_dim",
        {kv_heads_, new_capacity, v_dim_})));
    for (Index h = 0; h < kv_heads_; ++h) {
      std::copy_n(k_.data() + h * capacity_ * head_dim_, size_ * head_dim_,
                  k.data() + h * new_capacity * head_dim_);
      std::copy_n(v_.data() + h * capacity_ * v_dim_, size_ * v_dim_,
                  v.data() + h * new_capacity * v_dim_);
    }
    k_.swap(k);
    v_.swap(v);
    capacity_ = new_capacity;
  }

  /// Appends `n` tokens. `k` is token-major [n, kv_heads, head_dim] with row stride `k_stride`
  /// (elements between tokens), `v` likewise [n, kv_heads, v_dim].
  template <class Src>
  void append(const Src* k, Index k_stride, const Src* v, Index v_stride, Index n) {
    check_room(n);
    for (Index t = 0; t < n; ++t) {
      for (Index h = 0; h < kv_heads_; ++h) {
        T* kd = k_head(h) + (size_ + t) * head_dim_;
        T* vd = v_head(h) + (size_ + t) * v_dim_;
        const Src* ks = k + t * k_stride + h * head_dim_;
        const Src* vs = v + t * v_stride + h * v_dim_;
        for (Index i = 0; i < head_dim_; ++i) kd[i] = static_cast<T>(ks[i]);
        for (Index i = 0; i < v_dim_; ++i) vd[i] = static_cast<T>(vs[i]);
      }
    }
    size_ += n;
  }

  /// Keys of KV head h: [capacity, head_dim], rows [0, size()) valid.
  T* k_head(Index h) { return k_.data() + h * capacity_ * head_dim_; }
  const T* k_head(Index h) const { return k_.data() + h * capacity_ * head_dim_; }
  /// Values of KV head h: [capacity, v_dim].
  T* v_head(Index h) { return v_.data() + h * capacity_ * v_dim_; }
  const T* v_head(Index h) const { return v_.data() + h * capacity_ * v_dim_; }
  /// Elements between consecutive heads (K and V respectively).
  Index k_head_stride() const { return capacity_ * head_dim_; }
  Index v_head_stride() const { return capacity_ * v_dim_; }

 private:
  Index kv_heads_ = 0, head_dim_ = 0, v_dim_ = 0;
  std::vector<T> k_;  // [kv_heads, capacity, head_dim]
  std::vector<T> v_;  // [kv_heads, capacity, v_dim]
};

}  // namespace mla
