// RoPE: frequency schedules checked against their defining properties, and the rotation against
// the properties that make it a position embedding (norm preserved, scores depend only on the
// position difference, the two pair layouts are the same rotation up to a permutation). Positions
// past the bounded cos/sin table are checked against tabulated ones (bit for bit) and against the
// formula in double.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "mla/ops/rope.hpp"
#include "mla/presets.hpp"

namespace mla {
namespace {

TEST(RopeInvFreq, DefaultIsThetaPower) {
  RopeConfig r;
  r.rope_theta = 10000.0;
  const auto f = rope_inv_freq(r, 8);
  ASSERT_EQ(f.size(), 4u);
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  EXPECT_NEAR(f[1], 0.1, 1e-15);   // 10000^(-2/8)
  EXPECT_NEAR(f[2], 0.01, 1e-16);  // 10000^(-4/8)
}

TEST(RopeInvFreq, Llama3KeepsHighFrequenciesAndDividesLowOnes) {
  const RopeConfig r = presets::llama3_rope();
  RopeConfig plain = r;
  plain.rope_type = RopeType::kDefault;
  const auto scaled = rope_inv_freq(r, 128), base = rope_inv_freq(plain, 128);
  const double pi = std::acos(-1.0);
  int unchanged = 0, divided = 0, blended = 0;
  for (std::size_t i = 0; i < base.size(); ++i) {
    const double wavelen = 2 * pi / base[i];
    if (wavelen < 8192.0 / 4.0) {
      EXPECT_DOUBLE_EQ(scaled[i], base[i]);
      ++unchanged;
    } else if (wavelen > 8192.0) {
      EXPECT_DOUBLE_EQ(scaled[i], base[i] / 8.0);
      ++divided;
    } else {
      EXPECT_LT(scaled[i], base[i]);
      EXPECT_GT(scaled[i], base[i] / 8.0);
      ++blended;
    }
  }
  EXPECT_GT(unchanged, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
}

TEST(RopeInvFreq, YarnRampBetweenExtrapolationAndInterpolation) {
  const RopeConfig r = presets::deepseek_yarn(1.0);
  RopeConfig plain = r;
  plain.rope_type = RopeType::kDefault;
  const auto scaled = rope_inv_freq(r, 64), base = rope_inv_freq(plain, 64);
  // DeepSeek-V3 (d=64, theta 1e4, orig 4096, beta 32/1): correction range low=10, high=23
  // (the value the reference README lists for deepseek_v3_realdims).
  for (int i = 0; i <= 10; ++i) EXPECT_DOUBLE_EQ(scaled[i], base[i]) << i;
  for (int i = 23; i < 32; ++i) EXPECT_DOUBLE_EQ(scaled[i], base[i] / 40.0) << i;
  for (int i = 11; i < 23; ++i) {
    const double ramp = (i - 10) / 13.0;
    EXPECT_NEAR(scaled[i], base[i] / 40.0 * ramp + base[i] * (1 - ramp), 1e-18) << i;
  }
}

TEST(RopeConfig, YarnAttentionFactorAndMlaSoftmaxScale) {
  MlaConfig c = presets::deepseek_v3();
  EXPECT_DOUBLE_EQ(c.rope.attention_factor(), 1.0);  // mscale == mscale_all_dim
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(192.0), 1e-15);
  c.rope.mscale = 0.0;
  c.rope.mscale_all_dim = 0.0;
  EXPECT_NEAR(c.rope.attention_factor(), m, 1e-15);
  EXPECT_NEAR(c.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-15);
}

template <class Scalar>
Scalar dot(const std::vector<Scalar>& a, const std::vector<Scalar>& b) {
  Scalar s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

class RopeRotation : public ::testing::TestWithParam<RopeLayout> {};

TEST_P(RopeRotation, PreservesNormAndDependsOnlyOnRelativePosition) {
  RopeConfig r = presets::deepseek_yarn(1.0);
  r.layout = GetParam();
  RotaryEmbedding<double> rope(r, 16, 10000);
  std::vector<double> q(16), k(16);
  for (int i = 0; i < 16; ++i) {
    q[i] = std::sin(1.3 * i + 0.2);
    k[i] = std::cos(0.7 * i - 0.4);
  }
  auto rotated = [&](std::vector<double> v, std::int64_t pos) {
    rope.rotate(v.data(), pos);
    return v;
  };
  EXPECT_NEAR(dot(rotated(q, 777), rotated(q, 777)), dot(q, q), 1e-12);
  const double s1 = dot(rotated(q, 105), rotated(k, 100));
  const double s2 = dot(rotated(q, 9005), rotated(k, 9000));
  EXPECT_NEAR(s1, s2, 1e-9);
  EXPECT_GT(std::abs(s1 - dot(q, k)), 1e-6);  // it does rotate
}

// ---- The bounded table: positions past it are computed on demand with identical results. ----

/// x rotated at `pos` by the formula, in double: pairs by `layout`, angle pos * inv_freq[i],
/// cos and sin times the attention factor.
std::vector<double> rotate_by_formula(const RopeConfig& cfg, std::vector<double> x,
                                      std::int64_t pos) {
  const std::int64_t d = static_cast<std::int64_t>(x.size()), half = d / 2;
  const std::vector<double> inv = rope_inv_freq(cfg, d);
  const double af = cfg.attention_factor();
  for (std::int64_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(pos) * inv[std::size_t(i)];
    const double c = std::cos(angle) * af, s = std::sin(angle) * af;
    const bool interleaved = cfg.layout == RopeLayout::kInterleaved;
    const std::size_t ia = std::size_t(interleaved ? 2 * i : i);
    const std::size_t ib = std::size_t(interleaved ? 2 * i + 1 : i + half);
    const double a = x[ia], b = x[ib];
    x[ia] = a * c - b * s;
    x[ib] = b * c + a * s;
  }
  return x;
}

TEST_P(RopeRotation, TableIsBoundedWhateverMaxPositions) {
  // 2^32 positions of a 128-wide rotation would be 2^38 (cos, sin) pairs (2 TiB of double); the
  // table holds kRopeTableMaxPairs pairs, i.e. 2^22 / 64 = 65536 positions, and every position
  // up to 2^32 - 1 is still accepted.
  RopeConfig r = presets::llama3_rope();
  r.layout = GetParam();
  const RotaryEmbedding<double> rope(r, 128, kMaxPositions);
  EXPECT_EQ(rope.max_positions(), kMaxPositions);
  EXPECT_EQ(rope.table_positions(), kRopeTableMaxPairs / 64);
  EXPECT_LE(rope.table_bytes(), 2 * sizeof(double) * static_cast<std::size_t>(kRopeTableMaxPairs));
  Positions p(2);
  p << 0, kMaxPositions - 1;
  EXPECT_NO_THROW(rope.check_positions(p));
  p << 0, kMaxPositions;
  EXPECT_THROW(rope.check_positions(p), std::invalid_argument);
  // A table smaller than max_positions is the default for long contexts; short ones are whole.
  EXPECT_EQ(RotaryEmbedding<float>(r, 128, 4096).table_positions(), 4096);
  // max_positions past kMaxPositions is refused (it used to size the table).
  EXPECT_THROW(RotaryEmbedding<float>(r, 128, kMaxPositions + 1), std::invalid_argument);
}

TEST_P(RopeRotation, PastTheTableMatchesTheFormulaInDouble) {
  RopeConfig r = presets::deepseek_yarn(0.707);
  r.mscale_all_dim = 1.0;  // attention factor get_mscale(40, 0.707) / get_mscale(40, 1) != 1
  r.layout = GetParam();
  ASSERT_NE(r.attention_factor(), 1.0);
  const RotaryEmbedding<double> rope(r, 64, kMaxPositions);
  ASSERT_EQ(rope.table_positions(), kRopeTableMaxPairs / 32);
  std::vector<double> x(64);
  for (int i = 0; i < 64; ++i) x[std::size_t(i)] = std::sin(0.9 * i + 0.3);
  for (std::int64_t pos : {std::int64_t{0}, rope.table_positions() - 1, rope.table_positions(),
                           std::int64_t{1000003}, kMaxPositions - 1}) {
    std::vector<double> y = x;
    rope.rotate(y.data(), pos);
    const std::vector<double> want = rotate_by_formula(r, x, pos);
    for (int i = 0; i < 64; ++i)
      EXPECT_NEAR(y[std::size_t(i)], want[std::size_t(i)], 1e-14) << "pos " << pos << " i " << i;
  }
}

TEST_P(RopeRotation, PastTheTableIsBitIdenticalToTabulated) {
  // The same rotation with the whole range tabulated and with a table of 100 positions: the
  // on-demand cos/sin are the table's entries and the rotation is the same code, so every bit
  // agrees, for one vector and for several heads at once, in float and double.
  RopeConfig r = presets::deepseek_yarn(0.707);
  r.mscale_all_dim = 1.0;
  r.layout = GetParam();
  const std::int64_t d = 160, half = d / 2, max_pos = 1 << 14;  // 160: more than one chunk
  auto check = [&](auto zero) {
    using Scalar = decltype(zero);
    const RotaryEmbedding<Scalar> full(r, d, max_pos, max_pos * half);
    const RotaryEmbedding<Scalar> small(r, d, max_pos, 100 * half);
    ASSERT_EQ(full.table_positions(), max_pos);
    ASSERT_EQ(small.table_positions(), 100);
    const std::int64_t heads = 3, stride = d + 5;
    std::vector<Scalar> x(static_cast<std::size_t>(heads * stride));
    for (std::size_t i = 0; i < x.size(); ++i)
      x[i] = static_cast<Scalar>(std::cos(0.37 * double(i)));
    const std::int64_t positions[] = {99, 100, 4097, max_pos - 1};  // table ends at 100
    for (std::int64_t pos : positions) {
      for (std::int64_t i = 0; i < half; ++i) {
        Scalar c1, s1, c2, s2;
        full.cos_sin(pos, i, c1, s1);
        small.cos_sin(pos, i, c2, s2);
        EXPECT_EQ(c1, c2);
        EXPECT_EQ(s1, s2);
      }
      std::vector<Scalar> a = x, b = x;
      full.rotate_strided(a.data(), heads, stride, pos);
      small.rotate_strided(b.data(), heads, stride, pos);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(Scalar)), 0) << "pos " << pos;
      a = x;
      b = x;
      full.rotate(a.data(), pos);
      small.rotate(b.data(), pos);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(Scalar)), 0) << "pos " << pos;
    }
  };
  check(float{});
  check(double{});
}

