// Rotary position embedding (RoPE): inverse frequencies for the default, linear, llama3 and yarn
// schedules (RopeConfig::scaled_inv_freq, config.hpp), and a precomputed cos/sin table that rotates vectors at arbitrary positions in either
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

/// Inverse frequencies inv_freq[i], i = 0..dim/2-1, after the scaling `cfg` selects (see
/// RopeConfig::scaled_inv_freq). Throws std::invalid_argument when `cfg` does not validate.
inline std::vector<double> rope_inv_freq(const RopeConfig& cfg, std::int64_t dim) {
  cfg.validate(dim);
  std::vector<double> inv(static_cast<std::size_t>(dim / 2));
  for (std::int64_t i = 0; i < dim / 2; ++i) inv[std::size_t(i)] = cfg.scaled_inv_freq(i, dim);
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
