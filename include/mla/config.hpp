// Configuration of the attention layers: RoPE (default / llama3 / yarn scaling, rotate-half or
// interleaved pairs), classic MHA/GQA attention, and DeepSeek's Multi-head Latent Attention.
//
// Field names follow the Hugging Face config.json keys so a reader can hold this file next to a
// checkpoint's config. Each struct is a plain aggregate with a validate() that throws
// std::invalid_argument naming the fields that do not add up. Reading them from a config.json
// lives in io/hf_config.hpp; presets for real models in presets.hpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "mla/core/check.hpp"

namespace mla {

/// How the rotary frequencies are scaled for long contexts (Hugging Face `rope_type`).
enum class RopeType {
  kDefault,  ///< inv_freq[i] = theta^(-2i/d)
  kLinear,   ///< inv_freq / factor (position interpolation)
  kLlama3,   ///< Llama 3.1 band-wise scaling
  kYarn,     ///< YaRN (DeepSeek-V2/V3): ramp between interpolated and extrapolated frequencies
};

/// Which elements of the rotary slice form a rotation pair.
enum class RopeLayout {
  kRotateHalf,   ///< (x[i], x[i + d/2]) as in Llama / Qwen2 / GPT-NeoX
  kInterleaved,  ///< (x[2i], x[2i+1]) as in DeepSeek-V2/V3 (complex multiplication)
};

inline const char* to_string(RopeType t) {
  switch (t) {
    case RopeType::kDefault: return "default";
    case RopeType::kLinear: return "linear";
    case RopeType::kLlama3: return "llama3";
    case RopeType::kYarn: return "yarn";
  }
  return "?";
}

/// Upper bound on any single size in a config (hidden size, head counts, ranks, head dims):
/// far above any real model, and small enough that every product the library forms from them
/// (e.g. heads * head_dim * tokens) stays inside int64.
inline constexpr std::int64_t kMaxConfigDim = std::int64_t{1} << 24;
/// Upper bound on positions (RoPE table length).
inline constexpr std::int64_t kMaxPositions = std::int64_t{1} << 32;

namespace internal {
inline void check_dim(const char* name, std::int64_t v, bool zero_ok = false) {
  MLA_CHECK_ARG(zero_ok ? v >= 0 : v > 0, name, " (", v, ") must be ",
                zero_ok ? "non-negative" : "positive");
  MLA_CHECK_ARG(v <= kMaxConfigDim, name, " (", v, ") exceeds the supported maximum ",
                kMaxConfigDim);
}
inline void check_positions_bound(std::int64_t v) {
  MLA_CHECK_ARG(v > 0 && v <= kMaxPositions, "max_position_embeddings (", v,
                ") must be in [1, ", kMaxPositions, "]");
}
}  // namespace internal

/// YaRN's magnitude correction, get_mscale(s, m) = 0.1 m ln(s) + 1 (1 when s <= 1).
inline double yarn_get_mscale(double scale, double mscale = 1.0) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

/// Rotary position embedding settings (Hugging Face `rope_parameters` / legacy `rope_scaling`).
struct RopeConfig {
  RopeType rope_type = RopeType::kDefault;
  RopeLayout layout = RopeLayout::kRotateHalf;
  double rope_theta = 10000.0;  ///< base of the frequencies
  double factor = 1.0;          ///< context extension factor (linear, llama3, yarn)
  /// Pre-training context length (llama3, yarn); 0 when absent.
  std::int64_t original_max_position_embeddings = 0;
  double low_freq_factor = 1.0;   ///< llama3
  double high_freq_factor = 4.0;  ///< llama3
  double beta_fast = 32.0;        ///< yarn: rotations per context below which pairs are extrapolated
  double beta_slow = 1.0;         ///< yarn: rotations per context above which pairs are interpolated
  double mscale = 0.0;            ///< yarn: 0 = absent
  double mscale_all_dim = 0.0;    ///< yarn: 0 = absent; when set it also scales the MLA softmax
  /// yarn: explicit multiplier of cos and sin; when absent it is derived (see attention_factor()).
  std::optional<double> attention_factor_override;
  bool truncate = true;  ///< yarn: floor/ceil the correction range (transformers default)
  /// The ratio max_position_embeddings / original_max_position_embeddings, which transformers
  /// uses instead of `factor` for the default yarn attention factor; 0 = use `factor`.
  double yarn_context_ratio = 0.0;

