// core/arena.hpp: the kernels' aligned scratch. round_up is the documented power-of-two rounding;
// FloatArena lays regions out 16 floats (64 bytes) apart, the same whether it only measures (null
// base) or carves a real buffer; AlignedFloats is 64-byte aligned, only grows, and moves.
#include <gtest/gtest.h>

#include <cstdint>
#include <utility>

#include "mla/core/arena.hpp"

namespace mla::internal {
namespace {

bool aligned64(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

TEST(Arena, RoundUpToAPowerOfTwo) {
  EXPECT_EQ(round_up(0, 16), 0);
  EXPECT_EQ(round_up(1, 16), 16);
  EXPECT_EQ(round_up(16, 16), 16);
  EXPECT_EQ(round_up(17, 16), 32);
  EXPECT_EQ(round_up(5, 1), 5);
  EXPECT_EQ(round_up(65, 64), 128);
}

TEST(Arena, MeasuringAndCarvingAgree) {
  const Index sizes[] = {1, 16, 17, 0, 100};
  FloatArena measure;
  for (Index n : sizes) EXPECT_EQ(measure.take(n), nullptr);
  EXPECT_EQ(measure.used(), 16 + 16 + 32 + 0 + 112);

  AlignedFloats buf;
  buf.grow(measure.used());
  FloatArena carve(buf.data());
  Index offset = 0;
  for (Index n : sizes) {
    float* p = carve.take(n);
    EXPECT_EQ(p, buf.data() + offset) << n;
    EXPECT_TRUE(aligned64(p)) << n;
    offset += round_up(n, 16);
  }
  EXPECT_EQ(carve.used(), measure.used());
  // The last region ends inside the buffer: every region can be written.
  EXPECT_LE(carve.used(), buf.size());
}

TEST(Arena, AlignedFloatsGrowsOnlyAndMoves) {
  AlignedFloats a;
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0);
  a.grow(10);
  ASSERT_NE(a.data(), nullptr);
  EXPECT_TRUE(aligned64(a.data()));
  EXPECT_EQ(a.size(), 10);
  float* const first = a.data();
  a.grow(5);  // smaller: nothing changes
  EXPECT_EQ(a.data(), first);
  EXPECT_EQ(a.size(), 10);
  a.grow(1000);
  EXPECT_TRUE(aligned64(a.data()));
  EXPECT_EQ(a.size(), 1000);
  for (Index i = 0; i < a.size(); ++i) a.data()[i] = float(i);  // all of it is writable

  AlignedFloats b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is documented empty
  EXPECT_EQ(a.size(), 0);
  EXPECT_EQ(b.size(), 1000);
  EXPECT_EQ(b.data()[999], 999.0f);
  AlignedFloats c;
  c.grow(3);
  c = std::move(b);
  EXPECT_EQ(b.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(c.size(), 1000);
  EXPECT_EQ(c.data()[500], 500.0f);
}

}  // namespace
}  // namespace mla::internal
