// Layers whose projection weights are kept as bfloat16 (Options::projection_weights = kBf16).
// bf16 -> float widening is exact, so such a layer must give the float layer's output on the
// same weights rounded to bf16 (up to float summation order), for decode (1-3 rows: streaming
// products) and prefill (packed GEMM), on every MLA path and for GQA; it must hold half the
// projection bytes; and it must stay close to the unrounded float layer (bf16 rounding only).
#include <gtest/gtest.h>

#include <stdexcept>

#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"
#include "mla/presets.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using testing::positions_from;
using testing::rel_max_err;
using testing::Rng;

void round_to_bf16(Linear<float>& l) {
  if (l.weight.size() != 0) l.weight = l.weight.cast<bfloat16>().cast<float>();
}

MlaConfig small_mla(bool q_lora) {
  MlaConfig c;
  c.hidden_size = 96;
  c.num_attention_heads = 4;
  c.q_lora_rank = q_lora ? 48 : 0;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.rope = presets::deepseek_yarn(1.0);
  c.rope.original_max_position_embeddings = 64;
  c.max_position_embeddings = 1024;
  return c;
}

std::size_t projection_bytes(const MultiHeadLatentAttention<float>::Weights& w) {
  return w.q_a_proj.bytes() + w.q_b_proj.bytes() + w.q_proj.bytes() +
         w.kv_a_proj_with_mqa.bytes() + w.o_proj.bytes();
}

TEST(Bf16Weights, MlaEqualsFloatLayerOnRoundedWeights) {
  for (bool q_lora : {true, false}) {
    const MlaConfig c = small_mla(q_lora);
    Rng rng(q_lora ? 3 : 4);
    auto w = testing::random_mla_weights<float>(c, rng);
    const MultiHeadLatentAttention<float> exact(c, w);  // unrounded weights
    for (Linear<float>* l : {&w.q_a_proj, &w.q_b_proj, &w.q_proj, &w.kv_a_proj_with_mqa, &w.o_proj})
      round_to_bf16(*l);
    const MultiHeadLatentAttention<float> rounded(c, w);
    MultiHeadLatentAttention<float>::Options opt;
    opt.projection_weights = WeightFormat::kBf16;
    const MultiHeadLatentAttention<float> bf16(c, w, opt);
    EXPECT_EQ(2 * projection_bytes(bf16.weights()) -
                  (bf16.weights().kv_a_proj_with_mqa.bias.size() + bf16.weights().o_proj.bias.size() +
                   bf16.weights().q_a_proj.bias.size()) * sizeof(float),
              projection_bytes(rounded.weights()));
    EXPECT_TRUE(bf16.weights().o_proj.stored_as_bf16());
    EXPECT_FALSE(bf16.weights().kv_b_proj.stored_as_bf16());  // W_UK / W_UV stay float

    for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
      auto cache_a = rounded.make_latent_cache<float>(64), cache_b = bf16.make_latent_cache<float>(64),
           cache_e = exact.make_latent_cache<float>(64);
      Workspace ws_a, ws_b, ws_e;
      Index pos = 0;
      for (Index T : {Index(9), Index(1), Index(3), Index(1)}) {  // prefill, then decode steps
        const Matrix<float> x = rng.normal<float>(T, c.hidden_size);
        const Positions p = positions_from(pos, T);
        Matrix<float> ya(T, c.hidden_size), yb(T, c.hidden_size), ye(T, c.hidden_size);
        rounded.forward(x, p, cache_a, ya, ws_a, path);
        bf16.forward(x, p, cache_b, yb, ws_b, path);
        exact.forward(x, p, cache_e, ye, ws_e, path);
        ASSERT_TRUE(yb.allFinite());
        EXPECT_LE(rel_max_err(yb, ya), 1e-6) << "q_lora=" << q_lora << " T=" << T;
        // bf16 keeps 8 significant bits: ~0.4% per weight, averaged over the dot products.
        EXPECT_LE(rel_max_err(yb, ye), 2e-2) << "q_lora=" << q_lora << " T=" << T;
        EXPECT_GT(rel_max_err(yb, ye), 0.0);  // the rounding did happen
        pos += T;
      }
    }
  }
}

TEST(Bf16Weights, GqaEqualsFloatLayerOnRoundedWeights) {
  AttentionConfig c = presets::qwen2_5_72b();
  c.hidden_size = 128;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 1024;
  Rng rng(9);
  auto w = testing::random_gqa_weights<float>(c, rng);
  for (Linear<float>* l : {&w.q_proj, &w.k_proj, &w.v_proj, &w.o_proj}) round_to_bf16(*l);
  const GroupedQueryAttention<float> rounded(c, w);
  GroupedQueryAttention<float>::Options opt;
  opt.projection_weights = WeightFormat::kBf16;
  const GroupedQueryAttention<float> bf16(c, w, opt);
  EXPECT_TRUE(bf16.weights().q_proj.stored_as_bf16());
  auto ca = rounded.make_cache<float>(32), cb = bf16.make_cache<float>(32);
  Workspace wa, wb;
  Index pos = 0;
  for (Index T : {Index(7), Index(1), Index(2)}) {
    const Matrix<float> x = rng.normal<float>(T, c.hidden_size);
    Matrix<float> ya(T, c.hidden_size), yb(T, c.hidden_size);
    rounded.forward(x, positions_from(pos, T), ca, ya, wa);
    bf16.forward(x, positions_from(pos, T), cb, yb, wb);
    EXPECT_LE(rel_max_err(yb, ya), 1e-6) << "T=" << T;
    pos += T;
  }
}

TEST(Bf16Weights, DoubleLayerRejectsBf16) {
  const MlaConfig c = small_mla(true);
  Rng rng(5);
  MultiHeadLatentAttention<double>::Options opt;
  opt.projection_weights = WeightFormat::kBf16;
  EXPECT_THROW(MultiHeadLatentAttention<double>(c, testing::random_mla_weights<double>(c, rng), opt),
               std::invalid_argument);
}

}  // namespace
}  // namespace mla
