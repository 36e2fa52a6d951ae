// Single-precision GEMM for the projections and the naive path's per-head products:
//   C [M, N] = A [M, K] op(B)  (+ C when accumulate)
// with A row-major (row stride lda) and B either [N, K] row-major (op(B) = B^T: nn.Linear weights,
// K rows of a cache) or [K, N] row-major (op(B) = B: V rows), float or bfloat16. Reference:
// mla::reference::gemm (plain loops in double).
//
// Layout (BLIS, Goto & van de Geijn): B is packed into 16-column micro-panels [kc][16] and A into
// 6-row micro-panels [kc][6]; a 6 x 16 register block (12 ymm accumulators, 2 vector loads of B
// and 6 broadcasts of A per k step) computes each tile of C; on the AVX-512 path a 12 x 32 block
// over two A and two B micro-panels (24 zmm accumulators) computes the whole tiles and the
// 6 x 16 one the edges. The B micro-panel (kc x 16 floats, 16 KiB at kc = 256) stays in L1 while
// the A micro-panels of an MC-row block stream from L2 (72 x 256 floats = 72 KiB); the packed B
// block (kc x NC = 1 MiB) lives in L2/L3. Packing also widens bf16 weights, so bf16 B costs
// nothing extra in the inner loop. The register blocks keep both FMA pipes busy on packed data,
// which Eigen 3.4's general products on these shapes do not.
//
// Paths (kernels::KernelPath, chosen at run time): portable loops, AVX2+FMA (the 6 x 16 block and
// the few-row products) and AVX-512 (the 12 x 32 block and 16 x 16 transposes when packing a
// transposed B). The SIMD code sits in target regions (core/macros.hpp).
//
// Threads take column ranges of C (each packs its own B and A blocks); when N is narrow they take
// row ranges instead. Every element of C sums its K products in the same order whatever the
// split, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "mla/core/arena.hpp"
#include "mla/core/bf16.hpp"
#include "mla/core/check.hpp"
#include "mla/core/isa.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/shapes.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/simd/avx2.hpp"
#include "mla/simd/avx512.hpp"
#include "mla/simd/portable.hpp"

