// Where a sequence's latent rows are, as the decode engine reads them (kernels/decode_engine.hpp):
// LatentRowsView describes rows stored contiguously or through a block table (a contiguous cache
// is a single block), and LatentRowCodec says how each element type stores a row [c_kv | k_pe]
// and widens it back to float (float, bfloat16, double: a cast per value; Fp8Latent and
// Int8Latent: the 8-bit row formats of fp8_latent_rows.hpp and int8_latent_rows.hpp). The caches in mla/cache/ hand out views of their rows through
// latent_rows(cache).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <ostream>
#include <type_traits>

#include "mla/core/bf16.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"
#include "mla/core/isa.hpp"
#include "mla/kernels/fp8_latent_rows.hpp"
#include "mla/kernels/int8_latent_rows.hpp"

namespace mla {
/// Tokens per block unless told otherwise (FlashMLA's page size).
inline constexpr Index kDefaultBlockSize = 64;

namespace internal {
/// Streams ", sequence <n>" into an error message, or nothing for n < 0.
struct SequenceTag {
  Index seq = -1;
};
inline std::ostream& operator<<(std::ostream& os, SequenceTag t) {
  if (t.seq >= 0) os << ", sequence " << t.seq;
  return os;
}
}  // namespace internal

/// How one latent row of element type T (float, mla::bfloat16, Fp8Latent or Int8Latent) is stored: `Unit` is
/// the storage element, row_units() the units per row, encode() writes a row from values
/// [c_kv | k_pe], decode() widens rows to float or double [c_kv | k_pe].
template <class T>
struct LatentRowCodec {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bfloat16> ||
                    std::is_same_v<T, double>,
                "latent cache elements are float, double, mla::bfloat16, mla::Fp8Latent or mla::Int8Latent");
  using Unit = T;
  /// Throws std::invalid_argument if the row width overflows (widths from a caller's view).
  static Index row_units(Index kv_lora_rank, Index rope_dim) {
    return internal::checked_add("latent row width kv_lora_rank + rope_dim",
                                 {kv_lora_rank, rope_dim});
  }
  template <class Src>
  static void encode(const Src* src, Index kv_lora_rank, Index rope_dim, Unit* dst) {
    for (Index i = 0; i < kv_lora_rank + rope_dim; ++i) dst[i] = static_cast<T>(src[i]);
  }
  template <class Dst>
  static void decode(const Unit* src, Index src_stride, Index rows, Index kv_lora_rank,
                     Index rope_dim, Dst* dst, Index dst_stride) {
    for (Index r = 0; r < rows; ++r)
      for (Index i = 0; i < kv_lora_rank + rope_dim; ++i)
        dst[r * dst_stride + i] = static_cast<Dst>(src[r * src_stride + i]);
  }
};

namespace internal {
/// The codec of an 8-bit row format F (Fp8LatentFormat, Int8LatentFormat): rows of F::Layout
/// bytes, written by F::quantize_row, read back by F::dequantize_portable or, where the CPU has
/// AVX2, F::dequantize_avx2 (the same floats).
template <class F>
struct QuantizedRowCodec {
  using Unit = std::uint8_t;
  using Layout = typename F::Layout;
  static Index row_units(Index kv_lora_rank, Index rope_dim) {
    const Layout layout{kv_lora_rank, rope_dim};
    layout.validate();  // the byte count fits in int64
    return layout.bytes_per_token();
  }
  template <class Src>
  static void encode(const Src* src, Index kv_lora_rank, Index rope_dim, Unit* dst) {
    F::quantize_row(src, Layout{kv_lora_rank, rope_dim}, dst);
  }
  /// Rows as float or double; float rows through the AVX2 form where kernels::auto_path() allows.
  template <class Dst>
  static void decode(const Unit* src, Index src_stride, Index rows, Index kv_lora_rank,
                     Index rope_dim, Dst* dst, Index dst_stride) {
    bool simd = false;
    if constexpr (std::is_same_v<Dst, float>)
      simd = kernels::auto_path() != kernels::KernelPath::kPortable;
    decode_float_rows(simd, src, src_stride, rows, kv_lora_rank, rope_dim, dst, dst_stride);
  }
  /// Rows as Dst; `simd` (float rows only): the AVX2 form, on a path that has AVX2.
  template <class Dst>
  static void decode_float_rows(bool simd, const Unit* src, Index src_stride, Index rows,
                                Index kv_lora_rank, Index rope_dim, Dst* dst, Index dst_stride) {
    const Layout layout{kv_lora_rank, rope_dim};
#if MLA_X86_SIMD
    if constexpr (std::is_same_v<Dst, float>) {
      if (simd) return F::dequantize_avx2(src, src_stride, rows, layout, dst, dst_stride);
    }
#endif
    (void)simd;
    F::dequantize_portable(src, src_stride, rows, layout, dst, dst_stride);
  }
};
}  // namespace internal

