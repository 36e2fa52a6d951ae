// Config validation: every RoPE field is checked for finiteness and range, naming the field; what
// the fields derive (inv_freq, the attention factor, MLA's softmax scale) must come out finite,
// positive and moderate, with a message naming the inputs; and a config may not make a layer
// allocate with the size of its max_position_embeddings (the RoPE table is bounded).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"
#include "mla/presets.hpp"
#include "support/alloc_counter.hpp"
#include "support/error_message.hpp"
#include "support/random.hpp"
#include "support/small_layers.hpp"

namespace mla {
namespace {

using testing::positions_from;
using testing::rel_max_err;
using testing::Rng;

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

using testing::invalid_argument_of;

/// The small MLA shape with DeepSeek's yarn RoPE (factor 40 over 16 original positions).
MlaConfig small_mla() {
  MlaConfig c = testing::small_mla_config();
  c.rope = presets::deepseek_yarn(1.0);
  c.rope.original_max_position_embeddings = 16;
  return c;
}

struct BadField {
  const char* field;                         // the word the message must contain
  std::function<void(RopeConfig&)> set;      // makes the config bad
};

void expect_rejected(const RopeConfig& good, std::int64_t dim, const std::vector<BadField>& cases) {
  ASSERT_NO_THROW(good.validate(dim));
  for (const BadField& c : cases) {
    RopeConfig r = good;
    c.set(r);
    EXPECT_HAS(invalid_argument_of([&] { r.validate(dim); }), c.field);
  }
}

TEST(ConfigValidation, YarnFieldsMustBeFiniteAndInRangeNamingTheField) {
  std::vector<BadField> cases;
  for (double v : {kNan, kInf, 1.0, 0.5, -kInf})
    cases.push_back({"rope_theta", [v](RopeConfig& r) { r.rope_theta = v; }});
  for (double v : {kNan, kInf, 0.0, -2.0})
    cases.push_back({"rope factor", [v](RopeConfig& r) { r.factor = v; }});
  for (std::int64_t v : {std::int64_t{-1}, std::int64_t{0}, kMaxPositions + 1})
    cases.push_back({"original_max_position_embeddings",
                     [v](RopeConfig& r) { r.original_max_position_embeddings = v; }});
  for (double v : {kNan, kInf, 0.0, -1.0}) {
    cases.push_back({"beta_fast", [v](RopeConfig& r) { r.beta_fast = v; }});
    cases.push_back({"beta_slow", [v](RopeConfig& r) { r.beta_slow = v; }});
    cases.push_back({"attention_factor", [v](RopeConfig& r) { r.attention_factor_override = v; }});
  }
  for (double v : {kNan, kInf, -1.0}) {
    cases.push_back({"rope mscale (", [v](RopeConfig& r) { r.mscale = v; }});
    cases.push_back({"mscale_all_dim", [v](RopeConfig& r) { r.mscale_all_dim = v; }});
    cases.push_back({"yarn_context_ratio", [v](RopeConfig& r) { r.yarn_context_ratio = v; }});
  }
  expect_rejected(presets::deepseek_yarn(1.0), 64, cases);
}

TEST(ConfigValidation, Llama3AndLinearFieldsNamingTheField) {
  std::vector<BadField> cases;
  for (double v : {kNan, kInf, 0.0, -1.0})
    cases.push_back({"low_freq_factor", [v](RopeConfig& r) { r.low_freq_factor = v; }});
  for (double v : {kNan, kInf, 0.5})  // 0.5 < low_freq_factor (1)
    cases.push_back({"high_freq_factor", [v](RopeConfig& r) { r.high_freq_factor = v; }});
  for (double v : {kNan, kInf})
    cases.push_back({"mscale_all_dim", [v](RopeConfig& r) { r.mscale_all_dim = v; }});
  expect_rejected(presets::llama3_rope(), 128, cases);

  RopeConfig linear;
  linear.rope_type = RopeType::kLinear;
  linear.factor = 2.0;
  expect_rejected(linear, 64,
                  {{"rope factor", [](RopeConfig& r) { r.factor = kInf; }},
                   {"original_max_position_embeddings",
                    [](RopeConfig& r) { r.original_max_position_embeddings = -5; }}});
  // The rotary dimension is bounded like every config dim (it sizes the loops over pairs).
  EXPECT_HAS(invalid_argument_of([&] { linear.validate(kMaxConfigDim + 2); }), "rotary dimension");
}

// The cases of the issue: each was accepted and made every output NaN (softmax scale Inf) or
// non-finite RoPE factors. Now validate() names the derived quantity and its inputs.
TEST(ConfigValidation, DerivedQuantitiesMustBeFiniteAndModerate) {
  MlaConfig c = small_mla();
  ASSERT_NO_THROW(c.validate());

  c.rope.attention_factor_override = 1e300;
  std::string msg = invalid_argument_of([&] { c.validate(); });
  EXPECT_HAS(msg, "rope attention factor (1e+300)");
  EXPECT_HAS(msg, "attention_factor 1e+300");
  c.rope.attention_factor_override = 1e-300;
  EXPECT_HAS(invalid_argument_of([&] { c.validate(); }), "rope attention factor (1e-300)");

  c = small_mla();
  c.rope.mscale_all_dim = 1e308;
  msg = invalid_argument_of([&] { c.validate(); });
  EXPECT_HAS(msg, "mscale_all_dim 1e+308");  // the attention factor's inputs, or the softmax's
  c.rope.mscale = 0.0;  // mscale_all_dim alone only scales the softmax
  msg = invalid_argument_of([&] { c.validate(); });
  EXPECT_HAS(msg, "MLA softmax scale (inf)");
  EXPECT_HAS(msg, "mscale_all_dim 1e+308");
  EXPECT_HAS(msg, "rope factor 40");
  c.rope.mscale_all_dim = 1e5;  // finite, but mscale^2 ~ 1.4e9: float scores head for overflow
  EXPECT_HAS(invalid_argument_of([&] { c.validate(); }), "has mscale^2 = ");
  c.rope.mscale_all_dim = 50.0;  // mscale^2 ~ 350: large but allowed
  EXPECT_NO_THROW(c.validate());

  c = small_mla();
  c.rope.mscale = 1e308;  // get_mscale(40, 1e308) / get_mscale(40, 1) ~ 3e307
  EXPECT_HAS(invalid_argument_of([&] { c.validate(); }), "rope attention factor (");

  // inv_freq: a linear factor of 1e-300 makes inv_freq[0] = 1e300, whose angle at large positions
  // is infinite (cos NaN); a beta_fast of 1e-320 makes yarn's ramp NaN.
  RopeConfig r;
  r.rope_type = RopeType::kLinear;
  r.factor = 1e-300;
  msg = invalid_argument_of([&] { r.validate(8); });
  EXPECT_HAS(msg, "rope inv_freq[0] (1e+300)");
  EXPECT_HAS(msg, "factor 1e-300");
  r = presets::deepseek_yarn(1.0);
  r.beta_fast = 1e-320;
  msg = invalid_argument_of([&] { r.validate(64); });
  EXPECT_HAS(msg, "rope inv_freq[");
  EXPECT_HAS(msg, "beta_fast ");
}

TEST(ConfigValidation, NormEpsMustBeFinitePositive) {
  MlaConfig c = small_mla();
  for (double eps : {kNan, kInf, 0.0, -1e-6}) {
    c.latent_norm_eps = eps;
    EXPECT_HAS(invalid_argument_of([&] { c.validate(); }), "latent_norm_eps");
  }
}

// ---- A config cannot make a layer allocate with the size of max_position_embeddings. ----

/// Bytes the global operator new hands out while `fn` runs.
template <class Fn>
long bytes_allocated_by(Fn fn) {
  g_alloc_bytes = 0;
  g_count_allocs = true;
  fn();
  g_count_allocs = false;
  return g_alloc_bytes.load();
}

// A table of 2^32 positions would be 2^32 x 2 x (2 cos + 2 sin) x 4 bytes = 128 GiB for this
// 4-wide RoPE. The layer accepts every position up to 2^32 - 1 and computes those past its table
// on demand, matching the double layer.
TEST(ConfigResources, MlaLayerFromHugeMaxPositionsAllocatesABoundedTable) {
  MlaConfig c = small_mla();
  c.max_position_embeddings = kMaxPositions;
  Rng rng_f(61), rng_d(61);  // the same draws: float weights are the double ones rounded
  const auto w = testing::random_mla_weights<float>(c, rng_f);
  const auto wd = testing::random_mla_weights<double>(c, rng_d);
  std::unique_ptr<MultiHeadLatentAttention<float>> lf;
  const long bytes = bytes_allocated_by(
      [&] { lf = std::make_unique<MultiHeadLatentAttention<float>>(c, w); });
  // Table: kRopeTableMaxPairs (cos, sin) pairs of float; the weights and the rest are ~10 KB.
  const long table_bound = 2 * long(sizeof(float)) * kRopeTableMaxPairs;
  EXPECT_LE(bytes, table_bound + (1 << 20));
  EXPECT_LE(lf->rope().table_bytes(), std::size_t(table_bound));
  EXPECT_EQ(lf->rope().max_positions(), kMaxPositions);

  // Positions at the end of the range (on demand) agree with the double layer.
  const MultiHeadLatentAttention<double> ld(c, wd);
  const Matrix<double> x = rng_d.normal<double>(3, 32);
  const Positions pos = positions_from(kMaxPositions - 3, 3);
  auto cf = lf->make_latent_cache(3);
  auto cd = ld.make_latent_cache(3);
  const Matrix<float> yf = lf->forward(x.cast<float>(), pos, cf);
  const Matrix<double> yd = ld.forward(x, pos, cd);
  ASSERT_TRUE(yf.allFinite());
  EXPECT_LE(rel_max_err(yf.cast<double>(), yd), 1e-4);
  EXPECT_THROW(lf->forward(x.topRows(1).cast<float>(), positions_from(kMaxPositions, 1), cf),
               std::invalid_argument);
}

// The same through Options::max_positions on a GQA layer whose config allows only 64 positions:
// the option raises the accepted range to 2^32, the table stays bounded; past kMaxPositions the
// option is refused.
TEST(ConfigResources, GqaOptionsMaxPositionsAllocatesABoundedTable) {
  const AttentionConfig c = testing::small_gqa_config();  // positions [0, 64)
  Rng rng(62);
  const auto w = testing::random_gqa_weights<float>(c, rng);
  GroupedQueryAttention<float>::Options opt;
  opt.max_positions = kMaxPositions;
  std::unique_ptr<GroupedQueryAttention<float>> layer;
  const long bytes = bytes_allocated_by(
      [&] { layer = std::make_unique<GroupedQueryAttention<float>>(c, w, opt); });
  EXPECT_LE(bytes, 2 * long(sizeof(float)) * kRopeTableMaxPairs + (1 << 20));
  EXPECT_EQ(layer->rope().max_positions(), kMaxPositions);
  auto cache = layer->make_cache(1);
  const Matrix<float> x = rng.normal<float>(1, 48);
  EXPECT_TRUE(layer->forward(x, positions_from(kMaxPositions - 1, 1), cache).allFinite());
  opt.max_positions = kMaxPositions + 1;
  EXPECT_HAS(invalid_argument_of([&] { GroupedQueryAttention<float>(c, w, opt); }),
             "RoPE max_positions (4294967297)");
}

}  // namespace
}  // namespace mla
