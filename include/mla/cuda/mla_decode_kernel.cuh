// The CUDA kernels of absorbed MLA decode over a paged latent cache: the split-KV attention kernel
// (two forms of its multiplies: mma.sync on sm_80 and later, wgmma on sm_90a) and the combine of
// its partials. The host entry
// that launches them is mla/cuda/mla_decode.cuh; the schedule they read is mla/cuda/decode_plan.cuh.
//
// One CTA (8 warps) runs one piece of one sequence (cache rows [j_begin, j_end), see the plan)
// for one tile of 64 query rows (row = token * heads + head; q rows are [q_lat (512) | q_pe (64)]):
//
//   S [64, n] = scale * Q [64, 576] K^T [576, n]      K = the cache rows [c_kv | k_pe]
//   O [64, 512] = softmax(S) V [n, 512]                V = their first 512 values (c_kv)
//
// with the online softmax (running max m and sum l per row, O rescaled by exp(m_old - m_new)) over
// tiles of 32 cache rows. Token t of the q_len new ones sees rows 0 .. len - q_len + t (masked
// to -inf beyond). Shared memory: the query tile, kStages tiles of 32 rows (a cp.async pipeline
// that loads tile i + kStages - 1 while tile i is multiplied) and a 16 KiB exchange buffer.
//
// Warp w of the 8 owns query rows 16 (w % 4) .. + 16 and half h = w / 4 (warpgroup h):
// - S: its rows times the tile over latent dims [288 h, 288 h + 288); the partial [16, 32] goes to
//   the exchange buffer and the partner's (w ^ 4) is added: both warps of a pair then hold the
//   same full S (float sums commute, so they agree bit for bit) and run the same softmax;
// - O: its 16 rows x V columns [256 h, 256 h + 256) (128 floats per thread), the probabilities
//   going from S's accumulator registers straight into A fragments.
// Both forms keep this split and the m16n8k16 register layouts; they differ in the multiplies:
// - mma.sync (kHopper false): each warp multiplies its 16 rows with ldmatrix loads of Q, K and V;
//   rows are padded to 584 bf16 (1168 B) so the 8 rows an ldmatrix reads fall in different banks;
// - wgmma (kHopper true, sm_90a): each warpgroup issues m64n32k16 (S, Q and K from shared memory)
//   and m64n256k16 (O, P from registers, V read transposed from the same K tile) on 128-byte
//   swizzled tiles (mla/cuda/wgmma.cuh), so Q and K are read once per warpgroup, not per warp.
// FP8 rows (656 B) are copied raw into kStages staging buffers and dequantised to bf16 in shared
// memory, c = e4m3(code) * scale rounded to bf16 (k_pe copied), so the FP8 path runs the same
// tensor-core code as bf16; tile it + 1 is dequantised at the end of iteration it, while the
// wgmma form's O multiply of tile it still runs.
//
// A piece that covers its whole sequence writes O / l as bf16 and lse = ln(sum exp(S)) directly;
// otherwise it writes O / l (float) and its lse to the workspace and the combine kernel merges
// the pieces: lse = log sum_k exp(lse_k), O = sum_k exp(lse_k - lse) O_k.
//
// Unlike the CPU engine, a NaN or Inf in a new token's cache row reaches the earlier new tokens'
// outputs too (their masked probability 0 times NaN in the V multiply).
// The wgmma form leaves each tile's O multiply running while the warps go on to the next tile's
// barrier and S, and waits for both together.
// TODO(perf): S with one warpgroup at n = 64 (its shared-memory reads limit m64n32k16), softmax
// overlapped with the other warpgroup's multiplies, TMA loads.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "mla/cuda/decode_plan.cuh"
#include "mla/cuda/paged_latent.cuh"
#include "mla/cuda/warp_mma.cuh"
#include "mla/cuda/wgmma.cuh"

