// The FP8 latent row format (FlashMLA's FP8 KV-cache layout; the E4M3 codec is in
// mla/core/fp8.hpp): how one token's [c_kv | k_pe] row is quantised into bytes and read back.
//
// One token's row (DeepSeek-V3: kv_lora_rank R = 512, qk_rope_head_dim P = 64, 656 bytes):
//
//   bytes [0, R)                  c_kv as FP8 E4M3FN codes, one per value
//   bytes [R, R + 4 S)            S = ceil(R / 128) float32 scales, one per 128-value tile of c_kv
//   bytes [R + 4 S, R + 4 S + 2P) k_pe as bfloat16 (RoPE part kept in 16 bits)
//
// so c_kv[i] = e4m3(code[i]) * scale[i / 128] and 512 + 4*4 + 64*2 = 656 bytes per token, the
// layout of FlashMLA's FP8 KV cache (its README, "FP8 KV cache": 512 B quantised NoPE, 16 B of
// four float32 scales, 128 B of bf16 RoPE), against 1152 B for bf16 and 2304 B for float. The
// scale of a tile is amax / 448 (448 is the largest E4M3 value), as FlashMLA's quantisation test
// code computes it, so the largest value of every tile is coded at full precision and nothing
// saturates. k_pe stays in bf16 because the RoPE dot product carries the position signal and is
// not smoothed by a 512-long sum.
//
// Rows are written by quantising float rows (append), and read back by dequantising a few rows
// at a time into a float scratch tile (fp8_latent_dequantize_rows), which the float attention
// micro-kernels then consume: decode never keeps a float copy of the cache.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "mla/core/check.hpp"
#include "mla/core/fp8.hpp"
#include "mla/core/isa.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/types.hpp"
#include "mla/simd/avx2.hpp"

#if MLA_X86_64
#include <immintrin.h>
#endif

namespace mla {

/// Byte layout of one FP8 latent row (see the header comment). The defaults are DeepSeek-V3's.
struct Fp8LatentLayout {
  Index kv_lora_rank = 512;   ///< R: c_kv values (one FP8 code each)
  Index rope_dim = 64;        ///< P: k_pe values (bf16 each)
  static constexpr Index kTile = 128;  ///< c_kv values per float32 scale (FlashMLA: 128)

  /// S = ceil(R / 128) scales.
  Index num_scales() const { return kv_lora_rank / kTile + (kv_lora_rank % kTile != 0); }
  /// Byte offset of the scales (right after the codes).
  Index scales_offset() const { return kv_lora_rank; }
  /// Byte offset of the bf16 k_pe.
  Index rope_offset() const { return kv_lora_rank + 4 * num_scales(); }
  /// Bytes per token: R + 4 S + 2 P (656 for R = 512, P = 64).
  Index bytes_per_token() const { return rope_offset() + 2 * rope_dim; }

  /// Throws std::invalid_argument unless R > 0, P >= 0 and the row's byte count
  /// R + 4 ceil(R / 128) + 2 P fits in int64 (so bytes_per_token() is then safe to call).
  void validate() const {
    MLA_CHECK_ARG(kv_lora_rank > 0 && rope_dim >= 0, "Fp8LatentLayout: kv_lora_rank (",
                  kv_lora_rank, ") must be positive and rope_dim (", rope_dim, ") non-negative");
    // 4 * num_scales() <= kv_lora_rank / 32 + 4 cannot overflow; 2 * rope_dim can.
    internal::checked_add("Fp8LatentLayout: row bytes kv_lora_rank + 4 * scales + 2 * rope_dim",
                          {kv_lora_rank, 4 * num_scales(),
                           internal::checked_mul("Fp8LatentLayout: 2 * rope_dim", {2, rope_dim})});
  }
};

/// Quantises one latent row src [R + P] = [c_kv | k_pe] into `dst` [layout.bytes_per_token()]:
/// per 128-value tile scale = max|c| / 448 (0 for an all-zero tile), code = e4m3(c / scale);
/// k_pe rounded to bf16 (nearest even). A tile holding inf or NaN decodes to NaN.
template <class Src>
void fp8_latent_quantize_row(const Src* src, const Fp8LatentLayout& layout, std::uint8_t* dst) {
  const Index R = layout.kv_lora_rank, P = layout.rope_dim;
  for (Index s = 0; s < layout.num_scales(); ++s) {
    const Index begin = s * Fp8LatentLayout::kTile,
                end = std::min(R, begin + Fp8LatentLayout::kTile);
    float amax = 0.0f;
    for (Index i = begin; i < end; ++i) {
      const float v = std::fabs(static_cast<float>(src[i]));
      amax = std::isnan(v) || v > amax ? v : amax;  // keep a NaN so the tile decodes to NaN
    }
    const float scale = amax / kFp8E4M3Max;
    for (Index i = begin; i < end; ++i)
      dst[i] = scale == 0.0f ? std::uint8_t{0}
                             : fp8_e4m3_from_float(static_cast<float>(src[i]) / scale);
    std::memcpy(dst + layout.scales_offset() + 4 * s, &scale, sizeof scale);
  }
  for (Index i = 0; i < P; ++i) {
    const std::uint16_t b =
        Eigen::numext::bit_cast<std::uint16_t>(static_cast<bfloat16>(static_cast<float>(src[R + i])));
    std::memcpy(dst + layout.rope_offset() + 2 * i, &b, sizeof b);
  }
}

namespace internal {

/// The scale of tile s of an FP8 latent row (unaligned-safe read).
inline float fp8_row_scale(const std::uint8_t* row, const Fp8LatentLayout& layout, Index s) {
  float v;
  std::memcpy(&v, row + layout.scales_offset() + 4 * s, sizeof v);
  return v;
}

/// The portable dequantisation, into float or double rows (the values are the same floats).
template <class Dst>
void fp8_latent_dequantize_rows_portable(const std::uint8_t* src, Index src_stride, Index rows,
                                         const Fp8LatentLayout& layout, Dst* dst,
                                         Index dst_stride) {
  const std::array<float, 256>& table = fp8_table(Fp8Format::kE4M3);
  const Index R = layout.kv_lora_rank, P = layout.rope_dim;
  for (Index r = 0; r < rows; ++r) {
    const std::uint8_t* row = src + r * src_stride;
    Dst* out = dst + r * dst_stride;
    for (Index s = 0; s < layout.num_scales(); ++s) {
      const float scale = fp8_row_scale(row, layout, s);
      const Index end = std::min(R, (s + 1) * Fp8LatentLayout::kTile);
      for (Index i = s * Fp8LatentLayout::kTile; i < end; ++i) out[i] = Dst(table[row[i]] * scale);
    }
    for (Index i = 0; i < P; ++i) {
      std::uint16_t b;
      std::memcpy(&b, row + layout.rope_offset() + 2 * i, sizeof b);
      out[R + i] = Dst(bfloat16_bits_to_float(b));
    }
  }
}

#if MLA_X86_SIMD
MLA_TARGET_AVX2_BEGIN
/// 8 E4M3 codes -> float, by bit arithmetic: placing the 7 magnitude bits at float bits 20..26
/// gives a float whose exponent field is the E4M3 exponent, i.e. the value times 2^-120 (for
/// exponent 0 a float subnormal, m * 2^-129, which is the E4M3 subnormal times 2^-120 too), so a
/// multiply by 2^120 finishes the job exactly. Code 0x7F / 0xFF (NaN) is patched to NaN.
/// (Relies on subnormal floats not being flushed to zero, the default floating-point mode.)
inline __m256 fp8_e4m3_decode8_avx2(const std::uint8_t* p) {
  const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i mag = _mm256_and_si256(c, _mm256_set1_epi32(0x7F));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x80)), 24);
  __m256 v = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(mag, 20)),
                           _mm256_set1_ps(0x1p120f));
  const __m256 is_nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F)));
  v = _mm256_blendv_ps(v, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()), is_nan);
  return _mm256_or_ps(v, _mm256_castsi256_ps(sign));
}