INSTANTIATE_TEST_SUITE_P(Layouts, RopeRotation,
                         ::testing::Values(RopeLayout::kInterleaved, RopeLayout::kRotateHalf));

TEST(RopeRotation, InterleavedEqualsRotateHalfOnPermutedPairs) {
  RopeConfig a = presets::deepseek_yarn(1.0);
  RopeConfig b = a;
  a.layout = RopeLayout::kInterleaved;
  b.layout = RopeLayout::kRotateHalf;
  RotaryEmbedding<double> ra(a, 8, 100), rb(b, 8, 100);
  std::vector<double> x{1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<double> y{1, 3, 5, 7, 2, 4, 6, 8};  // evens then odds
  ra.rotate(x.data(), 37);
  rb.rotate(y.data(), 37);
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(x[2 * i], y[i], 1e-14);
    EXPECT_NEAR(x[2 * i + 1], y[i + 4], 1e-14);
  }
}

TEST(RopeRotation, RejectsPositionsOutsideTable) {
  RotaryEmbedding<float> rope(RopeConfig{}, 8, 64);
  Positions p(2);
  p << 3, 64;
  EXPECT_THROW(rope.check_positions(p), std::invalid_argument);
  p << -1, 0;
  EXPECT_THROW(rope.check_positions(p), std::invalid_argument);
  p << 0, 63;
  EXPECT_NO_THROW(rope.check_positions(p));
}

TEST(RopeConfig, RejectsOddDimAndBadParameters) {
  RopeConfig r;
  EXPECT_THROW(r.validate(7), std::invalid_argument);
  EXPECT_THROW(r.validate(0), std::invalid_argument);
  r.rope_type = RopeType::kYarn;
  r.factor = 4;
  EXPECT_THROW(r.validate(8), std::invalid_argument);  // no original_max_position_embeddings
  r.original_max_position_embeddings = 64;
  EXPECT_NO_THROW(r.validate(8));
  r.factor = -1;
  EXPECT_THROW(r.validate(8), std::invalid_argument);
}

}  // namespace
}  // namespace mla
