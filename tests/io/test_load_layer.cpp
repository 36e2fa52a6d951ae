// io/load_layer.hpp: building layers from Hugging Face checkpoints. What the conformance suite
// (tests/conformance/test_hf_reference.cpp, through Checkpoint + config) does not exercise: the
// folder overloads, a single SafetensorsFile as the tensor source, the layer index choosing the
// weights, the loaded weights being the stored tensors exactly, and the loader's own errors
// (missing, mis-shaped and integer weights; folders without a config or without MLA fields), each
// naming the tensor and, for shapes, the expected and the actual shape.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
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
using testing::message_of;
using testing::NamedTensors;
using testing::rel_max_err;
using testing::Rng;
using testing::without;

std::filesystem::path ref(const char* name) { return testing::reference_dir() / name; }

/// The README's pass criterion: max |ours - ref| <= tol * max |ref| on the layer output.
template <class Scalar, template <class> class Layer, class MakeCache>
void expect_output_matches(const Layer<Scalar>& layer, const std::filesystem::path& folder,
                           MakeCache make_cache, double tol) {
  const io::SafetensorsFile f(folder / "io.safetensors");
  const auto& shape = f.info("hidden_states").shape;
  ASSERT_EQ(shape.size(), 2u);
  const Matrix<Scalar> x = f.read_matrix<Scalar>("hidden_states", shape[0], shape[1]);
  const Matrix<double> want = f.read_matrix<double>("output", shape[0], shape[1]);
  const std::vector<std::int64_t> p = f.read<std::int64_t>("position_ids");
  const Positions pos = Eigen::Map<const Positions>(p.data(), Index(p.size()));
  auto cache = make_cache(layer, x.rows());
  const Matrix<Scalar> y = layer.forward(x, pos, cache);
  EXPECT_LE(rel_max_err(y.template cast<double>(), want), tol) << folder;
}

const auto latent_cache = [](const auto& layer, Index n) { return layer.make_latent_cache(n); };
const auto kv_cache = [](const auto& layer, Index n) { return layer.make_cache(n); };

/// The stored tensor `name` of `file` as float: [rows, cols], or [n, 1] for a vector.
Matrix<float> stored(const io::SafetensorsFile& file, const std::string& name) {
  const auto& s = file.info(name).shape;
  if (s.size() == 1) return Matrix<float>(file.read_vector<float>(name, s[0]));
  return file.read_matrix<float>(name, s[0], s[1]);
}

TEST(LoadLayer, AttentionPrefixNamesTheLayer) {
  EXPECT_EQ(io::attention_prefix(0), "model.layers.0.self_attn.");
  EXPECT_EQ(io::attention_prefix(60), "model.layers.60.self_attn.");
  EXPECT_HAS(message_of<std::invalid_argument>([] { io::attention_prefix(-1); }),
             "layer index (-1) must be non-negative");
}

// V2-Lite style (q_proj, no q LoRA) through the folder overload: the layer holds the stored
// tensors bit for bit and its output meets the README's float criterion.
TEST(LoadLayer, MlaFolderOverloadLoadsTheStoredWeights) {
  const auto folder = ref("deepseek_v2_lite_tiny");
  const auto layer = io::load_mla_layer<float>(folder, 0);
  EXPECT_FALSE(layer.config().has_q_lora());
  const io::SafetensorsFile model(folder / "model.safetensors");
  const std::string p = io::attention_prefix(0);
  const auto& w = layer.weights();
  EXPECT_EQ(w.q_proj.weight, stored(model, p + "q_proj.weight"));
  EXPECT_EQ(w.q_a_proj.weight.size(), 0);
  EXPECT_EQ(w.kv_a_proj_with_mqa.weight, stored(model, p + "kv_a_proj_with_mqa.weight"));
  EXPECT_EQ(Matrix<float>(w.kv_a_layernorm), stored(model, p + "kv_a_layernorm.weight"));
  EXPECT_EQ(w.kv_b_proj.weight, stored(model, p + "kv_b_proj.weight"));
  EXPECT_EQ(w.o_proj.weight, stored(model, p + "o_proj.weight"));
  // A double layer holds the same float32 values, widened exactly.
  const auto wide = io::load_mla_layer<double>(folder, 0);
  EXPECT_EQ(wide.weights().kv_b_proj.weight, w.kv_b_proj.weight.cast<double>());
  expect_output_matches(layer, folder, latent_cache, 2e-4);
}

