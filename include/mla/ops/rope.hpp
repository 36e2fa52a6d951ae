// Rotary position embedding (RoPE): inverse frequencies for the default, linear, llama3 and yarn
// schedules, and a precomputed cos/sin table that rotates vectors at arbitrary positions in either
// pair layout (rotate-half as in Llama/Qwen2, interleaved as in DeepSeek).
//
// The angles pos * inv_freq[i] and their cos/sin are formed in double and only then rounded to
// the table's scalar type. Forming them in float loses ~5e-4 rad at pos ~ 4k (the reference README
// measures this), which is most of the float error budget at long context.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "mla/config.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla {

/// Inverse frequencies inv_freq[i], i = 0..dim/2-1, after the scaling `cfg` selects
/// (transformers `ROPE_INIT_FUNCTIONS`):
///   default: theta^(-2i/dim);  linear: default / factor;
///   llama3: per-band blend by wavelength (orig/high_freq_factor, orig/low_freq_factor);
///   yarn: inv_interp * ramp + inv_extrap * (1 - ramp) with the ramp between the corrected
///         dimensions of beta_fast and beta_slow.
inline std::vector<double> rope_inv_freq(const RopeConfig& cfg, std::int64_t dim) {
  cfg.validate(dim);
  const std::int64_t half = dim / 2;
  std::vector<double> inv(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i)
    inv[i] = std::pow(cfg.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));

  const double pi = 3.14159265358979323846;
  const double orig = static_cast<double>(cfg.original_max_position_embeddings);
  switch (cfg.rope_type) {
    case RopeType::kDefault:
      break;
    case RopeType::kLinear:
      for (double& f : inv) f /= cfg.factor;
      break;
    case RopeType::kLlama3: {
      const double low_wavelen = orig / cfg.low_freq_factor;
      const double high_wavelen = orig / cfg.high_freq_factor;
      for (double& f : inv) {
        const double wavelen = 2.0 * pi / f;
        if (wavelen < high_wavelen) continue;  // high frequencies: unchanged
        if (wavelen > low_wavelen) {
          f /= cfg.factor;  // low frequencies: interpolated
        } else {
          const double s = (orig / wavelen - cfg.low_freq_factor) /
                           (cfg.high_freq_factor - cfg.low_freq_factor);
          f = (1.0 - s) * f / cfg.factor + s * f;
        }
      }
      break;
    }
    case RopeType::kYarn: {
      // Dimension index whose wavelength fits `rotations` times into the original context.
      auto correction_dim = [&](double rotations) {
        return static_cast<double>(dim) * std::log(orig / (rotations * 2.0 * pi)) /
               (2.0 * std::log(cfg.rope_theta));
      };
      double low = correction_dim(cfg.beta_fast);
      double high = correction_dim(cfg.beta_slow);
      if (cfg.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;  // avoid a zero-width ramp
      for (std::int64_t i = 0; i < half; ++i) {
        const double ramp =
            std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double extrap = inv[i];
        inv[i] = extrap / cfg.factor * ramp + extrap * (1.0 - ramp);
      }
      break;
    }
  }
  return inv;
}

/// cos/sin table for positions [0, max_positions) and the rotation itself.
/// Immutable after construction; share one between layers with the same RoPE settings.
template <class Scalar>
class RotaryEmbedding {
 public:
  /// Builds the table for `dim` rotary elements; throws std::invalid_argument on a bad config.
  RotaryEmbedding(const RopeConfig& cfg, std::int64_t dim, std::int64_t max_positions)
      : layout_(cfg.layout), dim_(dim), max_positions_(max_positions),
        inv_freq_(rope_inv_freq(cfg, dim)), attention_factor_(cfg.attention_factor()) {
    MLA_CHECK_ARG(max_positions > 0, "RoPE table length (", max_positions, ") must be positive");
    const std::int64_t half = dim / 2;
    cos_.resize(static_cast<std::size_t>(max_positions * half));
    sin_.resize(cos_.size());
    for (std::int64_t p = 0; p < max_positions; ++p) {
      for (std::int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p) * inv_freq_[i];
        cos_[p * half + i] = static_cast<Scalar>(std::cos(angle) * attention_factor_);
        sin_[p * half + i] = static_cast<Scalar>(std::sin(angle) * attention_factor_);
      }
    }
  }

  std::int64_t dim() const { return dim_; }
  std::int64_t max_positions() const { return max_positions_; }
  RopeLayout layout() const { return layout_; }
  const std::vector<double>& inv_freq() const { return inv_freq_; }
  double attention_factor() const { return attention_factor_; }

  /// Throws std::invalid_argument unless every position is in [0, max_positions).
  void check_positions(const PositionsRef& positions) const {
    for (Index t = 0; t < positions.size(); ++t) {
      MLA_CHECK_ARG(positions[t] >= 0 && positions[t] < max_positions_, "position ",
                    positions[t], " (token ", t, ") is outside the RoPE table [0, ",
                    max_positions_, "); raise max_position_embeddings or the layer's max_positions");
    }
  }

  /// Rotates x[0..dim) in place by the angles of `pos` (which must be in range: callers check
  /// positions once per call with check_positions()).
  ///   interleaved: (x[2i], x[2i+1]) <- (x[2i] c - x[2i+1] s, x[2i+1] c + x[2i] s)
  ///   rotate-half: (x[i], x[i+d/2]) <- (x[i] c - x[i+d/2] s, x[i+d/2] c + x[i] s)
  void rotate(Scalar* x, std::int64_t pos) const {
    MLA_DCHECK(pos >= 0 && pos < max_positions_);
    const std::int64_t half = dim_ / 2;
    const Scalar* c = cos_.data() + pos * half;
    const Scalar* s = sin_.data() + pos * half;
    if (layout_ == RopeLayout::kInterleaved) {
      for (std::int64_t i = 0; i < half; ++i) {
        const Scalar a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * c[i] - b * s[i];
        x[2 * i + 1] = b * c[i] + a * s[i];
      }
    } else {
      for (std::int64_t i = 0; i < half; ++i) {
        const Scalar a = x[i], b = x[i + half];
        x[i] = a * c[i] - b * s[i];
        x[i + half] = b * c[i] + a * s[i];
      }
    }
  }

  /// Rotates `count` vectors of `dim` elements spaced `stride` apart, all at position `pos`
  /// (e.g. every head of one token).
  void rotate_strided(Scalar* x, std::int64_t count, std::int64_t stride, std::int64_t pos) const {
    for (std::int64_t k = 0; k < count; ++k) rotate(x + k * stride, pos);
  }

 private:
  RopeLayout layout_;
  std::int64_t dim_;
  std::int64_t max_positions_;
  std::vector<double> inv_freq_;
  double attention_factor_;
  std::vector<Scalar> cos_;  // [max_positions, dim/2], already times attention_factor
  std::vector<Scalar> sin_;
};

}  // namespace mla
