// Tensor-parallel head sharding: the sum of the shards' partial outputs equals the full layer,
// for MLA (both paths, with and without q LoRA, with biases) and GQA, for any split of the heads.
#include <gtest/gtest.h>

#include "mla/layers/sharding.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using testing::positions_from;
using testing::rel_max_err;

MlaConfig mla_cfg(bool q_lora, bool bias) {
  MlaConfig c;
  c.hidden_size = 40;
  c.num_attention_heads = 6;
  c.q_lora_rank = q_lora ? 24 : 0;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 6;
  c.attention_bias = bias;
  c.max_position_embeddings = 256;
  return c;
}

template <class Layer>
Matrix<double> run(const Layer& layer, const Matrix<double>& x, MlaPath path) {
  auto cache = layer.make_latent_cache(x.rows());
  Workspace ws;
  Matrix<double> y(x.rows(), x.cols());
  // prefill 5, then decode one by one
  Matrix<double> part(5, x.cols());
  layer.forward(x.topRows(5), positions_from(0, 5), cache, part, ws, path);
  y.topRows(5) = part;
  for (Index t = 5; t < x.rows(); ++t) {
    Matrix<double> one(1, x.cols());
    layer.forward(x.row(t), positions_from(t, 1), cache, one, ws, path);
    y.row(t) = one;
  }
  return y;
}

TEST(Sharding, MlaShardsSumToTheFullLayer) {
  for (bool q_lora : {true, false}) {
    const MlaConfig cfg = mla_cfg(q_lora, q_lora);
    testing::Rng rng(7);
    const auto w = testing::random_mla_weights<double>(cfg, rng);
    MultiHeadLatentAttention<double> full(cfg, w);
    const Matrix<double> x = rng.normal<double>(9, cfg.hidden_size);
    for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
      const Matrix<double> ref = run(full, x, path);
      for (const std::vector<Index>& split : {std::vector<Index>{3, 3}, std::vector<Index>{1, 2, 3},
                                              std::vector<Index>{6}}) {
        Matrix<double> sum = Matrix<double>::Zero(x.rows(), x.cols());
        Index first = 0;
        for (Index n : split) {
          const auto shard = make_mla_shard<double>(cfg, w, {first, n});
          EXPECT_EQ(shard.config().num_attention_heads, n);
          sum += run(shard, x, path);
          first += n;
        }
        EXPECT_LE(rel_max_err(sum, ref), 1e-12) << q_lora << " " << to_string(path);
      }
    }
  }
}

TEST(Sharding, GqaShardsSumToTheFullLayer) {
  AttentionConfig cfg;
  cfg.hidden_size = 48;
  cfg.num_attention_heads = 8;
  cfg.num_key_value_heads = 4;
  cfg.head_dim = 8;
  cfg.qkv_bias = cfg.o_bias = true;
  cfg.max_position_embeddings = 64;
  testing::Rng rng(8);
  const auto w = testing::random_gqa_weights<double>(cfg, rng);
  GroupedQueryAttention<double> full(cfg, w);
  const Matrix<double> x = rng.normal<double>(7, cfg.hidden_size);
  auto c = full.make_cache(7);
  const Matrix<double> ref = full.forward(x, positions_from(3, 7), c);
  Matrix<double> sum = Matrix<double>::Zero(7, cfg.hidden_size);
  for (Index first : {0, 2, 6}) {
    const Index n = first == 2 ? 4 : 2;
    const auto shard = make_gqa_shard<double>(cfg, w, {first, n});
    auto sc = shard.make_cache(7);
    sum += shard.forward(x, positions_from(3, 7), sc);
  }
  EXPECT_LE(rel_max_err(sum, ref), 1e-12);
  EXPECT_THROW(make_gqa_shard<double>(cfg, w, {1, 2}), std::invalid_argument);  // splits a group
  EXPECT_THROW(make_gqa_shard<double>(cfg, w, {6, 4}), std::invalid_argument);  // past the end
}

}  // namespace
}  // namespace mla

#include "mla/io/load_layer.hpp"
#include "support/reference_dir.hpp"

namespace mla {
namespace {

TEST(Sharding, CheckpointShardsOfTheReferenceCaseSumToItsOutput) {
  const io::Checkpoint ckpt(testing::reference_dir() / "deepseek_v3_tiny");
  const MlaConfig cfg = io::parse_mla_config(ckpt.config());
  const io::SafetensorsFile io_file(testing::reference_dir() / "deepseek_v3_tiny" / "io.safetensors");
  const std::vector<float> xs = io_file.read<float>("hidden_states");
  const std::vector<float> ref = io_file.read<float>("output");
  const Index T = static_cast<Index>(xs.size()) / cfg.hidden_size;
  const Matrix<float> x = Eigen::Map<const Matrix<float>>(xs.data(), T, cfg.hidden_size);
  Matrix<float> sum = Matrix<float>::Zero(T, cfg.hidden_size);
  for (Index first = 0; first < cfg.num_attention_heads; first += 2) {
    const auto shard = io::load_mla_layer_shard<float>(ckpt, cfg, 0, {first, 2});
    auto cache = shard.make_latent_cache(T);
    sum += shard.forward(x, testing::positions_from(0, T), cache, MlaPath::kAbsorbed);
  }
  const Matrix<float> r = Eigen::Map<const Matrix<float>>(ref.data(), T, cfg.hidden_size);
  EXPECT_LE(testing::rel_max_err(sum, r), 2e-4);
}

}  // namespace
}  // namespace mla
