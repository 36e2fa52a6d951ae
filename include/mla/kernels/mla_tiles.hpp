// The tile operations of absorbed-MLA decode attention, softmax(scale (Q_lat C^T + Q_pe P^T)) C
// over latent rows [c_kv | k_pe]: what the decode engine (decode_engine.hpp) runs on every tile
// of cache rows, for up to kMlaRowsPerPass query rows at once. This is the attention core of
// DeepSeek-V2/V3 inference with W_UK / W_UV absorbed (FlashMLA's decode kernel; kv_lora 512,
// rope 64, 128 heads). Reference: mla::reference::absorbed_attention.
//
// With 128 query rows every cache row feeds 128 * (576 + 512) multiply-adds, so the work is
// compute bound and is written as two register-blocked GEMM micro-kernels around an online
// softmax (flash decoding). Per tile of kMlaTileRows cache rows:
//   S^T[t, m] = Q[m, :] . row_t[0 : kv_lora + rope]  (Q = [q_lat | q_pe] pre-scaled by scale*log2 e)
//   online softmax over t for every m (running max / sum per row, base 2)
//   O[m, :] = alpha_m * O[m, :] + sum_t P^T[t, m] row_t[0 : kv_lora]
// The concatenated row [c_kv | k_pe] is exactly the cache row, so the first GEMM has a single
// K = kv_lora + rope loop, and V is the first kv_lora values of the same row.
//
// Three implementations of the tile operations (kernels::KernelPath): portable C++, AVX2+FMA
// (8-wide, 16 registers) and AVX-512 (16-wide, 32 registers). Every translation unit compiles all
// three (the SIMD ones in target regions, core/macros.hpp) and a call picks one at run time
// (kAuto: the widest the CPU has, core/isa.hpp). A bf16 cache is widened to float tile by tile
// (exact) and runs the float GEMMs. AVX512-BF16's vdpbf16ps would skip the widening but round the
// query and P to bf16 at no more FLOP per cycle than fp32 FMA on the cores that have it, so a
// kernel built on it could not beat the widening one. AMX tiles are the bf16 engine of those
// cores: KernelPath::kAmx runs a bf16 cache through them (amx_attention.hpp), rounding the query
// and the softmax weights to bf16; kAuto keeps the exact-in-float kernels.
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <utility>

#include "mla/core/check.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/amx_attention.hpp"
#include "mla/kernels/decode_common.hpp"