namespace mla {
namespace cuda {
namespace internal {

/// Everything the decode kernels read (device pointers).
struct DecodeParams {
  const __nv_bfloat16* q = nullptr;  ///< [total_q_tokens, heads, 576]
  __nv_bfloat16* out = nullptr;      ///< [total_q_tokens, heads, 512]
  float* lse = nullptr;              ///< [total_q_tokens, heads] or null
  PagedLatentView cache;
  const SeqInfo* seqs = nullptr;     ///< [batch]
  const PartRange* parts = nullptr;  ///< [num_parts]
  float* part_o = nullptr;           ///< [partial rows, 512]
  float* part_lse = nullptr;         ///< [partial rows]
  int batch = 0, num_heads = 0;
  float scale_log2 = 0.0f;           ///< softmax scale * log2(e)
};

/// Shared-memory layout of the decode kernel for a row format, a pipeline depth and a form.
template <LatentFormat F, int kStages, bool kHopper>
struct DecodeSmem {
  static constexpr int kThreads = 256;
  static constexpr int kTileN = 32;  ///< cache rows per iteration
  /// bf16 per row: padded by 16 B (mma.sync), unpadded in 128-byte-swizzled column blocks (wgmma)
  static constexpr int kPitch = kHopper ? MlaDims::kLatent : MlaDims::kLatent + 8;
  static constexpr int kRawPitch = MlaDims::kFp8RowBytes;  ///< 656 B: a whole FP8 row
  /// bf16 tiles: one per pipeline stage (bf16 rows are copied straight into them); FP8 rows go
  /// through kStages raw stages and only two bf16 tiles (the one multiplied, the next dequantised)
  static constexpr int kTiles = F == LatentFormat::kFp8 ? 2 : kStages;
  static constexpr int kQBytes = kRowTile * kPitch * 2;
  static constexpr int kTileBytes = kTileN * kPitch * 2;
  static constexpr int kExchangeBytes = 8 * 16 * kTileN * 4;
  static constexpr int kRawBytes = F == LatentFormat::kFp8 ? kTileN * kRawPitch : 0;
  static constexpr int kAlign = kHopper ? 1024 : 16;  ///< swizzle atoms are 1024-aligned
  static constexpr int kBytes =
      kQBytes + kTiles * kTileBytes + kStages * kRawBytes + kExchangeBytes + kAlign;
  static_assert(kStages >= 2, "the pipeline needs at least two stages");
  static_assert(kRawPitch % 16 == 0 && MlaDims::kFp8RowBytes % 16 == 0,
                "FP8 rows must be copied in 16-byte pieces");
  static_assert(!kHopper || (kQBytes % 1024 == 0 && kTileBytes % 1024 == 0),
                "swizzled tiles must keep 1024-byte alignment");

