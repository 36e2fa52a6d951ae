// Tests for mla/io/checkpoint.hpp: the three folder layouts (index + shards, one model.safetensors,
// a folder of *.safetensors), lazy shard opening, routing, FP8 scales in another shard, the block
// size from config.json, and the errors for broken folders. Sharded folders are written to a
// temporary directory with SafetensorsWriter; the reference folder is read as shipped.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "mla/io/checkpoint.hpp"
#include "support/error_message.hpp"
#include "support/reference_dir.hpp"

namespace {

namespace fs = std::filesystem;
using mla::io::Checkpoint;
using mla::io::Dtype;
using mla::io::SafetensorsFile;
using mla::io::SafetensorsWriter;

using mla::testing::expect_throw;

using mla::testing::reference_dir;

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mla_test_checkpoint_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // Two shards and an index: a.weight [2, 3] and b.bias [3] in shard 1, c.weight [4, 2] in shard 2.
  void write_sharded() {
    SafetensorsWriter()
        .add("a.weight", {2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6})
        .add("b.bias", {3}, std::vector<double>{0.5, 1.5, 2.5})
        .set_metadata("format", "pt")
        .write(dir_ / "model-00001-of-00002.safetensors");
    SafetensorsWriter()
        .add("c.weight", {4, 2}, std::vector<Eigen::bfloat16>(8, Eigen::bfloat16(2.0f)))
        .add_scalar<std::int64_t>("step", 7)
        .write(dir_ / "model-00002-of-00002.safetensors");
    write_text(dir_ / "model.safetensors.index.json", R"({
      "metadata": {"total_size": 1234},
      "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.bias": "model-00001-of-00002.safetensors",
        "c.weight": "model-00002-of-00002.safetensors",
        "step": "model-00002-of-00002.safetensors"
      }})");
    write_text(dir_ / "config.json", R"({"hidden_size": 3, "model_type": "toy"})");
  }
  fs::path dir_;
};

TEST_F(CheckpointTest, IndexedShardsOpenLazilyAndRoute) {
  write_sharded();
  const Checkpoint ck(dir_);
  EXPECT_EQ(ck.layout(), Checkpoint::Layout::kIndexed);
  EXPECT_EQ(ck.num_open_shards(), 0u);
  EXPECT_TRUE(ck.has_config());
  EXPECT_EQ(ck.config()["hidden_size"], 3);
  EXPECT_EQ(ck.config()["model_type"], "toy");
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a.weight", "b.bias", "c.weight", "step"}));
  EXPECT_EQ(ck.shard_files(), (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                        "model-00002-of-00002.safetensors"}));
  EXPECT_TRUE(ck.contains("c.weight"));
  EXPECT_FALSE(ck.contains("d.weight"));
  EXPECT_EQ(ck.shard_of("c.weight"), "model-00002-of-00002.safetensors");
  EXPECT_EQ(ck.num_open_shards(), 0u);  // name queries need no shard

  const mla::Matrix<float> a = ck.read_matrix<float>("a.weight", 2, 3);
  EXPECT_EQ(a(1, 2), 6.0f);
  EXPECT_EQ(a(0, 1), 2.0f);
  EXPECT_EQ(ck.num_open_shards(), 1u);
  EXPECT_EQ(ck.read_vector<float>("b.bias", 3)(2), 2.5f);
  EXPECT_EQ(ck.num_open_shards(), 1u);
  EXPECT_EQ(ck.read_matrix<double>("c.weight", 4, 2)(3, 1), 2.0);
  EXPECT_EQ(ck.num_open_shards(), 2u);
  EXPECT_EQ(ck.read_scalar<std::int64_t>("step"), 7);
  EXPECT_EQ(ck.info("c.weight").dtype, Dtype::kBF16);
  EXPECT_EQ(ck.read<double>("b.bias", {3})[0], 0.5);
  EXPECT_EQ(ck.shard("model-00001-of-00002.safetensors").metadata().at("format"), "pt");
  EXPECT_EQ(ck.where("a.weight"), (dir_ / "model-00001-of-00002.safetensors").string());

  expect_throw<std::runtime_error>([&] { ck.read_matrix<float>("a.weight", 3, 2); },
                                   {"tensor 'a.weight'", "expected shape [3, 2], file has [2, 3]",
                                    "model-00001-of-00002.safetensors"});
  expect_throw<std::runtime_error>([&] { ck.read_matrix<float>("d.weight", 1, 1); },
                                   {"tensor 'd.weight' not found", dir_.string()});
  expect_throw<std::runtime_error>([&] { ck.read<float>("d.weight"); }, {"'d.weight'", dir_.string()});
  expect_throw<std::runtime_error>([&] { ck.info("d.weight"); }, {"'d.weight'", dir_.string()});
  expect_throw<std::invalid_argument>([&] { ck.shard("nope.safetensors"); }, {"nope.safetensors"});

  // Moving keeps the opened shards usable.
  Checkpoint moved = Checkpoint(dir_);
  EXPECT_EQ(moved.read_matrix<float>("a.weight", 2, 3)(1, 0), 4.0f);
}

