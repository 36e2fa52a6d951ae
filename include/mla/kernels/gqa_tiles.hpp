// The tile operations and per-range forms of MHA / GQA decode attention over a head-major KV
// cache (K [kv_heads, capacity, head_dim], V [kv_heads, capacity, v_dim], float or bfloat16),
// which the decode engine (decode_engine.hpp: DecodePlan::plan_gqa, run_gqa_decode,
// gqa_attention) runs over each piece of rows of each kv head. Reference:
// mla::reference::gqa_attention.
//
// Decode attention with few query rows per kv head is memory bound: each K/V element feeds
// group * q_len multiply-adds. The kernel therefore streams every kv head's K and V exactly once
// per call, for all group * q_len query rows that read it (FlashInfer / llama.cpp's GQA-packed
// decode), in tiles of cache rows with an online softmax (flash decoding):
//   s[r, t] = q_r . K[t]            (dot products along head_dim, reduced in registers)
//   online softmax over t per row r (base 2: q is pre-scaled by scale * log2 e)
//   O[r, :] = alpha_r O[r, :] + sum_t p[r, t] V[t, :]
// bf16 rows are widened in registers as they are loaded (no bf16 instructions on AVX2).
// The engine shares the kv heads' rows out to threads in balanced parts (split-KV where a head is
// cut) and merges the partial results by a log-sum-exp combine.
// Causality: of q_len new tokens, token t sees the cache rows up to cache_len - q_len + t. The
// last q_len - 1 rows (the causal triangle) are a piece of their own, not masked with zero
// weights but left out of the arithmetic of the query rows that cannot see them (gqa_rows_task),
// so a NaN or Inf in a new token's K or V row reaches the outputs of that token and the later
// ones, never earlier ones.
//
// Two forms, chosen by the number of query rows per kv head (g_rows = group * q_len):
// - Row-streaming form (g_rows < kGqaPackedMinRows: MHA, small groups). Memory order matters more
//   than FLOPs here: the L2 stream prefetchers of current x86 cores only follow strictly
//   ascending reads within a page, so the first pass over each tile reads K and V row after row
//   (scores_block, accumulate_row_sequential); rows read in lockstep or in column strips hop
//   between pages, and the stream falls back to demand misses.
// - Packed form (g_rows >= kGqaPackedMinRows: GQA with group >= 6 such as Qwen2.5-72B's 8, or
//   several new tokens). With 8 query rows per kv head a float cache carries 4 FLOP per byte,
//   about the balance of one AVX2 core's FMA peak to its share of DRAM bandwidth, so the
//   arithmetic must run near the FMA peak for the stream to keep up. The query rows are packed
//   into 8-row panels and both products are register-blocked GEMMs (the absorbed MLA kernel's
//   structure); the blocks read cache rows in lockstep, so they prefetch the next operand in
//   software.
//
// Paths (kernels::KernelPath, chosen at run time): portable C++, AVX2+FMA (both forms), AVX-512
// (the AVX2 products, with the packed form's bf16 tiles widened 16 values at a time) and AMX
// (bf16 cache on the tile unit, amx_attention.hpp). The SIMD code sits in target regions
// (core/macros.hpp), so every translation unit has all of them.
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

// Cache rows per tile of the row-streaming form: a multiple of every micro-kernel height (3, 4,
// 6) and of 8 (the softmax vectors). The score rows (group * q_len x tile) stay in L1 and the
// accumulator O (group * q_len x v_dim) is rescaled and reloaded once per tile, which is noise
// next to the tile's rows of K and V.
// - float cache: 96 rows (48 KiB of K or V at head_dim 128, a tile that lives in L2): the first
//   query row streams it from DRAM, the later rows re-read it from L2, and longer tiles mean
//   fewer switches between the K and the V stream.
// - bf16 cache: 48 rows (24 KiB); longer bf16 tiles are no faster.
// The timings of 48, 96 and 192 rows behind both sizes are in docs/benchmarks.md.
template <class CacheScalar>
inline constexpr Index kGqaTileRows = std::is_same_v<CacheScalar, float> ? 96 : 48;
inline constexpr Index kGqaTileRowsMax = 96;
static_assert(kGqaTileRows<float> <= kGqaTileRowsMax && kGqaTileRows<bfloat16> <= kGqaTileRowsMax);

// The packed (GEMM) form, for groups of at least kGqaPackedMinRows query rows per kv head (GQA
// with group >= 6, or several new tokens): the query rows of a kv head are packed into panels of
// 8 (one ymm), and both products become register-blocked GEMMs with the vector operand over the
// 8 query rows and broadcasts from the cache rows, as in the absorbed MLA kernel:
//   S^T[t, 0:8] = sum_k Qp[k, 0:8] K[t, k]      (block: 8 query rows x kGqaPackedNr cache rows)
//   O^T[d, 0:8] += sum_t P^T[t, 0:8] V[t, d]    (block: 8 query rows x kGqaPackedNr columns)
// 12 accumulators + 1 load + 1 broadcast per k step: 13 loads per 12 FMAs, so the two FMA pipes
// rather than the load ports bound the blocks. No horizontal sums, no transposes of the cache.
// 36 cache rows per tile: the K or V tile (18 KiB in float) stays in L1 next to the packed query
// (4 KiB for 8 rows x 128) and the accumulator O^T.
inline constexpr Index kGqaPackedMinRows = 6;
inline constexpr Index kGqaPackedTile = 36;
inline constexpr Index kGqaPackedNr = 12;

