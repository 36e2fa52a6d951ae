// core/fp8.hpp: the scalar codecs of the narrow float formats, held to the format definitions
// (support/float_formats.hpp's ldexp decoders) for every code of FP8 E4M3FN, E5M2, E8M0, IEEE half
// and bfloat16, NaN, infinities, signed zeros and subnormals included, and against Eigen::half;
// and the float -> E4M3FN encoder against the decoder: every code round-trips, midpoints tie to
// even, and every float rounds to the nearest code found by brute force over the decoded values,
// with saturation at 448 and NaN kept.
#include "mla/core/fp8.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "mla/core/types.hpp"
#include "support/float_formats.hpp"

namespace mla {
namespace {

using testing::expect_same;
using testing::from_bits;
using testing::ref_bf16;
using testing::ref_e4m3;
using testing::ref_e5m2;
using testing::ref_f16;

TEST(Fp8, E4m3AllCodesMatchLdexpFormula) {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const float got = fp8_e4m3_to_float(static_cast<std::uint8_t>(c));
    expect_same(got, ref_e4m3(c), "code " + std::to_string(c));
    expect_same(fp8_table(Fp8Format::kE4M3)[c], got, "table");  // table == function
    nans += std::isnan(got);
    EXPECT_FALSE(std::isinf(got)) << "e4m3fn has no infinities, code " << c;
  }
  EXPECT_EQ(nans, 2);  // 0x7F and 0xFF only
  EXPECT_EQ(fp8_e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0xB8), -1.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0xFE), -448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x08), 0.015625f);            // min normal 2^-6
  EXPECT_EQ(fp8_e4m3_to_float(0x01), 0.001953125f);         // min subnormal 2^-9
  EXPECT_EQ(fp8_e4m3_to_float(0x07), 0.013671875f);         // max subnormal 7 * 2^-9
  EXPECT_TRUE(std::signbit(fp8_e4m3_to_float(0x80)));        // -0
}

TEST(Fp8, E5m2AndE8m0AllCodes) {
  for (int c = 0; c < 256; ++c) {
    expect_same(fp8_e5m2_to_float(static_cast<std::uint8_t>(c)), ref_e5m2(c),
                "e5m2 code " + std::to_string(c));
    const float e8 = fp8_e8m0_to_float(static_cast<std::uint8_t>(c));
    if (c == 255) {
      EXPECT_TRUE(std::isnan(e8));
    } else {
      EXPECT_EQ(e8, std::ldexp(1.0f, c - 127)) << c;
    }
  }
  EXPECT_EQ(fp8_e5m2_to_float(0x3C), 1.0f);
  EXPECT_EQ(fp8_e5m2_to_float(0x7B), 57344.0f);
  EXPECT_TRUE(std::isinf(fp8_e5m2_to_float(0x7C)));
}

TEST(HalfDecoders, KnownValues) {
  const std::vector<std::pair<std::uint16_t, double>> f16 = {
      {0x3C00, 1.0},      {0xC100, -2.5},          {0x7BFF, 65504.0},
      {0x0001, 5.9604644775390625e-08 /* 2^-24 */},  {0x03FF, 6.097555160522461e-05 /* 1023 * 2^-24 */},
      {0x0400, 6.103515625e-05 /* 2^-14 */},          {0x3555, 0.333251953125},
      {0x0000, 0.0},      {0x8000, -0.0},
  };
  for (const auto& [bits, value] : f16) {
    expect_same(float16_bits_to_float(bits), value, "f16 " + std::to_string(bits));
  }
  EXPECT_EQ(float16_bits_to_float(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(float16_bits_to_float(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(float16_bits_to_float(0x7E00)));

  const std::vector<std::pair<std::uint16_t, double>> bf16 = {
      {0x4049, 3.140625}, {0x3F80, 1.0}, {0xC020, -2.5},
      {0x7F7F, 3.3895313892515355e+38}, {0x0001, 9.183549615799121e-41 /* 2^-133 */},
      {0x0080, 1.1754943508222875e-38 /* 2^-126 */},
  };
  for (const auto& [bits, value] : bf16) {
    expect_same(bfloat16_bits_to_float(bits), value, "bf16 " + std::to_string(bits));
  }
  EXPECT_EQ(bfloat16_bits_to_float(0xFF80), -std::numeric_limits<float>::infinity());
}

TEST(HalfDecoders, AllCodesMatchLdexpFormulaAndEigen) {
  for (int h = 0; h < 65536; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = float16_bits_to_float(bits);
    const float b = bfloat16_bits_to_float(bits);
    if (std::isnan(ref_f16(h)) != std::isnan(f) || (!std::isnan(f) && f != ref_f16(h))) {
      ADD_FAILURE() << "f16 code " << h;
      break;
    }
    if (std::isnan(ref_bf16(h)) != std::isnan(b) || (!std::isnan(b) && b != ref_bf16(h))) {
      ADD_FAILURE() << "bf16 code " << h;
      break;
    }
    const float eh = static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
    if (!std::isnan(f) && eh != f) {
      ADD_FAILURE() << "f16 code " << h << " disagrees with Eigen::half";
      break;
    }
  }
}

/// The expected code of x by brute force: the non-negative code (0x00..0x7E) whose value is
/// nearest to |x| (ties: the even code), with x's sign; NaN -> 0x7F; beyond 448 -> 448.
std::uint8_t brute_force_code(float x) {
  std::uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return std::uint8_t(sign | 0x7F);
  const double a = std::fabs(double(x));
  int best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= 0x7E; ++c) {
    const double d = std::fabs(double(fp8_e4m3_to_float(std::uint8_t(c))) - a);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best_d = d;
      best = c;
    }
  }
  if (std::isinf(a)) best = 0x7E;
  return std::uint8_t(sign | best);
}

TEST(Fp8E4M3Encoder, EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const float v = fp8_e4m3_to_float(std::uint8_t(c));
    if (std::isnan(v)) {
      EXPECT_EQ(fp8_e4m3_from_float(v) & 0x7F, 0x7F) << c;
      continue;
    }
    EXPECT_EQ(fp8_e4m3_from_float(v), c) << "code " << c << " value " << v;
  }
}

