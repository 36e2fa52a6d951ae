// AVX-512 helpers of the kernels (16-wide float vectors, 32 registers, mask registers): bf16
// widening 16 at a time, a 16 x 16 in-register transpose, and a vector exp2. Compiled in every
// translation unit inside an AVX-512 target region (core/macros.hpp); they run only where
// kernels::KernelPath::kAvx512 (or kAmx) was chosen. The AVX2 helpers (simd/avx2.hpp) inline into
// this region's functions too.
#pragma once

#include "mla/core/macros.hpp"
#include "mla/core/types.hpp"
#include "mla/simd/avx2.hpp"
#include "mla/simd/portable.hpp"

#if MLA_X86_64
#include <immintrin.h>
#endif

#if MLA_X86_SIMD
MLA_TARGET_AVX512_BEGIN
namespace mla {
namespace internal {

/// 16 bf16 values (the words of h) as floats: bf16 -> float is a 16-bit shift, exact.
inline __m512 widen16_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
/// 16 floats at p: loaded, or widened from bfloat16.
inline __m512 load16_widen(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16_widen(const bfloat16* p) {
  return widen16_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

/// AVX-512 widening of a block of rows (as widen_rows_portable): 16 values at a time, then 8,
/// then one by one. Widening is a large part of a bf16 tile's cost in the kernels that widen
/// before their products, so it runs as wide as the path allows.
template <class T>
void widen_rows_avx512(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                       Index dst_stride) {
  for (Index r = 0; r < rows; ++r) {
    const T* s = src + r * src_stride;
    float* d = dst + r * dst_stride;
    Index c = 0;
    for (; c + 16 <= cols; c += 16) _mm512_storeu_ps(d + c, load16_widen(s + c));
    widen_row_from_avx2(s, c, cols, d);
  }
}

/// In-register transpose of 16 x 16 32-bit elements: r[i] lane j <- r[j] lane i.
inline void transpose16_epi32(__m512i* r) {
  // Masked forms with all lanes on: GCC 12 warns that the plain forms' undefined pass-through
  // operand is used uninitialized (-Werror).
  constexpr __mmask16 kAll16 = 0xFFFF;
  constexpr __mmask8 kAll8 = 0xFF;
  __m512i t[16], u[16];
  MLA_UNROLL
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_epi32(kAll16, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_epi32(kAll16, r[2 * i], r[2 * i + 1]);
  }
  // u[4i + j], 128-bit lane L: column 4L + j of rows 4i .. 4i + 3.
  MLA_UNROLL
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_maskz_unpacklo_epi64(kAll8, t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_maskz_unpackhi_epi64(kAll8, t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_maskz_unpacklo_epi64(kAll8, t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_maskz_unpackhi_epi64(kAll8, t[4 * i + 1], t[4 * i + 3]);
  }
  MLA_UNROLL
  for (int j = 0; j < 4; ++j) {
    // 0x88 takes 128-bit lanes 0 and 2 of both operands, 0xdd lanes 1 and 3.
    const __m512i v_even = _mm512_maskz_shuffle_i32x4(kAll16, u[j], u[4 + j], 0x88);
    const __m512i v_odd = _mm512_maskz_shuffle_i32x4(kAll16, u[j], u[4 + j], 0xdd);
    const __m512i w_even = _mm512_maskz_shuffle_i32x4(kAll16, u[8 + j], u[12 + j], 0x88);
    const __m512i w_odd = _mm512_maskz_shuffle_i32x4(kAll16, u[8 + j], u[12 + j], 0xdd);
    r[j] = _mm512_maskz_shuffle_i32x4(kAll16, v_even, w_even, 0x88);
    r[8 + j] = _mm512_maskz_shuffle_i32x4(kAll16, v_even, w_even, 0xdd);
    r[4 + j] = _mm512_maskz_shuffle_i32x4(kAll16, v_odd, w_odd, 0x88);
    r[12 + j] = _mm512_maskz_shuffle_i32x4(kAll16, v_odd, w_odd, 0xdd);
  }
}

// GCC 12's forms of these intrinsics pass _mm512_undefined_ps() as the merge source, which its
// -Wuninitialized flags wherever they are inlined (GCC bug 105593, fixed in 13); the zero-masking
// forms with every lane selected compile to the same instructions without it.
inline __m512 max_ps512(__m512 a, __m512 b) { return _mm512_maskz_max_ps(__mmask16(0xFFFF), a, b); }
inline __m512 round_ps512(__m512 a) {
  return _mm512_maskz_roundscale_ps(__mmask16(0xFFFF), a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline __m512 scalef_ps512(__m512 a, __m512 b) { return _mm512_maskz_scalef_ps(__mmask16(0xFFFF), a, b); }

/// 2^x for x <= 0 (softmax weights), 0 below -200 and for -inf, NaN for NaN. x = n + f,
/// |f| <= 1/2; 2^f by its degree-5 Taylor polynomial in f ln 2 (relative error < 2.5e-6, enough for weights that are
/// rounded to bf16 next, as the AMX kernels do), scaled by 2^n with vscalefps.
inline __m512 exp2_avx512(__m512 x) {
  x = max_ps512(_mm512_set1_ps(-200.0f), x);  // maxps returns its second operand for a NaN
  const __m512 n = round_ps512(x);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(kExp2Taylor[5]);
  MLA_UNROLL
  for (int i = 4; i >= 0; --i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Taylor[i]));
  return scalef_ps512(p, n);
}

}  // namespace internal
}  // namespace mla
MLA_TARGET_END
#endif  // MLA_X86_SIMD
