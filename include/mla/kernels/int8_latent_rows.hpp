// The int8 latent row format: one token's [c_kv | k_pe] row as int8 codes of c_kv with one float
// scale per token, the codes' sum, and k_pe in bfloat16 (DeepSeek-V3: 512 + 4 + 4 + 128 = 648
// bytes, against 656 for the FP8 layout, 1152 for bf16 and 2304 for float):
//
//   bytes [0, R)               c_kv as int8 codes in [-127, 127]
//   bytes [R, R + 4)           float32 scale s = max_i |c_kv[i]| / 127
//   bytes [R + 4, R + 8)       int32 sum of the R codes
//   bytes [R + 8, R + 8 + 2P)  k_pe as bfloat16
//
// so c_kv[i] ~ code[i] * s. The format exists for integer dot products: a query row quantised to
// int8 (one scale per query row and step) meets the codes in vpdpbusd (AVX512-VNNI), which sums
// four u8 x s8 products per 32-bit lane. vpdpbusd wants one operand unsigned, so the query goes in
// offset by 128 (u = q + 128) and the stored code sum takes the offset back out exactly:
//   sum_i q_i c_i = sum_i u_i c_i - 128 * sum_i c_i.
//
// Error model. Rounding to the nearest code moves each value by at most s / 2 = amax / 254, so
// every c_kv value carries an absolute error of at most 0.4% of its row's largest magnitude
// (uniform on [-s/2, s/2] for values away from the ends). A score q . c picks up the sum of R
// such errors weighted by q (zero mean, so it grows as sqrt(R), not R) plus the same from the
// quantised query; k_pe keeps bf16 (8 significant bits), the RoPE part carrying the position
// signal. The outputs are softmax-weighted means of the dequantised rows, so their error stays
// at the scale of one row's rounding (about amax / 254 / sqrt(3) per value, less after the
// averaging) as long as the scores' errors are small against 1 (in log2 units after the softmax
// scale). Where the c_kv scores run on integer products (AVX512-VNNI, kernels/int8_tiles.hpp)
// the query row is rounded to int8 the same way (step max|q| / 127), which adds a score error of
// the same size: about sqrt(2) times the float-score error. The AVX2 and portable paths score
// the dequantised rows in float. A row holding inf or NaN stores a NaN scale and decodes to NaN,
// as the FP8 format does. Measured errors against the float cache are in docs/benchmarks.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "mla/core/bf16.hpp"
#include "mla/core/check.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/types.hpp"
#include "mla/simd/avx2.hpp"

#if MLA_X86_64
#include <immintrin.h>
#endif

namespace mla {

/// Byte layout of one int8 latent row (see the header comment). The defaults are DeepSeek-V3's.
struct Int8LatentLayout {
  Index kv_lora_rank = 512;  ///< R: c_kv values (one int8 code each)
  Index rope_dim = 64;       ///< P: k_pe values (bf16 each)

  /// Byte offset of the float32 scale (right after the codes).
  Index scale_offset() const { return kv_lora_rank; }
  /// Byte offset of the int32 code sum.
  Index sum_offset() const { return kv_lora_rank + 4; }
  /// Byte offset of the bf16 k_pe.
  Index rope_offset() const { return kv_lora_rank + 8; }
  /// Bytes per token: R + 8 + 2 P (648 for R = 512, P = 64).
  Index bytes_per_token() const { return rope_offset() + 2 * rope_dim; }

  /// Throws std::invalid_argument unless R > 0, P >= 0, R fits the int32 code sum
  /// (R * 127 < 2^31) and the row's byte count fits in int64.
  void validate() const {
    MLA_CHECK_ARG(kv_lora_rank > 0 && rope_dim >= 0, "Int8LatentLayout: kv_lora_rank (",
                  kv_lora_rank, ") must be positive and rope_dim (", rope_dim, ") non-negative");
    MLA_CHECK_ARG(kv_lora_rank <= std::numeric_limits<std::int32_t>::max() / 127,
                  "Int8LatentLayout: kv_lora_rank (", kv_lora_rank,
                  ") is too large for the int32 code sum (at most ",
                  std::numeric_limits<std::int32_t>::max() / 127, ")");
    internal::checked_add("Int8LatentLayout: row bytes kv_lora_rank + 8 + 2 * rope_dim",
                          {kv_lora_rank, 8,
                           internal::checked_mul("Int8LatentLayout: 2 * rope_dim", {2, rope_dim})});
  }
};

namespace internal {

/// The scale of an int8 latent row (unaligned-safe read).
inline float int8_row_scale(const std::uint8_t* row, const Int8LatentLayout& layout) {
  float v;
  std::memcpy(&v, row + layout.scale_offset(), sizeof v);
  return v;
}

/// The code sum of an int8 latent row.
inline std::int32_t int8_row_code_sum(const std::uint8_t* row, const Int8LatentLayout& layout) {
  std::int32_t v;
  std::memcpy(&v, row + layout.sum_offset(), sizeof v);
  return v;
}

/// The int8 row format (quantisation and dequantisation), for the row codec (latent_rows.hpp).
struct Int8LatentFormat {
  using Layout = Int8LatentLayout;

