// The KV-cache report (benchmarks/kv_report.hpp) must report what the cache objects allocate, agree
// with the configs' own size formulas, and reproduce the published figures (DeepSeek-V3's latent
// cache 71.88% smaller per layer than Qwen2.5-72B's; 70.272 / 327.68 / 516.1 KB per token in BF16
// for DeepSeek-V3 / Qwen2.5-72B / Llama-3.1-405B, all layers).
#include <gtest/gtest.h>

#include <cstdint>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "../../benchmarks/kv_report.hpp"
#include "mla/presets.hpp"

namespace {

using mla_bench::kv::build_report;
using mla_bench::kv::CacheFigures;
using mla_bench::kv::Format;
using mla_bench::kv::Report;

// Values per token per layer from the configs (the formulas the report must not need).
std::int64_t formula_values(const std::string& model) {
  namespace p = mla::presets;
  if (model == "DeepSeek-V3") return p::deepseek_v3().latent_dim();
  if (model == "DeepSeek-V2") return p::deepseek_v2().latent_dim();
  if (model == "DeepSeek-V2-Lite") return p::deepseek_v2_lite().latent_dim();
  if (model == "Qwen2.5-32B") return p::qwen2_5_32b().kv_values_per_token();
  if (model == "Qwen2.5-72B") return p::qwen2_5_72b().kv_values_per_token();
  if (model == "Llama-3.1-8B") return p::llama3_1_8b().kv_values_per_token();
  if (model == "Llama-3.1-70B") return p::llama3_1_70b().kv_values_per_token();
  if (model == "Llama-3.1-405B") return p::llama3_1_405b().kv_values_per_token();
  if (model == "MHA 128x128") return p::mha_128x128().kv_values_per_token();
  if (model == "DeepSeek-V3 as MHA") return p::deepseek_v3().decompressed_values_per_token();
  ADD_FAILURE() << "no formula for " << model;
  return 0;
}

TEST(KvCacheReport, CoversEveryModelWithBothElementSizes) {
  const Report r = build_report();
  EXPECT_EQ(r.sizes.size(), 20u);  // 10 models x {bf16, f32}
  for (const char* m : {"DeepSeek-V3", "DeepSeek-V2", "DeepSeek-V2-Lite", "Qwen2.5-32B",
                        "Qwen2.5-72B", "Llama-3.1-8B", "Llama-3.1-70B", "Llama-3.1-405B",
                        "MHA 128x128", "DeepSeek-V3 as MHA"}) {
    EXPECT_EQ(r.find(m, "bf16").element_bytes, 2) << m;
    EXPECT_EQ(r.find(m, "f32").element_bytes, 4) << m;
  }
  // 3 MLA models x 7 GQA/MHA baselines.
  EXPECT_EQ(r.reductions.size(), 21u);
}

TEST(KvCacheReport, AgreesWithTheConfigFormulas) {
  const Report r = build_report();
  for (const CacheFigures& f : r.sizes) {
    SCOPED_TRACE(f.model + " " + f.dtype);
    const std::int64_t values = formula_values(f.model);
    EXPECT_EQ(f.elements_per_token_layer, values);
    EXPECT_EQ(f.bytes_per_token_layer, values * f.element_bytes);
    EXPECT_EQ(f.bytes_per_token_model, values * f.element_bytes * f.layers);
    ASSERT_EQ(f.gib_per_sequence.size(), 3u);
    const double tokens[] = {4096, 32768, 131072};
    for (int i = 0; i < 3; ++i)
      EXPECT_DOUBLE_EQ(f.gib_per_sequence[i],
                       double(values * f.element_bytes * f.layers) * tokens[i] / 1073741824.0);
  }
  EXPECT_EQ(r.find("DeepSeek-V3", "bf16").layers, 61);
  EXPECT_EQ(r.find("Qwen2.5-72B", "bf16").layers, 80);
  EXPECT_EQ(r.find("Llama-3.1-405B", "bf16").layers, 126);
}

TEST(KvCacheReport, MatchesWhatLargerAllocatedCachesHold) {
  // The report reads one-token caches; a cache of n tokens must hold n times as much, filled or
  // not, so the per-sequence columns are what a real cache of that length allocates.
  const Report r = build_report();
  const mla::Index n = 48;
  for (const mla_bench::kv::ModelEntry& m : mla_bench::kv::report_models()) {
    SCOPED_TRACE(m.name);
    mla_bench::kv::with_cache<float>(m, n, [&](mla::Index, std::size_t per_token,
                                               std::size_t allocated) {
      EXPECT_EQ(per_token, std::size_t(r.find(m.name, "f32").bytes_per_token_layer));
      EXPECT_EQ(allocated, n * per_token);
    });
    mla_bench::kv::with_cache<mla::bfloat16>(m, n, [&](mla::Index, std::size_t per_token,
                                                       std::size_t allocated) {
      EXPECT_EQ(per_token, std::size_t(r.find(m.name, "bf16").bytes_per_token_layer));
      EXPECT_EQ(allocated, n * per_token);
    });
  }
  // And the layers' own cache factories build the same shapes: a latent row is
  // kv_lora_rank + qk_rope_head_dim, the decompressed cache H x (N+P) keys + H x V values.
  mla::LatentCache<mla::bfloat16> latent(512, 64, 1);
  EXPECT_EQ(latent.bytes_per_token(), 1152u);
  mla::KvCache<mla::bfloat16> decompressed(128, 192, 128, 1);
  EXPECT_EQ(decompressed.bytes_per_token(), 81920u);
}

TEST(KvCacheReport, ReportsTheFp8LatentCacheFromAllocatedCaches) {
  const Report r = build_report();
  ASSERT_EQ(r.fp8_sizes.size(), 3u);  // the three MLA models
  for (const CacheFigures& f : r.fp8_sizes) {
    SCOPED_TRACE(f.model);
    EXPECT_EQ(f.attention, "MLA");
    EXPECT_EQ(f.elements_per_token_layer, 576);
    // FlashMLA's FP8 row: 512 e4m3 codes + 4 float scales (one per 128) + 64 bf16 rope values.
    EXPECT_EQ(f.bytes_per_token_layer, 512 + 4 * 4 + 64 * 2);
    EXPECT_EQ(f.bytes_per_token_model, 656 * f.layers);
    const mla::Fp8LatentCache many(512, 64, 10);
    EXPECT_EQ(many.bytes_allocated(), 10u * std::size_t(f.bytes_per_token_layer));
  }
}

TEST(KvCacheReport, ReportsTheInt8LatentCacheFromAllocatedCaches) {
  const Report r = build_report();
  ASSERT_EQ(r.int8_sizes.size(), 3u);  // the three MLA models
  for (const CacheFigures& f : r.int8_sizes) {
    SCOPED_TRACE(f.model);
    EXPECT_EQ(f.dtype, "int8");
    EXPECT_EQ(f.elements_per_token_layer, 576);
    // 512 int8 codes + a float scale + an int32 code sum + 64 bf16 rope values.
    EXPECT_EQ(f.bytes_per_token_layer, 512 + 4 + 4 + 64 * 2);
    EXPECT_EQ(f.bytes_per_token_model, 648 * f.layers);
    EXPECT_LE(f.bytes_per_token_layer, 656);  // no larger than the FP8 row
  }
}

TEST(KvCacheReport, ReproducesThePublishedFigures) {
  const Report r = build_report();
  // DeepSeek-V3: 512 + 64 = 576 values; Qwen2.5-72B: 8 KV heads x 128 x 2 = 2048 values.
  EXPECT_EQ(r.find("DeepSeek-V3", "bf16").elements_per_token_layer, 576);
  EXPECT_EQ(r.find("Qwen2.5-72B", "bf16").elements_per_token_layer, 2048);
  EXPECT_EQ(r.find("Qwen2.5-32B", "bf16").elements_per_token_layer, 2048);
  // 1 - 576/2048 = 0.71875 exactly.
  EXPECT_DOUBLE_EQ(r.reduction("DeepSeek-V3", "Qwen2.5-72B").per_layer_pct, 71.875);
  EXPECT_DOUBLE_EQ(r.reduction("DeepSeek-V3", "Qwen2.5-32B").per_layer_pct, 71.875);
  // BF16 per token, all layers (decimal KB): 70.272 KB, 327.68 KB, 516.1 KB (516.096).
  EXPECT_EQ(r.find("DeepSeek-V3", "bf16").bytes_per_token_model, 70272);
  EXPECT_EQ(r.find("Qwen2.5-72B", "bf16").bytes_per_token_model, 327680);
  EXPECT_EQ(r.find("Llama-3.1-405B", "bf16").bytes_per_token_model, 516096);
  // V3 without MLA caches 128 x (192 + 128) = 40960 values: 71.1x the latent row.
  EXPECT_NEAR(r.reduction("DeepSeek-V3", "DeepSeek-V3 as MHA").per_layer_ratio, 40960.0 / 576.0,
              1e-12);
  // Whole model: 1 - 70272 / 327680.
  EXPECT_NEAR(r.reduction("DeepSeek-V3", "Qwen2.5-72B").whole_model_pct,
              100.0 * (1.0 - 70272.0 / 327680.0), 1e-9);
  EXPECT_TRUE(r.all_checks_ok());
  EXPECT_EQ(r.checks.size(), 5u);

  const std::string text = render(r, Format::kTable);
  for (const char* s : {"71.88%", "70.272", "327.68", "516.1 KB", "516.096", "656", "8-bit"})
    EXPECT_NE(text.find(s), std::string::npos) << "table lacks " << s;
  const std::string md = render(r, Format::kMarkdown);
  EXPECT_NE(md.find("| DeepSeek-V3 | Qwen2.5-72B | GQA | 71.88% |"), std::string::npos) << md;
}

TEST(KvCacheReport, MachineFormats) {
  const Report r = build_report();
  const auto j = nlohmann::json::parse(render(r, Format::kJson));
  ASSERT_EQ(j.at("sizes").size(), 26u);  // 10 models x {bf16, f32} + 3 MLA models x {fp8, int8}
  bool found = false, found_int8 = false;
  for (const auto& s : j.at("sizes")) {
    if (s.at("model") == "DeepSeek-V3" && s.at("dtype") == "bf16") {
      found = true;
      EXPECT_EQ(s.at("bytes_per_token_all_layers").get<std::int64_t>(), 70272);
      EXPECT_EQ(s.at("elements_per_token_layer").get<std::int64_t>(), 576);
    }
    if (s.at("model") == "DeepSeek-V3" && s.at("dtype") == "int8") {
      found_int8 = true;
      EXPECT_EQ(s.at("bytes_per_token_all_layers").get<std::int64_t>(), 648 * 61);
    }
  }
  EXPECT_TRUE(found);
  EXPECT_TRUE(found_int8);
  EXPECT_EQ(j.at("reductions").size(), 21u);
  for (const auto& c : j.at("published_checks")) EXPECT_TRUE(c.at("match").get<bool>());

  // CSV of one section: header + one line per (model, type).
  std::istringstream csv(render(r, Format::kCsv, "sizes"));
  std::string line;
  int lines = 0;
  std::getline(csv, line);
  EXPECT_EQ(line.rfind("Model,Attention,Layers,", 0), 0u) << line;
  while (std::getline(csv, line)) ++lines;
  EXPECT_EQ(lines, 26);  // 20 bf16/f32 rows + 3 fp8 rows + 3 int8 rows

  EXPECT_EQ(mla_bench::kv::parse_format("csv"), Format::kCsv);
  EXPECT_EQ(mla_bench::kv::parse_format("markdown"), Format::kMarkdown);
  EXPECT_FALSE(mla_bench::kv::parse_format("xml").has_value());
}

}  // namespace
