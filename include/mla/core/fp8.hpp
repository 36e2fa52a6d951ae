// Scalar codecs for the narrow float formats the library stores or reads: decoders for IEEE half,
// bfloat16, OCP FP8 E4M3FN and E5M2 and the E8M0 power-of-two scale format, their 256-entry FP8
// decode tables, and the float -> E4M3FN encoder the FP8 latent cache writes with.
//
// Decoding is exact: every code of these formats is a float32 value. The decoders are written from
// the format definitions, not with Eigen's half/bfloat16 internals, so the tests can hold them
// against Eigen as an independent check. They live in core/ because both the FP8 cache
// (cache/quantized_latent_cache.hpp) and the checkpoint reader (io/) need them; the checkpoint-only
// block-scaled weight dequantisation stays in io/fp8.hpp.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <limits>

#include "mla/core/bf16.hpp"

namespace mla {
namespace internal {
inline float float_from_bits(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
}  // namespace internal

/// IEEE 754 binary16 bits -> float (exact). 1 sign, 5 exponent (bias 15), 10 mantissa bits;
/// exponent 0 is subnormal (m * 2^-24), exponent 31 is inf/NaN (payload kept).
inline float float16_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  const std::uint32_t man = h & 0x3FFu;
  if (exp == 0) {
    const float v = static_cast<float>(man) * 0x1p-24f;  // exact: man < 2^10
    return sign ? -v : v;
  }
  if (exp == 0x1F) return internal::float_from_bits(sign | 0x7F800000u | (man << 13));
  return internal::float_from_bits(sign | ((exp + 112u) << 23) | (man << 13));  // 112 = 127 - 15
}

/// bfloat16 bits -> float (exact): bfloat16 is the top half of a float32 (core/bf16.hpp).
inline float bfloat16_bits_to_float(std::uint16_t b) { return internal::bf16_bits_to_float(b); }

/// FP8 E4M3FN (OCP "float8_e4m3fn", torch.float8_e4m3fn, safetensors F8_E4M3) -> float.
/// 1 sign, 4 exponent (bias 7), 3 mantissa bits. No infinities: 0x7F and 0xFF are NaN, every other
/// code with exponent 15 is finite (max 448). Exponent 0 is subnormal: m * 2^-9.
inline float fp8_e4m3_to_float(std::uint8_t c) {
  const std::uint32_t sign = static_cast<std::uint32_t>(c & 0x80u) << 24;
  const std::uint32_t exp = (c >> 3) & 0xFu;
  const std::uint32_t man = c & 0x7u;
  if (exp == 0xF && man == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exp == 0) {
    const float v = static_cast<float>(man) * 0x1p-9f;
    return sign ? -v : v;
  }
  return internal::float_from_bits(sign | ((exp + 120u) << 23) | (man << 20));  // 120 = 127 - 7
}

/// FP8 E5M2 (safetensors F8_E5M2) -> float. It is IEEE-like (bias 15, inf and NaN at exponent 31)
/// and is exactly the top byte of a binary16.
inline float fp8_e5m2_to_float(std::uint8_t c) {
  return float16_bits_to_float(static_cast<std::uint16_t>(c << 8));
}

/// E8M0 (OCP MX scale format, safetensors F8_E8M0): 2^(c - 127), 0xFF is NaN. No sign, no zero.
inline float fp8_e8m0_to_float(std::uint8_t c) {
  if (c == 0xFF) return std::numeric_limits<float>::quiet_NaN();
  if (c == 0) return internal::float_from_bits(0x00400000u);  // 2^-127, a float32 subnormal
  return internal::float_from_bits(static_cast<std::uint32_t>(c) << 23);
}

/// The two FP8 element formats with a decode table (weights may be either; the cache uses E4M3).
enum class Fp8Format : std::uint8_t { kE4M3, kE5M2 };

/// 256-entry decode table for `format` (built once; avoids the branches in bulk decoding).
inline const std::array<float, 256>& fp8_table(Fp8Format format) {
  static const std::array<float, 256> e4m3 = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = fp8_e4m3_to_float(static_cast<std::uint8_t>(c));
    return t;
  }();
  static const std::array<float, 256> e5m2 = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = fp8_e5m2_to_float(static_cast<std::uint8_t>(c));
    return t;
  }();
  return format == Fp8Format::kE4M3 ? e4m3 : e5m2;
}

/// Largest finite FP8 E4M3FN magnitude.
inline constexpr float kFp8E4M3Max = 448.0f;

/// float -> FP8 E4M3FN (OCP; torch.float8_e4m3fn) with round-to-nearest, ties to even.
/// Finite values beyond the largest code (448) saturate to +-448, infinities too (OCP "satfinite"
/// conversion: the format has no infinity); NaN gives the NaN code 0x7F with the input's sign.
/// Values below 2^-6 are coded as subnormals m * 2^-9 (m = 0..7), so |x| <= 2^-10 rounds to zero
/// (2^-10 itself is a tie and goes to the even code, zero). The sign of zero is kept.
/// Inverse of fp8_e4m3_to_float on every non-NaN code.
inline std::uint8_t fp8_e4m3_from_float(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const std::uint8_t sign = static_cast<std::uint8_t>((bits >> 24) & 0x80u);
  const std::uint32_t a = bits & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<std::uint8_t>(sign | 0x7Fu);  // NaN
  // 464 = 0x43E80000 is the midpoint between 448 and the 480 the format lacks; it and everything
  // above it would round past 448, so saturate (ties at 464 would go to 448 anyway: 448 is even).
  if (a >= 0x43E80000u) return static_cast<std::uint8_t>(sign | 0x7Eu);
  if (a >= 0x3C800000u) {  // >= 2^-6: normal E4M3. Round the 23-bit mantissa to 3 bits.
    const std::uint32_t rounded = (a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20;
    // Re-bias the exponent from 127 to 7: subtract 120 from the exponent field (bits 3..6 here).
    return static_cast<std::uint8_t>(sign | (rounded - (120u << 3)));
  }
  // Subnormal E4M3 (or zero): the code is round(|x| * 2^9), 0..8 (8 is the smallest normal, code
  // 0x08, which this formula produces without special handling).
  const std::uint32_t exp = a >> 23;
  if (exp < 127 - 11) return sign;  // |x| < 2^-11 (float subnormals included): rounds to 0
  const std::uint32_t sig = (a & 0x7FFFFFu) | 0x800000u;  // |x| = sig * 2^(exp - 150)
  const std::uint32_t shift = 141u - exp;  // |x| * 2^9 = sig * 2^(exp - 141); shift in [21, 25]
  std::uint32_t q = sig >> shift;
  const std::uint32_t rem = sig & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<std::uint8_t>(sign | q);
}

}  // namespace mla
