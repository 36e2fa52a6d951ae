// The GPU view of a paged MLA latent cache: the same bytes as the CPU caches
// (mla/cache/paged_latent_cache.hpp), in device memory.
//
//   token t of sequence b = row (t % 64) of block block_table[b * table_stride + t / 64],
//   block k at pool + k * block_stride bytes, rows row_bytes() apart inside a block.
//
// Two row formats (DeepSeek-V3 sizes, kv_lora_rank R = 512, rope P = 64):
// - kBf16: [c_kv (512) | k_pe (64)] bfloat16, 1152 bytes per token (FlashMLA's dense cache);
// - kFp8:  the CPU Fp8LatentCache row (mla/kernels/fp8_latent_rows.hpp), 656 bytes per token:
//          512 E4M3FN codes, 4 float32 scales (one per 128 values of c_kv), 64 bf16 k_pe.
// Rows are read 16 bytes at a time, so pool and block_stride must be multiples of 16.
#pragma once

#include <cstdint>

namespace mla {
namespace cuda {

/// Row format of a latent cache on the GPU.
enum class LatentFormat { kBf16, kFp8 };

/// Compile-time sizes of the GPU decode: DeepSeek-V3's latent row and FlashMLA's block.
struct MlaDims {
  static constexpr int kKvLora = 512;              ///< R: c_kv values (also V's width)
  static constexpr int kRope = 64;                 ///< P: k_pe values
  static constexpr int kLatent = kKvLora + kRope;  ///< 576: K's width
  static constexpr int kBlock = 64;                ///< tokens per cache block
  static constexpr int kFp8Scales = kKvLora / 128; ///< float32 scales per FP8 row
  static constexpr int kBf16RowBytes = 2 * kLatent;                        ///< 1152
  static constexpr int kFp8RowBytes = kKvLora + 4 * kFp8Scales + 2 * kRope;  ///< 656
};

/// Bytes per token of a row format (1152 or 656).
__host__ __device__ constexpr int latent_row_bytes(LatentFormat f) {
  return f == LatentFormat::kBf16 ? MlaDims::kBf16RowBytes : MlaDims::kFp8RowBytes;
}

/// Device pointers of a paged latent cache (nothing owned).
struct PagedLatentView {
  LatentFormat format = LatentFormat::kBf16;
  const std::uint8_t* pool = nullptr;       ///< block 0 (device)
  std::int64_t block_stride = 0;            ///< bytes between block ids k and k + 1
  const std::int32_t* block_table = nullptr;  ///< [batch, table_stride] block ids (device)
  int table_stride = 0;                     ///< entries per sequence in block_table

  int row_bytes() const { return latent_row_bytes(format); }
};

}  // namespace cuda
}  // namespace mla