template <>
struct LatentRowCodec<Fp8Latent> : internal::QuantizedRowCodec<internal::Fp8LatentFormat> {};
template <>
struct LatentRowCodec<Int8Latent> : internal::QuantizedRowCodec<internal::Int8LatentFormat> {};

/// Where the `len` latent rows of one sequence are: row j lives at
///   base + block_table[j / block_size] * block_stride + (j % block_size) * row_stride
/// (all in units of LatentRowCodec<T>::Unit), or at base + j * row_stride when block_table is
/// null (a contiguous cache). A view borrows the cache's memory and block table: it is valid until
/// the cache's table or its pool's storage changes (reserve, release, pool growth).
template <class T>
struct LatentRowsView {
  using Unit = typename LatentRowCodec<T>::Unit;
  const Unit* base = nullptr;                 ///< the pool's block 0, or the contiguous rows
  const std::int32_t* block_table = nullptr;  ///< ceil(len / block_size) block ids; null: contiguous
  Index block_size = 0;    ///< rows per block (ignored when contiguous)
  Index block_stride = 0;  ///< units between block ids b and b + 1 in the pool
  Index num_blocks = 0;    ///< blocks in the pool (ids must be below it)
  Index row_stride = 0;    ///< units between consecutive rows of a block
  Index len = 0;           ///< valid rows
  Index kv_lora_rank = 0;  ///< R
  Index rope_dim = 0;      ///< P

  bool paged() const { return block_table != nullptr; }

  /// Row j (0 <= j < len).
  const Unit* row(Index j) const {
    if (!paged()) return base + j * row_stride;
    return base + Index(block_table[j / block_size]) * block_stride + (j % block_size) * row_stride;
  }

  /// How many rows from row j on (at most end - j) follow each other `row_stride` apart in
  /// memory: the rest of j's block, plus following blocks while the table lists physically
  /// adjacent blocks (id + 1 directly after id), which a fresh pool hands out.
  Index run_length(Index j, Index end) const {
    if (!paged()) return end - j;
    const bool adjacent_blocks = block_stride == block_size * row_stride;
    Index b = j / block_size;
    Index stop = std::min(end, (b + 1) * block_size);
    while (adjacent_blocks && stop < end && block_table[b + 1] == block_table[b] + 1) {
      ++b;
      stop = std::min(end, (b + 1) * block_size);
    }
    return stop - j;
  }

  /// Throws std::invalid_argument unless the view is usable: non-null base, strides that hold a
  /// row, block ids inside the pool. Messages start with `what` (and "sequence <seq>" if >= 0).
  void validate(const char* what, Index seq = -1) const {
    const internal::SequenceTag tag{seq};
    MLA_CHECK_ARG(kv_lora_rank > 0 && rope_dim >= 0, what, tag,
                  ": cache view has kv_lora_rank ", kv_lora_rank, " and rope_dim ", rope_dim);
    MLA_CHECK_ARG(len >= 0, what, tag, ": cache view length (", len, ") is negative");
    MLA_CHECK_ARG(len == 0 || base != nullptr, what, tag, ": cache view of ", len,
                  " rows has no memory");
    const Index units = LatentRowCodec<T>::row_units(kv_lora_rank, rope_dim);
    MLA_CHECK_ARG(row_stride >= units, what, tag, ": cache row stride (", row_stride,
                  ") is below the row size (", units, ")");
    if (!paged()) return;
    MLA_CHECK_ARG(block_size >= 1, what, tag, ": block_size (", block_size, ") must be >= 1");
    MLA_CHECK_ARG(row_stride <= std::numeric_limits<Index>::max() / block_size, what, tag,
                  ": block_size (", block_size, ") * row_stride (", row_stride,
                  ") overflows int64");
    MLA_CHECK_ARG(block_stride >= block_size * row_stride, what, tag, ": block stride (",
                  block_stride, ") is below block_size * row_stride (", block_size * row_stride,
                  ")");
    const Index blocks = len / block_size + (len % block_size != 0);
    for (Index b = 0; b < blocks; ++b)
      MLA_CHECK_ARG(block_table[b] >= 0 && block_table[b] < num_blocks, what, tag,
                    ": block_table[", b, "] = ", block_table[b], " is not a block of the pool (",
                    num_blocks, " blocks)");
  }
};

}  // namespace mla
