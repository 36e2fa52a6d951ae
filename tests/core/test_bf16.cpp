// core/bf16.hpp: bfloat16 -> float widening, held to the format's definition (bf16 is the top 16
// bits of a float32, so widening is a 16-bit shift) for all 65536 codes, NaN, infinities and
// subnormals included; and the float -> bf16 rounding the layers use (Eigen's bfloat16 cast, in
// Linear::store_as_bf16) against round-to-nearest-even computed from the bits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "mla/core/bf16.hpp"
#include "support/float_formats.hpp"

namespace mla {
namespace {

using testing::bits_of;
using testing::from_bits;

bfloat16 bf16_from_bits(std::uint16_t b) { return Eigen::numext::bit_cast<bfloat16>(b); }

TEST(Bf16, WideningIsTheSixteenBitShiftForEveryCode) {
  for (std::uint32_t c = 0; c < 0x10000u; ++c) {
    const auto code = static_cast<std::uint16_t>(c);
    const float want = from_bits(c << 16);
    const float got = internal::bf16_bits_to_float(code);
    ASSERT_EQ(bits_of(got), c << 16) << "code " << c;  // NaN payloads kept too
    if (!std::isnan(got)) {
      ASSERT_EQ(double(got), testing::ref_bf16(int(c))) << "code " << c;
    }
    ASSERT_EQ(bits_of(internal::bf16_to_float(bf16_from_bits(code))), bits_of(want)) << c;
    ASSERT_EQ(bits_of(internal::to_float(bf16_from_bits(code))), bits_of(want)) << c;
  }
}

TEST(Bf16, EdgeValues) {
  EXPECT_EQ(internal::bf16_bits_to_float(0x3F80), 1.0f);
  EXPECT_EQ(internal::bf16_bits_to_float(0xC000), -2.0f);
  EXPECT_EQ(internal::bf16_bits_to_float(0x7F80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(internal::bf16_bits_to_float(0xFF80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(internal::bf16_bits_to_float(0x7FC0)));
  EXPECT_TRUE(std::isnan(internal::bf16_bits_to_float(0xFF81)));  // signalling, negative
  EXPECT_TRUE(std::signbit(internal::bf16_bits_to_float(0x8000)));  // -0
  EXPECT_EQ(internal::bf16_bits_to_float(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_EQ(internal::bf16_bits_to_float(0x0080), std::numeric_limits<float>::min());
  EXPECT_EQ(internal::bf16_bits_to_float(0x7F7F), std::ldexp(255.0f / 128.0f, 127));  // max
  EXPECT_EQ(internal::to_float(2.5f), 2.5f);
}

/// Round-to-nearest-even of float bits to their top 16, from the definition: keep the top half,
/// add one ulp when the dropped half is above the midpoint, or at it with an odd kept half.
std::uint16_t rne_bits(std::uint32_t b) {
  const std::uint32_t kept = b >> 16, dropped = b & 0xFFFFu;
  const bool up = dropped > 0x8000u || (dropped == 0x8000u && (kept & 1u));
  return static_cast<std::uint16_t>(kept + (up ? 1u : 0u));
}

TEST(Bf16, RoundingToBf16IsNearestEvenAndRoundTrips) {
  // Ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 and goes to 1 (even); 1 + 3 * 2^-8 is
  // halfway between 1 + 2^-7 (odd) and 1 + 2^-6 and goes up.
  EXPECT_EQ(internal::bf16_to_float(bfloat16(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(internal::bf16_to_float(bfloat16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  EXPECT_EQ(internal::bf16_to_float(bfloat16(std::nextafter(1.0f + 0x1p-8f, 2.0f))), 1.0f + 0x1p-7f);
  // The largest float is past the largest bf16's midpoint: it rounds to infinity.
  EXPECT_EQ(internal::bf16_to_float(bfloat16(std::numeric_limits<float>::max())),
            std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(internal::bf16_to_float(bfloat16(std::numeric_limits<float>::quiet_NaN()))));
  // Every bf16 value survives float -> bf16 unchanged.
  for (std::uint32_t c = 0; c < 0x10000u; ++c) {
    const float f = from_bits(c << 16);
    if (std::isnan(f)) continue;
    ASSERT_EQ(Eigen::numext::bit_cast<std::uint16_t>(bfloat16(f)), c) << c;
  }
  // Random finite floats of every binade, subnormals included.
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const std::uint32_t b = rng();
    const float f = from_bits(b);
    if (!std::isfinite(f)) continue;
    ASSERT_EQ(Eigen::numext::bit_cast<std::uint16_t>(bfloat16(f)), rne_bits(b)) << "bits " << b;
  }
}

}  // namespace
}  // namespace mla
