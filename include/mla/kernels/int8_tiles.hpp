// Integer score products of the absorbed MLA decode over int8 latent rows
// (kernels/int8_latent_rows.hpp), on AVX512-VNNI. The decode engine runs them in place of the
// float scores op for the c_kv part of the score when the rows are Int8Latent and the CPU has
// VNNI; the RoPE part (bf16 k_pe) and P.V stay in float on the dequantised tile.
//
// For query row m and cache row j of a tile:
//   q_m   = q_lat[m] * softmax_scale * log2 e  (float, R values)
//   sq_m  = max_k |q_m[k]| / 127,   u_m[k] = round(q_m[k] / sq_m) + 128   (u8, the query codes)
//   c_j   = the row's int8 codes, sc_j its scale, Sc_j = sum_k c_j[k] (stored with the row)
//   s_mj  = sq_m sc_j (sum_k u_m[k] c_j[k] - 128 Sc_j)  ~  q_m . c_kv_j
// vpdpbusd adds four u8 x s8 products to each 32-bit lane: a lane holds one query row, so a
// 64-byte load of the packed query gives 16 query rows x 4 k, and one cache row's 4 codes are
// broadcast to all lanes: the float kernel's register blocking with 4x the products per
// instruction. The integer sum is exact (|sum| <= 255 * 127 * R < 2^31 for R < 66,000); the
// only errors are the roundings of the query and the row codes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "mla/core/isa.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/decode_common.hpp"
#include "mla/kernels/int8_latent_rows.hpp"
#include "mla/kernels/mla_tiles.hpp"

namespace mla {
namespace internal {

/// The packed int8 query of `rows` query rows over R latent values: the scales
/// [round_up(rows, 16)] (floats), then the codes [panels][R / 4][16][4] (bytes).
struct Int8Query {
  float* scales = nullptr;
  std::uint8_t* codes = nullptr;
  Index panel_bytes = 0;  // 16 * R