  /// Quantises one latent row src [R + P] = [c_kv | k_pe] into `dst` [layout.bytes_per_token()]:
  /// scale = max|c| / 127 (0 for an all-zero row, NaN when the row holds inf or NaN),
  /// code = round-to-nearest-even(c / scale); the code sum; k_pe rounded to bf16.
  template <class Src>
  static void quantize_row(const Src* src, const Int8LatentLayout& layout, std::uint8_t* dst) {
    const Index R = layout.kv_lora_rank, P = layout.rope_dim;
    float amax = 0.0f;
    for (Index i = 0; i < R; ++i) {
      const float v = std::fabs(static_cast<float>(src[i]));
      amax = std::isnan(v) || v > amax ? v : amax;  // keep a NaN so the row decodes to NaN
    }
    const bool finite = std::isfinite(amax);
    const float scale = finite ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
    std::int32_t sum = 0;
    for (Index i = 0; i < R; ++i) {
      float q = 0.0f;
      if (finite && amax > 0.0f)
        q = std::clamp(std::nearbyint(static_cast<float>(src[i]) / scale), -127.0f, 127.0f);
      const auto code = static_cast<std::int8_t>(q);
      sum += code;
      std::memcpy(dst + i, &code, 1);
    }
    std::memcpy(dst + layout.scale_offset(), &scale, sizeof scale);
    std::memcpy(dst + layout.sum_offset(), &sum, sizeof sum);
    for (Index i = 0; i < P; ++i) {
      const std::uint16_t b = Eigen::numext::bit_cast<std::uint16_t>(
          static_cast<bfloat16>(static_cast<float>(src[R + i])));
      std::memcpy(dst + layout.rope_offset() + 2 * i, &b, sizeof b);
    }
  }

  /// The portable dequantisation into float or double rows [code * scale | k_pe] (the values are
  /// the same floats either way).
  template <class Dst>
  static void dequantize_portable(const std::uint8_t* src, Index src_stride, Index rows,
                                  const Int8LatentLayout& layout, Dst* dst, Index dst_stride) {
    const Index R = layout.kv_lora_rank, P = layout.rope_dim;
    for (Index r = 0; r < rows; ++r) {
      const std::uint8_t* row = src + r * src_stride;
      Dst* out = dst + r * dst_stride;
      const float scale = int8_row_scale(row, layout);
      for (Index i = 0; i < R; ++i)
        out[i] = Dst(float(static_cast<std::int8_t>(row[i])) * scale);
      for (Index i = 0; i < P; ++i) {
        std::uint16_t b;
        std::memcpy(&b, row + layout.rope_offset() + 2 * i, sizeof b);
        out[R + i] = Dst(bf16_bits_to_float(b));
      }
    }
  }

#if MLA_X86_SIMD
  /// The AVX2 dequantisation into float rows, 8 values at a time (the same products as the
  /// portable loop, so the same floats).
  static void dequantize_avx2(const std::uint8_t* src, Index src_stride, Index rows,
                              const Int8LatentLayout& layout, float* dst, Index dst_stride);
#endif
};

#if MLA_X86_SIMD
MLA_TARGET_AVX2_BEGIN
inline void Int8LatentFormat::dequantize_avx2(const std::uint8_t* src, Index src_stride,
                                              Index rows, const Int8LatentLayout& layout,
                                              float* dst, Index dst_stride) {
  const Index R = layout.kv_lora_rank, P = layout.rope_dim, R8 = R & ~Index(7);
  for (Index r = 0; r < rows; ++r) {
    const std::uint8_t* row = src + r * src_stride;
    float* out = dst + r * dst_stride;
    const __m256 vs = _mm256_set1_ps(int8_row_scale(row, layout));
    Index i = 0;
    for (; i < R8; i += 8) {
      const __m256i c = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + i)));
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_cvtepi32_ps(c), vs));
    }
    for (; i < R; ++i) out[i] = float(static_cast<std::int8_t>(row[i])) * _mm256_cvtss_f32(vs);
    widen_bf16_bytes_avx2(row + layout.rope_offset(), P, out + R);
  }
}
MLA_TARGET_END
#endif  // MLA_X86_SIMD

}  // namespace internal

/// Tag type naming the int8 latent row format as a cache element type, e.g.
/// PagedLatentCache<Int8Latent> or a LatentRowsView<Int8Latent> (latent_rows.hpp).
struct Int8Latent {};

}  // namespace mla