/// One thread's scratch in the packed form (carved from `arena`; sizes only when it has no base).
struct GqaPackedScratch {
  float* qp;       // packed query panels [g8 / 8][head_dim][8]
  float* st;       // S^T / P^T tile [kGqaPackedTile][g8]
  float* ot;       // O^T panels [g8 / 8][v_dim][8]
  float* run_max;  // [g8]
  float* run_sum;  // [g8]
  float* alpha;    // [g8]
  float* wide;     // bf16 tile widened to float [kGqaPackedTile][wide_stride]
  GqaPackedScratch(FloatArena& arena, Index g8, Index head_dim, Index v_dim, Index wide_stride)
      : qp(arena.take(g8 * head_dim)),
        st(arena.take(kGqaPackedTile * g8)),
        ot(arena.take(g8 * v_dim)),
        run_max(arena.take(g8)),
        run_sum(arena.take(g8)),
        alpha(arena.take(g8)),
        wide(arena.take(kGqaPackedTile * wide_stride)) {}
};

/// Strides and the per-thread scratch size of the GQA forms for one kv head's g_rows query rows.
struct GqaLayout {
  Index g_rows = 0;    // query rows per kv head: group * q_len
  Index g8 = 0;        // g_rows rounded up to 8 (packed panels)
  Index q_stride = 0;  // head_dim rounded up to 8 (zero padded)
  Index o_stride = 0;  // v_dim rounded up to 8
  Index wide_stride = 0;  // max(head_dim, v_dim) rounded up to 8: a widened bf16 tile row
  Index scratch_stride = 0;  // floats of one thread's scratch: the largest form's

  GqaLayout(Index q_len, Index num_heads, Index num_kv_heads, Index head_dim, Index v_dim) {
    g_rows = num_heads / num_kv_heads * q_len;
    g8 = round_up(g_rows, 8);
    q_stride = round_up(head_dim, 8);
    o_stride = round_up(v_dim, 8);
    wide_stride = round_up(std::max(head_dim, v_dim), 8);
    FloatArena rows_form;
    rows_form.take(g_rows * q_stride);      // scaled query rows of one kv head
    rows_form.take(g_rows * kGqaTileRowsMax);  // scores / probabilities of one tile
    rows_form.take(g_rows);                 // alpha
    FloatArena packed_form;
    GqaPackedScratch(packed_form, g8, head_dim, v_dim, wide_stride);
    scratch_stride = std::max(rows_form.used(), packed_form.used());
    if (kernels::path_available(kernels::KernelPath::kAmx)) {  // bf16 on the tiles: gqa_amx_task
      FloatArena amx_form;
      amx_form.take(g_rows * head_dim);
      amx_form.take(amx_query_floats(g_rows, head_dim));
      amx_form.take(amx_scratch_floats(round_up(g_rows, 16), head_dim, v_dim));
      scratch_stride = std::max(scratch_stride, amx_form.used());
    }
  }
};

/// Portable C++ tile operations (the fallback, and what kernels::KernelPath::kPortable runs).
struct GqaPortableOps {
  // p[r * ldp + t] = q[r] . k[t] for r < g_rows, t < tn.
  template <class T>
  static void scores(const float* q, Index ldq, Index g_rows, Index dim, const T* k, Index tn,
                     float* p, Index ldp) {
    for (Index t = 0; t < tn; ++t) {
      const T* kt = k + t * dim;
      for (Index r = 0; r < g_rows; ++r) {
        const float* qr = q + r * ldq;
        float acc = 0.0f;
        for (Index d = 0; d < dim; ++d) acc += qr[d] * to_float(kt[d]);
        p[r * ldp + t] = acc;
      }
    }
  }

  static void softmax(float* p, Index ldp, Index g_rows, Index tn, float* run_max, float* run_sum,
                      float* alpha) {
    for (Index r = 0; r < g_rows; ++r) {
      float* pr = p + r * ldp;
      float tile_max = -std::numeric_limits<float>::infinity();
      for (Index t = 0; t < tn; ++t) tile_max = std::fmax(tile_max, pr[t]);
      const float new_max = std::fmax(run_max[r], tile_max);
      // A row that has seen only masked scores keeps max -inf; subtract 0 instead to avoid NaN.
      const float safe = new_max == -std::numeric_limits<float>::infinity() ? 0.0f : new_max;
      float sum = 0.0f;
      for (Index t = 0; t < tn; ++t) {
        pr[t] = std::exp2(pr[t] - safe);
        sum += pr[t];
      }
      alpha[r] = std::exp2(run_max[r] - safe);
      run_sum[r] = run_sum[r] * alpha[r] + sum;
      run_max[r] = new_max;
    }
  }

  // o[r, :] = alpha[r] o[r, :] + sum_t p[r, t] v[t, :]
  template <class T>
  static void accumulate(const float* p, Index ldp, Index g_rows, Index tn, const T* v, Index dim,
                         float* o, Index ldo, const float* alpha) {
    for (Index r = 0; r < g_rows; ++r) {
      float* orow = o + r * ldo;
      for (Index d = 0; d < dim; ++d) orow[d] *= alpha[r];
      for (Index t = 0; t < tn; ++t) {
        const float pr = p[r * ldp + t];
        const T* vt = v + t * dim;
        for (Index d = 0; d < dim; ++d) orow[d] += pr * to_float(vt[d]);
      }
    }
  }
};

