// Rotary position embedding (RoPE): inverse frequencies for the default, linear, llama3 and yarn
// schedules (RopeConfig::scaled_inv_freq, config.hpp), and RotaryEmbedding, which rotates vectors
// at arbitrary positions in either pair layout (rotate-half as in Llama/Qwen2, interleaved as in
// DeepSeek) from a bounded precomputed cos/sin table.
//
// The angles pos * inv_freq[i] and their cos/sin are formed in double and only then rounded to
// the table's scalar type. Forming them in float loses ~5e-4 rad at pos ~ 4k (the reference README
// measures this), which is most of the float error budget at long context.
//
// Table size: a config may allow up to kMaxPositions (2^32) positions, whose full table would be
// hundreds of GiB. The table therefore covers only the first
//   table_positions = min(max_positions, kRopeTableMaxPairs / (dim / 2))
// positions (at most kRopeTableMaxPairs = 2^22 (cos, sin) pairs: 32 MiB in float, 64 MiB in
// double), and rotations at later positions evaluate the same double formula on the fly, rounded
// the same way, so they give bit-identical results; only the cost differs (dim/2 cos and sin per
// token per rotate call, no allocation). DeepSeek's 64-wide RoPE gets 131072 tabulated positions,
// a 128-wide head 65536.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "mla/config.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla {

/// Most (cos, sin) pairs a RotaryEmbedding precomputes: positions * (dim / 2) <= 2^22, i.e. at
/// most 32 MiB (float) or 64 MiB (double) for the cos and sin tables together, whatever the
/// config's max_position_embeddings. Positions past the table are computed on demand.
inline constexpr std::int64_t kRopeTableMaxPairs = std::int64_t{1} << 22;

/// Inverse frequencies inv_freq[i], i = 0..dim/2-1, after the scaling `cfg` selects (see
/// RopeConfig::scaled_inv_freq). Throws std::invalid_argument when `cfg` does not validate.
inline std::vector<double> rope_inv_freq(const RopeConfig& cfg, std::int64_t dim) {
  cfg.validate(dim);
  std::vector<double> inv(static_cast<std::size_t>(dim / 2));
  for (std::int64_t i = 0; i < dim / 2; ++i) inv[std::size_t(i)] = cfg.scaled_inv_freq(i, dim);
  return inv;
}

/// Rotation of `dim` elements by position, for positions [0, max_positions): cos/sin from a table
/// for the first table_positions() positions, computed on demand (same formula, same rounding)
/// past it. Immutable after construction; share one between layers with the same RoPE settings.
template <class Scalar>
class RotaryEmbedding {
 public:
  /// Accepts positions [0, max_positions) for `dim` rotary elements and tabulates the first
  /// min(max_positions, max_table_pairs / (dim / 2)) of them (max_table_pairs: memory budget of
  /// the table in (cos, sin) pairs; the default kRopeTableMaxPairs suits every use, a smaller
  /// one trades table memory for on-demand cos/sin). Throws std::invalid_argument on a bad
  /// config or a max_positions outside [1, kMaxPositions].
  RotaryEmbedding(const RopeConfig& cfg, std::int64_t dim, std::int64_t max_positions,
                  std::int64_t max_table_pairs = kRopeTableMaxPairs)
      : layout_(cfg.layout), dim_(dim), max_positions_(max_positions),
        inv_freq_(rope_inv_freq(cfg, dim)), attention_factor_(cfg.attention_factor()) {
    MLA_CHECK_ARG(max_positions > 0 && max_positions <= kMaxPositions, "RoPE max_positions (",
                  max_positions, ") must be in [1, ", kMaxPositions, "]");
    MLA_CHECK_ARG(max_table_pairs >= 0, "RoPE max_table_pairs (", max_table_pairs,
                  ") must be non-negative");
    const std::int64_t half = dim / 2;
    table_positions_ = std::min(max_positions, max_table_pairs / half);
    cos_.resize(static_cast<std::size_t>(table_positions_ * half));  // <= max_table_pairs
    sin_.resize(cos_.size());
    for (std::int64_t p = 0; p < table_positions_; ++p)
      for (std::int64_t i = 0; i < half; ++i)
        cos_sin(p, i, cos_[std::size_t(p * half + i)], sin_[std::size_t(p * half + i)]);
  }