TEST_F(CheckpointTest, BrokenIndexes) {
  write_sharded();
  // The index names a shard that is not there: the error names the shard, the tensor and the folder.
  fs::remove(dir_ / "model-00002-of-00002.safetensors");
  {
    const Checkpoint ck(dir_);
    EXPECT_EQ(ck.read_matrix<float>("a.weight", 2, 3)(0, 0), 1.0f);
    expect_throw<std::runtime_error>([&] { ck.read<float>("c.weight"); },
                                     {"model-00002-of-00002.safetensors", "'c.weight'", dir_.string(),
                                      "does not exist"});
  }
  // The index maps a tensor to a shard that does not hold it.
  write_text(dir_ / "model.safetensors.index.json",
             R"({"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                "ghost": "model-00001-of-00002.safetensors"}})");
  {
    const Checkpoint ck(dir_);
    expect_throw<std::runtime_error>([&] { ck.read<float>("ghost"); },
                                     {"'ghost'", "model-00001-of-00002.safetensors", "no such tensor"});
  }
  const std::vector<std::pair<std::string, std::vector<std::string>>> bad = {
      {R"({"weight_map": {"a.weight": "../outside.safetensors"}})", {"'a.weight'", "../outside.safetensors", "inside the folder"}},
      {R"({"weight_map": {"a.weight": "/etc/passwd"}})", {"/etc/passwd", "inside the folder"}},
      {R"({"weight_map": {"a.weight": ""}})", {"'a.weight'", "inside the folder"}},
      {R"({"weight_map": {"a.weight": 3}})", {"'a.weight'", "non-string"}},
      {R"({"weight_map": [1]})", {"weight_map"}},
      {R"({"metadata": {}})", {"weight_map"}},
      {R"([1, 2])", {"weight_map"}},
      {R"({"weight_map": {)", {"model.safetensors.index.json", "not valid JSON"}},
  };
  for (const auto& [text, words] : bad) {
    SCOPED_TRACE(text);
    write_text(dir_ / "model.safetensors.index.json", text);
    std::vector<std::string> w = words;
    w.push_back(dir_.string());
    expect_throw<std::runtime_error>([&] { Checkpoint ck(dir_); }, w);
  }
}

TEST_F(CheckpointTest, ScannedFolderWithoutIndex) {
  SafetensorsWriter().add("x", {2}, std::vector<float>{1, 2}).write(dir_ / "b.safetensors");
  SafetensorsWriter().add("y", {1}, std::vector<float>{3}).write(dir_ / "a.safetensors");
  write_text(dir_ / "notes.txt", "not a tensor file");
  {
    const Checkpoint ck(dir_);
    EXPECT_EQ(ck.layout(), Checkpoint::Layout::kScanned);
    EXPECT_FALSE(ck.has_config());
    EXPECT_TRUE(ck.config().is_null());
    EXPECT_EQ(ck.shard_files(), (std::vector<std::string>{"a.safetensors", "b.safetensors"}));
    EXPECT_EQ(ck.names(), (std::vector<std::string>{"x", "y"}));
    EXPECT_EQ(ck.read_vector<double>("x", 2)(1), 2.0);
    EXPECT_EQ(ck.shard_of("y"), "a.safetensors");
  }
  // The same name in two files is ambiguous.
  SafetensorsWriter().add("x", {1}, std::vector<float>{9}).write(dir_ / "c.safetensors");
  expect_throw<std::runtime_error>([&] { Checkpoint ck(dir_); },
                                   {"tensor 'x'", "b.safetensors", "c.safetensors", dir_.string()});
  fs::remove(dir_ / "c.safetensors");
  // A corrupt file is reported with its path.
  write_text(dir_ / "d.safetensors", "junk");
  expect_throw<std::runtime_error>([&] { Checkpoint ck(dir_); }, {"d.safetensors", "shorter than"});
}