#if MLA_X86_SIMD
MLA_TARGET_AVX2_BEGIN
/// Stores the horizontal sums of acc[0 .. N) to dst[0 .. N) (only those N floats are written).
template <int N>
inline void store_sums_avx2(float* dst, const __m256* acc) {
  int j = 0;
  MLA_UNROLL
  for (; j + 4 <= N; j += 4) _mm_storeu_ps(dst + j, reduce4_avx2(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]));
  if constexpr (N % 4 != 0) {
    const __m256 z = _mm256_setzero_ps();
    const __m128 s = reduce4_avx2(acc[j], N % 4 > 1 ? acc[j + 1] : z, N % 4 > 2 ? acc[j + 2] : z, z);
    if constexpr (N % 4 == 1) {
      _mm_store_ss(dst + j, s);
    } else {
      _mm_storel_pi(reinterpret_cast<__m64*>(dst + j), s);
      if constexpr (N % 4 == 3) _mm_store_ss(dst + j + 2, _mm_movehl_ps(s, s));
    }
  }
}

struct GqaPackedAvx2Ops;

/// AVX2 + FMA tile operations. Cache rows are read in place (float) or widened in registers (bf16).
/// Blocks hold 8-12 accumulators, enough independent FMA chains to cover the 4-cycle latency on
/// both pipes; each shape is the one that issues the most FMAs per cycle on L1-resident data.
struct GqaAvx2Ops {
  using Packed = GqaPackedAvx2Ops;  // the packed form's tile operations
  // GR query rows x TR cache rows of dot products over `dim`, reduced to TR scores per row.
  // The K rows are read one after the other (j outer, d inner), never interleaved: the L2
  // stream prefetcher only follows strictly ascending accesses within a page, and 2-8 rows read
  // in lockstep are accesses that hop between pages, which it does not follow.
  // The accumulator chains of consecutive rows are independent, so out-of-order execution still
  // overlaps them; with few query rows each dot product is also split over S accumulators
  // (alternate vectors), so GR * TR * S = 12 chains cover the FMA latency. Each K vector serves
  // only GR FMAs, so these blocks are load bound and issue fewer FMAs per cycle than lockstep
  // blocks would; for a memory-bound kernel the access order wins.
  template <int GR, int TR, int S, class T>
  MLA_NOINLINE static void scores_block(const float* q, Index ldq, Index dim, const T* k, float* p,
                                        Index ldp) {
    __m256 sums[GR][TR];
    const Index dim8 = dim & ~Index(7);
    const Index dim_s = dim & ~Index(8 * S - 1);
    MLA_UNROLL
    for (int j = 0; j < TR; ++j) {
      __m256 acc[GR][S];
      MLA_UNROLL
      for (int g = 0; g < GR; ++g)
        MLA_UNROLL
        for (int u = 0; u < S; ++u) acc[g][u] = _mm256_setzero_ps();
      const T* kj = k + j * dim;
      for (Index d = 0; d < dim_s; d += 8 * S) {
        MLA_UNROLL
        for (int u = 0; u < S; ++u) {
          const __m256 kv = load8_widen(kj + d + 8 * u);
          MLA_UNROLL
          for (int g = 0; g < GR; ++g)
            acc[g][u] = _mm256_fmadd_ps(_mm256_load_ps(q + g * ldq + d + 8 * u), kv, acc[g][u]);
        }
      }
      for (Index d = dim_s; d < dim8; d += 8) {
        const __m256 kv = load8_widen(kj + d);
        MLA_UNROLL
        for (int g = 0; g < GR; ++g)
          acc[g][0] = _mm256_fmadd_ps(_mm256_load_ps(q + g * ldq + d), kv, acc[g][0]);
      }
      if (dim8 < dim) {  // the query is zero padded; the K row must not be read past its end
        const __m256 kv = load8_partial(kj + dim8, dim - dim8);
        MLA_UNROLL
        for (int g = 0; g < GR; ++g)
          acc[g][0] = _mm256_fmadd_ps(_mm256_load_ps(q + g * ldq + dim8), kv, acc[g][0]);
      }
      MLA_UNROLL
      for (int g = 0; g < GR; ++g) {
        sums[g][j] = acc[g][0];
        MLA_UNROLL
        for (int u = 1; u < S; ++u) sums[g][j] = _mm256_add_ps(sums[g][j], acc[g][u]);
      }
    }
    MLA_UNROLL
    for (int g = 0; g < GR; ++g) store_sums_avx2<TR>(p + g * ldp, sums[g]);
  }

  template <int GR, int TR, int S, class T>
  static void scores_rows(const float* q, Index ldq, Index dim, const T* k, Index tn, float* p,
                          Index ldp) {
    Index t = 0;
    for (; t + TR <= tn; t += TR) scores_block<GR, TR, S>(q, ldq, dim, k + t * dim, p + t, ldp);
    for (; t < tn; ++t) scores_block<GR, 1, S>(q, ldq, dim, k + t * dim, p + t, ldp);
  }