namespace mla {
namespace internal {

inline constexpr Index kGemmMr = 6;
inline constexpr Index kGemmNr = 16;
inline constexpr Index kGemmKc = 256;
inline constexpr Index kGemmMc = 72;    // a multiple of kGemmMr
inline constexpr Index kGemmNc = 1024;  // a multiple of kGemmNr
// Below this many rows of A a packed GEMM does not pay for packing B (every B element would be
// used by fewer than kGemmSmallM rows): a row-streaming product runs instead.
inline constexpr Index kGemmSmallM = 4;

/// Per-thread scratch floats of the packed GEMM: packed B block, packed A block, one C tile.
constexpr Index gemm_scratch_floats() {
  return kGemmKc * kGemmNc + kGemmMc * kGemmKc + kGemmMr * kGemmNr + 3 * 16;
}

#if MLA_X86_SIMD
MLA_TARGET_AVX512_BEGIN
/// The first k_done = kc rounded down to 16 rows of a whole 16-column micro-panel of a transposed
/// B (src = B row n, k0; rows ldb apart), 16 k at a time: 16 rows x 16 values loaded, transposed
/// in registers and stored as 16 panel rows, instead of a scalar scatter (one 4-byte store per
/// value). Returns k_done.
template <class TB>
Index gemm_pack_b_panel_avx512(const TB* src, Index ldb, Index kc, float* dst) {
  Index k_done = 0;
  for (; k_done + 16 <= kc; k_done += 16) {
    __m512i r[16];
    MLA_UNROLL
    for (int j = 0; j < 16; ++j) r[j] = _mm512_castps_si512(load16_widen(src + j * ldb + k_done));
    transpose16_epi32(r);
    MLA_UNROLL
    for (int k = 0; k < 16; ++k) _mm512_store_si512(dst + (k_done + k) * kGemmNr, r[k]);
  }
  return k_done;
}
MLA_TARGET_END
#endif  // MLA_X86_SIMD

/// Packs op(B)[k0 .. k0+kc, n0 .. n0+nc) into micro-panels [nc/16][kc][16] (zero columns past nc);
/// `simd512`: the AVX-512 path, which transposes whole panels of a transposed B in registers.
template <class TB>
void gemm_pack_b(const TB* b, Index ldb, kernels::GemmB layout, Index k0, Index kc, Index n0,
                 Index nc, float* packed, bool simd512) {
  (void)simd512;  // read only where the SIMD kernels are compiled
  for (Index j0 = 0; j0 < nc; j0 += kGemmNr) {
    float* dst = packed + j0 * kc;
    const Index w = std::min(kGemmNr, nc - j0);
    if (layout == kernels::GemmB::kTransposed) {
      // Short row segments (kc elements) of many rows, which the hardware prefetcher does not
      // follow: prefetch the next panel's, as in gemm_pack_a.
      if (j0 + kGemmNr < nc)
        prefetch_row_segments(b + (n0 + j0 + kGemmNr) * ldb + k0, std::min(kGemmNr, nc - j0 - kGemmNr),
                              ldb * Index(sizeof(TB)), kc * Index(sizeof(TB)));
      // Column j of op(B) is row n0 + j of B: read each row once, scatter into the panel.
      Index k_done = 0;
#if MLA_X86_SIMD
      // Packing a transposed B is a visible part of a prefill's time (the weights of every
      // projection, K of every head), so whole panels are transposed 16 x 16 in registers.
      if (simd512 && w == kGemmNr)
        k_done = gemm_pack_b_panel_avx512(b + (n0 + j0) * ldb + k0, ldb, kc, dst);
#endif
      for (Index j = 0; j < w; ++j) {
        const TB* src = b + (n0 + j0 + j) * ldb + k0;
        for (Index k = k_done; k < kc; ++k) dst[k * kGemmNr + j] = to_float(src[k]);
      }
      for (Index j = w; j < kGemmNr; ++j)
        for (Index k = 0; k < kc; ++k) dst[k * kGemmNr + j] = 0.0f;
    } else {
      for (Index k = 0; k < kc; ++k) {
        const TB* src = b + (k0 + k) * ldb + n0 + j0;
        float* d = dst + k * kGemmNr;
        for (Index j = 0; j < w; ++j) d[j] = to_float(src[j]);
        for (Index j = w; j < kGemmNr; ++j) d[j] = 0.0f;
      }
    }
  }
}

/// Packs A[m0 .. m0+mc, k0 .. k0+kc) into micro-panels [mc/6][kc][6] (zero rows past mc).
inline void gemm_pack_a(const float* a, Index lda, Index m0, Index mc, Index k0, Index kc,
                        float* packed) {
  for (Index i0 = 0; i0 < mc; i0 += kGemmMr) {
    float* dst = packed + i0 * kc;
    const Index h = std::min(kGemmMr, mc - i0);
    // A is often a large matrix written just before (P in the naive path's P V, 16 MiB at
    // T = 2048) whose short row segments (kc floats) the hardware prefetcher does not pick up, so
    // packing would stall on these loads. Ask for the next panel's rows now.
    if (i0 + kGemmMr < mc)
      prefetch_row_segments(a + (m0 + i0 + kGemmMr) * lda + k0, std::min(kGemmMr, mc - i0 - kGemmMr),
                            lda * Index(sizeof(float)), kc * Index(sizeof(float)));
    for (Index i = 0; i < h; ++i) {
      const float* src = a + (m0 + i0 + i) * lda + k0;
      for (Index k = 0; k < kc; ++k) dst[k * kGemmMr + i] = src[k];
    }
    for (Index i = h; i < kGemmMr; ++i)
      for (Index k = 0; k < kc; ++k) dst[k * kGemmMr + i] = 0.0f;
  }
}

/// Portable micro-kernel: tile [6][16] = sum_k ap[k][0..6] x bp[k][0..16].
inline void gemm_tile_portable(Index kc, const float* ap, const float* bp, float* tile) {
  for (Index i = 0; i < kGemmMr * kGemmNr; ++i) tile[i] = 0.0f;
  for (Index k = 0; k < kc; ++k)
    for (Index i = 0; i < kGemmMr; ++i)
      for (Index j = 0; j < kGemmNr; ++j) tile[i * kGemmNr + j] += ap[k * kGemmMr + i] * bp[k * kGemmNr + j];
}

#if MLA_X86_SIMD
MLA_TARGET_AVX2_BEGIN
/// AVX2 micro-kernel: the 6 x 16 tile sum_k ap[k][0..6] x bp[k][0..16], stored to c (rows ldc
/// apart; gemm_block passes C itself for a whole tile, a [6][16] scratch tile at the edges), or
/// added to what c holds when `accumulate`.
MLA_NOINLINE inline void gemm_tile_avx2(Index kc, const float* ap, const float* bp, float* c,
                                        Index ldc, bool accumulate) {
  // The C tile is read (or written) after the k loop; C is large and its rows are far apart, so
  // ask for its lines now rather than stall on 6-12 misses at the end (BLIS does the same).
  MLA_UNROLL
  for (int i = 0; i < kGemmMr; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + kGemmNr - 1), _MM_HINT_T0);
  }
  __m256 acc0[kGemmMr], acc1[kGemmMr];
  MLA_UNROLL
  for (int i = 0; i < kGemmMr; ++i) {
    acc0[i] = _mm256_setzero_ps();
    acc1[i] = _mm256_setzero_ps();
  }
  for (Index k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(bp + k * kGemmNr);
    const __m256 b1 = _mm256_load_ps(bp + k * kGemmNr + 8);
    MLA_UNROLL
    for (int i = 0; i < kGemmMr; ++i) {
      const __m256 a = _mm256_broadcast_ss(ap + k * kGemmMr + i);
      acc0[i] = _mm256_fmadd_ps(a, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(a, b1, acc1[i]);
    }
  }
  MLA_UNROLL
  for (int i = 0; i < kGemmMr; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      acc0[i] = _mm256_add_ps(acc0[i], _mm256_loadu_ps(ci));
      acc1[i] = _mm256_add_ps(acc1[i], _mm256_loadu_ps(ci + 8));
    }
    _mm256_storeu_ps(ci, acc0[i]);
    _mm256_storeu_ps(ci + 8, acc1[i]);
  }
}
MLA_TARGET_END