// Qwen2 through the folder overload: q/k/v biases are loaded, o_proj has none.
TEST(LoadLayer, GqaFolderOverloadLoadsBiases) {
  const auto folder = ref("qwen2_gqa_tiny");
  const auto layer = io::load_gqa_layer<float>(folder, 0);
  const io::SafetensorsFile model(folder / "model.safetensors");
  const std::string p = io::attention_prefix(0);
  const auto& w = layer.weights();
  EXPECT_EQ(Matrix<float>(w.q_proj.bias), stored(model, p + "q_proj.bias"));
  EXPECT_EQ(Matrix<float>(w.k_proj.bias), stored(model, p + "k_proj.bias"));
  EXPECT_EQ(Matrix<float>(w.v_proj.bias), stored(model, p + "v_proj.bias"));
  EXPECT_FALSE(w.o_proj.has_bias());
  EXPECT_EQ(w.k_proj.weight, stored(model, p + "k_proj.weight"));
  expect_output_matches(layer, folder, kv_cache, 2e-4);
}

// Any tensor source works: the bare model.safetensors of the V3 case, read in double, meets the
// double criterion (the reference is float64 rounded to float32, ~3e-8 relative).
TEST(LoadLayer, LoadsFromASingleSafetensorsFile) {
  const auto folder = ref("deepseek_v3_tiny");
  const io::SafetensorsFile model(folder / "model.safetensors");
  const MlaConfig cfg = io::parse_mla_config(io::Checkpoint(folder).config());
  const auto layer = io::load_mla_layer<double>(model, cfg, 0);
  EXPECT_EQ(layer.weights().q_b_proj.weight.cast<float>(),
            stored(model, io::attention_prefix(0) + "q_b_proj.weight"));
  expect_output_matches(layer, folder, latent_cache, 2e-7);
}

TEST(LoadLayer, TheLayerIndexChoosesTheWeights) {
  const MlaConfig cfg = testing::small_mla_config();
  Rng rng(11);
  const auto w0 = testing::random_mla_weights<float>(cfg, rng);
  const auto w1 = testing::random_mla_weights<float>(cfg, rng);
  io::SafetensorsWriter writer;
  testing::add_layer_tensors(writer, 0, testing::mla_tensors(w0));
  testing::add_layer_tensors(writer, 1, testing::mla_tensors(w1));
  const auto file = io::SafetensorsFile::from_bytes(writer.to_bytes(), "two_layers.safetensors");
  for (const auto& [layer, w] : {std::pair<int, const decltype(w0)*>{0, &w0}, {1, &w1}}) {
    const auto got = io::load_mla_weights<float>(file, cfg, layer);
    EXPECT_EQ(got.q_a_proj.weight, w->q_a_proj.weight) << layer;
    EXPECT_EQ(got.q_a_layernorm, w->q_a_layernorm) << layer;
    EXPECT_EQ(got.kv_b_proj.weight, w->kv_b_proj.weight) << layer;
    EXPECT_EQ(got.o_proj.weight, w->o_proj.weight) << layer;
  }
  EXPECT_HAS(message_of<std::runtime_error>([&] { io::load_mla_weights<float>(file, cfg, 2); }),
             "'model.layers.2.self_attn.q_a_proj.weight'");
}

// attention_bias: q_a_proj, kv_a_proj_with_mqa and o_proj carry biases, and each is loaded.
TEST(LoadLayer, MlaBiasesAreLoadedAndAMissingOneIsNamed) {
  MlaConfig cfg = testing::small_mla_config();
  cfg.attention_bias = true;
  Rng rng(12);
  const auto w = testing::random_mla_weights<float>(cfg, rng);
  const NamedTensors t = testing::mla_tensors(w);
  const auto got = io::load_mla_weights<float>(file_with(t), cfg, 0);
  EXPECT_EQ(got.q_a_proj.bias, w.q_a_proj.bias);
  EXPECT_EQ(got.kv_a_proj_with_mqa.bias, w.kv_a_proj_with_mqa.bias);
  EXPECT_EQ(got.o_proj.bias, w.o_proj.bias);
  EXPECT_FALSE(got.q_b_proj.has_bias());  // the up-projections never have one
  const std::string msg = message_of<std::runtime_error>([&] {
    io::load_mla_weights<float>(file_with(without(t, "kv_a_proj_with_mqa.bias")), cfg, 0);
  });
  EXPECT_HAS(msg, "missing bias 'model.layers.0.self_attn.kv_a_proj_with_mqa.bias'");
  EXPECT_HAS(msg, "test.safetensors");
}

