// Reading attention configs from a Hugging Face config.json (nlohmann::json). Understands both the
// transformers >= 5 layout (`rope_parameters` holding rope_theta and the scaling) and the layout of
// the released checkpoints (top-level `rope_theta` plus `rope_scaling` with `type` or `rope_type`).
// Type errors and missing keys throw std::runtime_error naming the key and quoting the value found
// (json_excerpt(): at most kJsonExcerptChars characters, whatever its size or depth); values that
// pass those checks but do not add up (a negative head count, a rotary dim that is odd) throw
// std::invalid_argument from the config's validate(). read_json_file() refuses JSON nested deeper
// than kMaxJsonDepth (see mla/io/json.hpp).
#pragma once

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "mla/config.hpp"
#include "mla/core/check.hpp"
#include "mla/io/json.hpp"

namespace mla::io {

namespace detail {

inline const nlohmann::json& require(const nlohmann::json& j, const char* key) {
  MLA_CHECK_DATA(j.is_object(), "config.json: expected a JSON object");
  auto it = j.find(key);
  MLA_CHECK_DATA(it != j.end(), "config.json: missing required key '", key, "'");
  return *it;
}

inline std::int64_t get_int(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = require(j, key);
  MLA_CHECK_DATA(v.is_number_integer() ||
                     (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
                      std::fabs(v.get<double>()) < 9.2e18),  // else the cast below is UB
                 "config.json: '", key, "' must be an integer, got ", json_excerpt(v));
  return v.is_number_integer() ? v.get<std::int64_t>()
                               : static_cast<std::int64_t>(v.get<double>());
}

inline std::int64_t get_int_or(const nlohmann::json& j, const char* key, std::int64_t fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return get_int(j, key);
}

inline double get_double_or(const nlohmann::json& j, const char* key, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  MLA_CHECK_DATA(it->is_number(), "config.json: '", key, "' must be a number, got ",
                 json_excerpt(*it));
  // JSON text cannot spell inf or NaN (nlohmann refuses 1e999), but a DOM converted from CBOR or
  // MessagePack, or built by the caller, can hold them.
  MLA_CHECK_DATA(std::isfinite(it->get<double>()), "config.json: '", key,
                 "' must be a finite number, got ", it->get<double>());
  return it->get<double>();
}

inline bool get_bool_or(const nlohmann::json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  MLA_CHECK_DATA(it->is_boolean(), "config.json: '", key, "' must be true/false, got ",
                 json_excerpt(*it));
  return it->get<bool>();
}

}  // namespace detail

/// Parses a whole config.json file (parse_json(): syntax errors, a NUL byte and nesting deeper
/// than kMaxJsonDepth throw std::runtime_error naming the path).
inline nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MLA_CHECK_DATA(in.good(), "cannot open '", path, "'");
  std::ostringstream text;
  text << in.rdbuf();
  MLA_CHECK_DATA(!in.bad(), "cannot read '", path, "'");
  return parse_json(text.str(), internal::str_cat("'", path, "'"));
}

/// RoPE settings from `rope_parameters`, or `rope_scaling` + `rope_theta`.
inline RopeConfig parse_rope(const nlohmann::json& cfg, RopeLayout layout) {
  RopeConfig r;
  r.layout = layout;
  const nlohmann::json* params = nullptr;
  if (auto it = cfg.find("rope_parameters"); it != cfg.end() && it->is_object()) params = &*it;
  else if (auto it2 = cfg.find("rope_scaling"); it2 != cfg.end() && it2->is_object()) params = &*it2;
  else MLA_CHECK_DATA(cfg.find("rope_scaling") == cfg.end() || cfg["rope_scaling"].is_null(),
                      "config.json: 'rope_scaling' must be an object or null");
  r.rope_theta = detail::get_double_or(cfg, "rope_theta", 10000.0);
  if (!params) return r;
  const nlohmann::json& p = *params;
  r.rope_theta = detail::get_double_or(p, "rope_theta", r.rope_theta);
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (auto it = p.find(key); it != p.end() && !it->is_null()) {
      MLA_CHECK_DATA(it->is_string(), "config.json: rope '", key, "' must be a string");
      type = it->get<std::string>();
      break;
    }
  }
  if (type == "default") r.rope_type = RopeType::kDefault;
  else if (type == "linear") r.rope_type = RopeType::kLinear;
  else if (type == "llama3") r.rope_type = RopeType::kLlama3;
  else if (type == "yarn" || type == "deepseek_yarn") r.rope_type = RopeType::kYarn;
  else MLA_CHECK_DATA(false, "config.json: unsupported rope type '", type,
                      "' (supported: default, linear, llama3, yarn)");
  r.factor = detail::get_double_or(p, "factor", 1.0);
  r.original_max_position_embeddings = detail::get_int_or(p, "original_max_position_embeddings", 0);
  r.low_freq_factor = detail::get_double_or(p, "low_freq_factor", 1.0);
  r.high_freq_factor = detail::get_double_or(p, "high_freq_factor", 4.0);
  r.beta_fast = detail::get_double_or(p, "beta_fast", 32.0);
  r.beta_slow = detail::get_double_or(p, "beta_slow", 1.0);
  r.mscale = detail::get_double_or(p, "mscale", 0.0);
  r.mscale_all_dim = detail::get_double_or(p, "mscale_all_dim", 0.0);
  r.truncate = detail::get_bool_or(p, "truncate", true);
  if (auto it = p.find("attention_factor"); it != p.end() && !it->is_null())
    r.attention_factor_override = detail::get_double_or(p, "attention_factor", 1.0);
  if (r.rope_type == RopeType::kYarn && r.original_max_position_embeddings > 0) {
    // transformers derives the default yarn attention factor from this ratio when the config
    // carries original_max_position_embeddings (DeepSeek-V3 style).
    const double max_pos = detail::get_double_or(cfg, "max_position_embeddings", 0.0);
    if (max_pos > 0)
      r.yarn_context_ratio = max_pos / static_cast<double>(r.original_max_position_embeddings);
  }
  return r;
}