MLA_TARGET_AVX512_BEGIN
/// AVX-512 micro-kernel over the same packing: two A micro-panels (12 rows) x two B micro-panels
/// (32 columns, two zmm per k step) = 24 zmm accumulators, 2 loads of B and 12 broadcasts of A
/// per 24 FMAs. The two B micro-panels (2 x kc x 64 B = 32 KiB at kc = 256) stay in the 48 KiB L1
/// of an AVX-512 core while the A micro-panels stream from L2. c holds a whole 12 x 32 tile.
/// Unlike the AVX2 tile it does not prefetch its C lines into L1: with C rows a multiple of 4 KiB
/// apart (N = 1024, 2048, ...) the 24 lines share one L1 set and evict the B panels, which costs
/// far more than the misses it saves. It asks for them in L2 instead (prefetcht1): L2 sets are
/// indexed by address bits 6-16, so rows 4 KiB apart do not collide there, and the C tile
/// (re-read once per kc block, from DRAM when C is large) is then an L2 hit after the k loop.
MLA_NOINLINE inline void gemm_tile_avx512(Index kc, const float* ap0, const float* ap1,
                                          const float* bp0, const float* bp1, float* c, Index ldc,
                                          bool accumulate) {
  MLA_UNROLL
  for (int i = 0; i < 2 * kGemmMr; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + kGemmNr), _MM_HINT_T1);
  }
  __m512 acc0[2 * kGemmMr], acc1[2 * kGemmMr];
  MLA_UNROLL
  for (int i = 0; i < 2 * kGemmMr; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (Index k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(bp0 + k * kGemmNr);
    const __m512 b1 = _mm512_load_ps(bp1 + k * kGemmNr);
    MLA_UNROLL
    for (int i = 0; i < kGemmMr; ++i) {
      const __m512 a = _mm512_set1_ps(ap0[k * kGemmMr + i]);
      acc0[i] = _mm512_fmadd_ps(a, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(a, b1, acc1[i]);
    }
    MLA_UNROLL
    for (int i = 0; i < kGemmMr; ++i) {
      const __m512 a = _mm512_set1_ps(ap1[k * kGemmMr + i]);
      acc0[kGemmMr + i] = _mm512_fmadd_ps(a, b0, acc0[kGemmMr + i]);
      acc1[kGemmMr + i] = _mm512_fmadd_ps(a, b1, acc1[kGemmMr + i]);
    }
  }
  MLA_UNROLL
  for (int i = 0; i < 2 * kGemmMr; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      acc0[i] = _mm512_add_ps(acc0[i], _mm512_loadu_ps(ci));
      acc1[i] = _mm512_add_ps(acc1[i], _mm512_loadu_ps(ci + kGemmNr));
    }
    _mm512_storeu_ps(ci, acc0[i]);
    _mm512_storeu_ps(ci + kGemmNr, acc1[i]);
  }
}
MLA_TARGET_END
#endif  // MLA_X86_SIMD

