// Tensor-parallel head sharding, as DeepSeek's reference code and vLLM split attention across
// devices: a shard owns a contiguous range of query heads. For MLA it keeps
//   - q_a_proj, q_a_layernorm, kv_a_proj_with_mqa, kv_a_layernorm whole (every shard computes
//     the shared latent and the compressed query; they are small),
//   - the q_b_proj / q_proj rows and the kv_b_proj rows of its heads,
//   - the o_proj columns of its heads,
// so each shard's forward() yields a partial output y_s = heads_s W_o[:, s]^T and the full layer
// output is the sum over shards (the engine's all-reduce). The o_proj bias, if any, is kept on
// the shard that owns head 0 only, so it is added once. Every shard keeps the whole latent cache
// (the latent is shared by all heads), which is why MLA shards by heads, not by cache.
#pragma once

#include <utility>

#include "mla/core/check.hpp"
#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"

namespace mla {

/// A contiguous range of query heads [first_head, first_head + num_heads).
struct HeadShard {
  Index first_head = 0;
  Index num_heads = 0;
};

namespace internal {
/// Rows [first, first + count) of a projection (weight and bias), for a shard of its heads.
template <class Scalar>
Linear<Scalar> rows_of(const Linear<Scalar>& l, Index first, Index count) {
  Linear<Scalar> out{l.weight.middleRows(first, count), {}};
  if (l.has_bias()) out.bias = l.bias.segment(first, count);
  return out;
}
/// Validates the full layer's config (which bounds every dim, so the row offsets a shard slices
/// at cannot overflow) and the shard against its heads (written as num_heads <= heads -
/// first_head so that no sum can overflow).
template <class Config>
void check_shard(const Config& cfg, const HeadShard& s) {
  cfg.validate();
  const Index heads = cfg.num_attention_heads;
  MLA_CHECK_ARG(s.num_heads > 0 && s.first_head >= 0 && s.first_head < heads &&
                    s.num_heads <= heads - s.first_head,
                "head shard (first_head ", s.first_head, ", num_heads ", s.num_heads,
                ") is not a non-empty range inside the layer's ", heads, " heads");
}

/// Columns [first, first + count) of an output projection, for a shard of the heads that feed
/// it. The bias is added once to the sum of the shards' outputs: the shard starting at head 0
/// keeps it, the others get zeros.
template <class Scalar>
Linear<Scalar> columns_of(const Linear<Scalar>& l, Index first, Index count) {
  Linear<Scalar> out{l.weight.middleCols(first, count), {}};
  if (l.has_bias()) out.bias = first == 0 ? l.bias : Vector<Scalar>::Zero(l.bias.size());
  return out;
}
}  // namespace internal

/// The MLA config and weights of one head shard of a full layer (`cfg`, `w`).
template <class Scalar>
std::pair<MlaConfig, typename MultiHeadLatentAttention<Scalar>::Weights> shard_mla_weights(
    const MlaConfig& cfg, const typename MultiHeadLatentAttention<Scalar>::Weights& w,
    HeadShard shard) {
  internal::check_shard(cfg, shard);
  const Index h0 = shard.first_head, n = shard.num_heads, qk = cfg.qk_head_dim(),
              kvh = cfg.qk_nope_head_dim + cfg.v_head_dim, V = cfg.v_head_dim,
              H = cfg.num_attention_heads;
  // The weights being sliced must be the full layer's (slicing past them would read out of bounds).
  if (cfg.has_q_lora())
    w.q_b_proj.check_shape("q_b_proj", H * qk, cfg.q_lora_rank);
  else
    w.q_proj.check_shape("q_proj", H * qk, cfg.hidden_size);
  w.kv_b_proj.check_shape("kv_b_proj", H * kvh, cfg.kv_lora_rank);
  w.o_proj.check_shape("o_proj", cfg.hidden_size, H * V);
  MlaConfig c = cfg;
  c.num_attention_heads = n;
  typename MultiHeadLatentAttention<Scalar>::Weights s;
  s.q_a_proj = w.q_a_proj;
  s.q_a_layernorm = w.q_a_layernorm;
  if (cfg.has_q_lora())
    s.q_b_proj = internal::rows_of(w.q_b_proj, h0 * qk, n * qk);
  else
    s.q_proj = internal::rows_of(w.q_proj, h0 * qk, n * qk);
  s.kv_a_proj_with_mqa = w.kv_a_proj_with_mqa;
  s.kv_a_layernorm = w.kv_a_layernorm;
  s.kv_b_proj = internal::rows_of(w.kv_b_proj, h0 * kvh, n * kvh);
  s.o_proj = internal::columns_of(w.o_proj, h0 * V, n * V);
  return {c, std::move(s)};
}

/// The MHA/GQA config and weights of one shard of query heads. The shard must cover whole KV
/// groups (first_head and num_heads multiples of the group size), so each shard owns its KV
/// heads outright.
template <class Scalar>
std::pair<AttentionConfig, typename GroupedQueryAttention<Scalar>::Weights> shard_gqa_weights(
    const AttentionConfig& cfg, const typename GroupedQueryAttention<Scalar>::Weights& w,
    HeadShard shard) {
  internal::check_shard(cfg, shard);
  const Index g = cfg.group_size(), D = cfg.head_dim;
  // The weights being sliced must be the full layer's (slicing past them would read out of bounds).
  w.q_proj.check_shape("q_proj", cfg.num_attention_heads * D, cfg.hidden_size);
  w.k_proj.check_shape("k_proj", cfg.num_key_value_heads * D, cfg.hidden_size);
  w.v_proj.check_shape("v_proj", cfg.num_key_value_heads * D, cfg.hidden_size);
  w.o_proj.check_shape("o_proj", cfg.hidden_size, cfg.num_attention_heads * D);
  MLA_CHECK_ARG(shard.first_head % g == 0 && shard.num_heads % g == 0, "head shard [",
                shard.first_head, ", ", shard.first_head + shard.num_heads,
                ") splits a KV group: query heads come in groups of ", g);
  const Index kv0 = shard.first_head / g, kvn = shard.num_heads / g;
  AttentionConfig c = cfg;
  c.num_attention_heads = shard.num_heads;
  c.num_key_value_heads = kvn;
  typename GroupedQueryAttention<Scalar>::Weights s;
  s.q_proj = internal::rows_of(w.q_proj, shard.first_head * D, shard.num_heads * D);
  s.k_proj = internal::rows_of(w.k_proj, kv0 * D, kvn * D);
  s.v_proj = internal::rows_of(w.v_proj, kv0 * D, kvn * D);
  s.o_proj = internal::columns_of(w.o_proj, shard.first_head * D, shard.num_heads * D);
  return {c, std::move(s)};
}

/// An MLA layer holding only the heads of `shard` of the full layer (`cfg`, `w`).
template <class Scalar>
MultiHeadLatentAttention<Scalar> make_mla_shard(
    const MlaConfig& cfg, const typename MultiHeadLatentAttention<Scalar>::Weights& w,
    HeadShard shard, typename MultiHeadLatentAttention<Scalar>::Options options = {}) {
  auto [c, s] = shard_mla_weights<Scalar>(cfg, w, shard);
  return MultiHeadLatentAttention<Scalar>(c, std::move(s), options);
}

/// A GQA layer holding only the heads of `shard`.
template <class Scalar>
GroupedQueryAttention<Scalar> make_gqa_shard(
    const AttentionConfig& cfg, const typename GroupedQueryAttention<Scalar>::Weights& w,
    HeadShard shard, typename GroupedQueryAttention<Scalar>::Options options = {}) {
  auto [c, s] = shard_gqa_weights<Scalar>(cfg, w, shard);
  return GroupedQueryAttention<Scalar>(c, std::move(s), options);
}

}  // namespace mla
