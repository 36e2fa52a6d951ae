// AVX2 + FMA helpers of the kernels (8-wide float vectors): a vector exp2, the online softmax over
// a tile of scores stored column-wise, horizontal reductions, and loads that widen bf16. All of
// them are compiled in every translation unit, inside an AVX2 target region (core/macros.hpp),
// and run only where kernels::KernelPath::kAvx2 or wider was chosen.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "mla/core/bf16.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/types.hpp"
#include "mla/simd/portable.hpp"

#if MLA_X86_64
#include <immintrin.h>
#endif

#if MLA_X86_SIMD
MLA_TARGET_AVX2_BEGIN
namespace mla {
namespace internal {

/// 2^x for x <= 0 (what a softmax needs), with 2^x = 0 below -127 (so exp2(-inf) = 0) and NaN
/// for NaN (a NaN score must reach the output, as std::exp2 lets it).
/// x = n + f with n = round(x), |f| <= 1/2; 2^f by its degree-7 Taylor polynomial in f*ln2
/// (truncation error < 6e-9 relative), 2^n by building the float exponent directly.
inline __m256 exp2_avx2(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x);  // maxps returns its second operand for a NaN
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(kExp2Taylor[7]);
  MLA_UNROLL
  for (int i = 6; i >= 0; --i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Taylor[i]));
  // n in [-127, 0]: n + 127 in [0, 127] is the biased exponent; 0 encodes +0.0.
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/// Online softmax step over a tile of scores stored column-wise, S^T[t * lds + i] for tn cache
/// rows t and m8 (a multiple of 8) query rows i (base-2 scores): updates the running max and sum
/// of every query row, overwrites S^T with 2^(s - new max) and writes the rescale factor
/// alpha[i] = 2^(old max - new max) that the caller applies to its accumulator.
inline void online_softmax_columns_avx2(float* st, Index lds, Index tn, Index m8, float* run_max,
                                        float* run_sum, float* alpha) {
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (Index i = 0; i < m8; i += 8) {
    __m256 tile_max = neg_inf;
    for (Index t = 0; t < tn; ++t) tile_max = _mm256_max_ps(tile_max, _mm256_load_ps(st + t * lds + i));
    const __m256 old_max = _mm256_load_ps(run_max + i);
    const __m256 new_max = _mm256_max_ps(old_max, tile_max);
    // A row that has seen only masked scores keeps max -inf; subtract 0 instead to avoid NaN.
    const __m256 safe = _mm256_blendv_ps(new_max, _mm256_setzero_ps(),
                                         _mm256_cmp_ps(new_max, neg_inf, _CMP_EQ_OQ));
    __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
    Index t = 0;
    for (; t + 2 <= tn; t += 2) {
      const __m256 p0 = exp2_avx2(_mm256_sub_ps(_mm256_load_ps(st + t * lds + i), safe));
      const __m256 p1 = exp2_avx2(_mm256_sub_ps(_mm256_load_ps(st + (t + 1) * lds + i), safe));
      _mm256_store_ps(st + t * lds + i, p0);
      _mm256_store_ps(st + (t + 1) * lds + i, p1);
      sum0 = _mm256_add_ps(sum0, p0);
      sum1 = _mm256_add_ps(sum1, p1);
    }
    if (t < tn) {
      const __m256 p0 = exp2_avx2(_mm256_sub_ps(_mm256_load_ps(st + t * lds + i), safe));
      _mm256_store_ps(st + t * lds + i, p0);
      sum0 = _mm256_add_ps(sum0, p0);
    }
    const __m256 a = exp2_avx2(_mm256_sub_ps(old_max, safe));
    _mm256_store_ps(alpha + i, a);
    _mm256_store_ps(run_sum + i,
                    _mm256_fmadd_ps(_mm256_load_ps(run_sum + i), a, _mm256_add_ps(sum0, sum1)));
    _mm256_store_ps(run_max + i, new_max);
  }
}

/// [sum(a0), sum(a1), sum(a2), sum(a3)]: the horizontal sums of four vectors.
inline __m128 reduce4_avx2(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
inline float hsum_avx2(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}
inline float hmax_avx2(__m256 a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/// 8 bf16 values widened to float (no bf16 instructions on AVX2: zero-extend and shift).
inline __m256 load8_widen(const bfloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8_widen(const float* p) { return _mm256_loadu_ps(p); }

/// Lane mask with the first n (0..8) lanes set, for maskload / maskstore.
inline __m256i first_lanes_mask(Index n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
}

/// First n (< 8) elements of p widened to float, zeros after; never reads past p[n - 1].
inline __m256 load8_partial(const float* p, Index n) {
  return _mm256_maskload_ps(p, first_lanes_mask(n));
}
inline __m256 load8_partial(const bfloat16* p, Index n) {
  alignas(32) float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (Index i = 0; i < n; ++i) tmp[i] = bf16_to_float(p[i]);
  return _mm256_load_ps(tmp);
}

/// n bf16 values stored at `bytes` (any alignment, 2 bytes each) widened to float, 8 at a time.
inline void widen_bf16_bytes_avx2(const std::uint8_t* bytes, Index n, float* out) {
  Index i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 2 * i));
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }
  for (; i < n; ++i) {
    std::uint16_t b;
    std::memcpy(&b, bytes + 2 * i, sizeof b);
    out[i] = bf16_bits_to_float(b);
  }
}

/// Values [c, cols) of one row widened to float, 8 at a time, then one by one.
template <class T>
void widen_row_from_avx2(const T* s, Index c, Index cols, float* d) {
  for (; c + 8 <= cols; c += 8) _mm256_storeu_ps(d + c, load8_widen(s + c));
  for (; c < cols; ++c) d[c] = to_float(s[c]);
}

/// AVX2 widening of a block of rows (as widen_rows_portable), 8 values at a time.
template <class T>
void widen_rows_avx2(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                     Index dst_stride) {
  for (Index r = 0; r < rows; ++r)
    widen_row_from_avx2(src + r * src_stride, 0, cols, dst + r * dst_stride);
}

}  // namespace internal
}  // namespace mla
MLA_TARGET_END
#endif  // MLA_X86_SIMD
