// Building attention layers from Hugging Face checkpoints: weights are looked up by their real
// names, `model.layers.<N>.self_attn.<name>.weight` (and `.bias`), and their stored shapes are
// checked against the config before anything is built. Works with any tensor source that has
// contains() / read_matrix() / read_vector() (io::SafetensorsFile, io::Checkpoint), so a single
// file, a sharded folder and FP8 checkpoints with block scales all load the same way.
#pragma once

#include <filesystem>
#include <string>

#include "mla/core/check.hpp"
#include "mla/io/checkpoint.hpp"
#include "mla/io/hf_config.hpp"
#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"
#include "mla/layers/sharding.hpp"

namespace mla::io {

/// "model.layers.<layer>.self_attn." — the prefix of a layer's attention weights.
inline std::string attention_prefix(int layer) {
  MLA_CHECK_ARG(layer >= 0, "layer index (", layer, ") must be non-negative");
  return "model.layers." + std::to_string(layer) + ".self_attn.";
}

namespace detail {

/// Weights must be stored in a float dtype: an integer tensor under a weight's name means a
/// mislabelled or corrupted checkpoint, which would otherwise load as garbage.
template <class Source>
void check_float_weight(const Source& src, const std::string& name) {
  const Dtype d = src.info(name).dtype;
  MLA_CHECK_DATA(dtype_is_float(d), "weight '", name, "' in ", src.where(name), " has dtype ",
                 dtype_name(d), "; attention weights must be F32, F16, BF16, F64 or FP8");
}

template <class Scalar, class Source>
Linear<Scalar> read_linear(const Source& src, const std::string& prefix, const char* name,
                           Index out, Index in, bool bias) {
  const std::string base = prefix + name;
  MLA_CHECK_DATA(src.contains(base + ".weight"), "missing weight '", base, ".weight' in ",
                 src.where(base + ".weight"));
  Linear<Scalar> l;
  check_float_weight(src, base + ".weight");
  l.weight = src.template read_matrix<Scalar>(base + ".weight", out, in);
  if (bias) {
    MLA_CHECK_DATA(src.contains(base + ".bias"), "missing bias '", base,
                   ".bias' (the config asks for attention biases) in ", src.where(base + ".bias"));
    check_float_weight(src, base + ".bias");
    l.bias = src.template read_vector<Scalar>(base + ".bias", out);
  }
  return l;
}

template <class Scalar, class Source>
Vector<Scalar> read_norm(const Source& src, const std::string& prefix, const char* name,
                         Index n) {
  const std::string full = prefix + name + ".weight";
  MLA_CHECK_DATA(src.contains(full), "missing weight '", full, "' in ", src.where(full));
  check_float_weight(src, full);
  return src.template read_vector<Scalar>(full, n);
}

}  // namespace detail

/// MHA/GQA layer `layer` from a tensor source, with `cfg` (e.g. parse_attention_config()).
template <class Scalar, class Source>
GroupedQueryAttention<Scalar> load_gqa_layer(
    const Source& src, const AttentionConfig& cfg, int layer,
    typename GroupedQueryAttention<Scalar>::Options options = {}) {
  cfg.validate();
  const std::string p = attention_prefix(layer);
  const Index hidden = cfg.hidden_size, H = cfg.num_attention_heads,
              KV = cfg.num_key_value_heads, D = cfg.head_dim;
  typename GroupedQueryAttention<Scalar>::Weights w;
  w.q_proj = detail::read_linear<Scalar>(src, p, "q_proj", H * D, hidden, cfg.qkv_bias);
  w.k_proj = detail::read_linear<Scalar>(src, p, "k_proj", KV * D, hidden, cfg.qkv_bias);
  w.v_proj = detail::read_linear<Scalar>(src, p, "v_proj", KV * D, hidden, cfg.qkv_bias);
  w.o_proj = detail::read_linear<Scalar>(src, p, "o_proj", hidden, H * D, cfg.o_bias);
  return GroupedQueryAttention<Scalar>(cfg, std::move(w), options);
}

/// The MLA weights of `layer` from a tensor source, with `cfg` (e.g. parse_mla_config()). A
/// config that sets q_lora_rank needs q_a_proj / q_a_layernorm / q_b_proj; one without q_proj.
template <class Scalar, class Source>
typename MultiHeadLatentAttention<Scalar>::Weights load_mla_weights(const Source& src,
                                                                    const MlaConfig& cfg,
                                                                    int layer) {
  cfg.validate();
  const std::string p = attention_prefix(layer);
  const Index hidden = cfg.hidden_size, H = cfg.num_attention_heads, qk = cfg.qk_head_dim(),
              R = cfg.kv_lora_rank, P = cfg.qk_rope_head_dim, V = cfg.v_head_dim;
  typename MultiHeadLatentAttention<Scalar>::Weights w;
  const bool bias = cfg.attention_bias;
  if (cfg.has_q_lora()) {
    MLA_CHECK_DATA(src.contains(p + "q_a_proj.weight"), "config sets q_lora_rank = ",
                   cfg.q_lora_rank, " but the checkpoint has no '", p, "q_a_proj.weight'",
                   src.contains(p + "q_proj.weight") ? " (it has q_proj: set q_lora_rank null)"
                                                     : "");
    w.q_a_proj = detail::read_linear<Scalar>(src, p, "q_a_proj", cfg.q_lora_rank, hidden, bias);
    w.q_a_layernorm = detail::read_norm<Scalar>(src, p, "q_a_layernorm", cfg.q_lora_rank);
    w.q_b_proj = detail::read_linear<Scalar>(src, p, "q_b_proj", H * qk, cfg.q_lora_rank, false);
  } else {
    MLA_CHECK_DATA(src.contains(p + "q_proj.weight"), "config has no q_lora_rank but the "
                   "checkpoint has no '", p, "q_proj.weight'",
                   src.contains(p + "q_a_proj.weight") ? " (it has q_a_proj: set q_lora_rank)"
                                                       : "");
    w.q_proj = detail::read_linear<Scalar>(src, p, "q_proj", H * qk, hidden, false);
  }
  w.kv_a_proj_with_mqa =
      detail::read_linear<Scalar>(src, p, "kv_a_proj_with_mqa", R + P, hidden, bias);
  w.kv_a_layernorm = detail::read_norm<Scalar>(src, p, "kv_a_layernorm", R);
  w.kv_b_proj =
      detail::read_linear<Scalar>(src, p, "kv_b_proj", H * (cfg.qk_nope_head_dim + V), R, false);
  w.o_proj = detail::read_linear<Scalar>(src, p, "o_proj", hidden, H * V, bias);
  return w;
}

/// MLA layer `layer` from a tensor source (see load_mla_weights()).
template <class Scalar, class Source>
MultiHeadLatentAttention<Scalar> load_mla_layer(
    const Source& src, const MlaConfig& cfg, int layer,
    typename MultiHeadLatentAttention<Scalar>::Options options = {}) {
  return MultiHeadLatentAttention<Scalar>(cfg, load_mla_weights<Scalar>(src, cfg, layer), options);
}

/// One tensor-parallel head shard of MLA layer `layer` (see layers/sharding.hpp): its partial
/// outputs summed over shards equal the full layer's.
template <class Scalar, class Source>
MultiHeadLatentAttention<Scalar> load_mla_layer_shard(
    const Source& src, const MlaConfig& cfg, int layer, HeadShard shard,
    typename MultiHeadLatentAttention<Scalar>::Options options = {}) {
  return make_mla_shard<Scalar>(cfg, load_mla_weights<Scalar>(src, cfg, layer), shard, options);
}

namespace detail {
/// A Hugging Face model folder's checkpoint; throws std::runtime_error when it has no config.json.
inline Checkpoint open_model_folder(const std::filesystem::path& folder) {
  Checkpoint ckpt(folder);
  MLA_CHECK_DATA(ckpt.has_config(), "'", folder.string(), "' has no config.json");
  return ckpt;
}
}  // namespace detail

/// Opens a Hugging Face model folder (config.json + *.safetensors) and builds the MHA/GQA
/// attention of `layer`.
template <class Scalar>
GroupedQueryAttention<Scalar> load_gqa_layer(
    const std::filesystem::path& folder, int layer,
    typename GroupedQueryAttention<Scalar>::Options options = {}) {
  const Checkpoint ckpt = detail::open_model_folder(folder);
  return load_gqa_layer<Scalar>(ckpt, parse_attention_config(ckpt.config()), layer, options);
}

/// Opens a Hugging Face model folder and builds the MLA attention of `layer`.
template <class Scalar>
MultiHeadLatentAttention<Scalar> load_mla_layer(
    const std::filesystem::path& folder, int layer,
    typename MultiHeadLatentAttention<Scalar>::Options options = {}) {
  const Checkpoint ckpt = detail::open_model_folder(folder);
  MLA_CHECK_DATA(is_mla_config(ckpt.config()), "'", folder.string(),
                 "/config.json' has no kv_lora_rank: not an MLA model");
  return load_mla_layer<Scalar>(ckpt, parse_mla_config(ckpt.config()), layer, options);
}

}  // namespace mla::io