namespace mla {
namespace internal {

// Tile and block sizes of the AVX2 operations, chosen for AVX2 cores with 32 KiB of L1d, 512 KiB
// or more of L2 and two 256-bit FMA pipes with 4-cycle latency (so >= 8 independent accumulators
// are needed), and checked by sweeping them in benchmarks/kernel_bench.cpp's shapes (the AVX-512
// operations' blocks are described at MlaAvx512Ops):
// - Micro-kernels are 16 x 6 (scores: 16 query rows in two ymm x 6 cache rows) and 6 x 16
//   (output: 6 query rows x 16 latent columns): 12 accumulators + 2 loads + 1 broadcast = 15 of
//   the 16 ymm registers, 8 loads per 12 FMAs.
// - In both GEMMs the vector operand (16 floats per k step) must come from L1 and the broadcast
//   operand (6 floats per k step) may stream from L2 (the BLIS rule). Scores: a 16 x kMlaScoresKc
//   query sub-panel (18 KiB) stays in L1 while all cache rows of the tile stream past it.
//   Output: a tn x 16 column strip of the tile (2.3 KiB) and the whole P^T tile (tn x 128 floats
//   = 18 KiB at tn = 36) stay in L1 while the rows of O (256 KiB, in L2) stream through.
// - kMlaTileRows = 36 cache rows per softmax step (a multiple of the 6-row block) is the largest
//   tile whose P^T still fits in L1 next to the column strip; each tile rescales and reloads O
//   once, ~5% of the tile's FMAs. Smaller tiles pay that more often, larger ones spill P^T out of
//   L1. The tile (36 x 576 floats = 81 KiB), the packed query (288 KiB) and O (256 KiB) share
//   the L2.
// - kMlaRowsPerPass = 128 query rows per pass over the cache: M = 256 (2 tokens x 128 heads) would
//   double the query and accumulator and spill L2; re-reading the cache per pass instead costs
//   only ~2.3 KB of memory traffic per 280 kFLOP.
inline constexpr Index kMlaTileRows = 36;
inline constexpr Index kMlaScoresKc = 288;
inline constexpr Index kMlaPanel = 16;
inline constexpr Index kMlaRowsPerPass = 128;
// Fewer cache rows than this per split and the split-KV bookkeeping outweighs the work.
inline constexpr Index kMlaMinRowsPerSplit = 32;

// Splits of the cache per thread when threads > 1. Tasks are handed out dynamically, so several
// splits per thread even out cores that are not equally available (a shared or busy machine);
// each extra split costs one zeroing and one combine pass over its 128 x 512 partial output
// (~1% of a 4k-row call).
inline constexpr Index kMlaSplitsPerThread = 4;

/// Most splits a call on `threads` threads uses (1 on one thread: no combine at all).
constexpr Index mla_max_splits(int threads) { return threads <= 1 ? 1 : Index(threads) * kMlaSplitsPerThread; }

/// Packs [q_lat | q_pe] * qscale into 16-row panels, [panel][k][16], padding rows past M with 0.
inline void mla_pack_query(const float* q_lat, const float* q_pe, Index m_rows, Index kv_lora,
                           Index rope, float qscale, float* packed) {
  const Index k_dim = kv_lora + rope;
  const Index panels = round_up(m_rows, kMlaPanel) / kMlaPanel;
  for (Index p = 0; p < panels; ++p) {
    float* dst = packed + p * kMlaPanel * k_dim;
    for (Index i = 0; i < kMlaPanel; ++i) {
      const Index m = p * kMlaPanel + i;
      if (m >= m_rows) {
        for (Index k = 0; k < k_dim; ++k) dst[k * kMlaPanel + i] = 0.0f;
        continue;
      }
      for (Index k = 0; k < kv_lora; ++k) dst[k * kMlaPanel + i] = q_lat[m * kv_lora + k] * qscale;
      for (Index k = 0; k < rope; ++k)
        dst[(kv_lora + k) * kMlaPanel + i] = q_pe[m * rope + k] * qscale;
    }
  }
}

/// Portable C++ tile operations (the fallback, and what kernels::KernelPath::kPortable runs).
/// Same data layouts as the AVX2 ones; loops are written so a compiler can vectorise them.
struct MlaPortableOps {
  static constexpr bool kDenseFloatTiles = false;  // see rows_as_float
  template <class T>
  static void widen(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                    Index dst_stride) {
    widen_rows_portable(src, src_stride, rows, cols, dst, dst_stride);
  }

  // st[t * lds + p * 16 + i] = sum_k q_packed[p][k][i] * rows[t * stride + k]
  static void scores(const float* qp, Index panels, Index k_dim, const float* rows, Index stride,
                     Index tn, float* st, Index lds) {
    for (Index t = 0; t < tn; ++t) {
      const float* r = rows + t * stride;
      for (Index p = 0; p < panels; ++p) {
        const float* q = qp + p * kMlaPanel * k_dim;
        float acc[kMlaPanel] = {};
        for (Index k = 0; k < k_dim; ++k)
          for (Index i = 0; i < kMlaPanel; ++i) acc[i] += q[k * kMlaPanel + i] * r[k];
        for (Index i = 0; i < kMlaPanel; ++i) st[t * lds + p * kMlaPanel + i] = acc[i];
      }
    }
  }