inline void fp8_latent_dequantize_rows_avx2(const std::uint8_t* src, Index src_stride, Index rows,
                                            const Fp8LatentLayout& layout, float* dst,
                                            Index dst_stride) {
  const std::array<float, 256>& table = fp8_table(Fp8Format::kE4M3);
  const Index R = layout.kv_lora_rank, P = layout.rope_dim;
  for (Index r = 0; r < rows; ++r) {
    const std::uint8_t* row = src + r * src_stride;
    float* out = dst + r * dst_stride;
    for (Index s = 0; s < layout.num_scales(); ++s) {
      const float scale = fp8_row_scale(row, layout, s);
      const __m256 vs = _mm256_set1_ps(scale);
      const Index begin = s * Fp8LatentLayout::kTile;
      const Index end = std::min(R, begin + Fp8LatentLayout::kTile);
      Index i = begin;
      for (; i + 8 <= end; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(fp8_e4m3_decode8_avx2(row + i), vs));
      for (; i < end; ++i) out[i] = table[row[i]] * scale;
    }
    widen_bf16_bytes_avx2(row + layout.rope_offset(), P, out + R);
  }
}
}  // namespace internal
}  // namespace mla
MLA_TARGET_END
#endif  // MLA_X86_SIMD

namespace mla {

/// Dequantises `rows` FP8 latent rows (`src_stride` bytes apart) into float rows
/// dst [rows, R + P] (`dst_stride` floats apart): [e4m3(code) * scale | bf16 k_pe]. Exact: every
/// product of an E4M3 value and a float scale that does not overflow is the float the reference
/// dequantisation forms (one rounding). Runs the AVX2 form where kernels::auto_path() allows it.
inline void fp8_latent_dequantize_rows(const std::uint8_t* src, Index src_stride, Index rows,
                                       const Fp8LatentLayout& layout, float* dst,
                                       Index dst_stride) {
#if MLA_X86_SIMD
  if (kernels::auto_path() != kernels::KernelPath::kPortable)
    return internal::fp8_latent_dequantize_rows_avx2(src, src_stride, rows, layout, dst,
                                                     dst_stride);
#endif
  internal::fp8_latent_dequantize_rows_portable(src, src_stride, rows, layout, dst, dst_stride);
}

namespace internal {
/// The FP8 row format for the row codec (latent_rows.hpp).
struct Fp8LatentFormat {
  using Layout = Fp8LatentLayout;
  template <class Src>
  static void quantize_row(const Src* src, const Layout& layout, std::uint8_t* dst) {
    fp8_latent_quantize_row(src, layout, dst);
  }
  template <class Dst>
  static void dequantize_portable(const std::uint8_t* src, Index src_stride, Index rows,
                                  const Layout& layout, Dst* dst, Index dst_stride) {
    fp8_latent_dequantize_rows_portable(src, src_stride, rows, layout, dst, dst_stride);
  }
#if MLA_X86_SIMD
  static void dequantize_avx2(const std::uint8_t* src, Index src_stride, Index rows,
                              const Layout& layout, float* dst, Index dst_stride) {
    fp8_latent_dequantize_rows_avx2(src, src_stride, rows, layout, dst, dst_stride);
  }
#endif
};
}  // namespace internal

/// Tag type naming the FP8 latent row format as a cache element type, e.g.
/// PagedLatentCache<Fp8Latent> or a LatentRowsView<Fp8Latent> (latent_rows.hpp).
struct Fp8Latent {};

}  // namespace mla
