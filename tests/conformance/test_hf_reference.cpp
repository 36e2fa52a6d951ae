// Every reference case (MHA, GQA, MLA) against the Hugging Face transformers vectors, in float
// and double, on every execution path: see mla/conformance/hf_reference.hpp for what is checked.
#include <gtest/gtest.h>

#include "mla/conformance/hf_reference.hpp"
#include "support/reference_dir.hpp"

namespace mla {
namespace {

const char* const kCases[] = {"llama_mha_tiny",        "llama_gqa_tiny",    "qwen2_gqa_tiny",
                              "deepseek_v3_tiny",      "deepseek_v2_lite_tiny",
                              "deepseek_v3_realdims"};

template <class Scalar>
void expect_case_passes(const std::string& name) {
  const auto folder = testing::reference_dir() / name;
  ASSERT_TRUE(std::filesystem::is_directory(folder))
      << folder << " missing: set MLA_REFERENCE_DIR to the reference folder";
  const conformance::CaseResult r = conformance::check_reference_case<Scalar>(folder);
  EXPECT_GE(r.checks.size(), 7u);  // constants, intermediates, two feeding orders
  for (const auto& c : r.checks)
    EXPECT_TRUE(c.ok()) << name << " " << c.io_file << " " << c.what << ": rel err " << c.rel_err
                        << " > " << c.tolerance;
  EXPECT_TRUE(r.ok());
}

class HfReference : public ::testing::TestWithParam<const char*> {};

TEST_P(HfReference, Float) { expect_case_passes<float>(GetParam()); }
TEST_P(HfReference, Double) { expect_case_passes<double>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Cases, HfReference, ::testing::ValuesIn(kCases),
                         [](const auto& param_info) { return std::string(param_info.param); });

TEST(HfReference, CoversEveryCaseInTheFolder) {
  // A new case dropped into the reference folder must not be silently skipped.
  std::size_t found = 0;
  for (const auto& e : std::filesystem::directory_iterator(testing::reference_dir()))
    if (std::filesystem::exists(e.path() / "config.json")) ++found;
  EXPECT_EQ(found, std::size(kCases));
}

TEST(HfReference, DetectsAWrongWeight) {
  // The harness must be able to fail: perturb one weight of a case copy and expect a mismatch.
  const auto src = testing::reference_dir() / "deepseek_v3_tiny";
  const auto tmp = std::filesystem::temp_directory_path() / "mla_ref_perturbed";
  std::filesystem::remove_all(tmp);
  std::filesystem::create_directories(tmp);
  for (const char* f : {"config.json", "io.safetensors"})
    std::filesystem::copy_file(src / f, tmp / f);
  const auto model = io::SafetensorsFile(src / "model.safetensors");
  io::SafetensorsWriter writer;
  for (const auto& name : model.names()) {
    std::vector<float> data = model.read<float>(name);
    if (name.find("kv_b_proj") != std::string::npos) data[5] += 0.05f;
    writer.add(name, model.info(name).shape, data);
  }
  writer.write(tmp / "model.safetensors");
  const auto r = conformance::check_reference_case<float>(tmp);
  EXPECT_FALSE(r.ok());
  std::filesystem::remove_all(tmp);
}

}  // namespace
}  // namespace mla