TEST_F(CheckpointTest, SingleFileWinsOverOthersAndEmptyFolders) {
  expect_throw<std::runtime_error>([&] { Checkpoint ck(dir_); },
                                   {dir_.string(), "no model.safetensors.index.json", "no *.safetensors"});
  expect_throw<std::runtime_error>([&] { Checkpoint ck(dir_ / "missing"); }, {"missing", "not a directory"});
  SafetensorsWriter().add("w", {1}, std::vector<float>{1}).write(dir_ / "model.safetensors");
  SafetensorsWriter().add("w", {1}, std::vector<float>{2}).write(dir_ / "other.safetensors");
  const Checkpoint ck(dir_);
  EXPECT_EQ(ck.layout(), Checkpoint::Layout::kSingleFile);
  EXPECT_EQ(ck.read<float>("w")[0], 1.0f);

  write_text(dir_ / "config.json", "{\"a\": ");
  expect_throw<std::runtime_error>([&] { Checkpoint c2(dir_); }, {"config.json", "not valid JSON", dir_.string()});
  write_text(dir_ / "config.json", "[1]");
  expect_throw<std::runtime_error>([&] { Checkpoint c2(dir_); }, {"config.json", "not a JSON object"});
}

// Independent e4m3 decoder for the expected values.
double ref_e4m3(int c) {
  const int e = (c >> 3) & 15, m = c & 7;
  const double v = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
  return (c & 0x80) ? -v : v;
}

TEST_F(CheckpointTest, Fp8ScalesInAnotherShardAndBlockSizeFromConfig) {
  const int rows = 130, cols = 70;  // with 64 x 64 blocks: scales [3, 2], last row block has 2 rows
  std::vector<std::uint8_t> codes;
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) codes.push_back(static_cast<std::uint8_t>((i * 13 + j * 5) % 0x7E));
  const std::vector<float> scale = {0.5f, 2.0f, 0.25f, 3.0f, 1.5f, 0.125f};
  SafetensorsWriter().add_raw("q.weight", Dtype::kF8E4M3, {rows, cols}, codes.data(), codes.size())
      .write(dir_ / "s1.safetensors");
  SafetensorsWriter().add("q.weight_scale_inv", {3, 2}, scale).write(dir_ / "s2.safetensors");
  write_text(dir_ / "model.safetensors.index.json",
             R"({"weight_map": {"q.weight": "s1.safetensors", "q.weight_scale_inv": "s2.safetensors"}})");
  write_text(dir_ / "config.json",
             R"({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [64, 64]}})");
  Checkpoint ck(dir_);
  EXPECT_EQ(ck.fp8_block().rows, 64);
  EXPECT_EQ(ck.fp8_block().cols, 64);
  const mla::Matrix<double> w = ck.read_matrix<double>("q.weight", rows, cols);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      const double want = ref_e4m3(codes[static_cast<std::size_t>(i * cols + j)]) *
                          static_cast<double>(scale[static_cast<std::size_t>((i / 64) * 2 + j / 64)]);
      ASSERT_EQ(w(i, j), want) << i << "," << j;
    }
  }
  EXPECT_EQ(ck.num_open_shards(), 2u);
  ck.set_fp8_block({128, 128});
  expect_throw<std::runtime_error>([&] { ck.read_matrix<float>("q.weight", rows, cols); },
                                   {"q.weight_scale_inv", "expected shape [2, 1], file has [3, 2]"});

  for (const std::string bad : {"[64]", "[0, 64]", "[-64, 64]", "[64.5, 64]", "\"64\""}) {
    SCOPED_TRACE(bad);
    write_text(dir_ / "config.json", "{\"quantization_config\": {\"weight_block_size\": " + bad + "}}");
    expect_throw<std::runtime_error>([&] { Checkpoint c2(dir_); }, {"weight_block_size", dir_.string()});
  }
}

