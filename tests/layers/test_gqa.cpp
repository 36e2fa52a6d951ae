// MHA/GQA layer: the Eigen path against a plain loop reference written from the formula, and
// invariance of the outputs under any chunking of the sequence (prefill, chunks, decode).
#include <gtest/gtest.h>

#include <cmath>

#include "mla/layers/gqa.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using testing::positions_from;
using testing::rel_max_err;
using testing::Rng;

AttentionConfig small_gqa(Index heads, Index kv_heads, bool bias) {
  AttentionConfig c;
  c.hidden_size = 48;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = 10;
  c.qkv_bias = bias;
  c.o_bias = bias;
  c.rope.rope_theta = 10000;
  c.max_position_embeddings = 512;
  return c;
}

/// softmax(q k^T / sqrt(D)) v with explicit loops, from the q/k/v the layer projects.
Matrix<double> loop_reference(const GroupedQueryAttention<double>& layer, const Matrix<double>& x,
                              const Positions& pos) {
  const auto& c = layer.config();
  const Index T = x.rows(), H = c.num_attention_heads, KV = c.num_key_value_heads,
              D = c.head_dim, g = H / KV;
  Matrix<double> q(T, H * D), k(T, KV * D), v(T, KV * D);
  layer.project_qkv(x, pos, q, k, v);
  Matrix<double> heads = Matrix<double>::Zero(T, H * D);
  for (Index t = 0; t < T; ++t) {
    for (Index h = 0; h < H; ++h) {
      const Index kh = h / g;
      std::vector<double> s(t + 1);
      double m = -1e300, sum = 0;
      for (Index j = 0; j <= t; ++j) {
        double d = 0;
        for (Index i = 0; i < D; ++i) d += q(t, h * D + i) * k(j, kh * D + i);
        s[j] = d / std::sqrt(double(D));
        m = std::max(m, s[j]);
      }
      for (Index j = 0; j <= t; ++j) sum += (s[j] = std::exp(s[j] - m));
      for (Index j = 0; j <= t; ++j)
        for (Index i = 0; i < D; ++i) heads(t, h * D + i) += s[j] / sum * v(j, kh * D + i);
    }
  }
  Matrix<double> out(T, c.hidden_size);
  layer.weights().o_proj.apply(heads, out);
  return out;
}

struct GqaCase {
  Index heads, kv_heads;
  bool bias;
};
class GqaLayer : public ::testing::TestWithParam<GqaCase> {};

TEST_P(GqaLayer, MatchesLoopReferenceInAnyChunking) {
  const GqaCase p = GetParam();
  const AttentionConfig cfg = small_gqa(p.heads, p.kv_heads, p.bias);
  Rng rng(42);
  GroupedQueryAttention<double> layer(cfg, testing::random_gqa_weights<double>(cfg, rng));
  const Index T = 13;
  const Matrix<double> x = rng.normal<double>(T, cfg.hidden_size);
  const Positions pos = positions_from(7, T);
  const Matrix<double> ref = loop_reference(layer, x, pos);

  for (const std::vector<Index>& chunks :
       {std::vector<Index>{13}, std::vector<Index>(13, 1), std::vector<Index>{5, 1, 4, 3}}) {
    auto cache = layer.make_cache(T);
    Workspace ws;
    Matrix<double> y(T, cfg.hidden_size);
    Index done = 0;
    for (Index n : chunks) {
      Matrix<double> part(n, cfg.hidden_size);
      layer.forward(x.middleRows(done, n), pos.segment(done, n), cache, part, ws);
      y.middleRows(done, n) = part;
      done += n;
    }
    EXPECT_LE(rel_max_err(y, ref), 1e-13) << chunks.size() << " chunks";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GqaLayer,
                         ::testing::Values(GqaCase{4, 4, false}, GqaCase{6, 2, true},
                                           GqaCase{8, 1, false}));

TEST(GqaLayer, FloatAndBf16CacheTrackDouble) {
  const AttentionConfig cfg = small_gqa(6, 3, false);
  Rng rng(3);
  const auto wd = testing::random_gqa_weights<double>(cfg, rng);
  typename GroupedQueryAttention<float>::Weights wf;
  auto cast = [](const Linear<double>& l) {
    return Linear<float>{l.weight.cast<float>(), l.bias.cast<float>()};
  };
  wf.q_proj = cast(wd.q_proj);
  wf.k_proj = cast(wd.k_proj);
  wf.v_proj = cast(wd.v_proj);
  wf.o_proj = cast(wd.o_proj);
  GroupedQueryAttention<double> ld(cfg, wd);
  GroupedQueryAttention<float> lf(cfg, wf);
  const Matrix<double> x = rng.normal<double>(9, cfg.hidden_size).cast<float>().cast<double>();
  auto cd = ld.make_cache(9);
  const Matrix<double> yd = ld.forward(x, positions_from(0, 9), cd);
  auto cf = lf.make_cache(9);
  const Matrix<float> yf = lf.forward(x.cast<float>(), positions_from(0, 9), cf);
  EXPECT_LE(rel_max_err(yf.cast<double>(), yd), 1e-5);
  auto cb = lf.make_cache<bfloat16>(9);
  const Matrix<float> yb = lf.forward(x.cast<float>(), positions_from(0, 9), cb);
  EXPECT_LE(rel_max_err(yb.cast<double>(), yd), 2e-2);  // bf16 keeps 8 mantissa bits
  EXPECT_GT(rel_max_err(yb.cast<double>(), yd), 0.0);
}

TEST(GqaLayer, RejectsBadShapesAndOverflowAndStaysUsable) {
  const AttentionConfig cfg = small_gqa(4, 2, false);
  Rng rng(5);
  auto w = testing::random_gqa_weights<double>(cfg, rng);
  auto bad = w;
  bad.k_proj.weight.resize(30, 48);
  try {
    GroupedQueryAttention<double> l(cfg, bad);
    FAIL() << "accepted a wrong k_proj shape";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("k_proj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[20, 48]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[30, 48]"), std::string::npos) << e.what();
  }
  GroupedQueryAttention<double> layer(cfg, w);
  auto cache = layer.make_cache(4);
  const Matrix<double> x = rng.normal<double>(3, cfg.hidden_size);
  layer.forward(x, positions_from(0, 3), cache);
  EXPECT_THROW(layer.forward(x, positions_from(3, 3), cache), std::invalid_argument);
  EXPECT_EQ(cache.size(), 3);  // unchanged by the failed call
  EXPECT_THROW(layer.forward(x.leftCols(47), positions_from(3, 3), cache), std::invalid_argument);
  EXPECT_THROW(layer.forward(x.topRows(1), positions_from(512, 1), cache), std::invalid_argument);
  EXPECT_NO_THROW(layer.forward(x.topRows(1), positions_from(3, 1), cache));
  EXPECT_EQ(cache.size(), 4);
}

TEST(AttentionConfig, ValidateNamesTheFieldsThatDisagree) {
  AttentionConfig c = small_gqa(6, 4, false);
  try {
    c.validate();
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("num_attention_heads (6) is not divisible by "
                                         "num_key_value_heads (4)"),
              std::string::npos);
  }
  c = small_gqa(4, 2, false);
  c.head_dim = 0;
  EXPECT_THROW(c.validate(), std::invalid_argument);
  c = small_gqa(4, 2, false);
  c.head_dim = 9;  // odd rotary dim
  EXPECT_THROW(c.validate(), std::invalid_argument);
}

}  // namespace
}  // namespace mla