  // Online softmax over the tn rows of S^T, for the m16 query columns.
  static void softmax(float* st, Index lds, Index tn, Index m16, float* run_max, float* run_sum,
                      float* alpha) {
    for (Index i = 0; i < m16; ++i) {
      float tile_max = -std::numeric_limits<float>::infinity();
      for (Index t = 0; t < tn; ++t) tile_max = std::fmax(tile_max, st[t * lds + i]);
      const float new_max = std::fmax(run_max[i], tile_max);
      // A row that has seen only masked scores keeps max -inf; subtract 0 instead to avoid NaN.
      const float safe = new_max == -std::numeric_limits<float>::infinity() ? 0.0f : new_max;
      float sum = 0.0f;
      for (Index t = 0; t < tn; ++t) {
        const float p = std::exp2(st[t * lds + i] - safe);
        st[t * lds + i] = p;
        sum += p;
      }
      alpha[i] = std::exp2(run_max[i] - safe);
      run_sum[i] = run_sum[i] * alpha[i] + sum;
      run_max[i] = new_max;
    }
  }

  // o[i][:d] = alpha[i] * o[i][:d] + sum_t pt[t * lds + i] * rows[t * stride + :d]
  static void accumulate(const float* pt, Index lds, Index tn, Index mc, const float* rows,
                         Index stride, Index d_dim, float* o, Index ldo, const float* alpha) {
    for (Index i = 0; i < mc; ++i) {
      float* orow = o + i * ldo;
      for (Index d = 0; d < d_dim; ++d) orow[d] *= alpha[i];
      for (Index t = 0; t < tn; ++t) {
        const float p = pt[t * lds + i];
        const float* r = rows + t * stride;
        for (Index d = 0; d < d_dim; ++d) orow[d] += p * r[d];
      }
    }
  }
};

#if MLA_X86_SIMD
MLA_TARGET_AVX2_BEGIN
/// AVX2 + FMA tile operations.
struct MlaAvx2Ops {
  static constexpr bool kDenseFloatTiles = false;
  template <class T>
  static void widen(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                    Index dst_stride) {
    widen_rows_avx2(src, src_stride, rows, cols, dst, dst_stride);
  }

  // 16 query rows (one packed panel, two ymm) x NT cache rows over k in [0, kc); broadcasts come
  // straight from the cache rows, so neither operand is repacked per tile. kAdd: add to st.
  template <int NT, bool kAdd>
  MLA_NOINLINE static void scores_block(const float* q, const float* rows, Index stride, Index kc, float* st,
                           Index lds) {
    __m256 acc0[NT], acc1[NT];
    const float* r[NT];
    MLA_UNROLL
    for (int j = 0; j < NT; ++j) {
      acc0[j] = _mm256_setzero_ps();
      acc1[j] = _mm256_setzero_ps();
      r[j] = rows + j * stride;
    }
    for (Index k = 0; k < kc; ++k) {
      const __m256 a0 = _mm256_load_ps(q + k * kMlaPanel);
      const __m256 a1 = _mm256_load_ps(q + k * kMlaPanel + 8);
      MLA_UNROLL
      for (int j = 0; j < NT; ++j) {
        const __m256 b = _mm256_broadcast_ss(r[j] + k);
        acc0[j] = _mm256_fmadd_ps(a0, b, acc0[j]);
        acc1[j] = _mm256_fmadd_ps(a1, b, acc1[j]);
      }
    }
    MLA_UNROLL
    for (int j = 0; j < NT; ++j) {
      if (kAdd) {
        acc0[j] = _mm256_add_ps(acc0[j], _mm256_load_ps(st + j * lds));
        acc1[j] = _mm256_add_ps(acc1[j], _mm256_load_ps(st + j * lds + 8));
      }
      _mm256_store_ps(st + j * lds, acc0[j]);
      _mm256_store_ps(st + j * lds + 8, acc1[j]);
    }
  }

  template <bool kAdd>
  static void scores_panel(const float* q, const float* rows, Index stride, Index kc, Index tn,
                           float* st, Index lds) {
    Index t = 0;
    for (; t + 6 <= tn; t += 6) scores_block<6, kAdd>(q, rows + t * stride, stride, kc, st + t * lds, lds);
    const float* r = rows + t * stride;
    float* s = st + t * lds;
    switch (tn - t) {
      case 5: scores_block<5, kAdd>(q, r, stride, kc, s, lds); break;
      case 4: scores_block<4, kAdd>(q, r, stride, kc, s, lds); break;
      case 3: scores_block<3, kAdd>(q, r, stride, kc, s, lds); break;
      case 2: scores_block<2, kAdd>(q, r, stride, kc, s, lds); break;
      case 1: scores_block<1, kAdd>(q, r, stride, kc, s, lds); break;
      default: break;
    }
  }

