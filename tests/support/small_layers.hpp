// The small layer shapes the error, overflow and atomicity tests share: big enough to have every
// part of a real layer (several heads, q LoRA, GQA groups), small enough that a test builds and
// runs them in microseconds. Weights come from support/random.hpp.
#pragma once

#include "mla/config.hpp"

namespace mla::testing {

/// MLA with q LoRA: hidden 32, 2 heads, q_lora 12, kv_lora 16, nope 8, rope 4, v 6; positions
/// [0, 64).
inline MlaConfig small_mla_config() {
  MlaConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 2;
  c.q_lora_rank = 12;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 6;
  c.max_position_embeddings = 64;
  return c;
}

/// GQA: hidden 48, 6 query heads over 2 KV heads of 8 (groups of 3); positions [0, 64).
inline AttentionConfig small_gqa_config() {
  AttentionConfig c;
  c.hidden_size = 48;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  return c;
}

}  // namespace mla::testing