  /// Byte offset of 16-byte chunk k (values 8 k .. 8 k + 7, k < 72) of row r in a tile of `rows`.
  static __device__ __forceinline__ int chunk(int r, int k, int rows) {
    if constexpr (kHopper)
      return (k >> 3) * (rows * 128) + swizzle128(r, k & 7);
    else
      return r * kPitch * 2 + k * 16;
  }
};

/// Issues the cp.async copies of cache rows [jt, jt + 32) of a sequence into stage buffers
/// (rows at or past `len` are zero-filled). jt is a multiple of 32, so the rows share a block.
template <LatentFormat F, int kStages, bool kHopper>
__device__ __forceinline__ void load_cache_tile(const PagedLatentView& cache,
                                                const std::int32_t* table, int jt, int len,
                                                std::uint8_t* tile, std::uint8_t* raw) {
  using L = DecodeSmem<F, kStages, kHopper>;
  constexpr int kRowBytes = latent_row_bytes(F);
  const std::uint8_t* base = cache.pool + static_cast<std::int64_t>(table[jt / MlaDims::kBlock]) *
                                              cache.block_stride +
                             (jt % MlaDims::kBlock) * kRowBytes;
  if constexpr (F == LatentFormat::kBf16) {
    constexpr int kChunks = kRowBytes / 16;  // 72
    for (int c = threadIdx.x; c < L::kTileN * kChunks; c += L::kThreads) {
      const int r = c / kChunks, k = c % kChunks;
      const bool valid = jt + r < len;
      cp_async_16(tile + L::chunk(r, k, L::kTileN), base + (valid ? r : 0) * kRowBytes + k * 16,
                  valid);
    }
  } else {
    (void)tile;
    constexpr int kChunks = kRowBytes / 16;  // 41: codes, scales, bf16 k_pe
    for (int c = threadIdx.x; c < L::kTileN * kChunks; c += L::kThreads) {
      const int r = c / kChunks, k = c % kChunks;
      const bool valid = jt + r < len;
      cp_async_16(raw + r * L::kRawPitch + k * 16, base + (valid ? r : 0) * kRowBytes + k * 16,
                  valid);
    }
  }
}

/// Dequantises a staged FP8 tile into the bf16 tile: c = e4m3(code) * scale[i / 128]; k_pe copied.
template <int kStages, bool kHopper>
__device__ __forceinline__ void dequantize_fp8_tile(const std::uint8_t* raw, std::uint8_t* tile) {
  using L = DecodeSmem<LatentFormat::kFp8, kStages, kHopper>;
  constexpr int kGroups = MlaDims::kKvLora / 8;  // 64 groups of 8 codes per row
  for (int gi = threadIdx.x; gi < L::kTileN * kGroups; gi += L::kThreads) {
    const int r = gi / kGroups, c8 = gi % kGroups;
    const std::uint8_t* row = raw + r * L::kRawPitch;
    const uint2 codes = *reinterpret_cast<const uint2*>(row + c8 * 8);
    const float scale = *reinterpret_cast<const float*>(row + MlaDims::kKvLora + (c8 / 16) * 4);
    const std::uint32_t words[2] = {codes.x, codes.y};
    std::uint32_t packed[4];
#pragma unroll
    for (int h = 0; h < 4; ++h) {
      const __nv_fp8x2_storage_t two =
          static_cast<__nv_fp8x2_storage_t>((words[h / 2] >> (16 * (h % 2))) & 0xFFFFu);
      const __half2 hv = __half2(__nv_cvt_fp8x2_to_halfraw2(two, __NV_E4M3));
      const float2 f = __half22float2(hv);
      packed[h] = pack_bf16x2(f.x * scale, f.y * scale);
    }
    *reinterpret_cast<uint4*>(tile + L::chunk(r, c8, L::kTileN)) =
        make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
  constexpr int kRopeChunks = 2 * MlaDims::kRope / 16;  // 8
  constexpr int kRopeOffset = MlaDims::kKvLora + 4 * MlaDims::kFp8Scales;
  for (int c = threadIdx.x; c < L::kTileN * kRopeChunks; c += L::kThreads) {
    const int r = c / kRopeChunks, k = c % kRopeChunks;
    *reinterpret_cast<uint4*>(tile + L::chunk(r, MlaDims::kKvLora / 8 + k, L::kTileN)) =
        *reinterpret_cast<const uint4*>(raw + r * L::kRawPitch + kRopeOffset + k * 16);
  }
}

/// The split-KV decode kernel (see the header comment). Grid (num_parts, row_tiles), 256 threads.
template <LatentFormat F, int kStages, bool kHopper>
__global__ void __launch_bounds__(256, 1) mla_decode_kernel(const DecodeParams p) {
  using L = DecodeSmem<F, kStages, kHopper>;
  constexpr int kPitch = L::kPitch;
  const float kNegInf = -__int_as_float(0x7f800000);
  extern __shared__ __align__(128) std::uint8_t smem_raw[];
  std::uint8_t* smem = smem_raw + ((L::kAlign - smem_addr(smem_raw) % L::kAlign) % L::kAlign);
  std::uint8_t* sq = smem;
  std::uint8_t* stiles = smem + L::kQBytes;
  constexpr bool kFp8 = F == LatentFormat::kFp8;
  float4* sx = reinterpret_cast<float4*>(smem + L::kQBytes + L::kTiles * L::kTileBytes);
  std::uint8_t* sraw = smem + L::kQBytes + L::kTiles * L::kTileBytes + L::kExchangeBytes;

  const PartRange range = p.parts[blockIdx.x];
  const int tile_row0 = blockIdx.y * kRowTile;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int rg = warp & 3, half = warp >> 2;
  const int g = lane >> 2, t = lane & 3;

  for (int s = range.seq_begin; s <= range.seq_end && s < p.batch; ++s) {
    const SeqInfo seq = p.seqs[s];
    const int nblk = (seq.len + MlaDims::kBlock - 1) / MlaDims::kBlock;
    const int blk0 = s == range.seq_begin ? range.blk_begin : 0;
    const int blk1 = s == range.seq_end ? range.blk_end : nblk;
    const int rows = seq.q_len * p.num_heads;
    if (blk0 >= blk1 || tile_row0 >= rows) continue;
    const int piece = s == range.seq_begin ? range.piece_begin : 0;
    const int j_begin = blk0 * MlaDims::kBlock;
    const int j_end = min(blk1 * MlaDims::kBlock, seq.len);
    const int n_iter = (j_end - j_begin + L::kTileN - 1) / L::kTileN;
    const std::int32_t* table =
        p.cache.block_table + static_cast<std::int64_t>(s) * p.cache.table_stride;

    // The query tile: rows past the sequence's are zero-filled.
    const __nv_bfloat16* qg =
        p.q + (static_cast<std::int64_t>(seq.q_tok) * p.num_heads + tile_row0) * MlaDims::kLatent;
    const int valid_rows = min(kRowTile, rows - tile_row0);
    constexpr int kQChunks = MlaDims::kLatent / 8;  // 72 pieces of 16 B per row
    for (int c = tid; c < kRowTile * kQChunks; c += L::kThreads) {
      const int r = c / kQChunks, k = c % kQChunks;
      const bool valid = r < valid_rows;
      cp_async_16(sq + L::chunk(r, k, kRowTile), qg + (valid ? r : 0) * MlaDims::kLatent + k * 8,
                  valid);
    }
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) {
      if (st < n_iter)
        load_cache_tile<F, kStages, kHopper>(p.cache, table, j_begin + st * L::kTileN, seq.len,
                                             stiles + st * L::kTileBytes, sraw + st * L::kRawBytes);
      cp_async_commit();
    }
    if constexpr (kFp8) {  // tile 0 dequantised up front; tile it + 1 at the end of iteration it
      cp_async_wait<kStages - 2>();
      __syncthreads();
      dequantize_fp8_tile<kStages, kHopper>(sraw, stiles);
    }

    // This thread's two rows (g and g + 8 of the warp's 16) and the last cache row each sees.
    int limit[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = tile_row0 + rg * 16 + g + 8 * i;
      limit[i] = row < rows ? seq.len - seq.q_len + row / p.num_heads : seq.len - 1;
    }
    const int first_masked = seq.len - seq.q_len + 1;  // no row sees a column past this one

    float o[32][4];
#pragma unroll
    for (int n = 0; n < 32; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_run[2] = {kNegInf, kNegInf}, l_run[2] = {0.0f, 0.0f};

    for (int it = 0; it < n_iter; ++it) {
      if constexpr (!kFp8) cp_async_wait<kStages - 2>();
      if constexpr (kHopper) fence_proxy_async_shared();  // cp.async / dequantised tile -> wgmma
      __syncthreads();
      std::uint8_t* kt = stiles + (it % L::kTiles) * L::kTileBytes;

      // S partial over latent dims [288 half, + 288): [16 rows, 32 cols] as 4 n8 tiles.
      float sc[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
      if constexpr (kHopper) {
        // Warpgroup `half`: 18 m64n32k16 steps over dims 288 half .. (step k: column block k / 4,
        // +32 B per step inside it). The wait also completes the previous tile's O multiply.
        float(&d)[16] = reinterpret_cast<float(&)[16]>(sc);
        const std::uint32_t q_base = smem_addr(sq), k_base = smem_addr(kt);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 18; ++kk) {
          const int k = half * 18 + kk;
          const std::uint32_t off = (k & 3) * 32;
          wgmma_m64n32k16_ss(d, wgmma_desc_sw128(q_base + (k >> 2) * (kRowTile * 128) + off, 16, 1024),
                             wgmma_desc_sw128(k_base + (k >> 2) * (L::kTileN * 128) + off, 16, 1024),
                             kk > 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
      } else {
        const __nv_bfloat16* qa = reinterpret_cast<const __nv_bfloat16*>(sq) +
                                  (rg * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kPitch +
                                  (lane / 16) * 8;
        const __nv_bfloat16* kb = reinterpret_cast<const __nv_bfloat16*>(kt) +
                                  ((lane % 8) + (lane / 16) * 8) * kPitch + ((lane / 8) % 2) * 8;
#pragma unroll
        for (int kk = 0; kk < 18; ++kk) {
          const int k0 = half * 288 + kk * 16;
          std::uint32_t a[4];
          ldmatrix_x4(a, qa + k0);
#pragma unroll
          for (int nb = 0; nb < 2; ++nb) {
            std::uint32_t b[4];
            ldmatrix_x4(b, kb + nb * 16 * kPitch + k0);
            mma_bf16_16816(sc[2 * nb], a, b[0], b[1]);
            mma_bf16_16816(sc[2 * nb + 1], a, b[2], b[3]);
          }
        }
      }
      // Exchange the halves with the partner warp: both then hold the full S.
#pragma unroll
      for (int n = 0; n < 4; ++n)
        sx[(warp * 4 + n) * 32 + lane] = make_float4(sc[n][0], sc[n][1], sc[n][2], sc[n][3]);
      __syncthreads();
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const float4 v = sx[((warp ^ 4) * 4 + n) * 32 + lane];
        sc[n][0] += v.x;
        sc[n][1] += v.y;
        sc[n][2] += v.z;
        sc[n][3] += v.w;
      }
      // Every thread is past the barrier above, so every warp has finished reading tile it - 1
      // (the wgmma form: its O multiply, waited for with S): its stage takes tile it + kStages - 1.
      {
        const int nx = it + kStages - 1;
        if (nx < n_iter)
          load_cache_tile<F, kStages, kHopper>(p.cache, table, j_begin + nx * L::kTileN, seq.len,
                                               stiles + (nx % L::kTiles) * L::kTileBytes,
                                               sraw + (nx % kStages) * L::kRawBytes);
        cp_async_commit();
      }

      // Online softmax in base 2: s2 = scale log2(e) S, p = 2^(s2 - m).
      const int j0 = j_begin + it * L::kTileN;
      const bool needs_mask = j0 + L::kTileN > first_masked;
      float mx[2] = {kNegInf, kNegInf};
#pragma unroll
      for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = sc[n][e] * p.scale_log2;
          if (needs_mask && j0 + n * 8 + 2 * t + (e & 1) > limit[e >> 1]) v = kNegInf;
          sc[n][e] = v;
          mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
      }
      float alpha[2], m_use[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        const float m_new = fmaxf(m_run[i], mx[i]);
        m_use[i] = m_new == kNegInf ? 0.0f : m_new;  // a row that has seen nothing yet
        alpha[i] = exp2f(m_run[i] - m_use[i]);
        m_run[i] = m_new;
        l_run[i] *= alpha[i];
      }
      std::uint32_t pa[2][4];
#pragma unroll
      for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sc[n][e] = exp2f(sc[n][e] - m_use[e >> 1]);
          l_run[e >> 1] += sc[n][e];
        }
      }
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        pa[kk][0] = pack_bf16x2(sc[2 * kk][0], sc[2 * kk][1]);
        pa[kk][1] = pack_bf16x2(sc[2 * kk][2], sc[2 * kk][3]);
        pa[kk][2] = pack_bf16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        pa[kk][3] = pack_bf16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
      }
      if (alpha[0] != 1.0f || alpha[1] != 1.0f) {  // once the row maxima settle, rarely taken
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          o[n][0] *= alpha[0];
          o[n][1] *= alpha[0];
          o[n][2] *= alpha[1];
          o[n][3] *= alpha[1];
        }
      }
      // O[16, 256 half .. + 256] += P [16, 32] V [32, 256].
      if constexpr (kHopper) {
        // V = the tile's column blocks 4 half .. 4 half + 3 read MN-major: LBO = one column block
        // (32 rows x 128 B) between groups of 64 columns, SBO = 8 rows; k16 step = 16 rows.
        float(&d)[128] = reinterpret_cast<float(&)[128]>(o);
        const std::uint32_t v_base = smem_addr(kt) + 4 * half * (L::kTileN * 128);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 2; ++kk)
          wgmma_m64n256k16_rs_tnsp_b(
              d, pa[kk], wgmma_desc_sw128(v_base + kk * 16 * 128, L::kTileN * 128, 1024));
        wgmma_commit();  // waited for with the next tile's S, so it overlaps the next barrier
      } else {
        const __nv_bfloat16* vb = reinterpret_cast<const __nv_bfloat16*>(kt) +
                                  ((lane % 8) + ((lane / 8) % 2) * 8) * kPitch + half * 256 +
                                  (lane / 16) * 8;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
          for (int np = 0; np < 16; ++np) {
            std::uint32_t b[4];
            ldmatrix_x4_trans(b, vb + kk * 16 * kPitch + np * 16);
            mma_bf16_16816(o[2 * np], pa[kk], b[0], b[1]);
            mma_bf16_16816(o[2 * np + 1], pa[kk], b[2], b[3]);
          }
        }
      }
      if constexpr (kFp8) {
        // Dequantise the next tile (the wgmma form: while this tile's O multiply runs) into the
        // bf16 tile that tile it - 1 used: every warp finished it before the exchange barrier.
        if (it + 1 < n_iter) {
          cp_async_wait<kStages - 2>();
          __syncthreads();  // the raw rows other threads copied
          dequantize_fp8_tile<kStages, kHopper>(sraw + ((it + 1) % kStages) * L::kRawBytes,
                                                stiles + ((it + 1) % L::kTiles) * L::kTileBytes);
        }
      }
    }
    if constexpr (kHopper) wgmma_wait<0>();
    cp_async_wait<0>();
    __syncthreads();  // the next piece reuses the query and tile buffers

