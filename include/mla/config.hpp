// Configuration of the attention layers: RoPE (default / llama3 / yarn scaling, rotate-half or
// interleaved pairs), classic MHA/GQA attention, and DeepSeek's Multi-head Latent Attention.
//
// Field names follow the Hugging Face config.json keys so a reader can hold this file next to a
// checkpoint's config. Each struct is a plain aggregate with a validate() that throws
// std::invalid_argument naming the fields that do not add up. Reading them from a config.json
// lives in io/hf_config.hpp; presets for real models in presets.hpp.
#pragma once

#include <algorithm>
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
/// far above any real model, and small enough that sums and products of two of them
/// (e.g. heads * head_dim) stay far inside int64. Sizes that also involve a token count or a
/// capacity from the caller are checked where they are formed (internal::checked_mul).
inline constexpr std::int64_t kMaxConfigDim = std::int64_t{1} << 24;
/// Upper bound on max_position_embeddings (and a layer's Options::max_positions): positions
/// must lie in [0, max_position_embeddings). The RoPE cos/sin table does not grow with it: it
/// covers at most kRopeTableMaxPairs (ops/rope.hpp) pairs, later positions are computed on demand.
inline constexpr std::int64_t kMaxPositions = std::int64_t{1} << 32;
/// Largest multiplier the RoPE scaling settings may put on activations or scores, and the
/// inverse of the smallest: RopeConfig::attention_factor() (on cos and sin, so on q_pe and k_pe)
/// and yarn's mscale^2 on the MLA softmax scale. Released checkpoints use 1 to 2; beyond this a
/// config is corrupt, and float scores would head for overflow.
inline constexpr double kMaxRopeMultiplier = 1e3;

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
/// A config field that must be finite and above `low` (or at least `low` when `low_ok`).
inline void check_real(const char* name, double v, double low, bool low_ok = false) {
  MLA_CHECK_ARG(std::isfinite(v) && (low_ok ? v >= low : v > low), name, " (", v,
                ") must be finite and ", low_ok ? ">= " : "> ", low);
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

  /// Inverse frequency inv_freq[i] of pair i of `dim` rotary elements after the scaling
  /// rope_type selects (transformers `ROPE_INIT_FUNCTIONS`), without validation (validate()
  /// checks every one; rope_inv_freq() in ops/rope.hpp is the checked entry point):
  ///   default: theta^(-2i/dim);  linear: default / factor;
  ///   llama3: per-band blend by wavelength (orig/high_freq_factor, orig/low_freq_factor);
  ///   yarn: inv_interp * ramp + inv_extrap * (1 - ramp) with the ramp between the corrected
  ///         dimensions of beta_fast and beta_slow.
  double scaled_inv_freq(std::int64_t i, std::int64_t dim) const {
    const double base =
        std::pow(rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
    const double pi = 3.14159265358979323846;
    const double orig = static_cast<double>(original_max_position_embeddings);
    switch (rope_type) {
      case RopeType::kDefault:
        return base;
      case RopeType::kLinear:
        return base / factor;
      case RopeType::kLlama3: {
        const double low_wavelen = orig / low_freq_factor;
        const double high_wavelen = orig / high_freq_factor;
        const double wavelen = 2.0 * pi / base;
        if (wavelen < high_wavelen) return base;      // high frequencies: unchanged
        if (wavelen > low_wavelen) return base / factor;  // low frequencies: interpolated
        const double s =
            (orig / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        return (1.0 - s) * base / factor + s * base;
      }
      case RopeType::kYarn: {
        // Dimension index whose wavelength fits `rotations` times into the original context.
        auto correction_dim = [&](double rotations) {
          return static_cast<double>(dim) * std::log(orig / (rotations * 2.0 * pi)) /
                 (2.0 * std::log(rope_theta));
        };
        double low = correction_dim(beta_fast);
        double high = correction_dim(beta_slow);
        if (truncate) {
          low = std::floor(low);
          high = std::ceil(high);
        }
        low = std::max(low, 0.0);
        high = std::min(high, static_cast<double>(dim - 1));
        if (low == high) high += 0.001;  // avoid a zero-width ramp
        const double ramp =
            std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        return base / factor * ramp + base * (1.0 - ramp);
      }
    }
    return base;
  }

  /// Throws std::invalid_argument, naming the field, unless the settings describe a rotation of
  /// `rotary_dim` elements (see validate_fields() for the ranges), and unless what they derive
  /// is usable: every inv_freq[i] positive with a finite angle up to position kMaxPositions, and
  /// attention_factor() in [1 / kMaxRopeMultiplier, kMaxRopeMultiplier].
  void validate(std::int64_t rotary_dim) const {
    validate_fields(rotary_dim);
    for (std::int64_t i = 0; i < rotary_dim / 2; ++i) {
      const double f = scaled_inv_freq(i, rotary_dim);
      MLA_CHECK_ARG(f > 0 && std::isfinite(f * static_cast<double>(kMaxPositions)),
                    "rope inv_freq[", i, "] (", f, ") of rotary dimension ", rotary_dim,
                    " is not a positive frequency with finite angles up to position ",
                    kMaxPositions, "; it comes from ", describe());
    }
    const double af = attention_factor();
    MLA_CHECK_ARG(std::isfinite(af) && af >= 1.0 / kMaxRopeMultiplier && af <= kMaxRopeMultiplier,
                  "rope attention factor (", af, ") must be in [", 1.0 / kMaxRopeMultiplier, ", ",
                  kMaxRopeMultiplier, "]; it comes from ", describe());
  }

  /// The fields' own ranges (validate() adds the derived checks):
  ///   rotary dimension: even, in [2, kMaxConfigDim];  rope_theta: finite, > 1;
  ///   original_max_position_embeddings: in [0, kMaxPositions], > 0 for llama3 and yarn;
  ///   factor (every type but default): finite, > 0;
  ///   mscale_all_dim (every type but default: it also scales the MLA softmax): finite, >= 0;
  ///   llama3: low_freq_factor, high_freq_factor finite, 0 < low_freq_factor < high_freq_factor;
  ///   yarn: beta_fast, beta_slow finite, > 0; mscale finite, >= 0; attention_factor (when set)
  ///         finite, > 0; yarn_context_ratio finite, >= 0.
  void validate_fields(std::int64_t rotary_dim) const {
    MLA_CHECK_ARG(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= kMaxConfigDim,
                  "rotary dimension (", rotary_dim, ") must be positive, even and at most ",
                  kMaxConfigDim, ": RoPE rotates pairs of elements");
    internal::check_real("rope_theta", rope_theta, 1.0);
    MLA_CHECK_ARG(original_max_position_embeddings >= 0 &&
                      original_max_position_embeddings <= kMaxPositions,
                  "original_max_position_embeddings (", original_max_position_embeddings,
                  ") must be in [0, ", kMaxPositions, "]");
    if (rope_type != RopeType::kDefault) {
      MLA_CHECK_ARG(std::isfinite(factor) && factor > 0.0, "rope factor (", factor,
                    ") must be finite and > 0 for rope_type ", to_string(rope_type));
      internal::check_real("rope mscale_all_dim", mscale_all_dim, 0.0, /*low_ok=*/true);
    }
    if (rope_type == RopeType::kLlama3 || rope_type == RopeType::kYarn) {
      MLA_CHECK_ARG(original_max_position_embeddings > 0, "rope_type ", to_string(rope_type),
                    " needs original_max_position_embeddings > 0 (got ",
                    original_max_position_embeddings, ")");
    }
    if (rope_type == RopeType::kLlama3) {
      internal::check_real("llama3 rope low_freq_factor", low_freq_factor, 0.0);
      internal::check_real("llama3 rope high_freq_factor", high_freq_factor, 0.0);
      MLA_CHECK_ARG(high_freq_factor > low_freq_factor,
                    "llama3 rope needs high_freq_factor (", high_freq_factor,
                    ") > low_freq_factor (", low_freq_factor, ") > 0");
    }
    if (rope_type == RopeType::kYarn) {
      internal::check_real("yarn rope beta_fast", beta_fast, 0.0);
      internal::check_real("yarn rope beta_slow", beta_slow, 0.0);
      internal::check_real("yarn rope mscale", mscale, 0.0, /*low_ok=*/true);
      if (attention_factor_override)
        internal::check_real("yarn rope attention_factor", *attention_factor_override, 0.0);
      internal::check_real("yarn_context_ratio", yarn_context_ratio, 0.0, /*low_ok=*/true);
    }
  }

  /// "rope_type yarn, rope_theta 10000, factor 40, ..." (the fields the type uses), for messages.
  std::string describe() const {
    std::string s = internal::str_cat("rope_type ", to_string(rope_type), ", rope_theta ",
                                      rope_theta);
    if (rope_type != RopeType::kDefault)
      s += internal::str_cat(", factor ", factor, ", mscale_all_dim ", mscale_all_dim);
    if (rope_type == RopeType::kLlama3)
      s += internal::str_cat(", low_freq_factor ", low_freq_factor, ", high_freq_factor ",
                             high_freq_factor);
    if (rope_type == RopeType::kLlama3 || rope_type == RopeType::kYarn)
      s += internal::str_cat(", original_max_position_embeddings ",
                             original_max_position_embeddings);
    if (rope_type == RopeType::kYarn) {
      s += internal::str_cat(", beta_fast ", beta_fast, ", beta_slow ", beta_slow, ", mscale ",
                             mscale);
      if (attention_factor_override)
        s += internal::str_cat(", attention_factor ", *attention_factor_override);
      if (yarn_context_ratio > 0)
        s += internal::str_cat(", yarn_context_ratio ", yarn_context_ratio);
    }
    return s;
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
  std::int64_t max_position_embeddings = 4096;  ///< positions must be below it (<= kMaxPositions)
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
    return 1.0 / std::sqrt(static_cast<double>(qk_head_dim())) * softmax_mscale_squared();
  }
  /// The yarn factor of softmax_scale(): mscale(factor, mscale_all_dim)^2, or 1 without it.
  double softmax_mscale_squared() const {
    if (rope.rope_type == RopeType::kDefault || rope.mscale_all_dim == 0.0) return 1.0;
    const double m = yarn_get_mscale(rope.factor, rope.mscale_all_dim);
    return m * m;
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
    internal::check_real("latent_norm_eps (rms_norm_eps of the latent norms)", latent_norm_eps,
                         0.0);
    MLA_CHECK_ARG(num_hidden_layers > 0, "num_hidden_layers (", num_hidden_layers,
                  ") must be positive");
    rope.validate(qk_rope_head_dim);
    // yarn's softmax correction mscale^2 (>= 1 once factor > 0 and mscale_all_dim >= 0 hold)
    // must stay a moderate multiplier, so the scale is a finite positive float.
    const double m2 = softmax_mscale_squared();
    MLA_CHECK_ARG(std::isfinite(m2) && m2 > 0 && m2 <= kMaxRopeMultiplier,
                  "MLA softmax scale (", softmax_scale(),
                  ") = (qk_nope_head_dim + qk_rope_head_dim)^-0.5 * mscale^2 has mscale^2 = ", m2,
                  " outside (0, ", kMaxRopeMultiplier, "]; mscale = 0.1 * mscale_all_dim * ",
                  "ln(factor) + 1 with rope factor ", rope.factor, " and mscale_all_dim ",
                  rope.mscale_all_dim);
  }
};

}  // namespace mla