/// True when the config describes MLA attention (DeepSeek-V2/V3 style: has kv_lora_rank).
inline bool is_mla_config(const nlohmann::json& cfg) {
  auto it = cfg.find("kv_lora_rank");
  return it != cfg.end() && !it->is_null();
}

/// MHA/GQA config (Llama, Qwen2, Mistral ...). Qwen2 always has q/k/v biases and no o bias;
/// Llama's `attention_bias` covers all four projections.
inline AttentionConfig parse_attention_config(const nlohmann::json& cfg) {
  AttentionConfig c;
  c.hidden_size = detail::get_int(cfg, "hidden_size");
  c.num_attention_heads = detail::get_int(cfg, "num_attention_heads");
  c.num_key_value_heads = detail::get_int_or(cfg, "num_key_value_heads", c.num_attention_heads);
  MLA_CHECK_DATA(c.num_attention_heads > 0, "config.json: num_attention_heads (",
                 c.num_attention_heads, ") must be positive");
  c.head_dim = detail::get_int_or(cfg, "head_dim", c.hidden_size / c.num_attention_heads);
  const auto mt = cfg.find("model_type");  // cfg.value() would throw nlohmann's type_error
  MLA_CHECK_DATA(mt == cfg.end() || mt->is_string() || mt->is_null(),
                 "config.json: 'model_type' must be a string, got ", json_excerpt(*mt));
  const std::string model_type = mt != cfg.end() && mt->is_string() ? mt->get<std::string>() : "";
  if (model_type == "qwen2") {
    c.qkv_bias = true;
    c.o_bias = false;
  } else {
    c.qkv_bias = c.o_bias = detail::get_bool_or(cfg, "attention_bias", false);
  }
  c.rope = parse_rope(cfg, RopeLayout::kRotateHalf);
  c.max_position_embeddings = detail::get_int_or(cfg, "max_position_embeddings", 4096);
  c.num_hidden_layers = detail::get_int_or(cfg, "num_hidden_layers", 1);
  c.validate();
  return c;
}

/// MLA config (DeepSeek-V2/V3). `q_lora_rank: null` means a plain q_proj. DeepSeek-V2 always
/// rotates interleaved pairs; V3 follows `rope_interleave` (default true).
inline MlaConfig parse_mla_config(const nlohmann::json& cfg) {
  MlaConfig c;
  c.hidden_size = detail::get_int(cfg, "hidden_size");
  c.num_attention_heads = detail::get_int(cfg, "num_attention_heads");
  c.q_lora_rank = detail::get_int_or(cfg, "q_lora_rank", 0);
  c.kv_lora_rank = detail::get_int(cfg, "kv_lora_rank");
  c.qk_nope_head_dim = detail::get_int(cfg, "qk_nope_head_dim");
  c.qk_rope_head_dim = detail::get_int(cfg, "qk_rope_head_dim");
  c.v_head_dim = detail::get_int(cfg, "v_head_dim");
  c.attention_bias = detail::get_bool_or(cfg, "attention_bias", false);
  const bool interleave = detail::get_bool_or(cfg, "rope_interleave", true);
  c.rope = parse_rope(cfg, interleave ? RopeLayout::kInterleaved : RopeLayout::kRotateHalf);
  c.max_position_embeddings = detail::get_int_or(cfg, "max_position_embeddings", 4096);
  c.num_hidden_layers = detail::get_int_or(cfg, "num_hidden_layers", 1);
  c.validate();
  return c;
}

}  // namespace mla::io