  template <class T>
  static void scores(const float* q, Index ldq, Index g_rows, Index dim, const T* k, Index tn,
                     float* p, Index ldp) {
    // Query-row groups outer: the first group streams the K tile from memory, later groups
    // find it in L1/L2. Block shapes (rows x cache rows x split) all keep 12 chains.
    Index r = 0;
    for (; r + 4 <= g_rows; r += 4) scores_rows<4, 3, 1>(q + r * ldq, ldq, dim, k, tn, p + r * ldp, ldp);
    const float* qr = q + r * ldq;
    float* pr = p + r * ldp;
    switch (g_rows - r) {
      case 3: scores_rows<3, 4, 1>(qr, ldq, dim, k, tn, pr, ldp); break;
      case 2: scores_rows<2, 3, 2>(qr, ldq, dim, k, tn, pr, ldp); break;
      case 1: scores_rows<1, 6, 2>(qr, ldq, dim, k, tn, pr, ldp); break;
      default: break;
    }
  }

  static void softmax(float* p, Index ldp, Index g_rows, Index tn, float* run_max, float* run_sum,
                      float* alpha) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    const Index tn8 = round_up(tn, 8);  // ldp is a multiple of 8: pad the last vector with -inf
    for (Index r = 0; r < g_rows; ++r) {
      float* pr = p + r * ldp;
      for (Index t = tn; t < tn8; ++t) pr[t] = neg_inf;
      __m256 vmax = _mm256_set1_ps(neg_inf);
      for (Index t = 0; t < tn8; t += 8) vmax = _mm256_max_ps(vmax, _mm256_load_ps(pr + t));
      const float new_max = std::fmax(run_max[r], hmax_avx2(vmax));
      // A row that has seen only masked scores keeps max -inf; subtract 0 instead to avoid NaN.
      const float safe = new_max == neg_inf ? 0.0f : new_max;
      const __m256 vsafe = _mm256_set1_ps(safe);
      __m256 vsum = _mm256_setzero_ps();
      for (Index t = 0; t < tn8; t += 8) {
        const __m256 e = exp2_avx2(_mm256_sub_ps(_mm256_load_ps(pr + t), vsafe));
        _mm256_store_ps(pr + t, e);
        vsum = _mm256_add_ps(vsum, e);
      }
      alpha[r] = std::exp2(run_max[r] - safe);
      run_sum[r] = run_sum[r] * alpha[r] + hsum_avx2(vsum);
      run_max[r] = new_max;
    }
  }

  // GR query rows x NV vectors of the output over tn cache rows; the last vector holds only
  // `last` (1..8) columns when kPartial.
  template <int GR, int NV, bool kPartial, class T>
  MLA_NOINLINE static void accumulate_block(const float* p, Index ldp, Index tn, const T* v, Index dim, float* o,
                               Index ldo, const float* alpha, Index last) {
    // Load each V vector once into a register when the block leaves room for it (GCC otherwise
    // folds the load into each of the GR FMAs that use it, and the extra loads cost load-port
    // slots the FMAs need).
    constexpr bool kPin = GR > 1 && GR * NV + NV + 1 <= 16;
    // Sum from zero, fold O in at the end (o = alpha o + acc): the chains start without waiting.
    __m256 acc[GR][NV];
    MLA_UNROLL
    for (int g = 0; g < GR; ++g)
      MLA_UNROLL
      for (int j = 0; j < NV; ++j) acc[g][j] = _mm256_setzero_ps();
    for (Index t = 0; t < tn; ++t) {
      const T* vt = v + t * dim;
      __m256 vv[NV];
      MLA_UNROLL
      for (int j = 0; j < NV; ++j) {
        vv[j] = (kPartial && j == NV - 1) ? load8_partial(vt + 8 * j, last) : load8_widen(vt + 8 * j);
        if (kPin) MLA_IN_REGISTER(vv[j]);
      }
      MLA_UNROLL
      for (int g = 0; g < GR; ++g) {
        const __m256 b = _mm256_broadcast_ss(p + g * ldp + t);
        MLA_UNROLL
        for (int j = 0; j < NV; ++j) acc[g][j] = _mm256_fmadd_ps(b, vv[j], acc[g][j]);
      }
    }
    MLA_UNROLL
    for (int g = 0; g < GR; ++g) {
      const __m256 a = _mm256_broadcast_ss(alpha + g);
      MLA_UNROLL
      for (int j = 0; j < NV; ++j)
        _mm256_store_ps(o + g * ldo + 8 * j, _mm256_fmadd_ps(a, _mm256_load_ps(o + g * ldo + 8 * j), acc[g][j]));
    }
  }

  // The whole vectors left after the 8 * NV strips (rest < NV of them): one block of W vectors
  // for every bit W of rest, W = 8, 4, 2, 1, each compiled only where NV > W.
  template <int GR, int NV, int W, class T>
  static void accumulate_rest_blocks(const float* p, Index ldp, Index tn, const T* v, Index dim,
                                     float* o, Index ldo, const float* alpha, Index rest, Index& d) {
    if constexpr (W >= 1) {
      if constexpr (NV > W) {
        if (rest & W) {
          accumulate_block<GR, W, false>(p, ldp, tn, v + d, dim, o + d, ldo, alpha, 8);
          d += 8 * W;
        }
      }
      accumulate_rest_blocks<GR, NV, W / 2>(p, ldp, tn, v, dim, o, ldo, alpha, rest, d);
    }
  }

  // Column strips of 8 * NV for GR query rows; the remaining whole vectors in blocks of 8, 4, 2
  // and 1 (so a 128-wide head at NV = 3 ends with a 2-vector and a 1-vector block rather than
  // single-chain strips), then a masked partial vector.
  template <int GR, int NV, class T>
  static void accumulate_rows(const float* p, Index ldp, Index tn, const T* v, Index dim, float* o,
                              Index ldo, const float* alpha) {
    Index d = 0;
    for (; d + 8 * NV <= dim; d += 8 * NV)
      accumulate_block<GR, NV, false>(p, ldp, tn, v + d, dim, o + d, ldo, alpha, 8);
    accumulate_rest_blocks<GR, NV, 8>(p, ldp, tn, v, dim, o, ldo, alpha, (dim - d) / 8, d);
    if (d < dim) accumulate_block<GR, 1, true>(p, ldp, tn, v + d, dim, o + d, ldo, alpha, dim - d);
  }

  // One query row over the tile in row order: o = alpha o + sum_t p[t] v[t, :], reading each V
  // row front to back so that the tile streams from DRAM in ascending order (column strips
  // defeat the hardware prefetcher, see scores_block). O lives in L1: one load, FMA and store per
  // output vector and cache row, 1 FMA per cycle, which is plenty for one row.
  template <class T>
  MLA_NOINLINE static void accumulate_row_sequential(const float* p, Index tn, const T* v, Index dim,
                                                     float* o, float alpha) {
    const Index dim8 = dim & ~Index(7);
    const Index dim32 = dim & ~Index(31);
    const __m256 a = _mm256_set1_ps(alpha);
    for (Index d = 0; d < round_up(dim, 8); d += 8) _mm256_store_ps(o + d, _mm256_mul_ps(a, _mm256_load_ps(o + d)));
    for (Index t = 0; t < tn; ++t) {
      const T* vt = v + t * dim;
      const __m256 b = _mm256_set1_ps(p[t]);
      Index d = 0;
      for (; d < dim32; d += 32) {
        _mm256_store_ps(o + d, _mm256_fmadd_ps(b, load8_widen(vt + d), _mm256_load_ps(o + d)));
        _mm256_store_ps(o + d + 8, _mm256_fmadd_ps(b, load8_widen(vt + d + 8), _mm256_load_ps(o + d + 8)));
        _mm256_store_ps(o + d + 16, _mm256_fmadd_ps(b, load8_widen(vt + d + 16), _mm256_load_ps(o + d + 16)));
        _mm256_store_ps(o + d + 24, _mm256_fmadd_ps(b, load8_widen(vt + d + 24), _mm256_load_ps(o + d + 24)));
      }
      for (; d < dim8; d += 8)
        _mm256_store_ps(o + d, _mm256_fmadd_ps(b, load8_widen(vt + d), _mm256_load_ps(o + d)));
      if (d < dim)
        _mm256_store_ps(o + d, _mm256_fmadd_ps(b, load8_partial(vt + d, dim - d), _mm256_load_ps(o + d)));
    }
  }

  template <class T>
  static void accumulate(const float* p, Index ldp, Index g_rows, Index tn, const T* v, Index dim,
                         float* o, Index ldo, const float* alpha) {
    // Row 0 streams the V tile from memory in row order; the other rows then read it from L1/L2
    // in column strips with register-blocked kernels (4 x 3 and 3 x 3 with V pinned: the shapes
    // that issue the most FMAs per cycle on L1-resident data).
    accumulate_row_sequential(p, tn, v, dim, o, alpha[0]);
    Index r = 1;
    for (; r + 4 <= g_rows; r += 4)
      accumulate_rows<4, 3>(p + r * ldp, ldp, tn, v, dim, o + r * ldo, ldo, alpha + r);
    const float* pr = p + r * ldp;
    float* orow = o + r * ldo;
    switch (g_rows - r) {
      case 3: accumulate_rows<3, 3>(pr, ldp, tn, v, dim, orow, ldo, alpha + r); break;
      case 2: accumulate_rows<2, 4>(pr, ldp, tn, v, dim, orow, ldo, alpha + r); break;
      case 1: accumulate_rows<1, 8>(pr, ldp, tn, v, dim, orow, ldo, alpha + r); break;
      default: break;
    }
  }
};

