// An 8-bit MLA latent cache: contiguous rows in FlashMLA's FP8 layout (Fp8LatentLayout, defined
// with the row codec in mla/kernels/fp8_latent_rows.hpp: 656 bytes per DeepSeek-V3 token against
// 1152 for bf16 and 2304 for float). append() quantises float rows; decode reads them back a tile
// at a time through the decode engine, never keeping a float copy of the cache.
#pragma once

#include <cstdint>
#include <vector>

#include "mla/cache/cache_checks.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/fp8_latent_rows.hpp"

namespace mla {

/// Contiguous 8-bit latent cache: LatentCache's interface (capacity, explicit reserve(), append of
/// float rows [c_kv | k_pe], truncate) over FP8 rows of Fp8LatentLayout. append() quantises.
class Fp8LatentCache : public internal::ContiguousCacheLength {
 public:
  using Element = Fp8Latent;

  Fp8LatentCache() : ContiguousCacheLength("Fp8LatentCache") {}
  Fp8LatentCache(Index kv_lora_rank, Index qk_rope_head_dim, Index capacity)
      : ContiguousCacheLength("Fp8LatentCache"), layout_{kv_lora_rank, qk_rope_head_dim} {
    layout_.validate();
    reserve(capacity);
  }

  const Fp8LatentLayout& layout() const { return layout_; }
  Index kv_lora_rank() const { return layout_.kv_lora_rank; }
  Index rope_dim() const { return layout_.rope_dim; }
  /// Values per row once dequantised: kv_lora_rank + qk_rope_head_dim.
  Index row_dim() const { return layout_.kv_lora_rank + layout_.rope_dim; }
  /// Exact bytes one token occupies (656 for DeepSeek-V3's 512 + 64).
  std::size_t bytes_per_token() const {
    return static_cast<std::size_t>(layout_.bytes_per_token());
  }
  std::size_t bytes_allocated() const { return data_.capacity(); }

  /// Grows to `new_capacity` tokens (never shrinks), keeping the contents; the only allocation.
  void reserve(Index new_capacity) {
    if (!must_grow_to(new_capacity)) return;
    data_.resize(static_cast<std::size_t>(internal::checked_elements<std::uint8_t>(
        "Fp8LatentCache::reserve: capacity * row bytes",
        {new_capacity, layout_.bytes_per_token()})));
    data_.shrink_to_fit();
    capacity_ = new_capacity;
  }

  /// Quantises and appends `n` rows; `src` is [n, row_dim()] with `src_stride` elements between
  /// rows, laid out as [c_kv | k_pe].
  template <class Src>
  void append(const Src* src, Index src_stride, Index n) {
    check_room(n);
    for (Index t = 0; t < n; ++t) fp8_latent_quantize_row(src + t * src_stride, layout_, row(size_ + t));
    size_ += n;
  }

  /// Row t: layout().bytes_per_token() bytes.
  std::uint8_t* row(Index t) { return data_.data() + t * layout_.bytes_per_token(); }
  const std::uint8_t* row(Index t) const { return data_.data() + t * layout_.bytes_per_token(); }
  const std::uint8_t* data() const { return data_.data(); }
  /// Bytes between consecutive rows.
  Index row_stride() const { return layout_.bytes_per_token(); }

  /// Rows [first, first + n) dequantised into dst [n, row_dim()] (row stride `dst_stride`).
  void dequantize(Index first, Index n, float* dst, Index dst_stride) const {
    MLA_CHECK_ARG(first >= 0 && n >= 0 && first <= size_ && n <= size_ - first,
                  "Fp8LatentCache::dequantize: ", n, " rows from row ", first,
                  " are not inside the ", size_, " stored");
    fp8_latent_dequantize_rows(row(first), row_stride(), n, layout_, dst, dst_stride);
  }

 private:
  Fp8LatentLayout layout_{};
  std::vector<std::uint8_t> data_;  // [capacity, bytes_per_token]
};

}  // namespace mla
