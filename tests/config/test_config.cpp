// Config validation: every RoPE field is checked for finiteness and range, naming the field; what
// the fields derive (inv_freq, the attention factor, MLA's softmax scale) must come out finite,
// positive and moderate, with a message naming the inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "mla/config.hpp"
#include "mla/presets.hpp"

namespace mla {
namespace {


constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

/// The message of the std::invalid_argument `fn` throws ("" and a failure when it throws none).
std::string invalid_argument_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  ADD_FAILURE() << "no std::invalid_argument";
  return "";
}

#define EXPECT_HAS(msg, word) EXPECT_NE((msg).find(word), std::string::npos) << (msg)

MlaConfig small_mla() {
  MlaConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 2;
  c.q_lora_rank = 12;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 6;
  c.max_position_embeddings = 64;
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

TEST(ConfigValidation, PresetsStillValidate) {
  for (const MlaConfig& c : {presets::deepseek_v3(), presets::deepseek_v2(),
                             presets::deepseek_v2_lite()})
    EXPECT_NO_THROW(c.validate());
  for (const AttentionConfig& c : {presets::qwen2_5_32b(), presets::llama3_1_8b(),
                                   presets::llama3_1_405b(), presets::mha_128x128()})
    EXPECT_NO_THROW(c.validate());
}

}  // namespace
}  // namespace mla
