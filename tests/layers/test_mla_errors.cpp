// The MLA bad-input catalogue: each case throws a clear error naming what is wrong, and the
// layer and cache stay usable afterwards. Plus the documented behaviour for T = 0, NaN/Inf
// inputs (propagate, never crash or hang) and huge but finite activations (stay finite).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "mla/io/load_layer.hpp"
#include "support/error_message.hpp"
#include "support/random.hpp"
#include "support/reference_dir.hpp"
#include "support/small_layers.hpp"

namespace mla {
namespace {

using testing::positions_from;
using testing::Rng;

MlaConfig small() { return testing::small_mla_config(); }  // positions [0, 64)

/// The message of whatever std::exception `fn` throws.
template <class Fn>
std::string error_of(Fn fn) {
  return testing::message_of<std::exception>(fn);
}

TEST(MlaErrors, WrongWeightShapeNamesTensorExpectedAndActual) {
  Rng rng(1);
  auto w = testing::random_mla_weights<float>(small(), rng);
  w.kv_b_proj.weight.resize(28, 16);  // expected [2*(8+6), 16] = [28, 16]: fine
  EXPECT_NO_THROW((MultiHeadLatentAttention<float>(small(), w)));
  w.kv_b_proj.weight.resize(24, 16);
  const std::string msg = error_of([&] { MultiHeadLatentAttention<float> l(small(), w); });
  EXPECT_NE(msg.find("kv_b_proj"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[28, 16]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[24, 16]"), std::string::npos) << msg;
  w = testing::random_mla_weights<float>(small(), rng);
  w.kv_a_layernorm.resize(15);
  EXPECT_NE(error_of([&] { MultiHeadLatentAttention<float> l(small(), w); }).find("kv_a_layernorm"),
            std::string::npos);
  w = testing::random_mla_weights<float>(small(), rng);
  w.q_a_proj = Linear<float>{};  // q_lora_rank set but no q_a_proj
  EXPECT_NE(error_of([&] { MultiHeadLatentAttention<float> l(small(), w); }).find("q_a_proj"),
            std::string::npos);
}

TEST(MlaErrors, ConfigThatDisagreesWithCheckpointWeights) {
  const auto folder = testing::reference_dir() / "deepseek_v3_tiny";
  const io::Checkpoint ckpt(folder);
  MlaConfig cfg = io::parse_mla_config(ckpt.config());
  cfg.kv_lora_rank = 48;  // the file has 64
  std::string msg = error_of([&] { io::load_mla_layer<float>(ckpt, cfg, 0); });
  EXPECT_NE(msg.find("kv_a_proj_with_mqa"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[64, 256]"), std::string::npos) << msg;  // 48 + 16 expected
  EXPECT_NE(msg.find("[80, 256]"), std::string::npos) << msg;  // what the file has

  cfg = io::parse_mla_config(ckpt.config());
  cfg.q_lora_rank = 0;  // claims plain q_proj, the checkpoint has q_a_proj
  msg = error_of([&] { io::load_mla_layer<float>(ckpt, cfg, 0); });
  EXPECT_NE(msg.find("q_proj"), std::string::npos) << msg;
  EXPECT_NE(msg.find("set q_lora_rank"), std::string::npos) << msg;

  msg = error_of([&] { io::load_mla_layer<float>(ckpt, io::parse_mla_config(ckpt.config()), 3); });
  EXPECT_NE(msg.find("model.layers.3.self_attn."), std::string::npos) << msg;

  const auto v2 = io::Checkpoint(testing::reference_dir() / "deepseek_v2_lite_tiny");
  cfg = io::parse_mla_config(v2.config());
  cfg.q_lora_rank = 32;  // claims q LoRA, the checkpoint has q_proj
  msg = error_of([&] { io::load_mla_layer<float>(v2, cfg, 0); });
  EXPECT_NE(msg.find("q_a_proj"), std::string::npos) << msg;
  EXPECT_NE(msg.find("set q_lora_rank null"), std::string::npos) << msg;
}

TEST(MlaErrors, CacheOverflowAndBadCallsLeaveEverythingUsable) {
  Rng rng(2);
  MultiHeadLatentAttention<double> layer(small(), testing::random_mla_weights<double>(small(), rng));
  auto cache = layer.make_latent_cache(5);
  Workspace ws;
  const Matrix<double> x = rng.normal<double>(4, 32);
  Matrix<double> y(4, 32);
  layer.forward(x, positions_from(0, 4), cache, y, ws);
  Matrix<double> y2(2, 32);
  std::string msg = error_of([&] { layer.forward(x.topRows(2), positions_from(4, 2), cache, y2, ws); });
  EXPECT_NE(msg.find("LatentCache overflow"), std::string::npos) << msg;
  EXPECT_NE(msg.find("capacity 5"), std::string::npos) << msg;
  EXPECT_EQ(cache.size(), 4);
  msg = error_of([&] { layer.forward(x.topRows(1), positions_from(64, 1), cache, y2.topRows(1), ws); });
  EXPECT_NE(msg.find("position 64"), std::string::npos) << msg;
  msg = error_of([&] { layer.forward(x.topRows(1).leftCols(31), positions_from(4, 1), cache,
                                     y2.topRows(1), ws); });
  EXPECT_NE(msg.find("input x"), std::string::npos) << msg;
  auto wrong_cache = LatentCache<double>(12, 4, 8);
  msg = error_of([&] { layer.forward(x.topRows(1), positions_from(4, 1), wrong_cache, y2.topRows(1), ws); });
  EXPECT_NE(msg.find("LatentCache [kv_lora_rank 12"), std::string::npos) << msg;
  EXPECT_EQ(cache.size(), 4);

  // Still usable, and the failed calls changed nothing: the result equals a fresh run.
  Matrix<double> last(1, 32);
  layer.forward(x.bottomRows(1), positions_from(4, 1), cache, last, ws, MlaPath::kAbsorbed);
  auto fresh = layer.make_latent_cache(5);
  Matrix<double> all(5, 32), x5(5, 32);
  x5 << x, x.bottomRows(1);
  layer.forward(x5, positions_from(0, 5), fresh, all, ws, MlaPath::kNaive);
  EXPECT_LE((last - all.bottomRows(1)).cwiseAbs().maxCoeff(), 1e-12);
  cache.reserve(8);
  EXPECT_EQ(cache.capacity(), 8);
  EXPECT_EQ(cache.size(), 5);
  EXPECT_NO_THROW(layer.forward(x.topRows(2), positions_from(5, 2), cache, y2, ws));
}

TEST(MlaErrors, EmptyInputIsANoOp) {
  Rng rng(3);
  MultiHeadLatentAttention<float> layer(small(), testing::random_mla_weights<float>(small(), rng));
  auto cache = layer.make_latent_cache(4);
  Workspace ws;
  Matrix<float> x(0, 32), y(0, 32);
  EXPECT_NO_THROW(layer.forward(x, Positions(0), cache, y, ws));
  EXPECT_EQ(cache.size(), 0);
}

TEST(MlaErrors, NanPropagatesAndHugeActivationsStayFinite) {
  Rng rng(4);
  MultiHeadLatentAttention<float> layer(small(), testing::random_mla_weights<float>(small(), rng));
  for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
    auto cache = layer.make_latent_cache(8);
    Workspace ws;
    Matrix<float> x = rng.normal<float>(3, 32), y(3, 32);
    x(1, 5) = std::numeric_limits<float>::quiet_NaN();
    layer.forward(x, positions_from(0, 3), cache, y, ws, path);
    EXPECT_TRUE(y.row(0).allFinite()) << to_string(path);  // token 0 does not see token 1
    EXPECT_TRUE(y.row(2).hasNaN());      // token 2 does
    // Huge but finite: RMSNorm makes the latent scale-free, so logits stay bounded and the
    // softmax must not overflow.
    auto cache2 = layer.make_latent_cache(8);
    const Matrix<float> big = rng.normal<float>(4, 32) * 1e30f;
    Matrix<float> y2(4, 32);
    layer.forward(big, positions_from(0, 4), cache2, y2, ws, path);
    EXPECT_TRUE(y2.allFinite()) << to_string(path);
  }
}

TEST(Softmax, ExtremeLogitsStayFinite) {
  float s[4] = {3e38f, -3e38f, 1e38f, 3e38f};
  softmax_inplace(s, 4);
  EXPECT_FLOAT_EQ(s[0], 0.5f);
  EXPECT_FLOAT_EQ(s[3], 0.5f);
  EXPECT_EQ(s[1], 0.0f);
  float inf[2] = {-std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  softmax_inplace(inf, 2);
  EXPECT_EQ(inf[0], 0.0f);
}

}  // namespace
}  // namespace mla