/// Prefetches line i of the n lines at p into L1 (lines past n: the last one again, a cheap L1
/// hit; no line at all when n is 0).
inline void prefetch_line(const char* p, Index i, Index n) {
  if (n > 0) _mm_prefetch(p + 64 * std::min(i, n - 1), _MM_HINT_T0);
}

/// AVX2 + FMA tile operations of the packed form (see kGqaPackedMinRows). Operands: a query panel
/// q [k][8], P^T / S^T rows of 8 floats `lds` apart, cache rows `stride` apart (float; bf16 tiles
/// are widened first), O^T [d][8].
struct GqaPackedAvx2Ops {
  static constexpr bool kDenseFloatTiles = false;  // see rows_as_float
  template <class T>
  static void widen(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                    Index dst_stride) {
    widen_rows_avx2(src, src_stride, rows, cols, dst, dst_stride);
  }

  // S^T[j, 0:8] = sum_k q[k, 0:8] rows[j][k] for NT cache rows.
  template <int NT>
  MLA_NOINLINE static void scores_block(const float* q, const float* rows, Index stride, Index kdim,
                                        float* st, Index lds, const char* pf, Index pf_lines) {
    __m256 acc[NT];
    MLA_UNROLL
    for (int j = 0; j < NT; ++j) acc[j] = _mm256_setzero_ps();
    for (Index k = 0; k < kdim; ++k) {
      prefetch_line(pf, k, pf_lines);
      const __m256 a = _mm256_load_ps(q + 8 * k);
      MLA_UNROLL
      for (int j = 0; j < NT; ++j) acc[j] = _mm256_fmadd_ps(a, _mm256_broadcast_ss(rows + j * stride + k), acc[j]);
    }
    MLA_UNROLL
    for (int j = 0; j < NT; ++j) _mm256_store_ps(st + j * lds, acc[j]);
  }

