// core/shapes.hpp: the kernels' call shapes. A valid shape passes; each field out of range is
// refused with a message naming the field and its value; the derived sizes follow their
// definitions (rows = q_len * num_heads, row_dim = kv_lora + rope, group = heads / kv_heads).
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "mla/core/shapes.hpp"
#include "support/error_message.hpp"

namespace mla::kernels {
namespace {

using testing::invalid_argument_of;

AbsorbedAttentionShape v3_decode() {
  AbsorbedAttentionShape s;  // DeepSeek-V3: 128 heads over a [512 | 64] latent row
  s.q_len = 2;
  s.num_heads = 128;
  s.cache_len = 10;
  return s;
}

TEST(Shapes, AbsorbedDerivedSizesAndChecks) {
  const AbsorbedAttentionShape good = v3_decode();
  ASSERT_NO_THROW(good.validate());
  EXPECT_EQ(good.rows(), 2 * 128);
  EXPECT_EQ(good.row_dim(), 512 + 64);
  struct Bad {
    std::function<void(AbsorbedAttentionShape&)> set;
    const char* words;
  };
  const std::vector<Bad> cases = {
      {[](auto& s) { s.q_len = 0; }, "q_len must be >= 1, got 0"},
      {[](auto& s) { s.num_heads = -1; }, "num_heads must be >= 1, got -1"},
      {[](auto& s) { s.kv_lora = 0; }, "kv_lora must be >= 1, got 0"},
      {[](auto& s) { s.rope = -1; }, "rope must be >= 0, got -1"},
      {[](auto& s) { s.cache_len = 1; }, "cache_len (1) must be >= q_len (2)"},
      {[](auto& s) { s.row_stride = 575; }, "row_stride (575) must be >= kv_lora + rope (576)"},
  };
  for (const Bad& c : cases) {
    AbsorbedAttentionShape s = good;
    c.set(s);
    EXPECT_HAS(invalid_argument_of([&] { s.validate(); }), c.words);
  }
  AbsorbedAttentionShape no_rope = good;  // rope 0 is allowed: a latent row without k_pe
  no_rope.rope = 0;
  EXPECT_NO_THROW(no_rope.validate());
}

TEST(Shapes, GqaDerivedSizesAndChecks) {
  GqaAttentionShape good;  // Qwen2.5-72B: 64 query heads over 8 kv heads of 128
  good.num_heads = 64;
  good.num_kv_heads = 8;
  good.cache_len = 100;
  good.k_head_stride = 100 * 128;
  good.v_head_stride = 100 * 128;
  ASSERT_NO_THROW(good.validate());
  EXPECT_EQ(good.group_size(), 8);
  struct Bad {
    std::function<void(GqaAttentionShape&)> set;
    const char* words;
  };
  const std::vector<Bad> cases = {
      {[](auto& s) { s.q_len = 0; }, "q_len must be >= 1, got 0"},
      {[](auto& s) { s.num_kv_heads = 0; }, "num_kv_heads must be >= 1, got 0"},
      {[](auto& s) { s.num_heads = 60; }, "num_heads (60) is not a positive multiple of num_kv_heads (8)"},
      {[](auto& s) { s.head_dim = 0; }, "head_dim must be >= 1, got 0"},
      {[](auto& s) { s.v_dim = 0; }, "v_dim must be >= 1, got 0"},
      {[](auto& s) { s.cache_len = 0; }, "cache_len (0) must be >= q_len (1)"},
      {[](auto& s) { s.k_head_stride = 100 * 128 - 1; },
       "k_head_stride (12799) must be >= cache_len * head_dim (12800)"},
      {[](auto& s) { s.v_head_stride = 5; }, "v_head_stride (5) must be >= cache_len * v_dim (12800)"},
  };
  for (const Bad& c : cases) {
    GqaAttentionShape s = good;
    c.set(s);
    EXPECT_HAS(invalid_argument_of([&] { s.validate(); }), c.words);
  }
  // One kv head: its strides are never used to step to another head, so they are not checked.
  GqaAttentionShape mqa = good;
  mqa.num_heads = 8;
  mqa.num_kv_heads = 1;
  mqa.k_head_stride = mqa.v_head_stride = 0;
  EXPECT_NO_THROW(mqa.validate());
}

}  // namespace
}  // namespace mla::kernels
