// The MLA latent cache: per token only the normalised latent c_kv [kv_lora_rank] and the rotated,
// head-shared k_pe [qk_rope_head_dim], stored side by side in one row,
//   row t = [ c_kv(t) (kv_lora_rank values) | k_pe(t) (qk_rope_head_dim values) ],
// i.e. 576 values per token per layer for DeepSeek-V2/V3 instead of 128 x (192 + 128) for a
// decompressed cache. One contiguous row per token lets the absorbed kernel stream the cache once
// for all heads (S = [q_lat | q_pe] . row) and reuse the first kv_lora_rank values as the "values".
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mla/cache/cache_checks.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla {

template <class T>
class LatentCache : public internal::ContiguousCacheLength {
 public:
  using Element = T;

  LatentCache() : ContiguousCacheLength("LatentCache") {}
  LatentCache(Index kv_lora_rank, Index qk_rope_head_dim, Index capacity)
      : ContiguousCacheLength("LatentCache"),
        kv_lora_rank_(kv_lora_rank),
        rope_dim_(qk_rope_head_dim) {
    MLA_CHECK_ARG(kv_lora_rank > 0 && qk_rope_head_dim >= 0, "LatentCache: kv_lora_rank (",
                  kv_lora_rank, ") must be positive and qk_rope_head_dim (", qk_rope_head_dim,
                  ") non-negative");
    internal::checked_add("LatentCache: row width kv_lora_rank + qk_rope_head_dim",
                          {kv_lora_rank, qk_rope_head_dim});
    reserve(capacity);
  }

  Index kv_lora_rank() const { return kv_lora_rank_; }
  Index rope_dim() const { return rope_dim_; }
  /// Values per row: kv_lora_rank + qk_rope_head_dim.
  Index row_dim() const { return kv_lora_rank_ + rope_dim_; }
  /// Exact bytes one token occupies: (kv_lora_rank + qk_rope_head_dim) * sizeof(T).
  std::size_t bytes_per_token() const { return static_cast<std::size_t>(row_dim()) * sizeof(T); }
  std::size_t bytes_allocated() const { return data_.capacity() * sizeof(T); }

  /// Grows to `new_capacity` tokens (never shrinks), keeping the contents; the only allocation.
  void reserve(Index new_capacity) {
    if (!must_grow_to(new_capacity)) return;
    std::vector<T> d(static_cast<std::size_t>(internal::checked_elements<T>(
        "LatentCache::reserve: capacity * row width", {new_capacity, row_dim()})));
    std::copy_n(data_.data(), size_ * row_dim(), d.data());
    data_.swap(d);
    capacity_ = new_capacity;
  }

  /// Appends `n` rows; `src` is [n, row_dim()] with `src_stride` elements between rows,
  /// already laid out as [c_kv | k_pe].
  template <class Src>
  void append(const Src* src, Index src_stride, Index n) {
    check_room(n);
    const Index w = row_dim();
    for (Index t = 0; t < n; ++t) {
      T* dst = row(size_ + t);
      for (Index i = 0; i < w; ++i) dst[i] = static_cast<T>(src[t * src_stride + i]);
    }
    size_ += n;
  }

  /// Row t: [kv_lora_rank + qk_rope_head_dim] values.
  T* row(Index t) { return data_.data() + t * row_dim(); }
  const T* row(Index t) const { return data_.data() + t * row_dim(); }
  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  /// Elements between consecutive rows.
  Index row_stride() const { return row_dim(); }

 private:
  Index kv_lora_rank_ = 0, rope_dim_ = 0;
  std::vector<T> data_;  // [capacity, kv_lora_rank + rope_dim]
};

}  // namespace mla