  // The blocks also prefetch `pf_bytes` from `pf` into L1, spread over their k steps: the rows of
  // a block are read in lockstep, which the hardware prefetchers do not follow, so the driver
  // asks for the next operand (V of this tile, K of the next) while the FMAs run.
  static void scores(const float* q, const float* rows, Index stride, Index kdim, Index tn,
                     float* st, Index lds, const char* pf, Index pf_bytes) {
    const Index blocks = (tn + kGqaPackedNr - 1) / kGqaPackedNr;
    const Index lines = (pf_bytes + 63) / 64;
    for (Index b = 0; b < blocks; ++b) {
      const Index t = b * kGqaPackedNr;
      const Index l0 = lines * b / blocks;
      const Index nl = lines * (b + 1) / blocks - l0;
      const float* r = rows + t * stride;
      float* s = st + t * lds;
      const char* f = pf + 64 * l0;
      dispatch_width<kGqaPackedNr>(std::min(kGqaPackedNr, tn - t), [&](auto nt) {
        scores_block<decltype(nt)::value>(q, r, stride, kdim, s, lds, f, nl);
      });
    }
  }

  // O^T[d0 + j, 0:8] = alpha * O^T[d0 + j, 0:8] + sum_t P^T[t, 0:8] rows[t][d0 + j], j < ND.
  template <int ND>
  MLA_NOINLINE static void accumulate_block(const float* pt, Index lds, Index tn, const float* rows,
                                            Index stride, float* ot, const float* alpha,
                                            const char* pf, Index pf_lines) {
    __m256 acc[ND];
    MLA_UNROLL
    for (int j = 0; j < ND; ++j) acc[j] = _mm256_setzero_ps();
    for (Index t = 0; t < tn; ++t) {
      prefetch_line(pf, t, pf_lines);
      const __m256 p = _mm256_load_ps(pt + t * lds);
      const float* r = rows + t * stride;
      MLA_UNROLL
      for (int j = 0; j < ND; ++j) acc[j] = _mm256_fmadd_ps(p, _mm256_broadcast_ss(r + j), acc[j]);
    }
    const __m256 a = _mm256_load_ps(alpha);
    MLA_UNROLL
    for (int j = 0; j < ND; ++j)
      _mm256_store_ps(ot + 8 * j, _mm256_fmadd_ps(a, _mm256_load_ps(ot + 8 * j), acc[j]));
  }

  static void accumulate(const float* pt, Index lds, Index tn, const float* rows, Index stride,
                         Index dim, float* ot, const float* alpha, const char* pf, Index pf_bytes) {
    const Index blocks = (dim + kGqaPackedNr - 1) / kGqaPackedNr;
    const Index lines = (pf_bytes + 63) / 64;
    for (Index b = 0; b < blocks; ++b) {
      const Index d = b * kGqaPackedNr;
      const Index l0 = lines * b / blocks;
      const Index nl = lines * (b + 1) / blocks - l0;
      const float* r = rows + d;
      float* o = ot + 8 * d;
      const char* f = pf + 64 * l0;
      dispatch_width<kGqaPackedNr>(std::min(kGqaPackedNr, dim - d), [&](auto nd) {
        accumulate_block<decltype(nd)::value>(pt, lds, tn, r, stride, o, alpha, f, nl);
      });
    }
  }
};

