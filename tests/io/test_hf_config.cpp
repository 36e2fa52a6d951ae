// config.json parsing: every reference case, the released-checkpoint layout (rope_scaling +
// rope_theta), the released DeepSeek-V3 config against its preset, and clear errors for broken
// configs. (The presets themselves: tests/config/test_presets.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>

#include "mla/io/hf_config.hpp"
#include "mla/io/json.hpp"
#include "mla/presets.hpp"
#include "support/reference_dir.hpp"

namespace mla {
namespace {

nlohmann::json case_config(const char* name) {
  return io::read_json_file((testing::reference_dir() / name / "config.json").string());
}

TEST(HfConfig, ReadsDeepSeekV3Case) {
  const MlaConfig c = io::parse_mla_config(case_config("deepseek_v3_tiny"));
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.q_lora_rank, 96);
  EXPECT_EQ(c.kv_lora_rank, 64);
  EXPECT_EQ(c.qk_nope_head_dim, 32);
  EXPECT_EQ(c.qk_rope_head_dim, 16);
  EXPECT_EQ(c.v_head_dim, 32);
  EXPECT_EQ(c.rope.rope_type, RopeType::kYarn);
  EXPECT_EQ(c.rope.layout, RopeLayout::kInterleaved);
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 64);
  // The case's README: 48^-0.5 * (0.1 ln 4 + 1)^2.
  EXPECT_NEAR(c.softmax_scale(), 0.18713033519502428, 1e-15);
}

TEST(HfConfig, ReadsV2LiteWithoutQueryCompression) {
  const nlohmann::json j = case_config("deepseek_v2_lite_tiny");
  ASSERT_TRUE(io::is_mla_config(j));
  const MlaConfig c = io::parse_mla_config(j);
  EXPECT_FALSE(c.has_q_lora());
  EXPECT_EQ(c.rope.rope_type, RopeType::kDefault);
  EXPECT_EQ(c.rope.layout, RopeLayout::kInterleaved);
  EXPECT_NEAR(c.softmax_scale(), 0.14433756729740643, 1e-15);
}

TEST(HfConfig, ReadsLlamaAndQwen2Biases) {
  const AttentionConfig llama = io::parse_attention_config(case_config("llama_gqa_tiny"));
  EXPECT_EQ(llama.num_key_value_heads, 2);
  EXPECT_FALSE(llama.qkv_bias);
  EXPECT_EQ(llama.rope.layout, RopeLayout::kRotateHalf);
  EXPECT_DOUBLE_EQ(llama.rope.rope_theta, 5e5);
  const AttentionConfig qwen = io::parse_attention_config(case_config("qwen2_gqa_tiny"));
  EXPECT_TRUE(qwen.qkv_bias);
  EXPECT_FALSE(qwen.o_bias);
  EXPECT_DOUBLE_EQ(qwen.rope.rope_theta, 1e6);
  EXPECT_FALSE(io::is_mla_config(case_config("qwen2_gqa_tiny")));
}

TEST(HfConfig, ReadsReleasedCheckpointLayout) {
  // The layout of deepseek-ai/DeepSeek-V3's config.json: rope_theta at top level, rope_scaling
  // with "type", q/kv ranks as numbers.
  const nlohmann::json j = nlohmann::json::parse(R"({
    "model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128,
    "num_key_value_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "max_position_embeddings": 163840, "num_hidden_layers": 61, "rope_theta": 10000,
    "attention_bias": false,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"}})");
  const MlaConfig c = io::parse_mla_config(j);
  const MlaConfig p = presets::deepseek_v3();
  EXPECT_EQ(c.hidden_size, p.hidden_size);
  EXPECT_EQ(c.num_hidden_layers, p.num_hidden_layers);
  EXPECT_EQ(c.rope.rope_type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c.softmax_scale(), p.softmax_scale());
  EXPECT_DOUBLE_EQ(c.rope.attention_factor(), 1.0);
}

TEST(HfConfig, ReadsLlama3RopeScaling) {
  const nlohmann::json j = nlohmann::json::parse(R"({
    "model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
    "num_key_value_heads": 8, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}})");
  const AttentionConfig c = io::parse_attention_config(j);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rope.rope_type, RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
}

TEST(HfConfig, ErrorsNameTheKey) {
  auto expect_error = [](const char* text, const char* needle) {
    try {
      io::parse_mla_config(nlohmann::json::parse(text));
      ADD_FAILURE() << "accepted: " << text;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(R"({"hidden_size": 64})", "num_attention_heads");
  expect_error(R"({"hidden_size": "big", "num_attention_heads": 2})", "hidden_size");
  expect_error(R"({"hidden_size": 64, "num_attention_heads": 2, "kv_lora_rank": 16,
                   "qk_nope_head_dim": 8, "qk_rope_head_dim": 5, "v_head_dim": 8})",
               "rotary dimension (5)");
  expect_error(R"({"hidden_size": 64, "num_attention_heads": 2, "kv_lora_rank": 16,
                   "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
                   "rope_scaling": {"type": "dynamic", "factor": 2}})",
               "unsupported rope type 'dynamic'");
  expect_error(R"({"hidden_size": 64, "num_attention_heads": 2, "kv_lora_rank": 0,
                   "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8})",
               "kv_lora_rank (0)");
}

TEST(HfConfig, ReadJsonFileRefusesDeepNestingAndNulBytes) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("mla_test_hf_config_" + std::to_string(std::random_device{}()) + ".json");
  const auto read_error = [&](const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
    try {
      io::read_json_file(path.string());
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("<accepted>");
  };
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  const std::string msg = read_error("{\"hidden_size\": " + deep + ", \"num_attention_heads\": 2}");
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("nested deeper than " + std::to_string(io::kMaxJsonDepth) + " levels"),
            std::string::npos)
      << msg;
  // nlohmann's lexer stops at a NUL byte: what follows it must not be ignored.
  EXPECT_NE(read_error(std::string("{\"hidden_size\": 64}\0{", 21)).find("NUL byte at offset 19"),
            std::string::npos);
  EXPECT_NE(read_error("{\"hidden_size\": ").find("is not valid JSON"), std::string::npos);
  std::filesystem::remove(path);
}

TEST(HfConfig, NonFiniteNumbersAreRejected) {
  // JSON text cannot hold inf or NaN, but a DOM from CBOR/MessagePack or built in code can; a
  // rope field holding one would make the attention factor inf or NaN.
  const double inf = std::numeric_limits<double>::infinity();
  for (const char* key : {"mscale", "mscale_all_dim", "beta_fast", "attention_factor"}) {
    for (double bad : {inf, -inf, std::numeric_limits<double>::quiet_NaN()}) {
      SCOPED_TRACE(std::string(key) + " = " + std::to_string(bad));
      nlohmann::json cfg = nlohmann::json::parse(R"({"hidden_size": 64, "num_attention_heads": 2,
          "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
          "max_position_embeddings": 1024, "rope_scaling": {"type": "yarn", "factor": 4,
          "original_max_position_embeddings": 256}})");
      cfg["rope_scaling"][key] = bad;
      // The same DOM survives a CBOR round trip (a config shipped in a binary format).
      for (const nlohmann::json& c : {cfg, nlohmann::json::from_cbor(nlohmann::json::to_cbor(cfg))}) {
        try {
          io::parse_mla_config(c);
          ADD_FAILURE() << "accepted";
        } catch (const std::runtime_error& e) {
          EXPECT_NE(std::string(e.what()).find(std::string("'") + key + "' must be a finite number"),
                    std::string::npos)
              << e.what();
        }
      }
    }
  }
}

}  // namespace
}  // namespace mla
