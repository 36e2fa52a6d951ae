// Decode attention on the AMX tile unit over a bf16 cache (kernels::KernelPath::kAmx): the
// tile operations and one split's flash-decoding loop, shared by absorbed MLA (mla_tiles.hpp,
// decode_engine.hpp: score rows = latent rows [c_kv | k_pe], value rows = their c_kv) and
// the MHA/GQA forms (gqa_tiles.hpp: a kv head's K and V rows).
//
// The AMX tile unit multiplies bf16 tiles with float accumulators, at a peak of 1024 FLOP per
// cycle per core (one 16 x 16 x 32 tdpbf16ps per 16 cycles: 16x the 64 FLOP per cycle of two
// 512-bit fp32 FMA pipes). One instruction, tdpbf16ps, does C[16 x 16] += A[16 x 32] B[32 x 16]
// where A is row-major bf16 and B is stored in pairs along the reduction axis ("VNNI":
// B[k/2][n][k % 2]).
// A decode step is two such GEMMs per chunk of cache rows, so the work is arranging the operands:
// - Scores, transposed: S^T[t, m] = K[t, :] . Q[m, :]. A = the cache rows as they are (or a
//   zero-padded copy where a chunk or a row ends inside a tile), B = the query in VNNI form,
//   packed once per call. No shuffles of the cache at all.
// - Softmax per query row m over the chunk, reading S^T with vectors over 16 rows m (no
//   horizontal reductions). The weights P are rounded to bf16 and transposed to the A layout
//   P[m, t] (16 x 16 dword transposes of the bf16 pairs); the row sums add the rounded weights,
//   so the output is an exact convex combination of value rows with the weights actually used.
// - Output: O[m, :] += P[m, t] V[t, :] with B = the chunk's value rows interleaved in pairs
//   (V[2i][d], V[2i+1][d]), one vpermt2w per 16 output pairs. O lives in float in L2 and is the
//   tiles' accumulator; rows whose running max moved are rescaled first (after the first chunks
//   the max rarely moves, and those passes are skipped).
//
// Precision: the query (already scaled by softmax_scale * log2 e) and P are rounded to bf16
// (unit roundoff u = 2^-8), products and sums are float. With |dq| <= u|q| a score moves by at
// most u * sum_k |q_k k_k| (base 2), and each weight by a factor within 2^(+-that) * (1 +- u).
// The tests (tests/kernels/test_absorbed_attention.cpp, test_gqa_attention.cpp) hold every
// output to the weight part of that bound with the query's rounding reproduced, and to float
// accuracy where every weight is a power of two. That is the trade every bf16 attention kernel
// makes (vdpbf16ps and AMX alike); kAuto never picks this path.
//
// The tile code is compiled in every translation unit inside an AMX target region
// (core/macros.hpp) and runs only after kernels::resolve_path(KernelPath::kAmx) found the
// instructions and got the OS's grant of the tile state (core/isa.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "mla/core/arena.hpp"
#include "mla/core/check.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/decode_common.hpp"
#include "mla/simd/avx512.hpp"

#if MLA_X86_64
#include <immintrin.h>
#endif