/// One 6 x 16 tile of C (h x w valid) from packed panels, by the AVX2 (`simd`) or the portable
/// kernel.
inline void gemm_tile(Index kc, const float* ap, const float* bp, float* ct, Index ldc, Index h,
                      Index w, bool add, bool simd, float* tile) {
#if MLA_X86_SIMD
  if (simd && h == kGemmMr && w == kGemmNr) {
    gemm_tile_avx2(kc, ap, bp, ct, ldc, add);
    return;
  }
  if (simd)
    gemm_tile_avx2(kc, ap, bp, tile, kGemmNr, false);
  else
    gemm_tile_portable(kc, ap, bp, tile);
#else
  (void)simd;
  gemm_tile_portable(kc, ap, bp, tile);
#endif
  for (Index i = 0; i < h; ++i)
    for (Index j = 0; j < w; ++j)
      ct[i * ldc + j] = add ? ct[i * ldc + j] + tile[i * kGemmNr + j] : tile[i * kGemmNr + j];
}

/// C[m0.., n0..] (mc x nc) op= A op(B) over all of K, one thread's share.
template <class TB>
void gemm_block(Index m0, Index mc_total, Index n0, Index nc_total, Index K, const float* a,
                Index lda, const TB* b, Index ldb, kernels::GemmB layout, float* c, Index ldc,
                bool accumulate, float* scratch, bool simd, bool simd512) {
  (void)simd512;
  float* pb = scratch;
  float* pa = pb + kGemmKc * kGemmNc;
  float* tile = pa + kGemmMc * kGemmKc;
  for (Index jc = n0; jc < n0 + nc_total; jc += kGemmNc) {
    const Index nc = std::min(kGemmNc, n0 + nc_total - jc);
    for (Index pc = 0; pc < K; pc += kGemmKc) {
      const Index kc = std::min(kGemmKc, K - pc);
      const bool add = accumulate || pc > 0;  // later K blocks add to what the first wrote
      gemm_pack_b(b, ldb, layout, pc, kc, jc, nc, pb, simd512);
      for (Index ic = m0; ic < m0 + mc_total; ic += kGemmMc) {
        const Index mc = std::min(kGemmMc, m0 + mc_total - ic);
        gemm_pack_a(a, lda, ic, mc, pc, kc, pa);
        Index jr = 0;
#if MLA_X86_SIMD
        // Whole 12 x 32 tiles with the AVX-512 kernel; the edges below with 6 x 16 tiles. Both
        // sum each element's k products in the same order, so the split does not change C.
        if (simd512) {
          const Index mc12 = mc - mc % (2 * kGemmMr);
          for (; jr + 2 * kGemmNr <= nc; jr += 2 * kGemmNr) {
            const float* bp = pb + jr * kc;
            for (Index ir = 0; ir < mc12; ir += 2 * kGemmMr)
              gemm_tile_avx512(kc, pa + ir * kc, pa + (ir + kGemmMr) * kc, bp, bp + kGemmNr * kc,
                               c + (ic + ir) * ldc + jc + jr, ldc, add);
            for (Index jj = jr; jj < jr + 2 * kGemmNr; jj += kGemmNr)
              for (Index ir = mc12; ir < mc; ir += kGemmMr)
                gemm_tile(kc, pa + ir * kc, pb + jj * kc, c + (ic + ir) * ldc + jc + jj, ldc,
                          std::min(kGemmMr, mc - ir), kGemmNr, add, simd, tile);
          }
        }
#endif
        for (; jr < nc; jr += kGemmNr) {
          const Index w = std::min(kGemmNr, nc - jr);
          for (Index ir = 0; ir < mc; ir += kGemmMr)
            gemm_tile(kc, pa + ir * kc, pb + jr * kc, c + (ic + ir) * ldc + jc + jr, ldc,
                      std::min(kGemmMr, mc - ir), w, add, simd, tile);
        }
      }
    }
  }
}

