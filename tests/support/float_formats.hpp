// The narrow float formats written out from their definitions, independently of the library's
// decoders (core/fp8.hpp, core/bf16.hpp), for the tests that hold those decoders and the readers
// built on them to the definitions: ldexp decoders of FP8 E4M3FN / E5M2, IEEE half and bfloat16,
// float bit casts, and a comparison that treats two NaNs as equal and tells -0 from +0.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

namespace mla::testing {

inline float from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

inline std::uint32_t bits_of(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

// Decoders written from the format definitions with ldexp.
inline double ref_e4m3(int c) {
  const int e = (c >> 3) & 15, m = c & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double v = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);  // (1 + m/8) 2^(e-7)
  return (c & 0x80) ? -v : v;
}
inline double ref_e5m2(int c) {
  const int e = (c >> 2) & 31, m = c & 3;
  double v;
  if (e == 31) v = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  else v = e == 0 ? std::ldexp(m, -16) : std::ldexp(4 + m, e - 17);  // (1 + m/4) 2^(e-15)
  return (c & 0x80) ? -v : v;
}
inline double ref_f16(int h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31) v = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  else v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}
inline double ref_bf16(int b) {
  const int e = (b >> 7) & 255, m = b & 127;
  double v;
  if (e == 255) v = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  else v = e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 134);
  return (b & 0x8000) ? -v : v;
}

// Same value, or both NaN.
inline void expect_same(double got, double want, const std::string& what) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << what;
  } else {
    EXPECT_EQ(got, want) << what;
    EXPECT_EQ(std::signbit(got), std::signbit(want)) << what;
  }
}

}  // namespace mla::testing