TEST_F(CheckpointTest, DeepOrHugeJsonIsRefusedOrQuotedBriefly) {
  write_sharded();
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  // A value 200k levels deep where an error message would quote it (it used to be serialised
  // whole, recursively): refused at parse time, naming the file and the limit.
  write_text(dir_ / "config.json", "{\"quantization_config\": {\"weight_block_size\": " + deep + "}}");
  expect_throw<std::runtime_error>([&] { Checkpoint ck(dir_); },
                                   {dir_.string(), "config.json", "nested deeper than"});
  write_text(dir_ / "config.json", R"({"hidden_size": 3})");
  write_text(dir_ / "model.safetensors.index.json", "{\"weight_map\": {\"a.weight\": " + deep + "}}");
  expect_throw<std::runtime_error>([&] { Checkpoint ck(dir_); },
                                   {dir_.string(), "model.safetensors.index.json", "nested deeper than"});
  // Within the limit but long: the message quotes an excerpt.
  std::string long_list = "[1";
  for (int i = 0; i < 20000; ++i) long_list += ",1";
  long_list += "]";
  const auto short_error = [&](const std::vector<std::string>& words) {
    expect_throw<std::runtime_error>([&] { Checkpoint ck(dir_); }, words);
    try {
      Checkpoint ck(dir_);
    } catch (const std::runtime_error& e) {
      EXPECT_LT(std::string(e.what()).size(), dir_.string().size() + 300) << e.what();
    }
  };
  write_text(dir_ / "model.safetensors.index.json", "{\"weight_map\": {\"a.weight\": " + long_list + "}}");
  short_error({"'a.weight'", "non-string", "[1,1,1,"});
  write_sharded();
  write_text(dir_ / "config.json", "{\"quantization_config\": {\"weight_block_size\": " + long_list + "}}");
  short_error({"weight_block_size", "[1,1,1,"});
}

// A [130, 70] E4M3 weight with codes (i * 13 + j * 5) % 0x7E in s1.safetensors.
std::vector<std::uint8_t> write_fp8_weight(const fs::path& file) {
  std::vector<std::uint8_t> codes;
  for (int i = 0; i < 130; ++i)
    for (int j = 0; j < 70; ++j) codes.push_back(static_cast<std::uint8_t>((i * 13 + j * 5) % 0x7E));
  SafetensorsWriter().add_raw("q.weight", Dtype::kF8E4M3, {130, 70}, codes.data(), codes.size()).write(file);
  return codes;
}

TEST_F(CheckpointTest, Fp8WeightWithoutScaleIsAnErrorWhenConfigDeclaresFp8) {
  const std::vector<std::uint8_t> codes = write_fp8_weight(dir_ / "model.safetensors");
  write_text(dir_ / "config.json",
             R"({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}})");
  {
    const Checkpoint ck(dir_);
    EXPECT_TRUE(ck.fp8_scales_required());
    expect_throw<std::runtime_error>([&] { ck.read_matrix<float>("q.weight", 130, 70); },
                                     {"FP8 weight 'q.weight'", "F8_E4M3", "model.safetensors",
                                      "no scale tensor 'q.weight_scale_inv'", "quant_method", "unscaled"});
    // The raw reads stay unscaled by definition (read<T> documents it).
    EXPECT_EQ(ck.read<double>("q.weight")[71], ref_e4m3(codes[71]));
  }
  // Without an fp8 quant_method the codes are the weight, as documented.
  for (const char* config : {R"({"hidden_size": 3})", R"({"quantization_config": {"quant_method": "bitsandbytes"}})",
                             R"({"quantization_config": {"weight_block_size": [128, 128]}})"}) {
    SCOPED_TRACE(config);
    write_text(dir_ / "config.json", config);
    const Checkpoint ck(dir_);
    EXPECT_FALSE(ck.fp8_scales_required());
    EXPECT_EQ(ck.read_matrix<double>("q.weight", 130, 70)(1, 1), ref_e4m3(codes[71]));
  }
}

