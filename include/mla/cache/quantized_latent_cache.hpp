// The 8-bit MLA latent caches: contiguous rows in an 8-bit row format, quantised on append and
// read back a tile at a time by the decode engine, which never keeps a float copy of the cache.
//   Fp8LatentCache   FlashMLA's FP8 layout (kernels/fp8_latent_rows.hpp): E4M3 c_kv with a float
//                    scale per 128 values, bf16 k_pe; 656 bytes per DeepSeek-V3 token.
//   Int8LatentCache  the int8 layout (kernels/int8_latent_rows.hpp): int8 c_kv with one float
//                    scale per token and the code sum, bf16 k_pe; 648 bytes per V3 token.
// against 1152 bytes for bf16 and 2304 for float.
#pragma once

#include <cstdint>
#include <vector>

#include "mla/cache/cache_checks.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/latent_rows.hpp"

namespace mla {

namespace internal {
template <class T>
inline constexpr const char* kQuantizedCacheName = nullptr;
template <>
inline constexpr const char* kQuantizedCacheName<Fp8Latent> = "Fp8LatentCache";
template <>
inline constexpr const char* kQuantizedCacheName<Int8Latent> = "Int8LatentCache";
}  // namespace internal

/// Contiguous 8-bit latent cache of row format T (Fp8Latent or Int8Latent): LatentCache's
/// interface (capacity, explicit reserve(), append of float rows [c_kv | k_pe], truncate) over
/// rows of LatentRowCodec<T>::Layout. append() quantises.
template <class T>
class QuantizedLatentCache : public internal::ContiguousCacheLength {
  static_assert(std::is_same_v<T, Fp8Latent> || std::is_same_v<T, Int8Latent>,
                "QuantizedLatentCache: the row format is Fp8Latent or Int8Latent");
  using Codec = LatentRowCodec<T>;

 public:
  using Element = T;
  using Layout = typename Codec::Layout;

  QuantizedLatentCache() : ContiguousCacheLength(internal::kQuantizedCacheName<T>) {}
  QuantizedLatentCache(Index kv_lora_rank, Index qk_rope_head_dim, Index capacity)
      : ContiguousCacheLength(internal::kQuantizedCacheName<T>),
        layout_{kv_lora_rank, qk_rope_head_dim} {
    layout_.validate();
    reserve(capacity);
  }

  const Layout& layout() const { return layout_; }
  Index kv_lora_rank() const { return layout_.kv_lora_rank; }
  Index rope_dim() const { return layout_.rope_dim; }
  /// Values per row once dequantised: kv_lora_rank + qk_rope_head_dim.
  Index row_dim() const { return layout_.kv_lora_rank + layout_.rope_dim; }
  /// Exact bytes one token occupies (DeepSeek-V3's 512 + 64: 656 FP8, 648 int8).
  std::size_t bytes_per_token() const {
    return static_cast<std::size_t>(layout_.bytes_per_token());
  }
  std::size_t bytes_allocated() const { return data_.capacity(); }

  /// Grows to `new_capacity` tokens (never shrinks), keeping the contents; the only allocation.
  void reserve(Index new_capacity) {
    if (!must_grow_to(new_capacity)) return;
    data_.resize(static_cast<std::size_t>(internal::checked_elements<std::uint8_t>(
        internal::str_cat(name_, "::reserve: capacity * row bytes").c_str(),
        {new_capacity, layout_.bytes_per_token()})));
    data_.shrink_to_fit();
    capacity_ = new_capacity;
  }

  /// Quantises and appends `n` rows; `src` is [n, row_dim()] with `src_stride` elements between
  /// rows, laid out as [c_kv | k_pe].
  template <class Src>
  void append(const Src* src, Index src_stride, Index n) {
    check_room(n);
    for (Index t = 0; t < n; ++t)
      Codec::encode(src + t * src_stride, kv_lora_rank(), rope_dim(), row(size_ + t));
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
    MLA_CHECK_ARG(first >= 0 && n >= 0 && first <= size_ && n <= size_ - first, name_,
                  "::dequantize: ", n, " rows from row ", first, " are not inside the ", size_,
                  " stored");
    Codec::decode(row(first), row_stride(), n, kv_lora_rank(), rope_dim(), dst, dst_stride);
  }

 private:
  Layout layout_{};
  std::vector<std::uint8_t> data_;  // [capacity, bytes_per_token]
};

/// FP8 E4M3 latent cache (FlashMLA's layout, 656 B per DeepSeek-V3 token).
using Fp8LatentCache = QuantizedLatentCache<Fp8Latent>;
/// Int8 latent cache (per-token scale, 648 B per DeepSeek-V3 token).
using Int8LatentCache = QuantizedLatentCache<Int8Latent>;

}  // namespace mla
