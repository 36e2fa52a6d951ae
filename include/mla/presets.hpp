// Attention settings of real models, in one place, with the numbers of their released
// config.json files (Hugging Face hub). Tests, benchmarks and examples take their shapes from
// here. Only the attention-relevant fields are filled in.
#pragma once

#include <string>
#include <vector>

#include "mla/config.hpp"

namespace mla::presets {

/// YaRN settings shared by DeepSeek-V2/V3 (factor 40 over a 4k pre-training context).
inline RopeConfig deepseek_yarn(double mscale) {
  RopeConfig r;
  r.rope_type = RopeType::kYarn;
  r.layout = RopeLayout::kInterleaved;
  r.rope_theta = 10000.0;
  r.factor = 40.0;
  r.original_max_position_embeddings = 4096;
  r.beta_fast = 32.0;
  r.beta_slow = 1.0;
  r.mscale = mscale;
  r.mscale_all_dim = mscale;
  return r;
}

/// DeepSeek-V3 (671B; R1 and V3.1 share its attention): 61 layers, 128 heads.
inline MlaConfig deepseek_v3() {
  MlaConfig c;
  c.hidden_size = 7168;
  c.num_attention_heads = 128;
  c.q_lora_rank = 1536;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.rope = deepseek_yarn(1.0);
  c.max_position_embeddings = 163840;
  c.num_hidden_layers = 61;
  return c;
}
/// DeepSeek-R1: the attention of DeepSeek-V3.
inline MlaConfig deepseek_r1() { return deepseek_v3(); }

/// DeepSeek-V2 (236B): 60 layers, 128 heads, hidden 5120.
inline MlaConfig deepseek_v2() {
  MlaConfig c = deepseek_v3();
  c.hidden_size = 5120;
  c.rope = deepseek_yarn(0.707);
  c.num_hidden_layers = 60;
  return c;
}

/// DeepSeek-V2-Lite (16B): no query compression (q_proj), 16 heads, 27 layers.
inline MlaConfig deepseek_v2_lite() {
  MlaConfig c = deepseek_v2();
  c.hidden_size = 2048;
  c.num_attention_heads = 16;
  c.q_lora_rank = 0;
  c.num_hidden_layers = 27;
  return c;
}

inline AttentionConfig gqa(std::int64_t hidden, std::int64_t heads, std::int64_t kv_heads,
                           std::int64_t layers, double theta, std::int64_t max_pos,
                           bool qkv_bias) {
  AttentionConfig c;
  c.hidden_size = hidden;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = 128;
  c.qkv_bias = qkv_bias;
  c.rope.rope_theta = theta;
  c.max_position_embeddings = max_pos;
  c.num_hidden_layers = layers;
  return c;
}

/// Qwen2.5-32B: 64 layers, 40 query heads over 8 KV heads of 128.
inline AttentionConfig qwen2_5_32b() { return gqa(5120, 40, 8, 64, 1e6, 32768, true); }
/// Qwen2.5-72B: 80 layers, 64 query heads over 8 KV heads of 128.
inline AttentionConfig qwen2_5_72b() { return gqa(8192, 64, 8, 80, 1e6, 32768, true); }

inline RopeConfig llama3_rope() {
  RopeConfig r;
  r.rope_type = RopeType::kLlama3;
  r.rope_theta = 500000.0;
  r.factor = 8.0;
  r.low_freq_factor = 1.0;
  r.high_freq_factor = 4.0;
  r.original_max_position_embeddings = 8192;
  return r;
}
inline AttentionConfig llama3_1(std::int64_t hidden, std::int64_t heads, std::int64_t layers) {
  AttentionConfig c = gqa(hidden, heads, 8, layers, 500000.0, 131072, false);
  c.rope = llama3_rope();
  return c;
}
/// Llama-3.1-8B / 70B / 405B: 8 KV heads of 128 each.
inline AttentionConfig llama3_1_8b() { return llama3_1(4096, 32, 32); }
inline AttentionConfig llama3_1_70b() { return llama3_1(8192, 64, 80); }
inline AttentionConfig llama3_1_405b() { return llama3_1(16384, 128, 126); }

/// Plain multi-head attention with 128 heads of 128 (hidden 16384), 61 layers: the cache MLA
/// is usually compared against.
inline AttentionConfig mha_128x128() {
  return gqa(16384, 128, 128, 61, 10000.0, 131072, false);
}

}  // namespace mla::presets