  std::int64_t dim() const { return dim_; }
  /// Positions accepted: [0, max_positions()).
  std::int64_t max_positions() const { return max_positions_; }
  /// Positions [0, table_positions()) read cos/sin from the table; later ones compute them.
  std::int64_t table_positions() const { return table_positions_; }
  /// Bytes of the cos/sin table.
  std::size_t table_bytes() const { return (cos_.capacity() + sin_.capacity()) * sizeof(Scalar); }
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

  /// The rotation of pair i at position `pos`, cos(pos * inv_freq[i]) and sin(...) times the
  /// attention factor, formed in double and rounded to Scalar: exactly the table's entries.
  void cos_sin(std::int64_t pos, std::int64_t i, Scalar& c, Scalar& s) const {
    const double angle = static_cast<double>(pos) * inv_freq_[std::size_t(i)];
    c = static_cast<Scalar>(std::cos(angle) * attention_factor_);
    s = static_cast<Scalar>(std::sin(angle) * attention_factor_);
  }

  /// Rotates x[0..dim) in place by the angles of `pos` (which must be in range: callers check
  /// positions once per call with check_positions()).
  ///   interleaved: (x[2i], x[2i+1]) <- (x[2i] c - x[2i+1] s, x[2i+1] c + x[2i] s)
  ///   rotate-half: (x[i], x[i+d/2]) <- (x[i] c - x[i+d/2] s, x[i+d/2] c + x[i] s)
  void rotate(Scalar* x, std::int64_t pos) const { rotate_strided(x, 1, 0, pos); }

  /// Rotates `count` vectors of `dim` elements spaced `stride` apart, all at position `pos`
  /// (e.g. every head of one token). Past the table, cos/sin are computed once per pair for all
  /// `count` vectors, a chunk of pairs at a time in a stack buffer (nothing is allocated).
  void rotate_strided(Scalar* x, std::int64_t count, std::int64_t stride, std::int64_t pos) const {
    MLA_DCHECK(pos >= 0 && pos < max_positions_);
    const std::int64_t half = dim_ / 2;
    if (pos < table_positions_) {
      const Scalar* c = cos_.data() + pos * half;
      const Scalar* s = sin_.data() + pos * half;
      for (std::int64_t k = 0; k < count; ++k) rotate_pairs(x + k * stride, c, s, 0, half);
      return;
    }
    constexpr std::int64_t kChunk = 64;
    Scalar c[kChunk], s[kChunk];
    for (std::int64_t i0 = 0; i0 < half; i0 += kChunk) {
      const std::int64_t n = std::min(kChunk, half - i0);
      for (std::int64_t i = 0; i < n; ++i) cos_sin(pos, i0 + i, c[i], s[i]);
      for (std::int64_t k = 0; k < count; ++k) rotate_pairs(x + k * stride, c, s, i0, n);
    }
  }

 private:
  /// Rotates pairs [i0, i0 + n) of x by c[0..n), s[0..n): the one place the rotation is written,
  /// so tabulated and on-demand positions round alike.
  void rotate_pairs(Scalar* x, const Scalar* c, const Scalar* s, std::int64_t i0,
                    std::int64_t n) const {
    const std::int64_t half = dim_ / 2;
    if (layout_ == RopeLayout::kInterleaved) {
      Scalar* y = x + 2 * i0;
      for (std::int64_t i = 0; i < n; ++i) {
        const Scalar a = y[2 * i], b = y[2 * i + 1];
        y[2 * i] = a * c[i] - b * s[i];
        y[2 * i + 1] = b * c[i] + a * s[i];
      }
    } else {
      Scalar* y = x + i0;
      for (std::int64_t i = 0; i < n; ++i) {
        const Scalar a = y[i], b = y[i + half];
        y[i] = a * c[i] - b * s[i];
        y[i + half] = b * c[i] + a * s[i];
      }
    }
  }

  RopeLayout layout_;
  std::int64_t dim_;
  std::int64_t max_positions_;
  std::int64_t table_positions_ = 0;
  std::vector<double> inv_freq_;
  double attention_factor_;
  std::vector<Scalar> cos_;  // [table_positions, dim/2], already times attention_factor
  std::vector<Scalar> sin_;
};

}  // namespace mla