// Rows of B at least this long are read four at a time (gemv_rows_avx2<4>), shorter ones one
// after the other. Four rows in lockstep are four sequential streams when each row owns its own
// pages, but rows of a few KiB share pages, and the hardware prefetcher does not follow reads
// that hop between rows of one page. So rows shorter than two pages (8 KiB) are read one after
// the other, longer ones four at a time; docs/benchmarks.md has the timings around the threshold.
inline constexpr Index kGemvGroupMinRowBytes = 8192;

#if MLA_X86_SIMD
MLA_TARGET_AVX2_BEGIN
/// out[r] = a . B[r, :] over K for R <= 4 rows of B (`ldb` apart) at once. Each row keeps two
/// accumulators (alternate 8-wide blocks of k) and is reduced by the same reduce4_avx2 tree
/// whether it shares a block with 0 or 3 other rows, so a result does not depend on how the rows
/// were grouped (or split over threads). The 4 rows share every load of `a`: with K = 16384 the
/// row of A (64 KiB) lives in L2, and loading it once per row would make the L2 rather than the
/// stream of B the limit.
template <int R, class TB>
inline void gemv_rows_avx2(Index K, const float* a, const TB* b, Index ldb, float* out) {
  __m256 v0[R], v1[R];
  MLA_UNROLL
  for (int r = 0; r < R; ++r) v0[r] = v1[r] = _mm256_setzero_ps();
  Index k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 a0 = _mm256_loadu_ps(a + k), a1 = _mm256_loadu_ps(a + k + 8);
    MLA_UNROLL
    for (int r = 0; r < R; ++r) {
      v0[r] = _mm256_fmadd_ps(a0, load8_widen(b + r * ldb + k), v0[r]);
      v1[r] = _mm256_fmadd_ps(a1, load8_widen(b + r * ldb + k + 8), v1[r]);
    }
  }
  __m256 s[4];
  MLA_UNROLL
  for (int r = 0; r < 4; ++r) s[r] = r < R ? _mm256_add_ps(v0[r], v1[r]) : _mm256_setzero_ps();
  alignas(16) float sums[4];
  _mm_store_ps(sums, reduce4_avx2(s[0], s[1], s[2], s[3]));
  MLA_UNROLL
  for (int r = 0; r < R; ++r) {
    float acc = sums[r];
    for (Index kk = k; kk < K; ++kk) acc += a[kk] * to_float(b[r * ldb + kk]);
    out[r] = acc;
  }
}

