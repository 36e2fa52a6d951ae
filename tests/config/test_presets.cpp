// The presets (mla/presets.hpp) against the published model configs and the numbers the docs
// quote from them: every preset validates; DeepSeek-V3 caches 512 + 64 = 576 values per token and
// layer, 71.88% fewer than Qwen2.5-72B's 2 x 8 x 128 = 2048; the yarn softmax scale follows
// transformers' yarn_get_mscale. Expectations are the published fields and double arithmetic.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "mla/presets.hpp"

namespace mla {
namespace {

TEST(Presets, EveryPresetValidates) {
  for (const MlaConfig& c : {presets::deepseek_v3(), presets::deepseek_r1(), presets::deepseek_v2(),
                             presets::deepseek_v2_lite()})
    EXPECT_NO_THROW(c.validate());
  for (const AttentionConfig& c :
       {presets::qwen2_5_32b(), presets::qwen2_5_72b(), presets::llama3_1_8b(),
        presets::llama3_1_70b(), presets::llama3_1_405b(), presets::mha_128x128()})
    EXPECT_NO_THROW(c.validate());
}

TEST(Presets, DeepSeekV3HasThePublishedShape) {
  // deepseek-ai/DeepSeek-V3 config.json.
  const MlaConfig c = presets::deepseek_v3();
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.max_position_embeddings, 163840);
  EXPECT_EQ(c.rope.rope_type, RopeType::kYarn);
  EXPECT_EQ(c.rope.factor, 40.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  // V2 and V2-Lite share the per-head sizes; V2-Lite has no query compression.
  for (const MlaConfig& v : {presets::deepseek_v2(), presets::deepseek_v2_lite()}) {
    EXPECT_EQ(v.kv_lora_rank, 512);
    EXPECT_EQ(v.qk_rope_head_dim, 64);
  }
  EXPECT_FALSE(presets::deepseek_v2_lite().has_q_lora());
}

TEST(Presets, DeepSeekV3CachesSeventyTwoPercentLessThanQwen72b) {
  const MlaConfig v3 = presets::deepseek_v3();
  // The latent cache row: c_kv (kv_lora_rank) and the shared rotated key (qk_rope_head_dim).
  EXPECT_EQ(v3.latent_dim(), 512 + 64);
  EXPECT_EQ(v3.latent_dim(), 576);
  // Decompressed, it would be K (nope + rope) and V per head: 128 x (192 + 128).
  EXPECT_EQ(v3.decompressed_values_per_token(), 128 * (128 + 64 + 128));
  const AttentionConfig qwen = presets::qwen2_5_72b();
  EXPECT_EQ(qwen.num_key_value_heads, 8);
  EXPECT_EQ(qwen.head_dim, 128);
  EXPECT_EQ(qwen.kv_values_per_token(), 2 * 8 * 128);
  const double smaller = 1.0 - double(v3.latent_dim()) / double(qwen.kv_values_per_token());
  EXPECT_EQ(smaller, 0.71875);  // 1 - 576 / 2048, exact in binary
  char pct[16];
  std::snprintf(pct, sizeof pct, "%.2f%%", 100.0 * smaller);
  EXPECT_EQ(std::string(pct), "71.88%");  // the figure README and docs quote
}

TEST(Presets, DeepSeekSoftmaxScaleCarriesTheYarnMscaleSquared) {
  // transformers: scale = qk_head_dim^-0.5 * (0.1 * mscale_all_dim * ln(factor) + 1)^2.
  const double v3_m = 0.1 * 1.0 * std::log(40.0) + 1.0;
  EXPECT_NEAR(presets::deepseek_v3().softmax_scale(), v3_m * v3_m / std::sqrt(192.0), 1e-15);
  const double v2_m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(presets::deepseek_v2().softmax_scale(), v2_m * v2_m / std::sqrt(192.0), 1e-15);
  // mscale == mscale_all_dim: the cos/sin factor is exactly 1.
  EXPECT_EQ(presets::deepseek_v3().rope.attention_factor(), 1.0);
  EXPECT_EQ(presets::qwen2_5_72b().softmax_scale(), 1.0 / std::sqrt(128.0));
}

}  // namespace
}  // namespace mla