    // Finish: O / l, lse = ln 2 (m + log2 l).
    float inv[2], lse[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float l = l_run[i];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[i] = l > 0.0f ? 1.0f / l : 0.0f;
      lse[i] = l > 0.0f ? (m_run[i] + log2f(l)) * 0.6931471805599453f : kNegInf;
    }
    const bool direct = seq.num_pieces == 1;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = tile_row0 + rg * 16 + g + 8 * i;
      if (row >= rows) continue;
      if (direct) {
        const std::int64_t orow = static_cast<std::int64_t>(seq.q_tok) * p.num_heads + row;
        __nv_bfloat16* dst = p.out + orow * MlaDims::kKvLora + half * 256 + 2 * t;
#pragma unroll
        for (int n = 0; n < 32; ++n)
          *reinterpret_cast<std::uint32_t*>(dst + n * 8) =
              pack_bf16x2(o[n][2 * i] * inv[i], o[n][2 * i + 1] * inv[i]);
        if (p.lse != nullptr && half == 0 && t == 0) p.lse[orow] = lse[i];
      } else {
        const std::int64_t prow = static_cast<std::int64_t>(seq.part_row) +
                                  static_cast<std::int64_t>(piece) * rows + row;
        float* dst = p.part_o + prow * MlaDims::kKvLora + half * 256 + 2 * t;
#pragma unroll
        for (int n = 0; n < 32; ++n)
          *reinterpret_cast<float2*>(dst + n * 8) =
              make_float2(o[n][2 * i] * inv[i], o[n][2 * i + 1] * inv[i]);
        if (half == 0 && t == 0) p.part_lse[prow] = lse[i];
      }
    }
  }
}