/// Cache rows [j_begin, j_end) of one kv head in the packed form with the tile operations
/// `Packed` (GqaPackedAvx2Ops or a variant); writes the split's partial (O, max, sum) for the
/// head's g_rows query rows. Every query row sees every row of the range (the driver passes rows
/// of the causal triangle to gqa_rows_task instead), so nothing is masked. See kGqaPackedMinRows.
template <class Packed, class CacheScalar>
void gqa_packed_task(const kernels::GqaAttentionShape& shape, const GqaLayout& lay, const float* q,
                     const CacheScalar* kh, const CacheScalar* vh, float qscale, Index head,
                     Index j_begin, Index j_end, float* scratch_base, float* o, float* max_out,
                     float* sum_out) {
  const Index group = shape.group_size();
  const Index g_rows = lay.g_rows;
  const Index g8 = lay.g8;
  const Index head_dim = shape.head_dim;
  const Index v_dim = shape.v_dim;
  FloatArena arena(scratch_base);
  const GqaPackedScratch scratch(arena, g8, head_dim, v_dim, lay.wide_stride);
  float* qp = scratch.qp;
  float* st = scratch.st;
  float* ot = scratch.ot;
  float* run_max = scratch.run_max;
  float* run_sum = scratch.run_sum;
  float* alpha = scratch.alpha;
  float* wide = scratch.wide;

  // Panel row r of the head is token r / group, query head head * group + r % group.
  for (Index r = 0; r < g8; ++r) {
    float* dst = qp + (r / 8) * 8 * head_dim + r % 8;
    if (r >= g_rows) {
      for (Index d = 0; d < head_dim; ++d) dst[8 * d] = 0.0f;
      continue;
    }
    const float* src = q + ((r / group) * shape.num_heads + head * group + r % group) * head_dim;
    for (Index d = 0; d < head_dim; ++d) dst[8 * d] = src[d] * qscale;
  }
  std::fill(ot, ot + g8 * v_dim, 0.0f);
  std::fill(run_max, run_max + g8, -std::numeric_limits<float>::infinity());
  std::fill(run_sum, run_sum + g8, 0.0f);

  for (Index t0 = j_begin; t0 < j_end; t0 += kGqaPackedTile) {
    const Index tn = std::min(kGqaPackedTile, j_end - t0);
    Index kstride;
    const float* krows = rows_as_float<Packed>(kh + t0 * head_dim, head_dim, tn, head_dim,
                                                         wide, lay.wide_stride, kstride);
    // While the scores run, fetch this tile's V rows; while P.V runs, the next tile's K rows:
    // each prefetch is issued one product ahead of the product that reads it.
    const char* v_next = reinterpret_cast<const char*>(vh + t0 * v_dim);
    const Index v_bytes = tn * v_dim * Index(sizeof(CacheScalar));
    const Index tn_next = std::min(kGqaPackedTile, j_end - t0 - tn);
    const char* k_next = reinterpret_cast<const char*>(kh + (t0 + tn) * head_dim);
    const Index k_bytes = std::max<Index>(0, tn_next) * head_dim * Index(sizeof(CacheScalar));
    for (Index p = 0; p < g8; p += 8)
      Packed::scores(qp + p * head_dim, krows, kstride, head_dim, tn, st + p, g8, v_next,
                               p == 0 ? v_bytes : 0);
    online_softmax_columns_avx2(st, g8, tn, g8, run_max, run_sum, alpha);
    Index vstride;
    const float* vrows = rows_as_float<Packed>(vh + t0 * v_dim, v_dim, tn, v_dim, wide,
                                                         lay.wide_stride, vstride);
    for (Index p = 0; p < g8; p += 8)
      Packed::accumulate(st + p, g8, tn, vrows, vstride, v_dim, ot + p * v_dim, alpha + p,
                                   k_next, p == 0 ? k_bytes : 0);
  }
  for (Index r = 0; r < g_rows; ++r) {
    const float* src = ot + (r / 8) * 8 * v_dim + r % 8;
    float* dst = o + r * lay.o_stride;
    for (Index d = 0; d < v_dim; ++d) dst[d] = src[8 * d];
    max_out[r] = run_max[r];
    sum_out[r] = run_sum[r];
  }
}
MLA_TARGET_END

MLA_TARGET_AVX512_BEGIN
/// The packed form's operations on the AVX-512 path: bf16 tiles are widened 16 values at a time
/// (widening is a large part of a bf16 tile's cost there); the products stay the AVX2 ones.
struct GqaPackedAvx512Ops : GqaPackedAvx2Ops {
  template <class T>
  static void widen(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                    Index dst_stride) {
    widen_rows_avx512(src, src_stride, rows, cols, dst, dst_stride);
  }
};
MLA_TARGET_END

/// kernels::KernelPath::kAvx512: the AVX2 operations with GqaPackedAvx512Ops for the packed form.
struct GqaAvx512Ops : GqaAvx2Ops {
  using Packed = GqaPackedAvx512Ops;
};

/// kernels::KernelPath::kAmx: the AVX-512 operations, except that a bf16 cache runs the AMX form.
struct GqaAmxOps : GqaAvx512Ops {};

MLA_TARGET_AMX_BEGIN

/// Cache rows [j_begin, j_end) of one kv head on the AMX tiles (amx_attention.hpp): the head's
/// g_rows query rows are gathered, packed as bf16 B tiles, and attend over its K and V rows.
inline void gqa_amx_task(const kernels::GqaAttentionShape& shape, const GqaLayout& lay,
                         const float* q, const bfloat16* kh, const bfloat16* vh, float qscale,
                         Index head, Index j_begin, Index j_end, float* scratch_base, float* o,
                         float* max_out, float* sum_out) {
  const Index group = shape.group_size();
  const Index g_rows = lay.g_rows;
  FloatArena scratch(scratch_base);
  float* qw = scratch.take(g_rows * shape.head_dim);
  auto* qv = reinterpret_cast<std::uint16_t*>(scratch.take(amx_query_floats(g_rows, shape.head_dim)));
  float* tiles = scratch.take(amx_scratch_floats(round_up(g_rows, 16), shape.head_dim, shape.v_dim));
  // Row r of the head's block is token r / group, query head head * group + r % group.
  for (Index r = 0; r < g_rows; ++r) {
    const float* src = q + ((r / group) * shape.num_heads + head * group + r % group) * shape.head_dim;
    std::copy(src, src + shape.head_dim, qw + r * shape.head_dim);
  }
  amx_pack_query(qw, nullptr, g_rows, shape.head_dim, 0, qscale, qv);
  const AmxAttentionRows rows{kh, shape.head_dim, shape.head_dim, vh, shape.v_dim, shape.v_dim,
                              0, group, shape.cache_len - shape.q_len + 1};
  amx_attention_task(rows, qv, g_rows, j_begin, j_end, tiles, o, lay.o_stride, max_out, sum_out);
}
MLA_TARGET_END
#endif  // MLA_X86_SIMD

