// Block-wise FP8 dequantisation of checkpoint weights, as DeepSeek-V3/R1 releases store them: a
// weight W [rows, cols] stored as F8_E4M3 next to W_scale_inv [ceil(rows/128), ceil(cols/128)] in
// F32, with W[i][j] = fp8(W8[i][j]) * s[i/128][j/128] (DeepSeek-V3 inference/kernel.py
// `weight_dequant`). The scalar codecs it builds on (half, bfloat16, FP8 E4M3/E5M2, E8M0) are in
// mla/core/fp8.hpp, shared with the FP8 latent cache; they are also named here in mla::io, where
// the checkpoint reader uses them.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "mla/core/check.hpp"
#include "mla/core/fp8.hpp"
#include "mla/core/types.hpp"

namespace mla {
namespace io {

using ::mla::bfloat16_bits_to_float;
using ::mla::float16_bits_to_float;
using ::mla::Fp8Format;
using ::mla::fp8_e4m3_to_float;
using ::mla::fp8_e5m2_to_float;
using ::mla::fp8_e8m0_to_float;
using ::mla::fp8_table;

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