/// Merges the pieces of every split sequence (see the header comment). Grid (batch, ceil(max
/// rows / 8)), 256 threads: one warp per query row, lane l holding columns 4 l + 128 q.
__global__ void __launch_bounds__(256) mla_combine_kernel(const DecodeParams p) {
  const SeqInfo seq = p.seqs[blockIdx.x];
  if (seq.num_pieces <= 1) return;
  const int rows = seq.q_len * p.num_heads;
  const int row = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int n = seq.num_pieces;
  const float* plse = p.part_lse + seq.part_row + row;  // piece k at plse[k * rows]
  float mx = -__int_as_float(0x7f800000);
  for (int k = lane; k < n; k += 32) mx = fmaxf(mx, plse[static_cast<std::int64_t>(k) * rows]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float sum = 0.0f;
  for (int k = lane; k < n; k += 32) sum += expf(plse[static_cast<std::int64_t>(k) * rows] - mx);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const float lse = mx + logf(sum);
  float4 acc[4] = {};
  for (int k = 0; k < n; ++k) {
    const std::int64_t prow = static_cast<std::int64_t>(seq.part_row) +
                              static_cast<std::int64_t>(k) * rows + row;
    const float w = expf(p.part_lse[prow] - lse);  // exp(-inf) = 0 for a piece it does not see
    const float4* src = reinterpret_cast<const float4*>(p.part_o + prow * MlaDims::kKvLora);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float4 v = src[lane + 32 * q];
      acc[q].x += w * v.x;
      acc[q].y += w * v.y;
      acc[q].z += w * v.z;
      acc[q].w += w * v.w;
    }
  }
  const std::int64_t orow = static_cast<std::int64_t>(seq.q_tok) * p.num_heads + row;
  __nv_bfloat16* dst = p.out + orow * MlaDims::kKvLora;
#pragma unroll
  for (int q = 0; q < 4; ++q)
    *reinterpret_cast<uint2*>(dst + 4 * (lane + 32 * q)) =
        make_uint2(pack_bf16x2(acc[q].x, acc[q].y), pack_bf16x2(acc[q].z, acc[q].w));
  if (p.lse != nullptr && lane == 0) p.lse[orow] = lse;
}

}  // namespace internal
}  // namespace cuda
}  // namespace mla