  static void scores(const float* qp, Index panels, Index k_dim, const float* rows, Index stride,
                     Index tn, float* st, Index lds) {
    // Query panels outer, cache rows inner (BLIS order): the 16 x kc query sub-panel is the
    // vector operand, loaded every k step, so it must sit in L1 (kc <= kMlaScoresKc keeps it at
    // <= 18 KiB); the cache rows are the broadcast operand, 24 B per k step, streamed from L2.
    const Index chunks = (k_dim + kMlaScoresKc - 1) / kMlaScoresKc;
    for (Index c = 0; c < chunks; ++c) {
      const Index k0 = k_dim * c / chunks;
      const Index kc = k_dim * (c + 1) / chunks - k0;
      for (Index p = 0; p < panels; ++p) {
        const float* q = qp + p * kMlaPanel * k_dim + k0 * kMlaPanel;
        if (c == 0)
          scores_panel<false>(q, rows + k0, stride, kc, tn, st + p * kMlaPanel, lds);
        else
          scores_panel<true>(q, rows + k0, stride, kc, tn, st + p * kMlaPanel, lds);
      }
    }
  }

  static void softmax(float* st, Index lds, Index tn, Index m16, float* run_max, float* run_sum,
                      float* alpha) {
    online_softmax_columns_avx2(st, lds, tn, m16, run_max, run_sum, alpha);
  }

  // MR query rows x 16 latent columns over tn cache rows; the online-softmax correction is folded
  // into the final update (o = alpha o + tile sum), so it costs no extra pass over O.
  template <int MR, bool kMasked>
  MLA_NOINLINE static void accumulate_block(const float* pt, Index lds, Index tn, const float* rows,
                               Index stride, float* o, Index ldo, const float* alpha,
                               __m256i mask0, __m256i mask1) {
    // The tile's sum starts from zero and O (in L2) is folded in at the end: the FMA chains start
    // at once instead of waiting for the O loads.
    __m256 acc0[MR], acc1[MR];
    MLA_UNROLL
    for (int i = 0; i < MR; ++i) {
      acc0[i] = _mm256_setzero_ps();
      acc1[i] = _mm256_setzero_ps();
    }
    for (Index t = 0; t < tn; ++t) {
      const float* r = rows + t * stride;
      const __m256 v0 = kMasked ? _mm256_maskload_ps(r, mask0) : _mm256_loadu_ps(r);
      const __m256 v1 = kMasked ? _mm256_maskload_ps(r + 8, mask1) : _mm256_loadu_ps(r + 8);
      const float* p = pt + t * lds;
      MLA_UNROLL
      for (int i = 0; i < MR; ++i) {
        const __m256 b = _mm256_broadcast_ss(p + i);
        acc0[i] = _mm256_fmadd_ps(b, v0, acc0[i]);
        acc1[i] = _mm256_fmadd_ps(b, v1, acc1[i]);
      }
    }
    MLA_UNROLL
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(alpha + i);
      _mm256_store_ps(o + i * ldo, _mm256_fmadd_ps(a, _mm256_load_ps(o + i * ldo), acc0[i]));
      _mm256_store_ps(o + i * ldo + 8, _mm256_fmadd_ps(a, _mm256_load_ps(o + i * ldo + 8), acc1[i]));
    }
  }