  /// The layout at `base` (float-aligned) for `rows` rows of R values (R % 4 == 0).
  static Int8Query at(float* base, Index rows, Index R) {
    Int8Query q;
    q.scales = base;
    q.codes = reinterpret_cast<std::uint8_t*>(base + round_up(rows, kMlaPanel));
    q.panel_bytes = kMlaPanel * R;
    return q;
  }
  /// Floats the layout takes.
  static Index floats(Index rows, Index R) {
    return round_up(rows, kMlaPanel) + round_up(rows, kMlaPanel) * R / 4;
  }
};

/// Whether the int8 score kernel serves rows of R latent values here: the CPU has AVX512-VNNI
/// (and the run is on the AVX-512 path) and R is a multiple of 4 (codes are read 4 at a time).
inline bool int8_scores_available(Index R) {
  return MLA_X86_SIMD && cpu_features().avx512_vnni && R % 4 == 0;
}

/// Quantises and packs q_lat [m_rows, R] * qscale into `q` (see the header comment); rows past
/// m_rows get code 128 (zero) and scale 0.
inline void int8_pack_query(const float* q_lat, Index m_rows, Index R, float qscale,
                            const Int8Query& q) {
  const Index panels = round_up(m_rows, kMlaPanel) / kMlaPanel;
  for (Index p = 0; p < panels; ++p) {
    std::uint8_t* dst = q.codes + p * q.panel_bytes;
    for (Index i = 0; i < kMlaPanel; ++i) {
      const Index m = p * kMlaPanel + i;
      float amax = 0.0f;
      if (m < m_rows)
        for (Index k = 0; k < R; ++k) amax = std::max(amax, std::fabs(q_lat[m * R + k] * qscale));
      const float s = amax / 127.0f;
      q.scales[m] = s;
      const float inv = s > 0.0f ? 1.0f / s : 0.0f;
      for (Index k = 0; k < R; ++k) {
        const float v = m < m_rows ? q_lat[m * R + k] * qscale * inv : 0.0f;
        const float code = std::clamp(std::nearbyint(v), -127.0f, 127.0f);
        dst[(k / 4) * 4 * kMlaPanel + i * 4 + k % 4] = static_cast<std::uint8_t>(int(code) + 128);
      }
    }
  }
}

#if MLA_X86_SIMD
MLA_TARGET_AVX512_VNNI_BEGIN

/// NP query panels x NT cache rows: st[j * lds + p * 16 + i] = the c_kv part of the score of query
/// row p * 16 + i and row j (see the header comment).
template <int NP, int NT>
MLA_NOINLINE void int8_scores_block(const Int8Query& q, Index p0, const std::uint8_t* rows,
                                    Index row_stride, const Int8LatentLayout& layout, float* st,
                                    Index lds) {
  const Index k4n = layout.kv_lora_rank / 4;
  __m512i acc[NP][NT];
  MLA_UNROLL
  for (int p = 0; p < NP; ++p) {
    MLA_UNROLL
    for (int j = 0; j < NT; ++j) acc[p][j] = _mm512_setzero_si512();
  }
  const std::uint8_t* qc = q.codes + p0 * q.panel_bytes;
  for (Index k4 = 0; k4 < k4n; ++k4) {
    __m512i a[NP];
    MLA_UNROLL
    for (int p = 0; p < NP; ++p)
      a[p] = _mm512_loadu_si512(qc + p * q.panel_bytes + k4 * 4 * kMlaPanel);
    MLA_UNROLL
    for (int j = 0; j < NT; ++j) {
      std::int32_t c4;
      std::memcpy(&c4, rows + j * row_stride + 4 * k4, 4);
      const __m512i b = _mm512_set1_epi32(c4);
      MLA_UNROLL
      for (int p = 0; p < NP; ++p) acc[p][j] = _mm512_dpbusd_epi32(acc[p][j], a[p], b);
    }
  }
  MLA_UNROLL
  for (int j = 0; j < NT; ++j) {
    const std::uint8_t* row = rows + j * row_stride;
    const __m512i offset = _mm512_set1_epi32(128 * int8_row_code_sum(row, layout));
    const __m512 sc = _mm512_set1_ps(int8_row_scale(row, layout));
    MLA_UNROLL
    for (int p = 0; p < NP; ++p) {
      const __m512 sq = _mm512_loadu_ps(q.scales + (p0 + p) * kMlaPanel);
      // The masked form with an explicit source: the plain one reads _mm512_undefined_ps(), which
      // GCC 12 reports as uninitialised (its bug 105593).
      const __m512 s = _mm512_mask_cvtepi32_ps(_mm512_setzero_ps(), __mmask16(0xFFFF),
                                               _mm512_sub_epi32(acc[p][j], offset));
      _mm512_storeu_ps(st + j * lds + p * kMlaPanel, _mm512_mul_ps(s, _mm512_mul_ps(sq, sc)));
    }
  }
}

/// The c_kv part of the scores of `panels` query panels over tn int8 rows (`row_stride` bytes
/// apart) into S^T (st, lds), in blocks of up to 4 panels x 6 rows (24 accumulators).
inline void int8_scores_vnni(const Int8Query& q, Index panels, const std::uint8_t* rows,
                             Index row_stride, Index tn, const Int8LatentLayout& layout, float* st,
                             Index lds) {
  constexpr int kMaxPanels = 4, kMaxRows = 6;
  for (Index p = 0; p < panels; p += kMaxPanels)
    dispatch_width<kMaxPanels>(std::min<Index>(kMaxPanels, panels - p), [&](auto npc) {
      for (Index t = 0; t < tn; t += kMaxRows)
        dispatch_width<kMaxRows>(std::min<Index>(kMaxRows, tn - t), [&](auto ntc) {
          int8_scores_block<decltype(npc)::value, decltype(ntc)::value>(
              q, p, rows + t * row_stride, row_stride, layout, st + t * lds + p * kMlaPanel, lds);
        });
    });
}

MLA_TARGET_END
#endif  // MLA_X86_SIMD

}  // namespace internal
}  // namespace mla