  /// Multiplier applied to cos and sin. 1 except for yarn, where (transformers
  /// `_compute_yarn_parameters`) it is get_mscale(factor, mscale) / get_mscale(factor,
  /// mscale_all_dim) when both are set, else get_mscale(factor). DeepSeek-V3 sets
  /// mscale == mscale_all_dim, so its factor is exactly 1 and the magnitude correction lives
  /// entirely in the softmax scale (MlaConfig::softmax_scale()).
  double attention_factor() const {
    if (rope_type != RopeType::kYarn) return 1.0;
    if (attention_factor_override) return *attention_factor_override;
    if (mscale != 0.0 && mscale_all_dim != 0.0)
      return yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim);
    return yarn_get_mscale(yarn_context_ratio > 0 ? yarn_context_ratio : factor);
  }

  /// Throws std::invalid_argument when the settings cannot describe a rotation of `rotary_dim`.
  void validate(std::int64_t rotary_dim) const {
    MLA_CHECK_ARG(rotary_dim > 0 && rotary_dim % 2 == 0, "rotary dimension (", rotary_dim,
                  ") must be positive and even: RoPE rotates pairs of elements");
    MLA_CHECK_ARG(rope_theta > 1.0 && std::isfinite(rope_theta), "rope_theta (", rope_theta,
                  ") must be a finite value > 1");
    if (rope_type != RopeType::kDefault) {
      MLA_CHECK_ARG(factor > 0.0 && std::isfinite(factor), "rope factor (", factor,
                    ") must be positive for rope_type ", to_string(rope_type));
    }
    if (rope_type == RopeType::kLlama3 || rope_type == RopeType::kYarn) {
      MLA_CHECK_ARG(original_max_position_embeddings > 0, "rope_type ", to_string(rope_type),
                    " needs original_max_position_embeddings > 0 (got ",
                    original_max_position_embeddings, ")");
    }
    if (rope_type == RopeType::kLlama3) {
      MLA_CHECK_ARG(high_freq_factor > low_freq_factor && low_freq_factor > 0,
                    "llama3 rope needs high_freq_factor (", high_freq_factor,
                    ") > low_freq_factor (", low_freq_factor, ") > 0");
    }
    if (rope_type == RopeType::kYarn) {
      MLA_CHECK_ARG(beta_fast > 0 && beta_slow > 0, "yarn beta_fast (", beta_fast,
                    ") and beta_slow (", beta_slow, ") must be positive");
    }
  }
};

/// Default RoPE with DeepSeek's interleaved pairs.
inline RopeConfig interleaved_rope() {
  RopeConfig r;
  r.layout = RopeLayout::kInterleaved;
  return r;
}

/// Multi-head / grouped-query attention (Llama, Qwen2, Mistral ...). MHA is the case
/// num_key_value_heads == num_attention_heads.
struct AttentionConfig {
  std::int64_t hidden_size = 0;          ///< model width: x is [T, hidden_size]
  std::int64_t num_attention_heads = 0;  ///< query heads H
  std::int64_t num_key_value_heads = 0;  ///< key/value heads KV; H % KV == 0
  std::int64_t head_dim = 0;             ///< D, per-head q/k/v width
  bool qkv_bias = false;  ///< bias on q_proj/k_proj/v_proj (Qwen2: always; Llama: attention_bias)
  bool o_bias = false;    ///< bias on o_proj (Llama attention_bias; Qwen2 never)
  RopeConfig rope{};
  std::int64_t max_position_embeddings = 4096;  ///< RoPE table length (positions must be below)
  std::int64_t num_hidden_layers = 1;           ///< layers in the model (for cache totals only)

  /// Query heads per key/value head (FlashMLA's q_head_per_hk).
  std::int64_t group_size() const { return num_attention_heads / num_key_value_heads; }
  /// Values cached per token per layer: K and V for every KV head.
  std::int64_t kv_values_per_token() const { return 2 * num_key_value_heads * head_dim; }
  /// D^-0.5 (llama3 and default RoPE leave the softmax scale alone).
  double softmax_scale() const { return 1.0 / std::sqrt(static_cast<double>(head_dim)); }

