// Regression tests for inputs that crashed, tripped a sanitizer or escaped the documented
// exception types in the libFuzzer targets (tests/fuzz/, run by scripts/fuzz.sh) or in review
// of the same code. Each input is kept verbatim; the test asserts the documented outcome.
#include <gtest/gtest.h>

#include <functional>
#include <stdexcept>
#include <string>

#include "mla/io/hf_config.hpp"
#include "mla/io/json.hpp"

namespace mla {
namespace {

/// The message of the std::runtime_error that parsing `text` as an attention config throws.
std::string attention_config_error(const char* text) {
  try {
    io::parse_attention_config(nlohmann::json::parse(text));
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "<no std::runtime_error>";
}

TEST(FuzzRegressions, IntegerFieldGivenAsHugeFloatIsRejectedNotCast) {
  // fuzz_config_json: UBSan "1e+300 is outside the range of representable values of type
  // 'long'" in detail::get_int, which cast any integral-valued double to int64.
  const std::string msg =
      attention_config_error(R"({"hidden_size": 1e300, "num_attention_heads": 2})");
  EXPECT_NE(msg.find("'hidden_size' must be an integer"), std::string::npos) << msg;
  for (const char* big : {R"({"hidden_size": 64, "num_attention_heads": -9.3e18})",
                          R"({"hidden_size": 64, "num_attention_heads": 2, "head_dim": 1.8e19})",
                          R"({"hidden_size": 64, "num_attention_heads": 2,
                              "max_position_embeddings": 1e19})"}) {
    EXPECT_NE(attention_config_error(big).find("must be an integer"), std::string::npos) << big;
  }
  // Integral floats in range are still integers (configs written by some tools carry 4096.0).
  const AttentionConfig c = io::parse_attention_config(nlohmann::json::parse(
      R"({"hidden_size": 256.0, "num_attention_heads": 8, "max_position_embeddings": 4096.0})"));
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.max_position_embeddings, 4096);
}

TEST(FuzzRegressions, NonStringModelTypeIsARuntimeErrorNamingTheKey) {
  // fuzz_config_json: `"model_type": 5` escaped as nlohmann::json::type_error ("type must be
  // string, but is number"), not the documented std::runtime_error naming the key.
  for (const char* text : {R"({"hidden_size": 64, "num_attention_heads": 2, "model_type": 5})",
                           R"({"hidden_size": 64, "num_attention_heads": 2, "model_type": []})"}) {
    const std::string msg = attention_config_error(text);
    EXPECT_NE(msg.find("'model_type' must be a string"), std::string::npos) << msg;
  }
  // null is "absent", as for every other optional key.
  EXPECT_NO_THROW(io::parse_attention_config(nlohmann::json::parse(
      R"({"hidden_size": 64, "num_attention_heads": 2, "model_type": null})")));
}

// Configs whose dims are each positive but whose derived sizes (qk_head_dim() = N + P,
// kv_values_per_token() = 2 KV D, load_gqa_layer's H * D ...) would overflow int64 are rejected:
// validate() bounds every dim by kMaxConfigDim.
TEST(FuzzRegressions, ConfigDimsThatOverflowAreRejected) {
  // The values are integers of the right type, so this is validate()'s std::invalid_argument
  // (mla/io/hf_config.hpp), naming the field.
  const char* mla = R"({"hidden_size": 64, "num_attention_heads": 2, "kv_lora_rank": 16,
      "qk_nope_head_dim": 4611686018427387904, "qk_rope_head_dim": 4611686018427387904,
      "v_head_dim": 8})";
  try {
    io::parse_mla_config(nlohmann::json::parse(mla));
    ADD_FAILURE() << "accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("qk_nope_head_dim (4611686018427387904)"), std::string::npos)
        << e.what();
  }
  const char* gqa = R"({"hidden_size": 64, "num_attention_heads": 4611686018427387904,
      "num_key_value_heads": 4611686018427387904, "head_dim": 4})";
  try {
    io::parse_attention_config(nlohmann::json::parse(gqa));
    ADD_FAILURE() << "accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("num_attention_heads (4611686018427387904)"),
              std::string::npos)
        << e.what();
  }
}

// fuzz_config_json: a 400 KB config.json whose `hidden_size` is 200k nested arrays overflowed the
// stack under ASan: the error message serialised the value with nlohmann's recursive dump().
// Every reader's type error now quotes a bounded excerpt, and parse_json() (what read_json_file
// and the fuzz target use) refuses the nesting before building anything.
TEST(FuzzRegressions, DeeplyNestedValueInAnErrorMessage) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  const auto expect_brief_error = [](const std::function<void()>& read, const std::string& key) {
    try {
      read();
      ADD_FAILURE() << "accepted a nested value for " << key;
    } catch (const std::runtime_error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("'" + key + "'"), std::string::npos) << msg;
      EXPECT_LE(msg.size(), 100 + io::kJsonExcerptChars) << msg;
    }
  };
  const std::string base = R"("hidden_size": 64, "num_attention_heads": 2, "kv_lora_rank": 16,
      "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8)";
  for (const std::string key : {"hidden_size", "num_attention_heads", "kv_lora_rank",
                                "max_position_embeddings", "attention_bias", "rope_theta",
                                "model_type"}) {
    SCOPED_TRACE(key);
    // nlohmann keeps the last of duplicate keys: the deep value replaces the valid one.
    const nlohmann::json cfg = nlohmann::json::parse("{" + base + ", \"" + key + "\": " + deep + "}");
    if (key != "model_type") expect_brief_error([&] { io::parse_mla_config(cfg); }, key);
    if (key != "kv_lora_rank") expect_brief_error([&] { io::parse_attention_config(cfg); }, key);
  }
  const nlohmann::json rope = nlohmann::json::parse(
      "{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": " + deep + "}}");
  expect_brief_error([&] { io::parse_rope(rope, RopeLayout::kInterleaved); }, "factor");
  // The fuzz target's input as text: refused by the parser.
  try {
    io::parse_json("{\"hidden_size\": " + deep + ", \"num_attention_heads\": 2}", "config.json");
    ADD_FAILURE() << "parse_json accepted 200k levels";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json is nested deeper than"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace mla
