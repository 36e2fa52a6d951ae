// The bad-input catalogue, the cases tests/layers/test_mla_errors.cpp, test_gqa.cpp and
// tests/io/test_safetensors.cpp do not already cover: checkpoint/config disagreements for GQA,
// missing weights and biases, a wrong-dtype weight, positions outside the RoPE table on every
// layer type and cache kind, wrong caches and output buffers, T = 0, NaN/Inf and huge
// activations on GQA. Each case asserts the exception type and the words of its message, and
// that the layer and cache still work afterwards (a following valid call gives the same result
// as on a fresh cache).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "mla/io/load_layer.hpp"
#include "support/error_message.hpp"
#include "support/layer_files.hpp"
#include "support/random.hpp"
#include "support/reference_dir.hpp"
#include "support/small_layers.hpp"

namespace mla {
namespace {

using testing::file_with;
using testing::gqa_tensors;
using testing::message_of;
using testing::positions_from;
using testing::rel_max_err;
using testing::Rng;
using testing::small_gqa_config;
using testing::small_mla_config;
using testing::without;

std::filesystem::path ref(const char* name) { return testing::reference_dir() / name; }

/// Reference: the outputs of `x` at `pos` on a fresh cache, all in one call.
template <class Layer>
Matrix<double> fresh_run(const Layer& layer, const Matrix<double>& x, const Positions& pos) {
  auto cache = layer.make_cache(x.rows());
  return layer.forward(x, pos, cache);
}

// ---- Checkpoints that disagree with their config, or lack what it asks for. ----

TEST(BadInputs, GqaConfigDisagreesWithCheckpointWeights) {
  const io::Checkpoint ckpt(ref("llama_gqa_tiny"));
  AttentionConfig cfg = io::parse_attention_config(ckpt.config());
  cfg.num_key_value_heads = 4;  // the file has 2 KV heads of 32: k_proj is [64, 256]
  const std::string msg =
      message_of<std::runtime_error>([&] { io::load_gqa_layer<float>(ckpt, cfg, 0); });
  EXPECT_HAS(msg, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_HAS(msg, "expected shape [128, 256]");
  EXPECT_HAS(msg, "file has [64, 256]");
  cfg = io::parse_attention_config(ckpt.config());
  cfg.head_dim = 16;  // q_proj [8*16, 256] expected, file [256, 256]
  EXPECT_HAS(message_of<std::runtime_error>([&] { io::load_gqa_layer<float>(ckpt, cfg, 0); }),
             "q_proj.weight");
  // The checkpoint is still usable: the right config loads and runs.
  const auto layer = io::load_gqa_layer<float>(ckpt, io::parse_attention_config(ckpt.config()), 0);
  auto cache = layer.make_cache(2);
  EXPECT_TRUE(layer.forward(Matrix<float>::Ones(2, 256), positions_from(0, 2), cache).allFinite());
}

TEST(BadInputs, GqaMissingWeightOrBiasNamesIt) {
  Rng rng(41);
  AttentionConfig cfg = small_gqa_config();
  const auto tensors = gqa_tensors(cfg, rng);
  std::string msg = message_of<std::runtime_error>(
      [&] { io::load_gqa_layer<float>(file_with(without(tensors, "o_proj.weight")), cfg, 0); });
  EXPECT_HAS(msg, "missing weight 'model.layers.0.self_attn.o_proj.weight'");
  EXPECT_HAS(msg, "test.safetensors");
  cfg.qkv_bias = true;  // the config asks for biases the file does not have
  msg = message_of<std::runtime_error>([&] { io::load_gqa_layer<float>(file_with(tensors), cfg, 0); });
  EXPECT_HAS(msg, "missing bias 'model.layers.0.self_attn.q_proj.bias'");
  EXPECT_HAS(msg, "attention biases");
  cfg.qkv_bias = false;
  EXPECT_NO_THROW(io::load_gqa_layer<float>(file_with(tensors), cfg, 0));
}

TEST(BadInputs, MlaMissingWeightNamesIt) {
  Rng rng(42);
  const MlaConfig cfg = small_mla_config();
  const auto t = testing::mla_tensors(testing::random_mla_weights<float>(cfg, rng));
  const std::string msg = message_of<std::runtime_error>([&] {
    io::load_mla_layer<float>(file_with(without(t, "kv_a_layernorm.weight")), cfg, 0);
  });
  EXPECT_HAS(msg, "missing weight 'model.layers.0.self_attn.kv_a_layernorm.weight'");
  EXPECT_NO_THROW(io::load_mla_layer<float>(file_with(t), cfg, 0));
}

// An integer tensor where a float weight belongs is rejected by the loader, naming the tensor and
// its dtype (safetensors read<float> alone would convert it, loading a mislabelled or corrupted
// checkpoint as garbage weights).
TEST(BadInputs, WrongDtypeWeightIsRejectedByTheLoader) {
  Rng rng(43);
  const AttentionConfig cfg = small_gqa_config();
  const auto file = testing::file_with_integer(gqa_tensors(cfg, rng), "k_proj.weight");
  const std::string msg =
      message_of<std::runtime_error>([&] { io::load_gqa_layer<float>(file, cfg, 0); });
  EXPECT_HAS(msg, "k_proj.weight");
  EXPECT_HAS(msg, "I64");
}

// ---- Positions outside the RoPE table, on every layer type and cache kind. ----

TEST(BadInputs, GqaPositionOutsideRopeTableLeavesCacheUsable) {
  Rng rng(44);
  const GroupedQueryAttention<double> layer(small_gqa_config(), testing::random_gqa_weights<double>(small_gqa_config(), rng));
  const Matrix<double> x = rng.normal<double>(4, 48);
  Positions pos = positions_from(61, 4);  // 61, 62, 63, 64: the last is outside [0, 64)
  auto cache = layer.make_cache(8);
  std::string msg = message_of<std::invalid_argument>([&] { layer.forward(x, pos, cache); });
  EXPECT_HAS(msg, "position 64 (token 3)");
  EXPECT_HAS(msg, "outside the RoPE table [0, 64)");
  EXPECT_EQ(cache.size(), 0);  // nothing appended
  pos[3] = -1;
  msg = message_of<std::invalid_argument>([&] { layer.forward(x, pos, cache); });
  EXPECT_HAS(msg, "position -1 (token 3)");
  EXPECT_EQ(cache.size(), 0);
  pos[3] = 60;
  EXPECT_LE(rel_max_err(layer.forward(x, pos, cache), fresh_run(layer, x, pos)), 1e-14);
}

TEST(BadInputs, MlaDecompressedCachePositionOutsideRopeTable) {
  Rng rng(45);
  const MultiHeadLatentAttention<double> layer(small_mla_config(), testing::random_mla_weights<double>(small_mla_config(), rng));
  const Matrix<double> x = rng.normal<double>(3, 32);
  auto kv = layer.make_decompressed_cache(6);
  layer.forward(x.topRows(1), positions_from(0, 1), kv);
  const std::string msg = message_of<std::invalid_argument>(
      [&] { layer.forward(x.bottomRows(2), positions_from(63, 2), kv); });
  EXPECT_HAS(msg, "position 64 (token 1)");
  EXPECT_EQ(kv.size(), 1);
  const Matrix<double> y = layer.forward(x.bottomRows(2), positions_from(1, 2), kv);
  auto fresh = layer.make_decompressed_cache(3);
  const Matrix<double> all = layer.forward(x, positions_from(0, 3), fresh);
  EXPECT_LE(rel_max_err(y, all.bottomRows(2)), 1e-13);
}

TEST(BadInputs, LayerMaxPositionsOptionBoundsTheTable) {
  // An engine serving short contexts lowers max_positions; positions past it are refused even
  // though the model's max_position_embeddings would allow them.
  Rng rng(46);
  MultiHeadLatentAttention<float>::Options opt;
  opt.max_positions = 16;
  const MultiHeadLatentAttention<float> layer(small_mla_config(), testing::random_mla_weights<float>(small_mla_config(), rng), opt);
  auto cache = layer.make_latent_cache<bfloat16>(4);
  const Matrix<float> x = rng.normal<float>(1, 32);
  for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
    const std::string msg = message_of<std::invalid_argument>(
        [&] { layer.forward(x, positions_from(16, 1), cache, path); });
    EXPECT_HAS(msg, "position 16 (token 0) is outside the RoPE table [0, 16)");
    EXPECT_EQ(cache.size(), 0);
  }
  EXPECT_TRUE(layer.forward(x, positions_from(15, 1), cache).allFinite());
}

// ---- Wrong caches and buffers, empty input. ----

TEST(BadInputs, GqaWrongCacheOrOutputShape) {
  Rng rng(47);
  const GroupedQueryAttention<float> layer(small_gqa_config(), testing::random_gqa_weights<float>(small_gqa_config(), rng));
  const Matrix<float> x = rng.normal<float>(2, 48);
  Workspace ws;
  Matrix<float> out(2, 48);
  KvCache<float> other(3, 8, 8, 4);  // 3 KV heads, the layer has 2
  std::string msg = message_of<std::invalid_argument>(
      [&] { layer.forward(x, positions_from(0, 2), other, out, ws); });
  EXPECT_HAS(msg, "KvCache shape [kv_heads 3, head_dim 8, v_dim 8]");
  EXPECT_HAS(msg, "does not match the layer [2, 8, 8]");
  auto cache = layer.make_cache(4);
  Matrix<float> wrong(2, 47);
  msg = message_of<std::invalid_argument>(
      [&] { layer.forward(x, positions_from(0, 2), cache, wrong, ws); });
  EXPECT_HAS(msg, "output: expected [2, 48], got [2, 47]");
  msg = message_of<std::invalid_argument>(
      [&] { layer.forward(x, positions_from(0, 3), cache, out, ws); });
  EXPECT_HAS(msg, "positions: expected 2 entries");
  EXPECT_EQ(cache.size(), 0);
  layer.forward(x, positions_from(0, 2), cache, out, ws);
  EXPECT_TRUE(out.allFinite());
  EXPECT_EQ(cache.size(), 2);
}

TEST(BadInputs, GqaEmptyInputIsANoOp) {
  Rng rng(48);
  const GroupedQueryAttention<float> layer(small_gqa_config(), testing::random_gqa_weights<float>(small_gqa_config(), rng));
  auto cache = layer.make_cache<bfloat16>(3);
  Workspace ws;
  const Matrix<float> x = rng.normal<float>(3, 48);
  Matrix<float> y(3, 48);
  layer.forward(x.topRows(1), positions_from(0, 1), cache, y.topRows(1), ws);
  Matrix<float> none(0, 48);
  EXPECT_NO_THROW(layer.forward(Matrix<float>(0, 48), Positions(0), cache, none, ws));
  EXPECT_EQ(cache.size(), 1);
  // Even on a full cache, T = 0 fits.
  layer.forward(x.bottomRows(2), positions_from(1, 2), cache, y.bottomRows(2), ws);
  EXPECT_NO_THROW(layer.forward(Matrix<float>(0, 48), Positions(0), cache, none, ws));
  EXPECT_EQ(cache.size(), 3);
  // Empty input with the wrong width is still an error.
  EXPECT_HAS(message_of<std::invalid_argument>(
                 [&] { layer.forward(Matrix<float>(0, 47), Positions(0), cache, none, ws); }),
             "input x: expected [T, 48], got [0, 47]");
}

// ---- Non-finite and huge inputs on GQA (MLA: tests/layers/test_mla_errors.cpp). ----

TEST(BadInputs, GqaNanAndInfPropagateWithoutCrashing) {
  Rng rng(49);
  const GroupedQueryAttention<float> layer(small_gqa_config(), testing::random_gqa_weights<float>(small_gqa_config(), rng));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto cache = layer.make_cache(6);
    Workspace ws;
    Matrix<float> x = rng.normal<float>(6, 48), y(6, 48);
    x(3, 7) = bad;
    // Token by token: the bad token's K/V enter the cache at step 3.
    for (Index t = 0; t < 6; ++t)
      layer.forward(x.middleRows(t, 1), positions_from(t, 1), cache, y.middleRows(t, 1), ws);
    EXPECT_TRUE(y.topRows(3).allFinite()) << bad;  // earlier tokens never see token 3
    for (Index t = 3; t < 6; ++t) EXPECT_FALSE(y.row(t).allFinite()) << "token " << t << " " << bad;
    // The layer is unaffected: a fresh cache gives finite results again.
    auto clean = layer.make_cache(2);
    Matrix<float> z(2, 48);
    layer.forward(x.topRows(2), positions_from(0, 2), clean, z, ws);
    EXPECT_TRUE(z.allFinite());
    // A poisoned cache can be rolled back past the bad token and reused.
    cache.truncate(3);
    layer.forward(x.topRows(1), positions_from(3, 1), cache, y.topRows(1), ws);
    EXPECT_TRUE(y.topRows(1).allFinite());
  }
}

TEST(BadInputs, GqaHugeActivationsGiveFiniteOneHotSoftmax) {
  // No norm precedes GQA attention, so activations of 1e15 give logits ~1e29: finite in float,
  // but exp() of their differences over- and underflows unless the maximum is subtracted.
  const AttentionConfig cfg = small_gqa_config();
  Rng rng(50);
  const auto wd = testing::random_gqa_weights<double>(cfg, rng);
  auto cast = [](const Linear<double>& l) { return Linear<float>{l.weight.cast<float>(), l.bias.cast<float>()}; };
  const GroupedQueryAttention<double> ld(cfg, wd);
  const GroupedQueryAttention<float> lf(cfg, {cast(wd.q_proj), cast(wd.k_proj), cast(wd.v_proj), cast(wd.o_proj)});
  const Matrix<double> x = (rng.normal<double>(5, 48) * 1e15).cast<float>().cast<double>();
  auto cd = ld.make_cache(5);
  const Matrix<double> yd = ld.forward(x, positions_from(0, 5), cd);
  for (bool bf16 : {false, true}) {
    Matrix<float> yf;
    if (bf16) {
      auto c = lf.make_cache<bfloat16>(5);
      yf = lf.forward(x.cast<float>(), positions_from(0, 5), c);
    } else {
      auto c = lf.make_cache<float>(5);
      yf = lf.forward(x.cast<float>(), positions_from(0, 5), c);
    }
    ASSERT_TRUE(yf.allFinite()) << "bf16 " << bf16;
    // Softmax is one-hot at these scales, so the float result follows the double one closely
    // (bf16 rounds the cached values to 8 bits).
    EXPECT_LE(rel_max_err(yf.cast<double>(), yd), bf16 ? 2e-2 : 1e-4) << "bf16 " << bf16;
  }
}

}  // namespace
}  // namespace mla
