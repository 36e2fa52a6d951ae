// Scalar decoders for the narrow float formats found in safetensors checkpoints (IEEE half, bfloat16,
// OCP FP8 E4M3FN and E5M2, the E8M0 power-of-two scale format) and the block-wise FP8 dequantisation
// that DeepSeek-V3/R1 releases use: a weight W [rows, cols] stored as F8_E4M3 next to
// W_scale_inv [ceil(rows/128), ceil(cols/128)] in F32, with W[i][j] = fp8(W8[i][j]) * s[i/128][j/128]
// (DeepSeek-V3 inference/kernel.py `weight_dequant`). Decoding is exact: every code of these formats
// is a float32 value. The decoders are written from the format definitions, not with Eigen's
// half/bfloat16 internals, so the tests can hold them against Eigen as an independent check.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla {
namespace internal {
inline float float_from_bits(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
}  // namespace internal

namespace io {

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

/// bfloat16 bits -> float (exact): bfloat16 is the top half of a float32.
inline float bfloat16_bits_to_float(std::uint16_t b) {
  return internal::float_from_bits(static_cast<std::uint32_t>(b) << 16);
}

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

/// The two FP8 weight formats that block-wise dequantisation accepts.
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

/// Block size of the FP8 scales: one scale per [rows, cols] tile. DeepSeek-V3 uses 128 x 128
/// (config.json `quantization_config.weight_block_size`).
struct Fp8BlockSize {
  Index rows = 128;  // tile height (weight rows per scale row)
  Index cols = 128;  // tile width (weight columns per scale column)
};

/// Number of scale rows/cols for a [rows, cols] weight: ceil(rows / block.rows), ceil(cols / block.cols).
inline Index fp8_scale_dim(Index n, Index block) { return block > 0 ? (n + block - 1) / block : 0; }

/// Block-wise FP8 dequantisation:
///   out[i, j] = fp8(codes[i, j]) * scale_inv[i / block.rows, j / block.cols]
/// codes [rows, cols] row-major, scale_inv [ceil(rows/block.rows), ceil(cols/block.cols)] row-major,
/// out [rows, cols] row-major. The product is formed in double when Scalar is double (then it is
/// exact) and in float otherwise (as DeepSeek's float32 kernel does), then converted to Scalar.
/// Throws std::invalid_argument when the sizes do not fit together.
template <class Scalar>
void dequantize_fp8_blockwise(const std::uint8_t* codes, Fp8Format format, Index rows, Index cols,
                              const float* scale_inv, Index scale_rows, Index scale_cols,
                              Fp8BlockSize block, Scalar* out) {
  MLA_CHECK_ARG(rows >= 0 && cols >= 0, "dequantize_fp8_blockwise: negative shape [", rows, ", ",
                cols, "]");
  MLA_CHECK_ARG(block.rows > 0 && block.cols > 0, "dequantize_fp8_blockwise: block size [",
                block.rows, ", ", block.cols, "] must be positive");
  MLA_CHECK_ARG(scale_rows == fp8_scale_dim(rows, block.rows) &&
                    scale_cols == fp8_scale_dim(cols, block.cols),
                "dequantize_fp8_blockwise: weight [", rows, ", ", cols, "] with blocks [", block.rows,
                ", ", block.cols, "] needs scales [", fp8_scale_dim(rows, block.rows), ", ",
                fp8_scale_dim(cols, block.cols), "], got [", scale_rows, ", ", scale_cols, "]");
  static_assert(!std::is_integral<Scalar>::value,
                "dequantize_fp8_blockwise: Scalar must be a floating type (NaN codes have no integer value)");
  using Acc = std::conditional_t<std::is_same<Scalar, double>::value, double, float>;
  const std::array<float, 256>& table = fp8_table(format);
  for (Index i = 0; i < rows; ++i) {
    const float* srow = scale_inv + (i / block.rows) * scale_cols;
    const std::uint8_t* crow = codes + i * cols;
    Scalar* orow = out + i * cols;
    for (Index j0 = 0; j0 < cols; j0 += block.cols) {
      const Acc s = static_cast<Acc>(srow[j0 / block.cols]);
      const Index j1 = j0 + block.cols < cols ? j0 + block.cols : cols;
      for (Index j = j0; j < j1; ++j) orow[j] = static_cast<Scalar>(static_cast<Acc>(table[crow[j]]) * s);
    }
  }
}

}  // namespace io
}  // namespace mla