  void validate() const {
    internal::check_dim("hidden_size", hidden_size);
    internal::check_dim("num_attention_heads", num_attention_heads);
    internal::check_dim("num_key_value_heads", num_key_value_heads);
    internal::check_dim("head_dim", head_dim);
    internal::check_positions_bound(max_position_embeddings);
    MLA_CHECK_ARG(num_attention_heads % num_key_value_heads == 0, "num_attention_heads (",
                  num_attention_heads, ") is not divisible by num_key_value_heads (",
                  num_key_value_heads, ")");
    MLA_CHECK_ARG(num_hidden_layers > 0, "num_hidden_layers (", num_hidden_layers,
                  ") must be positive");
    rope.validate(head_dim);
  }
};
using MhaConfig = AttentionConfig;
using GqaConfig = AttentionConfig;

/// DeepSeek-V2/V3 Multi-head Latent Attention.
///
/// Shapes (H = num_attention_heads, R = kv_lora_rank, P = qk_rope_head_dim, N = qk_nope_head_dim):
///   q_a_proj [q_lora_rank, hidden] -> q_a_layernorm -> q_b_proj [H*(N+P), q_lora_rank]
///   (or q_proj [H*(N+P), hidden] when q_lora_rank == 0, i.e. null in config.json: V2-Lite)
///   kv_a_proj_with_mqa [R+P, hidden] -> c_kv = kv_a_layernorm(first R), k_pe = last P (shared)
///   kv_b_proj [H*(N+V), R] -> per head W_UK [N, R] (first N rows) and W_UV [V, R] (next V rows)
///   o_proj [hidden, H*V]
struct MlaConfig {
  std::int64_t hidden_size = 0;
  std::int64_t num_attention_heads = 0;  ///< H
  std::int64_t q_lora_rank = 0;          ///< 0 = no query compression (plain q_proj)
  std::int64_t kv_lora_rank = 0;         ///< R, width of the cached latent c_kv
  std::int64_t qk_nope_head_dim = 0;     ///< N, per-head query/key width without RoPE
  std::int64_t qk_rope_head_dim = 0;     ///< P, decoupled RoPE width (one k_pe shared by all heads)
  std::int64_t v_head_dim = 0;           ///< V, per-head value width
  bool attention_bias = false;           ///< bias on q_a_proj / q_proj, kv_a_proj_with_mqa, o_proj
  /// eps of q_a_layernorm and kv_a_layernorm. transformers builds both norms with their default
  /// 1e-6 regardless of config.rms_norm_eps; DeepSeek's own inference code does the same.
  double latent_norm_eps = 1e-6;
  RopeConfig rope = interleaved_rope();
  std::int64_t max_position_embeddings = 4096;
  std::int64_t num_hidden_layers = 1;

  std::int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  /// Values cached per token per layer on the latent path: c_kv and k_pe (576 for V2/V3).
  std::int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  /// Values an uncompressed (naive) cache holds per token per layer: H*(N+P) keys + H*V values.
  std::int64_t decompressed_values_per_token() const {
    return num_attention_heads * (qk_head_dim() + v_head_dim);
  }
  bool has_q_lora() const { return q_lora_rank > 0; }

  /// (N+P)^-0.5, times yarn's mscale(factor, mscale_all_dim)^2 when yarn sets mscale_all_dim
  /// (transformers DeepseekV3Attention / DeepSeek's inference code). The scale stays the one of
  /// the decompressed head dimension (N+P = 192 for V3) on the absorbed path too, not
  /// (R+P)^-0.5, because absorption only reassociates the same dot products.
  double softmax_scale() const {
    double s = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
    if (rope.rope_type != RopeType::kDefault && rope.mscale_all_dim != 0.0) {
      const double m = yarn_get_mscale(rope.factor, rope.mscale_all_dim);
      s *= m * m;
    }
    return s;
  }

  void validate() const {
    internal::check_dim("hidden_size", hidden_size);
    internal::check_dim("num_attention_heads", num_attention_heads);
    internal::check_dim("q_lora_rank", q_lora_rank, /*zero_ok=*/true);  // 0 = no q compression
    internal::check_dim("kv_lora_rank", kv_lora_rank);
    internal::check_dim("qk_nope_head_dim", qk_nope_head_dim);
    internal::check_dim("qk_rope_head_dim", qk_rope_head_dim);
    internal::check_dim("v_head_dim", v_head_dim);
    internal::check_positions_bound(max_position_embeddings);
    MLA_CHECK_ARG(latent_norm_eps > 0, "latent_norm_eps (", latent_norm_eps, ") must be positive");
    MLA_CHECK_ARG(num_hidden_layers > 0, "num_hidden_layers (", num_hidden_layers,
                  ") must be positive");
    rope.validate(qk_rope_head_dim);
  }
};

}  // namespace mla