TEST(Fp8E4M3Encoder, MidpointsTieToEvenAndNeighboursRoundToNearest) {
  for (int c = 0; c < 0x7E; ++c) {
    const float lo = fp8_e4m3_to_float(std::uint8_t(c));
    const float hi = fp8_e4m3_to_float(std::uint8_t(c + 1));
    const float mid = (lo + hi) / 2;  // exact: 5 significant bits at most
    ASSERT_EQ(double(mid), (double(lo) + double(hi)) / 2);
    const int even = (c & 1) == 0 ? c : c + 1;
    for (float sign : {1.0f, -1.0f}) {
      const int s = sign < 0 ? 0x80 : 0;
      EXPECT_EQ(fp8_e4m3_from_float(sign * mid), s | even) << "midpoint of codes " << c;
      EXPECT_EQ(fp8_e4m3_from_float(sign * std::nextafter(mid, 0.0f)), s | c) << c;
      EXPECT_EQ(fp8_e4m3_from_float(sign * std::nextafter(mid, 1e9f)), s | (c + 1)) << c;
    }
  }
  // Past 448: the midpoint to the 480 E4M3FN lacks ties to 448 (even), everything above
  // saturates, infinities too; NaN keeps its sign.
  EXPECT_EQ(fp8_e4m3_from_float(464.0f), 0x7E);
  EXPECT_EQ(fp8_e4m3_from_float(std::nextafter(464.0f, 1e9f)), 0x7E);
  EXPECT_EQ(fp8_e4m3_from_float(1e30f), 0x7E);
  EXPECT_EQ(fp8_e4m3_from_float(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(fp8_e4m3_from_float(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(fp8_e4m3_from_float(-std::numeric_limits<float>::quiet_NaN()), 0xFF);
  // Subnormal edge: 2^-10 is half the smallest subnormal and ties to zero; just above, 2^-9.
  EXPECT_EQ(fp8_e4m3_from_float(0x1p-10f), 0x00);
  EXPECT_EQ(fp8_e4m3_from_float(std::nextafter(0x1p-10f, 1.0f)), 0x01);
  EXPECT_EQ(fp8_e4m3_from_float(-0.0f), 0x80);
  EXPECT_EQ(fp8_e4m3_from_float(1e-45f), 0x00);  // a float subnormal
}

TEST(Fp8E4M3Encoder, MatchesBruteForceNearestOverAllExponentsAndSigns) {
  // Every value of the upper 16 bits (sign, exponent, 7 mantissa bits) with the lower 16 bits
  // zero, all ones, and random: 196608 floats covering every binade, both signs, inf and NaN.
  std::mt19937 rng(3);
  for (std::uint32_t hi = 0; hi < 0x10000u; ++hi)
    for (std::uint32_t lo : {0u, 0xFFFFu, std::uint32_t(rng() & 0xFFFFu)}) {
      const float x = from_bits((hi << 16) | lo);
      const std::uint8_t got = fp8_e4m3_from_float(x), want = brute_force_code(x);
      if (std::isnan(x)) {
        ASSERT_EQ(got, want) << "NaN bits " << ((hi << 16) | lo);
        continue;
      }
      ASSERT_EQ(got, want) << "x = " << x << " (bits 0x" << std::hex << ((hi << 16) | lo) << ")";
    }
}

}  // namespace
}  // namespace mla
