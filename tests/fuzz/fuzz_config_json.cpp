// libFuzzer entry point for the config.json reader (mla/io/hf_config.hpp). Any input is parsed by
// io::parse_json (what read_json_file uses), which must return a value or throw
// std::runtime_error, and whose value must equal nlohmann's own parse of the same bytes. The
// readers are then run on nlohmann's DOM, which may be nested deeper than parse_json allows (a
// caller can hand them any DOM): parse_rope (both pair layouts), is_mla_config,
// parse_attention_config and parse_mla_config. Each must return a config that passes validate()
// or throw what hf_config.hpp documents: std::runtime_error for what the file holds (missing key,
// wrong type) or std::invalid_argument from validate(). Any other exception (e.g. an escaped
// nlohmann::json::type_error, whose message names no key), a crash, a sanitizer report (UBSan: a
// float-to-int cast out of range, a signed overflow), a hang or a leak is a bug. Accepted configs
// also get their RoPE frequencies computed, the first thing a layer does with them.
//
// Built and run by scripts/fuzz.sh (not part of the CMake test glob):
//   clang++ -fsanitize=fuzzer,address,undefined -std=c++17 -O1 -g -I include -I/usr/include/eigen3 \
//       tests/fuzz/fuzz_config_json.cpp -o fuzz_config_json
//   ./fuzz_config_json -max_total_time=60 CORPUS_DIR tests/fuzz/corpus/config_json
#include <cmath>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>

#include "mla/io/hf_config.hpp"
#include "mla/io/json.hpp"
#include "mla/ops/rope.hpp"

namespace {

// Keeps the optimiser from dropping the evaluations below.
volatile double g_sink = 0;

// Runs fn; documented exceptions are fine, anything else aborts (a libFuzzer crash).
template <class Fn>
void expect_documented_errors(Fn fn) {
  try {
    fn();
  } catch (const std::runtime_error&) {
  } catch (const std::invalid_argument&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "undocumented exception type: %s\n", e.what());
    __builtin_trap();
  }
}

void use_rope(const mla::RopeConfig& r, std::int64_t dim) {
  g_sink = g_sink + r.attention_factor();
  // rope_inv_freq validates first; a rotary dim from a fuzzed file may be anything, so only
  // compute tables of a size a real model has.
  if (dim > 0 && dim <= 1024) {
    for (double f : mla::rope_inv_freq(r, dim)) g_sink = g_sink + f;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  nlohmann::json bounded;
  bool bounded_ok = false;
  expect_documented_errors([&] {
    bounded = mla::io::parse_json(text, "fuzz");
    bounded_ok = true;
  });
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const std::exception&) {
    if (bounded_ok) __builtin_trap();  // parse_json accepted what nlohmann rejects
    return 0;  // not JSON
  }
  // Both parsed: the same value (== recurses, but parse_json's value is at most kMaxJsonDepth
  // deep and compares unequal at the first level where they differ).
  if (bounded_ok && !(bounded == j)) __builtin_trap();
  for (mla::RopeLayout layout : {mla::RopeLayout::kRotateHalf, mla::RopeLayout::kInterleaved}) {
    expect_documented_errors([&] {
      const mla::RopeConfig r = mla::io::parse_rope(j, layout);
      g_sink = g_sink + r.rope_theta + r.attention_factor();
    });
  }
  expect_documented_errors([&] { (void)mla::io::is_mla_config(j); });
  expect_documented_errors([&] {
    const mla::AttentionConfig c = mla::io::parse_attention_config(j);
    c.validate();  // what it returns must be valid
    g_sink = g_sink + c.softmax_scale() + static_cast<double>(c.group_size());
    use_rope(c.rope, c.head_dim);
  });
  expect_documented_errors([&] {
    const mla::MlaConfig c = mla::io::parse_mla_config(j);
    c.validate();
    // validate() bounds every dim by kMaxConfigDim, so the derived sizes cannot overflow
    // (tests/reliability/test_fuzz_regressions.cpp, ConfigDimsThatOverflowAreRejected).
    g_sink = g_sink + c.softmax_scale() + static_cast<double>(c.qk_head_dim());
    use_rope(c.rope, c.qk_rope_head_dim);
  });
  return 0;
}