namespace mla {
namespace internal {

// Cache rows per softmax step of the AMX form (a multiple of 32, the reduction depth of one tile
// product). Per thread a chunk holds its dense copy (256 x 576 bf16 = 288 KiB), the interleaved
// c_kv (256 KiB), S^T (128 KiB for 128 query rows) and P (64 KiB), next to the query (144 KiB) and
// O (256 KiB): ~1.1 MiB, inside the 2 MiB per-core L2 of the CPUs that have AMX.
inline constexpr Index kAmxChunkRows = 256;

/// One thread's scratch of the AMX form, in floats (sizes only when the arena has no base).
struct AmxScratch {
  float* st;        // S^T / softmax input [kAmxChunkRows][mp]
  std::uint16_t* pa;  // P as A tiles [mp / 16][kAmxChunkRows / 32][16][32] bf16
  std::uint16_t* cd;  // the chunk's rows, dense and zero padded [kAmxChunkRows][k32] bf16
  std::uint16_t* vi;  // c_kv pairs as B tiles [kAmxChunkRows / 32][d16 / 16][16][32] bf16
  float* o;         // output accumulator [mp][d16]
  float* run_max;   // [mp]
  float* run_sum;   // [mp]
  float* alpha;     // [mp]
  AmxScratch(FloatArena& arena, Index mp, Index k32, Index d16)
      : st(arena.take(kAmxChunkRows * mp)),
        pa(reinterpret_cast<std::uint16_t*>(arena.take(mp * kAmxChunkRows / 2))),
        cd(reinterpret_cast<std::uint16_t*>(arena.take(kAmxChunkRows * k32 / 2))),
        vi(reinterpret_cast<std::uint16_t*>(arena.take(kAmxChunkRows * d16 / 2))),
        o(arena.take(mp * d16)),
        run_max(arena.take(mp)),
        run_sum(arena.take(mp)),
        alpha(arena.take(mp)) {}
};

/// Floats of one thread's AMX scratch for up to `mp` (a multiple of 16) query rows.
inline Index amx_scratch_floats(Index mp, Index k_dim, Index v_dim) {
  FloatArena sizer;
  AmxScratch(sizer, mp, round_up(k_dim, 32), round_up(v_dim, 16));
  return sizer.used();
}

/// Floats of the query packed for the tiles: [M16 / 16][k32 / 32][16][32] bf16.
inline Index amx_query_floats(Index m_rows, Index k_dim) {
  return round_up(m_rows, 16) * round_up(k_dim, 32) / 2;
}

#if MLA_X86_SIMD
MLA_TARGET_AMX_BEGIN

/// Every tile 16 rows x 64 bytes: tiles 0-3 accumulate, 4-5 hold A operands, 6-7 B operands.
inline void amx_configure_tiles() {
  struct alignas(64) Config {
    std::uint8_t palette;
    std::uint8_t start_row;
    std::uint8_t reserved[14];
    std::uint16_t colsb[16];
    std::uint8_t rows[16];
  } cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
}

/// Packs the query rows Q = [q_lat | q_pe] * qscale (q_pe may be null when rope = 0) as bf16 B
/// tiles: tile (mt, kb) row i holds, for the 16 query rows n of tile mt, the pair
/// (Q[n][kb * 32 + 2i], Q[n][kb * 32 + 2i + 1]); zero past M and K. Each query row's 32 values of
/// a k block are rounded to 16 bf16 pairs (one dword each), and a 16 x 16 dword transpose turns
/// the 16 rows into the tile.
inline void amx_pack_query(const float* q_lat, const float* q_pe, Index m_rows, Index kv_lora,
                           Index rope, float qscale, std::uint16_t* qv) {
  const Index k_dim = kv_lora + rope;
  const Index kblocks = round_up(k_dim, 32) / 32;
  const Index mtiles = round_up(m_rows, 16) / 16;
  const __m512 vs = _mm512_set1_ps(qscale);
  alignas(64) float row[32];
  for (Index mt = 0; mt < mtiles; ++mt)
    for (Index kb = 0; kb < kblocks; ++kb) {
      __m512i x[16];
      const Index k0 = kb * 32;
      for (int n = 0; n < 16; ++n) {
        const Index m = mt * 16 + n;
        const float* src = row;
        if (m < m_rows && k0 + 32 <= kv_lora) {
          src = q_lat + m * kv_lora + k0;
        } else if (m < m_rows && k0 >= kv_lora && k0 + 32 <= k_dim) {
          src = q_pe + m * rope + (k0 - kv_lora);
        } else {  // a block across the q_lat / q_pe border, past K or past M
          for (Index j = 0; j < 32; ++j) {
            const Index k = k0 + j;
            row[j] = m >= m_rows || k >= k_dim ? 0.0f
                     : k < kv_lora             ? q_lat[m * kv_lora + k]
                                               : q_pe[m * rope + k - kv_lora];
          }
        }
        const __m512 lo = _mm512_mul_ps(_mm512_loadu_ps(src), vs);
        const __m512 hi = _mm512_mul_ps(_mm512_loadu_ps(src + 16), vs);
        x[n] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // bf16 of row[0 .. 32) in order
      }
      transpose16_epi32(x);
      std::uint16_t* tile = qv + (mt * kblocks + kb) * 512;
      for (int i = 0; i < 16; ++i) _mm512_store_si512(tile + i * 32, x[i]);
    }
}

/// 16-bit lane indices that interleave two rows a, b of 32 values into (a[i], b[i]) pairs:
/// idx_lo covers i < 16, idx_hi i >= 16 (for vpermt2w, where index bit 5 selects b).
struct PairInterleave {
  __m512i lo, hi;
  PairInterleave() {
    alignas(64) std::uint16_t l[32], h[32];
    for (int i = 0; i < 16; ++i) {
      l[2 * i] = std::uint16_t(i);
      l[2 * i + 1] = std::uint16_t(32 + i);
      h[2 * i] = std::uint16_t(16 + i);
      h[2 * i + 1] = std::uint16_t(48 + i);
    }
    lo = _mm512_load_si512(l);
    hi = _mm512_load_si512(h);
  }
};

/// First n (0..32) lanes of a 32 x 16-bit vector.
inline __mmask32 first_words(Index n) {
  return n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1u);
}

/// Copies the first `cols` values of rows [0, tn) (`stride` apart) into dst ([tn32][ld], zeros
/// past cols up to ld and in rows tn .. tn32): the zero-padded A operand of the scores.
inline void amx_stage_dense(const bfloat16* rows, Index stride, Index tn, Index cols, Index ld,
                            std::uint16_t* dst) {
  const auto* src = reinterpret_cast<const std::uint16_t*>(rows);
  for (Index r = 0; r < round_up(tn, 32); ++r)
    for (Index c = 0; c < ld; c += 32) {
      const __m512i x = r < tn ? _mm512_maskz_loadu_epi16(first_words(cols - c), src + r * stride + c)
                               : _mm512_setzero_si512();
      _mm512_store_si512(dst + r * ld + c, x);
    }
}

/// Writes the first `cols` values of rows [0, tn) (`stride` apart), paired row by row, as the B
/// tiles of the output product: tile (t / 32, d / 16) row i holds (V[2i][d], V[2i + 1][d]) for its
/// 16 columns d; rows past tn and columns past cols (up to d16) are zero.
inline void amx_stage_pairs(const bfloat16* rows, Index stride, Index tn, Index cols, Index d16,
                            std::uint16_t* vi) {
  const Index dtiles = d16 / 16;
  const auto* src = reinterpret_cast<const std::uint16_t*>(rows);
  const PairInterleave idx;
  for (Index pair = 0; pair < round_up(tn, 32) / 2; ++pair) {
    const Index r0 = 2 * pair, r1 = 2 * pair + 1;
    std::uint16_t* vrow = vi + (pair / 16) * dtiles * 512 + (pair % 16) * 32;
    for (Index c = 0; c < d16; c += 32) {
      const __mmask32 m = first_words(cols - c);
      const __m512i a = r0 < tn ? _mm512_maskz_loadu_epi16(m, src + r0 * stride + c) : _mm512_setzero_si512();
      const __m512i b = r1 < tn ? _mm512_maskz_loadu_epi16(m, src + r1 * stride + c) : _mm512_setzero_si512();
      const Index dt = c / 16;
      _mm512_store_si512(vrow + dt * 512, _mm512_permutex2var_epi16(a, idx.lo, b));
      if (dt + 1 < dtiles) _mm512_store_si512(vrow + (dt + 1) * 512, _mm512_permutex2var_epi16(a, idx.hi, b));
    }
  }
}

/// S^T rows [t, t + 16 NT) x query tiles [mt, mt + NM) of a chunk: A = cache rows (`astride`
/// elements apart), B = the packed query; the float tiles go to st (row stride lds floats).
template <int NT, int NM>
MLA_NOINLINE void amx_scores_block(const std::uint16_t* cd, Index astride, const std::uint16_t* qv,
                                   Index kblocks, float* st, Index lds) {
  _tile_zero(0);
  if (NM > 1) _tile_zero(1);
  if (NT > 1) _tile_zero(2);
  if (NT > 1 && NM > 1) _tile_zero(3);
  const Index abytes = astride * 2;
  for (Index kb = 0; kb < kblocks; ++kb) {
    _tile_loadd(4, cd + kb * 32, abytes);
    _tile_loadd(6, qv + kb * 512, 64);
    if (NM > 1) _tile_loadd(7, qv + (kblocks + kb) * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (NM > 1) _tile_dpbf16ps(1, 4, 7);
    if (NT > 1) {
      _tile_loadd(5, cd + 16 * astride + kb * 32, abytes);
      _tile_dpbf16ps(2, 5, 6);
      if (NM > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, st, lds * 4);
  if (NM > 1) _tile_stored(1, st + 16, lds * 4);
  if (NT > 1) _tile_stored(2, st + 16 * lds, lds * 4);
  if (NT > 1 && NM > 1) _tile_stored(3, st + 16 * lds + 16, lds * 4);
}

/// O tiles [mt, mt + NM) x [dt, dt + ND) += P[m, 0 : tn32] V[0 : tn32, d] over the chunk's P and
/// interleaved c_kv tiles; O (row stride ldo floats) is loaded into and stored from the tiles.
template <int NM, int ND>
MLA_NOINLINE void amx_output_block(const std::uint16_t* pa, Index pa_mstride, const std::uint16_t* vi,
                                   Index vi_tstride, Index tblocks, float* o, Index ldo) {
  const Index ob = ldo * 4;
  _tile_loadd(0, o, ob);
  if (ND > 1) _tile_loadd(1, o + 16, ob);
  if (NM > 1) _tile_loadd(2, o + 16 * ldo, ob);
  if (NM > 1 && ND > 1) _tile_loadd(3, o + 16 * ldo + 16, ob);
  for (Index tb = 0; tb < tblocks; ++tb) {
    _tile_loadd(4, pa + tb * 512, 64);
    _tile_loadd(6, vi + tb * vi_tstride, 64);
    if (ND > 1) _tile_loadd(7, vi + tb * vi_tstride + 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (ND > 1) _tile_dpbf16ps(1, 4, 7);
    if (NM > 1) {
      _tile_loadd(5, pa + pa_mstride + tb * 512, 64);
      _tile_dpbf16ps(2, 5, 6);
      if (ND > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, o, ob);
  if (ND > 1) _tile_stored(1, o + 16, ob);
  if (NM > 1) _tile_stored(2, o + 16 * ldo, ob);
  if (NM > 1 && ND > 1) _tile_stored(3, o + 16 * ldo + 16, ob);
}

/// Online softmax over a chunk's S^T ([tn rows][lds], query rows in columns) for query tile mt:
/// updates run_max / run_sum, writes alpha, and writes P (bf16, rows t >= tn zero) as the A
/// tiles pa[tb] ([16 m][32 t] each).
inline void amx_softmax_tile(const float* st, Index lds, Index tn, Index tn32, float* run_max,
                             float* run_sum, float* alpha, std::uint16_t* pa) {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 tile_max = neg_inf;
  for (Index t = 0; t < tn; ++t) tile_max = max_ps512(tile_max, _mm512_load_ps(st + t * lds));
  const __m512 old_max = _mm512_load_ps(run_max);
  const __m512 new_max = max_ps512(old_max, tile_max);
  // A row that has seen only masked scores keeps max -inf; subtract 0 instead to avoid NaN.
  const __m512 safe = _mm512_mask_mov_ps(new_max, _mm512_cmp_ps_mask(new_max, neg_inf, _CMP_EQ_OQ),
                                         _mm512_setzero_ps());
  // Word 2m of a pair: row 2i's weight for query m; word 2m + 1: row 2i + 1's.
  const PairInterleave idx;
  __m512 sum = _mm512_setzero_ps();
  for (Index tb = 0; tb < tn32 / 32; ++tb) {
    __m512i x[16];
    MLA_UNROLL
    for (int i = 0; i < 16; ++i) {
      __m256i h[2];
      MLA_UNROLL
      for (int e = 0; e < 2; ++e) {
        const Index t = tb * 32 + 2 * i + e;
        const __m512 s = t < tn ? _mm512_load_ps(st + t * lds) : neg_inf;
        h[e] = (__m256i)_mm512_cvtneps_pbh(exp2_avx512(_mm512_sub_ps(s, safe)));
        sum = _mm512_add_ps(sum, widen16_bf16(h[e]));  // the sum of the rounded weights
      }
      x[i] = _mm512_permutex2var_epi16(_mm512_zextsi256_si512(h[0]), idx.lo, _mm512_zextsi256_si512(h[1]));
    }
    transpose16_epi32(x);  // x[m] = the 32 weights of query row m, pairs of rows in order
    std::uint16_t* tile = pa + tb * 512;
    MLA_UNROLL
    for (int m = 0; m < 16; ++m) _mm512_store_si512(tile + m * 32, x[m]);
  }
  const __m512 a = exp2_avx512(_mm512_sub_ps(old_max, safe));
  _mm512_store_ps(alpha, a);
  _mm512_store_ps(run_sum, _mm512_fmadd_ps(_mm512_load_ps(run_sum), a, sum));
  _mm512_store_ps(run_max, new_max);
}

/// What one AMX task attends over: score rows K (k_dim values, `k_stride` apart) and value rows
/// V (v_dim values, `v_stride` apart), both indexed by cache row; V may be K itself (MLA: the
/// c_kv part of the latent rows). Query row i of the task belongs to token (row0 + i) /
/// rows_per_token and cannot see cache rows >= first_masked + that token (causal rule).
struct AmxAttentionRows {
  const bfloat16* k;
  Index k_stride, k_dim;
  const bfloat16* v;
  Index v_stride, v_dim;
  Index row0, rows_per_token, first_masked;
};

/// One split of the AMX form: mc query rows (qv: their tiles from amx_pack_query, scaled to base
/// 2) over cache rows [j_begin, j_end). Writes the split's unnormalised O ([mc][ldo], v_dim
/// columns), running max and sum (base 2), as the float kernels' splits do.
inline void amx_attention_task(const AmxAttentionRows& in, const std::uint16_t* qv, Index mc,
                               Index j_begin, Index j_end, float* scratch_base, float* o_out,
                               Index ldo, float* max_out, float* sum_out) {
  const Index k32 = round_up(in.k_dim, 32);
  const Index kblocks = k32 / 32;
  const Index d16 = round_up(in.v_dim, 16);
  const Index dtiles = d16 / 16;
  const Index mp = round_up(mc, 16);
  const Index mtiles = mp / 16;
  FloatArena arena(scratch_base);
  const AmxScratch s(arena, mp, k32, d16);
  std::fill(s.o, s.o + mp * d16, 0.0f);
  std::fill(s.run_max, s.run_max + mp, -std::numeric_limits<float>::infinity());
  std::fill(s.run_sum, s.run_sum + mp, 0.0f);
  const Index pa_mstride = kAmxChunkRows / 32 * 512;  // one query tile's P tiles
  const Index vi_tstride = dtiles * 512;              // one 32-row block's V tiles

  amx_configure_tiles();
  for (Index t0 = j_begin; t0 < j_end; t0 += kAmxChunkRows) {
    const Index tn = std::min(kAmxChunkRows, j_end - t0);
    const Index tn16 = round_up(tn, 16);
    const Index tn32 = round_up(tn, 32);
    // Whole 32-row chunks of whole k blocks feed the scores straight from the cache; otherwise
    // (the last chunk, or k_dim not a multiple of 32) from a zero-padded copy.
    const bool dense = tn % 32 != 0 || in.k_dim != k32;
    const bfloat16* krows = in.k + t0 * in.k_stride;
    if (dense) amx_stage_dense(krows, in.k_stride, tn, in.k_dim, k32, s.cd);
    const std::uint16_t* arows = dense ? s.cd : reinterpret_cast<const std::uint16_t*>(krows);
    const Index astride = dense ? k32 : in.k_stride;
    amx_stage_pairs(in.v + t0 * in.v_stride, in.v_stride, tn, in.v_dim, d16, s.vi);

    for (Index t = 0; t < tn16; t += 32) {
      for (Index mt = 0; mt < mtiles; mt += 2) {
        const std::uint16_t* a = arows + t * astride;
        const std::uint16_t* b = qv + mt * kblocks * 512;
        float* dst = s.st + t * mp + mt * 16;
        dispatch_width<2>(std::min<Index>(2, (tn16 - t) / 16), [&](auto nt) {
          dispatch_width<2>(std::min<Index>(2, mtiles - mt), [&](auto nm) {
            amx_scores_block<decltype(nt)::value, decltype(nm)::value>(a, astride, b, kblocks, dst, mp);
          });
        });
      }
    }
    mask_hidden_rows(s.st, mp, t0, tn, mc, in.row0, in.rows_per_token, in.first_masked);
    for (Index mt = 0; mt < mtiles; ++mt)
      amx_softmax_tile(s.st + mt * 16, mp, tn, tn32, s.run_max + mt * 16, s.run_sum + mt * 16,
                       s.alpha + mt * 16, s.pa + mt * pa_mstride);
    for (Index i = 0; i < mp; ++i) {
      const float a = s.alpha[i];
      if (a == 1.0f) continue;
      float* orow = s.o + i * d16;
      const __m512 va = _mm512_set1_ps(a);
      for (Index d = 0; d < d16; d += 16) _mm512_store_ps(orow + d, _mm512_mul_ps(va, _mm512_load_ps(orow + d)));
    }
    const Index tblocks = tn32 / 32;
    for (Index mt = 0; mt < mtiles; mt += 2) {
      for (Index dt = 0; dt < dtiles; dt += 2) {
        const std::uint16_t* a = s.pa + mt * pa_mstride;
        const std::uint16_t* b = s.vi + dt * 512;
        float* o = s.o + mt * 16 * d16 + dt * 16;
        dispatch_width<2>(std::min<Index>(2, mtiles - mt), [&](auto nm) {
          dispatch_width<2>(std::min<Index>(2, dtiles - dt), [&](auto nd) {
            amx_output_block<decltype(nm)::value, decltype(nd)::value>(a, pa_mstride, b, vi_tstride,
                                                                       tblocks, o, d16);
          });
        });
      }
    }
  }
  _tile_release();
  for (Index i = 0; i < mc; ++i) {
    std::copy(s.o + i * d16, s.o + i * d16 + in.v_dim, o_out + i * ldo);
    max_out[i] = s.run_max[i];
    sum_out[i] = s.run_sum[i];
  }
}

}  // namespace internal
}  // namespace mla
MLA_TARGET_END
#endif  // MLA_X86_SIMD