/// gemm_small_m's AVX2 form for a transposed B ([N, K] rows): dot products of A's rows with B's,
/// long rows of B four at a time (they share each load of A's row), short rows one by one.
template <class TB>
void gemm_small_m_bt_avx2(Index M, Index n0, Index n1, Index K, const float* a, Index lda,
                          const TB* b, Index ldb, float* c, Index ldc, bool accumulate) {
  const Index group = K * Index(sizeof(TB)) >= kGemvGroupMinRowBytes ? 4 : 1;
  for (Index n = n0; n < n1; n += group) {
    const Index rows = std::min<Index>(group, n1 - n);
    for (Index m = 0; m < M; ++m) {
      float dots[4];
      const float* am = a + m * lda;
      const TB* bn = b + n * ldb;
      switch (rows) {
        case 4: gemv_rows_avx2<4>(K, am, bn, ldb, dots); break;
        case 3: gemv_rows_avx2<3>(K, am, bn, ldb, dots); break;
        case 2: gemv_rows_avx2<2>(K, am, bn, ldb, dots); break;
        default: gemv_rows_avx2<1>(K, am, bn, ldb, dots); break;
      }
      float* cm = c + m * ldc + n;
      for (Index r = 0; r < rows; ++r) cm[r] = accumulate ? cm[r] + dots[r] : dots[r];
    }
  }
}

/// gemm_small_m's AVX2 form for a plain B ([K, N] rows): C[m, n0:n1] += A[m, k] B[k, n0:n1] over k,
/// 8 columns at a time (same order of sums per element as the portable loop).
template <class TB>
void gemm_small_m_b_avx2(Index M, Index n0, Index n1, Index K, const float* a, Index lda,
                         const TB* b, Index ldb, float* c, Index ldc) {
  for (Index m = 0; m < M; ++m) {
    float* cm = c + m * ldc;
    for (Index k = 0; k < K; ++k) {
      const float am = a[m * lda + k];
      const TB* bk = b + k * ldb;
      const __m256 va = _mm256_set1_ps(am);
      Index n = n0;
      for (; n + 8 <= n1; n += 8)
        _mm256_storeu_ps(cm + n, _mm256_fmadd_ps(va, load8_widen(bk + n), _mm256_loadu_ps(cm + n)));
      for (; n < n1; ++n) cm[n] += am * to_float(bk[n]);
    }
  }
}
MLA_TARGET_END
#endif  // MLA_X86_SIMD

/// Few rows of A: C[m, :] op= A[m, :] op(B), streaming B once for all rows (no packing), by the
/// AVX2 forms above (`simd`) or plain loops. Each output is summed the same way whatever rows or
/// threads share its block, so results do not depend on the thread count.
template <class TB>
void gemm_small_m(Index M, Index n0, Index n1, Index K, const float* a, Index lda, const TB* b,
                  Index ldb, kernels::GemmB layout, float* c, Index ldc, bool accumulate,
                  bool simd) {
  if (layout == kernels::GemmB::kTransposed) {
#if MLA_X86_SIMD
    if (simd) return gemm_small_m_bt_avx2(M, n0, n1, K, a, lda, b, ldb, c, ldc, accumulate);
#endif
    for (Index n = n0; n < n1; ++n) {
      const TB* bn = b + n * ldb;
      for (Index m = 0; m < M; ++m) {
        const float* am = a + m * lda;
        float acc = 0.0f;
        for (Index k = 0; k < K; ++k) acc += am[k] * to_float(bn[k]);
        float& out = c[m * ldc + n];
        out = accumulate ? out + acc : acc;
      }
    }
    return;
  }
  if (!accumulate)
    for (Index m = 0; m < M; ++m) std::fill(c + m * ldc + n0, c + m * ldc + n1, 0.0f);
#if MLA_X86_SIMD
  if (simd) return gemm_small_m_b_avx2(M, n0, n1, K, a, lda, b, ldb, c, ldc);
#endif
  (void)simd;
  for (Index m = 0; m < M; ++m) {
    float* cm = c + m * ldc;
    for (Index k = 0; k < K; ++k) {
      const float am = a[m * lda + k];
      const TB* bk = b + k * ldb;
      for (Index n = n0; n < n1; ++n) cm[n] += am * to_float(bk[n]);
    }
  }
}

}  // namespace internal

namespace kernels {

/// Scratch of gemm(): per-thread packing buffers (~1.1 MiB per thread), 64-byte aligned, grown
/// on first use and reused. Not shareable between concurrent calls.
class GemmWorkspace {
 public:
  void reserve(int threads) { buffer_.grow(Index(threads) * internal::gemm_scratch_floats()); }
  std::size_t bytes() const { return static_cast<std::size_t>(buffer_.size()) * sizeof(float); }
  float* data() const { return buffer_.data(); }