/// Cache rows [j_begin, j_end) of one kv head in the row-streaming form; writes the split's
/// partial (O, max, sum) for the head's g_rows query rows. Rows before the causal triangle
/// (j < bulk = cache_len - q_len + 1) are seen by every query row and go in whole tiles. Triangle
/// row bulk + i is seen only by the query rows of tokens > i, rows [(i + 1) group, g_rows), and
/// goes alone through exactly those rows: a hidden row's K and V never enter an earlier token's
/// arithmetic (a masked weight of 0 times a NaN value would still be NaN).
template <class Ops, class CacheScalar>
void gqa_rows_task(const kernels::GqaAttentionShape& shape, const GqaLayout& lay, const float* q,
                   const CacheScalar* kh, const CacheScalar* vh, float qscale, Index head,
                   Index j_begin, Index j_end, float* scratch_base, float* o, float* run_max,
                   float* run_sum) {
  const Index group = shape.group_size();
  const Index g_rows = lay.g_rows;
  const Index bulk = shape.cache_len - shape.q_len + 1;
  FloatArena scratch(scratch_base);
  float* qw = scratch.take(g_rows * lay.q_stride);
  constexpr Index tile_rows = kGqaTileRows<CacheScalar>;
  float* p = scratch.take(g_rows * tile_rows);
  float* alpha = scratch.take(g_rows);
  // Row r of the head's block is token r / group, query head head * group + r % group.
  for (Index r = 0; r < g_rows; ++r) {
    const float* src = q + ((r / group) * shape.num_heads + head * group + r % group) * shape.head_dim;
    float* dst = qw + r * lay.q_stride;
    for (Index d = 0; d < shape.head_dim; ++d) dst[d] = src[d] * qscale;
    for (Index d = shape.head_dim; d < lay.q_stride; ++d) dst[d] = 0.0f;
  }
  std::fill(o, o + g_rows * lay.o_stride, 0.0f);
  std::fill(run_max, run_max + g_rows, -std::numeric_limits<float>::infinity());
  std::fill(run_sum, run_sum + g_rows, 0.0f);

  const Index tiled_end = std::min(j_end, bulk);
  for (Index t0 = j_begin; t0 < tiled_end; t0 += tile_rows) {
    const Index tn = std::min(tile_rows, tiled_end - t0);
    Ops::scores(qw, lay.q_stride, g_rows, shape.head_dim, kh + t0 * shape.head_dim, tn, p,
                tile_rows);
    Ops::softmax(p, tile_rows, g_rows, tn, run_max, run_sum, alpha);
    Ops::accumulate(p, tile_rows, g_rows, tn, vh + t0 * shape.v_dim, shape.v_dim, o,
                    lay.o_stride, alpha);
  }
  for (Index j = std::max(j_begin, bulk); j < j_end; ++j) {
    const Index r0 = (j - bulk + 1) * group;  // the first query row that sees cache row j
    const Index rows = g_rows - r0;
    Ops::scores(qw + r0 * lay.q_stride, lay.q_stride, rows, shape.head_dim,
                kh + j * shape.head_dim, 1, p + r0 * tile_rows, tile_rows);
    Ops::softmax(p + r0 * tile_rows, tile_rows, rows, 1, run_max + r0, run_sum + r0, alpha + r0);
    Ops::accumulate(p + r0 * tile_rows, tile_rows, rows, 1, vh + j * shape.v_dim, shape.v_dim,
                    o + r0 * lay.o_stride, lay.o_stride, alpha + r0);
  }
}

/// The GQA tile operations of each path (where SIMD is not compiled, the portable ones).
#if MLA_X86_SIMD
using GqaPathOps = PathOps<GqaPortableOps, GqaAvx2Ops, GqaAvx512Ops, GqaAmxOps>;
#else
using GqaPathOps = PathOps<GqaPortableOps, GqaPortableOps, GqaPortableOps, GqaPortableOps>;
#endif

/// Runs cache rows [j_begin, j_end) of kv head `head` in the form the path and the head's rows
/// call for, writing the range's partial (O [g_rows][o_stride], max, sum). A range inside the
/// causal triangle (j_begin >= cache_len - q_len + 1) goes through the row-streaming form,
/// which adds each triangle row only to the query rows that see it; a range before it is seen by
/// every query row and runs the AMX form (kAmx, bf16), the packed form (AVX2 and up, g_rows >=
/// kGqaPackedMinRows) or the row-streaming form.
template <class Ops, class CacheScalar>
void gqa_range_task(const kernels::GqaAttentionShape& shape, const GqaLayout& lay, const float* q,
                    const CacheScalar* kh, const CacheScalar* vh, float qscale, Index head,
                    Index j_begin, Index j_end, float* scratch, float* o, float* run_max,
                    float* run_sum) {
  if (j_begin < shape.cache_len - shape.q_len + 1) {
#if MLA_X86_SIMD
    if constexpr (std::is_same_v<Ops, GqaAmxOps> && std::is_same_v<CacheScalar, bfloat16>) {
      gqa_amx_task(shape, lay, q, kh, vh, qscale, head, j_begin, j_end, scratch, o, run_max,
                   run_sum);
      return;
    }
    if constexpr (std::is_base_of_v<GqaAvx2Ops, Ops>) {
      if (lay.g_rows >= kGqaPackedMinRows) {
        gqa_packed_task<typename Ops::Packed>(shape, lay, q, kh, vh, qscale, head, j_begin, j_end,
                                              scratch, o, run_max, run_sum);
        return;
      }
    }
#endif
  }
  gqa_rows_task<Ops>(shape, lay, q, kh, vh, qscale, head, j_begin, j_end, scratch, o, run_max,
                     run_sum);
}

}  // namespace internal
}  // namespace mla
