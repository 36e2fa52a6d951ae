// Scalar bfloat16 decoding: bf16 is the top 16 bits of an IEEE float32, so widening is a shift
// and exact. (mla::bfloat16 itself is Eigen's type, core/types.hpp.)
#pragma once

#include <cstdint>
#include <cstring>

#include "mla/core/types.hpp"

namespace mla {
namespace internal {

/// The float whose top 16 bits are `bits` (exact).
inline float bf16_bits_to_float(std::uint16_t bits) {
  const std::uint32_t wide = std::uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

/// Widens bf16 to float.
inline float bf16_to_float(bfloat16 x) {
  return bf16_bits_to_float(Eigen::numext::bit_cast<std::uint16_t>(x));
}

/// A cache or weight element as float: itself, or widened from bf16.
inline float to_float(float x) { return x; }
inline float to_float(bfloat16 x) { return bf16_to_float(x); }

}  // namespace internal
}  // namespace mla