  template <bool kMasked>
  static void accumulate_columns(const float* pt, Index lds, Index tn, Index mc, const float* rows,
                                 Index stride, float* o, Index ldo, const float* alpha,
                                 __m256i mask0, __m256i mask1) {
    Index m = 0;
    for (; m + 6 <= mc; m += 6)
      accumulate_block<6, kMasked>(pt + m, lds, tn, rows, stride, o + m * ldo, ldo, alpha + m, mask0, mask1);
    const float* p = pt + m;
    float* om = o + m * ldo;
    const float* a = alpha + m;
    switch (mc - m) {
      case 5: accumulate_block<5, kMasked>(p, lds, tn, rows, stride, om, ldo, a, mask0, mask1); break;
      case 4: accumulate_block<4, kMasked>(p, lds, tn, rows, stride, om, ldo, a, mask0, mask1); break;
      case 3: accumulate_block<3, kMasked>(p, lds, tn, rows, stride, om, ldo, a, mask0, mask1); break;
      case 2: accumulate_block<2, kMasked>(p, lds, tn, rows, stride, om, ldo, a, mask0, mask1); break;
      case 1: accumulate_block<1, kMasked>(p, lds, tn, rows, stride, om, ldo, a, mask0, mask1); break;
      default: break;
    }
  }

  static void accumulate(const float* pt, Index lds, Index tn, Index mc, const float* rows,
                         Index stride, Index d_dim, float* o, Index ldo, const float* alpha) {
    // Column strips outer: one 16-wide strip of the tile (tn x 64 B) stays in L1 for all rows.
    const Index d16 = d_dim & ~Index(15);
    const __m256i all = _mm256_set1_epi32(-1);
    for (Index d = 0; d < d16; d += 16)
      accumulate_columns<false>(pt, lds, tn, mc, rows + d, stride, o + d, ldo, alpha, all, all);
    if (d16 < d_dim) {
      // Masked loads: the last strip must not read past the row (the tile's last row may be the
      // last row of the caller's buffer). The padded o columns accumulate zeros.
      const Index n = d_dim - d16;
      accumulate_columns<true>(pt, lds, tn, mc, rows + d16, stride, o + d16, ldo, alpha,
                               first_lanes_mask(std::min<Index>(n, 8)),
                               first_lanes_mask(std::max<Index>(n - 8, 0)));
    }
  }
};
MLA_TARGET_END

MLA_TARGET_AVX512_BEGIN
/// AVX-512 tile operations: the same two GEMMs with 16-wide vectors and 32 registers (two 512-bit
/// FMA pipes and 48 KiB of L1d on the Intel cores that have them). The softmax is the AVX2 one
/// (a few % of the work); bf16 tiles are widened 16 values at a time.
/// - Scores: NP query panels (up to 4 x 16 rows, one zmm each per k step) x NT (up to 6) cache
///   rows: 24 accumulators, 4 loads and 6 broadcasts per 24 FMAs. kc = 288 (two chunks of the
///   576-wide row): the 4-panel query slice (72 KiB) streams from L2, which keeps up with 4 loads
///   per 12 cycles. A smaller kc (96, 144), whose slice would fit the L1, means more passes over
///   S and more calls, which outweigh the L1 hits on L2-resident data (docs/benchmarks.md).
/// - Output: MR (up to 6) query rows x 64 latent columns (four zmm): 24 accumulators, 4 loads of
///   the tile row and 6 broadcasts of P per 24 FMAs; a 64-column strip of the tile
///   (36 x 256 B = 9 KiB) and the P^T tile (18 KiB) stay in L1 while O streams from L2.
struct MlaAvx512Ops : MlaAvx2Ops {
  // Float tiles are copied to a dense buffer first (rows_as_float): the scores block reads six
  // rows in lockstep, which the hardware prefetcher does not follow, and straight from DRAM those
  // reads stall; the copy reads the tile row after row.
  static constexpr bool kDenseFloatTiles = true;
  static constexpr Index kScoresKc = 288;
  static constexpr int kMaxPanels = 4;
  static constexpr int kMaxRows = 6;

  template <class T>
  static void widen(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                    Index dst_stride) {
    widen_rows_avx512(src, src_stride, rows, cols, dst, dst_stride);
  }