TEST_F(CheckpointTest, BadBlockScalesAreRejected) {
  write_fp8_weight(dir_ / "s1.safetensors");
  write_text(dir_ / "model.safetensors.index.json",
             R"({"weight_map": {"q.weight": "s1.safetensors", "q.weight_scale_inv": "s2.safetensors"}})");
  write_text(dir_ / "config.json", R"({"quantization_config": {"quant_method": "fp8", "weight_block_size": [64, 64]}})");
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<std::pair<float, std::string>> bad = {{nan, "nan"}, {inf, "inf"}, {0.0f, "is 0;"}, {-2.0f, "-2"}};
  for (const auto& [value, text] : bad) {
    SCOPED_TRACE(text);
    std::vector<float> scale = {0.5f, 2.0f, 0.25f, 3.0f, 1.5f, 0.125f};  // [3, 2]
    scale[5] = value;
    SafetensorsWriter().add("q.weight_scale_inv", {3, 2}, scale).write(dir_ / "s2.safetensors");
    const Checkpoint ck(dir_);
    expect_throw<std::runtime_error>([&] { ck.read_matrix<float>("q.weight", 130, 70); },
                                     {"scale tensor 'q.weight_scale_inv'", "s2.safetensors", "'q.weight'",
                                      "element [2, 1]", text, "finite and positive"});
  }
}

TEST(CheckpointReference, DeepseekV3TinyFolder) {
  const fs::path dir = fs::path(reference_dir()) / "deepseek_v3_tiny";
  const Checkpoint ck(dir);
  // model.safetensors is the weights; io*.safetensors beside it are not part of the checkpoint.
  EXPECT_EQ(ck.layout(), Checkpoint::Layout::kSingleFile);
  EXPECT_EQ(ck.size(), 7u);
  EXPECT_FALSE(ck.contains("hidden_states"));
  const nlohmann::json& c = ck.config();
  const std::int64_t hidden = c["hidden_size"], heads = c["num_attention_heads"], q_lora = c["q_lora_rank"],
                     kv_lora = c["kv_lora_rank"], nope = c["qk_nope_head_dim"],
                     rope = c["qk_rope_head_dim"], v = c["v_head_dim"];
  EXPECT_EQ(kv_lora, 64);
  const std::string pre = "model.layers.0.self_attn.";
  // Every weight has the README's layout [out_features, in_features] for the config's sizes.
  EXPECT_EQ(ck.read_matrix<float>(pre + "q_a_proj.weight", q_lora, hidden).size(), q_lora * hidden);
  EXPECT_EQ(ck.read_matrix<float>(pre + "q_b_proj.weight", heads * (nope + rope), q_lora).rows(), heads * (nope + rope));
  EXPECT_EQ(ck.read_matrix<float>(pre + "kv_a_proj_with_mqa.weight", kv_lora + rope, hidden).rows(), kv_lora + rope);
  EXPECT_EQ(ck.read_matrix<float>(pre + "o_proj.weight", hidden, heads * v).cols(), heads * v);
  EXPECT_EQ(ck.read_vector<float>(pre + "q_a_layernorm.weight", q_lora).size(), q_lora);
  EXPECT_EQ(ck.read_vector<float>(pre + "kv_a_layernorm.weight", kv_lora).size(), kv_lora);
  const mla::Matrix<float> kvb = ck.read_matrix<float>(pre + "kv_b_proj.weight", heads * (nope + v), kv_lora);
  const SafetensorsFile f(dir / "model.safetensors");
  EXPECT_TRUE(kvb == f.read_matrix<float>(pre + "kv_b_proj.weight", 256, 64));
  // RMSNorm weights are 1 + 0.1 N(0, 1).
  EXPECT_NEAR(ck.read_vector<double>(pre + "kv_a_layernorm.weight", kv_lora).mean(), 1.0, 0.05);
  expect_throw<std::runtime_error>([&] { ck.read_matrix<float>(pre + "q_proj.weight", 192, 256); },
                                   {"'model.layers.0.self_attn.q_proj.weight' not found", dir.string()});
}

TEST(CheckpointReference, DeepseekV2LiteHasNoQLora) {
  const Checkpoint ck(fs::path(reference_dir()) / "deepseek_v2_lite_tiny");
  EXPECT_TRUE(ck.config()["q_lora_rank"].is_null());
  EXPECT_TRUE(ck.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(ck.contains("model.layers.0.self_attn.q_a_proj.weight"));
  // q_proj [H * (nope + rope), hidden] = [4 * 48, 192]
  EXPECT_EQ(ck.read_matrix<float>("model.layers.0.self_attn.q_proj.weight", 192, 192).rows(), 192);
}

}  // namespace