 private:
  internal::AlignedFloats buffer_;
};

/// C [M, N] = A [M, K] op(B), or C += A op(B) when `accumulate`. A row-major with row stride lda;
/// B [N, K] (kTransposed) or [K, N] (kPlain) row-major with row stride ldb, float or bfloat16;
/// C row-major with row stride ldc, not overlapping A or B. `pool` may be null; `ws` grows to
/// what the call needs. Throws std::invalid_argument for negative sizes, strides shorter than a
/// row, or null pointers with a non-empty product.
template <class TB>
void gemm(Index M, Index N, Index K, const float* a, Index lda, const TB* b, Index ldb, GemmB layout,
          float* c, Index ldc, bool accumulate, GemmWorkspace& ws, ThreadPool* pool = nullptr,
          KernelPath path = KernelPath::kAuto) {
  static_assert(std::is_same_v<TB, float> || std::is_same_v<TB, bfloat16>,
                "gemm: B holds float or mla::bfloat16");
  MLA_CHECK_ARG(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=", M, " N=", N, " K=", K);
  if (M == 0 || N == 0) return;
  const Index b_row = layout == GemmB::kTransposed ? K : N;
  MLA_CHECK_ARG(lda >= K && ldb >= b_row && ldc >= N, "gemm: row strides lda=", lda, " ldb=", ldb,
                " ldc=", ldc, " are shorter than the rows (K=", K, ", B row ", b_row, ", N=", N, ")");
  MLA_CHECK_ARG(c != nullptr && (K == 0 || (a != nullptr && b != nullptr)),
                "gemm: null A, B or C");
  if (K == 0) {
    if (!accumulate)
      for (Index m = 0; m < M; ++m) std::fill(c + m * ldc, c + m * ldc + N, 0.0f);
    return;
  }
  const int threads = num_threads(pool);
  const KernelPath resolved = resolve_path(path);
  const bool simd = resolved != KernelPath::kPortable;
  const bool simd512 = resolved == KernelPath::kAvx512;
  if (M < internal::kGemmSmallM) {
    // Stream B once; threads take column ranges of 64.
    const Index tasks = std::max<Index>(1, std::min<Index>(Index(threads) * 4, N / 64));
    parallel_for(pool, tasks, [&](Index task, int) {
      internal::gemm_small_m(M, N * task / tasks, N * (task + 1) / tasks, K, a, lda, b, ldb, layout,
                             c, ldc, accumulate, simd);
    });
    return;
  }
  ws.reserve(threads);
  // Column ranges (multiples of 16) when there are enough columns for every thread, else row
  // ranges (multiples of 6).
  const Index col_panels = (N + internal::kGemmNr - 1) / internal::kGemmNr;
  const Index row_panels = (M + internal::kGemmMr - 1) / internal::kGemmMr;
  const bool by_cols = threads == 1 || col_panels >= Index(threads) * 8 || col_panels >= row_panels;
  const Index panels = by_cols ? col_panels : row_panels;
  const Index tasks = std::max<Index>(1, std::min<Index>(panels, threads == 1 ? 1 : Index(threads) * 2));
  parallel_for(pool, tasks, [&](Index task, int thread) {
    float* scratch = ws.data() + Index(thread) * internal::gemm_scratch_floats();
    const Index p0 = panels * task / tasks, p1 = panels * (task + 1) / tasks;
    if (by_cols) {
      const Index n0 = p0 * internal::kGemmNr, n1 = std::min(N, p1 * internal::kGemmNr);
      internal::gemm_block(0, M, n0, n1 - n0, K, a, lda, b, ldb, layout, c, ldc, accumulate,
                           scratch, simd, simd512);
    } else {
      const Index m0 = p0 * internal::kGemmMr, m1 = std::min(M, p1 * internal::kGemmMr);
      internal::gemm_block(m0, m1 - m0, 0, N, K, a, lda, b, ldb, layout, c, ldc, accumulate,
                           scratch, simd, simd512);
    }
  });
}

}  // namespace kernels
}  // namespace mla