  template <int NP, int NT, bool kAdd>
  MLA_NOINLINE static void scores_block(const float* q, Index panel_stride, const float* rows,
                                        Index stride, Index kc, float* st, Index lds) {
    __m512 acc[NP][NT];
    const float* r[NT];
    MLA_UNROLL
    for (int j = 0; j < NT; ++j) {
      r[j] = rows + j * stride;
      MLA_UNROLL
      for (int p = 0; p < NP; ++p) acc[p][j] = _mm512_setzero_ps();
    }
    for (Index k = 0; k < kc; ++k) {
      __m512 a[NP];
      MLA_UNROLL
      for (int p = 0; p < NP; ++p) a[p] = _mm512_load_ps(q + p * panel_stride + k * kMlaPanel);
      MLA_UNROLL
      for (int j = 0; j < NT; ++j) {
        const __m512 b = _mm512_set1_ps(r[j][k]);
        MLA_UNROLL
        for (int p = 0; p < NP; ++p) acc[p][j] = _mm512_fmadd_ps(a[p], b, acc[p][j]);
      }
    }
    MLA_UNROLL
    for (int j = 0; j < NT; ++j) {
      MLA_UNROLL
      for (int p = 0; p < NP; ++p) {
        float* dst = st + j * lds + p * kMlaPanel;
        if (kAdd) acc[p][j] = _mm512_add_ps(acc[p][j], _mm512_load_ps(dst));
        _mm512_store_ps(dst, acc[p][j]);
      }
    }
  }

  // All tn cache rows of a tile for np (1..4) query panels, in blocks of up to kMaxRows rows.
  template <bool kAdd>
  static void scores_group(Index np, const float* q, Index panel_stride, const float* rows,
                           Index stride, Index kc, Index tn, float* st, Index lds) {
    dispatch_width<kMaxPanels>(np, [&](auto npc) {
      constexpr int NP = decltype(npc)::value;
      for (Index t = 0; t < tn; t += kMaxRows)
        dispatch_width<kMaxRows>(std::min<Index>(kMaxRows, tn - t), [&](auto ntc) {
          scores_block<NP, decltype(ntc)::value, kAdd>(q, panel_stride, rows + t * stride, stride,
                                                       kc, st + t * lds, lds);
        });
    });
  }

  static void scores(const float* qp, Index panels, Index k_dim, const float* rows, Index stride,
                     Index tn, float* st, Index lds) {
    const Index chunks = (k_dim + kScoresKc - 1) / kScoresKc;
    const Index panel_stride = kMlaPanel * k_dim;
    for (Index c = 0; c < chunks; ++c) {
      const Index k0 = k_dim * c / chunks;
      const Index kc = k_dim * (c + 1) / chunks - k0;
      for (Index p = 0; p < panels; p += kMaxPanels) {
        const Index np = std::min<Index>(kMaxPanels, panels - p);
        const float* q = qp + p * panel_stride + k0 * kMlaPanel;
        if (c == 0)
          scores_group<false>(np, q, panel_stride, rows + k0, stride, kc, tn, st + p * kMlaPanel, lds);
        else
          scores_group<true>(np, q, panel_stride, rows + k0, stride, kc, tn, st + p * kMlaPanel, lds);
      }
    }
  }