TEST(LoadLayer, MissingMlaWeightsAreNamed) {
  const MlaConfig cfg = testing::small_mla_config();
  Rng rng(13);
  const NamedTensors t = testing::mla_tensors(testing::random_mla_weights<float>(cfg, rng));
  for (const char* name : {"q_a_layernorm.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight",
                           "kv_b_proj.weight", "o_proj.weight"}) {
    const std::string msg = message_of<std::runtime_error>(
        [&] { io::load_mla_weights<float>(file_with(without(t, name)), cfg, 0); });
    EXPECT_HAS(msg, std::string("missing weight 'model.layers.0.self_attn.") + name + "'");
  }
  // Neither query projection: the message names the one the config asks for, with no hint.
  const std::string msg = message_of<std::runtime_error>([&] {
    io::load_mla_weights<float>(file_with(without(t, "q_a_proj.weight")), cfg, 0);
  });
  EXPECT_HAS(msg, "config sets q_lora_rank = 12 but the checkpoint has no "
                  "'model.layers.0.self_attn.q_a_proj.weight'");
  EXPECT_EQ(msg.find("(it has"), std::string::npos) << msg;
}

// A checkpoint whose tensor has the wrong shape for a config that is right: the message names
// the tensor, the shape the config implies and the one stored. Small config: H = 2,
// q_lora 12, nope 8 + rope 4 = 12 per head, kv_lora 16, v 6, hidden 32.
TEST(LoadLayer, MisShapedWeightsNameTensorExpectedAndActual) {
  MlaConfig cfg = testing::small_mla_config();
  cfg.attention_bias = true;
  Rng rng(14);
  const NamedTensors good = testing::mla_tensors(testing::random_mla_weights<float>(cfg, rng));
  ASSERT_NO_THROW(io::load_mla_weights<float>(file_with(good), cfg, 0));
  struct Case {
    const char* name;
    Matrix<float> value;
    const char* expected;
    const char* actual;
  };
  const Case cases[] = {
      {"q_b_proj.weight", Matrix<float>::Ones(12, 24), "[24, 12]", "[12, 24]"},  // transposed
      {"kv_b_proj.weight", Matrix<float>::Ones(2 * (8 + 5), 16), "[28, 16]", "[26, 16]"},
      {"kv_a_proj_with_mqa.weight", Matrix<float>::Ones(16, 32), "[20, 32]", "[16, 32]"},
      {"q_a_layernorm.weight", Matrix<float>::Ones(11, 1), "[12]", "[11]"},
      {"kv_a_layernorm.weight", Matrix<float>::Ones(20, 1), "[16]", "[20]"},
      {"o_proj.bias", Matrix<float>::Ones(31, 1), "[32]", "[31]"},
  };
  for (const Case& c : cases) {
    NamedTensors t = without(good, c.name);
    t.push_back({c.name, c.value});
    const std::string msg =
        message_of<std::runtime_error>([&] { io::load_mla_weights<float>(file_with(t), cfg, 0); });
    EXPECT_HAS(msg, std::string("tensor 'model.layers.0.self_attn.") + c.name + "'");
    EXPECT_HAS(msg, std::string("expected shape ") + c.expected);
    EXPECT_HAS(msg, std::string("file has ") + c.actual);
  }
}

// An integer tensor under a norm weight's name is refused, naming it and its dtype.
TEST(LoadLayer, IntegerNormWeightIsRefused) {
  const MlaConfig cfg = testing::small_mla_config();
  Rng rng(15);
  const NamedTensors t = testing::mla_tensors(testing::random_mla_weights<float>(cfg, rng));
  const auto file = testing::file_with_integer(t, "kv_a_layernorm.weight");
  ASSERT_EQ(file.info("model.layers.0.self_attn.kv_a_layernorm.weight").shape,
            std::vector<std::int64_t>{16});  // the shape is right: only the dtype is wrong
  const std::string msg =
      message_of<std::runtime_error>([&] { io::load_mla_weights<float>(file, cfg, 0); });
  EXPECT_HAS(msg, "weight 'model.layers.0.self_attn.kv_a_layernorm.weight'");
  EXPECT_HAS(msg, "has dtype I64");
}

TEST(LoadLayer, FolderWithoutConfigOrMlaFields) {
  const auto tmp = std::filesystem::temp_directory_path() / "mla_load_layer_no_config";
  std::filesystem::remove_all(tmp);
  std::filesystem::create_directories(tmp);
  std::filesystem::copy_file(ref("llama_mha_tiny") / "model.safetensors", tmp / "model.safetensors");
  EXPECT_HAS(message_of<std::runtime_error>([&] { io::load_gqa_layer<float>(tmp, 0); }),
             "has no config.json");
  EXPECT_HAS(message_of<std::runtime_error>([&] { io::load_mla_layer<float>(tmp, 0); }),
             "has no config.json");
  std::filesystem::remove_all(tmp);
  // A Llama folder is not an MLA model.
  const std::string msg =
      message_of<std::runtime_error>([&] { io::load_mla_layer<float>(ref("llama_mha_tiny"), 0); });
  EXPECT_HAS(msg, "config.json' has no kv_lora_rank: not an MLA model");
}

}  // namespace
}  // namespace mla