  // MR query rows x 64 latent columns over tn cache rows; o = alpha o + tile sum at the end.
  // mask[v] selects the valid lanes of vector v of the strip (all ones except in the last one).
  template <int MR, bool kMasked>
  MLA_NOINLINE static void accumulate_block(const float* pt, Index lds, Index tn, const float* rows,
                                            Index stride, float* o, Index ldo, const float* alpha,
                                            const __mmask16* mask) {
    __m512 acc[MR][4];
    MLA_UNROLL
    for (int i = 0; i < MR; ++i) {
      MLA_UNROLL
      for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_ps();
    }
    const __mmask16 m0 = mask[0], m1 = mask[1], m2 = mask[2], m3 = mask[3];
    for (Index t = 0; t < tn; ++t) {
      const float* r = rows + t * stride;
      // Plain loads where the strip is whole: a masked load costs an extra ALU uop on the FMA
      // ports of Intel cores.
      const __m512 v0 = kMasked ? _mm512_maskz_loadu_ps(m0, r) : _mm512_loadu_ps(r);
      const __m512 v1 = kMasked ? _mm512_maskz_loadu_ps(m1, r + 16) : _mm512_loadu_ps(r + 16);
      const __m512 v2 = kMasked ? _mm512_maskz_loadu_ps(m2, r + 32) : _mm512_loadu_ps(r + 32);
      const __m512 v3 = kMasked ? _mm512_maskz_loadu_ps(m3, r + 48) : _mm512_loadu_ps(r + 48);
      const float* p = pt + t * lds;
      MLA_UNROLL
      for (int i = 0; i < MR; ++i) {
        const __m512 b = _mm512_set1_ps(p[i]);
        acc[i][0] = _mm512_fmadd_ps(b, v0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(b, v1, acc[i][1]);
        acc[i][2] = _mm512_fmadd_ps(b, v2, acc[i][2]);
        acc[i][3] = _mm512_fmadd_ps(b, v3, acc[i][3]);
      }
    }
    MLA_UNROLL
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(alpha[i]);
      MLA_UNROLL
      for (int v = 0; v < 4; ++v) {
        float* dst = o + i * ldo + 16 * v;
        if (mask[v] != 0) _mm512_store_ps(dst, _mm512_fmadd_ps(a, _mm512_load_ps(dst), acc[i][v]));
      }
    }
  }

  static void accumulate(const float* pt, Index lds, Index tn, Index mc, const float* rows,
                         Index stride, Index d_dim, float* o, Index ldo, const float* alpha) {
    // Column strips outer: one 64-wide strip of the tile stays in L1 for all query rows. The
    // last strip's masked loads never read past the row (the tile's last row may be the last row
    // of the caller's buffer); O's padding columns (ldo is a multiple of 16) accumulate zeros.
    for (Index d = 0; d < d_dim; d += 64) {
      __mmask16 mask[4];
      for (int v = 0; v < 4; ++v) {
        const Index n = std::clamp<Index>(d_dim - d - 16 * v, 0, 16);
        mask[v] = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u);
      }
      if (d + 64 <= d_dim)
        accumulate_strip<false>(pt, lds, tn, mc, rows + d, stride, o + d, ldo, alpha, mask);
      else
        accumulate_strip<true>(pt, lds, tn, mc, rows + d, stride, o + d, ldo, alpha, mask);
    }
  }

  // All mc query rows of one 64-column strip, in blocks of up to kMaxRows rows.
  template <bool kMasked>
  static void accumulate_strip(const float* pt, Index lds, Index tn, Index mc, const float* r,
                               Index stride, float* od, Index ldo, const float* alpha,
                               const __mmask16* mask) {
    for (Index m = 0; m < mc; m += kMaxRows)
      dispatch_width<kMaxRows>(std::min<Index>(kMaxRows, mc - m), [&](auto mr) {
        accumulate_block<decltype(mr)::value, kMasked>(pt + m, lds, tn, r, stride, od + m * ldo,
                                                       ldo, alpha + m, mask);
      });
  }
};
MLA_TARGET_END

/// kernels::KernelPath::kAmx: the AVX-512 operations, except that a bf16 cache runs the AMX form
/// (amx_attention.hpp) instead of the float tile loop.
struct MlaAmxOps : MlaAvx512Ops {};
#endif  // MLA_X86_SIMD

/// True when `Ops` and the cache type select the AMX form.
template <class Ops, class CacheScalar>
constexpr bool uses_amx_form() {
#if MLA_X86_SIMD
  return std::is_same_v<Ops, MlaAmxOps> && std::is_same_v<CacheScalar, bfloat16>;
#else
  return false;
#endif
}

/// The MLA tile operations of each path (where SIMD is not compiled, the portable ones).
#if MLA_X86_SIMD
using MlaPathOps = PathOps<MlaPortableOps, MlaAvx2Ops, MlaAvx512Ops, MlaAmxOps>;
#else
using MlaPathOps = PathOps<MlaPortableOps, MlaPortableOps, MlaPortableOps, MlaPortableOps>;
#endif

}  // namespace internal
}  // namespace mla
