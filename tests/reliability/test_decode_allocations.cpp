// Zero heap allocations per decode step. A counting replacement of the global operator new
// (this binary only) counts every allocation made while a decode step runs, through the layers'
// forward(x, positions, cache, out, Workspace&) overload with preallocated x, positions and out:
//   MLA absorbed decode over a float and a bf16 latent cache, MLA naive decode over the latent
//   cache and over a decompressed (naive-cached) KvCache, and GQA decode over a float and a bf16
//   KvCache; with small dims and with DeepSeek-V3's attention dims (128 heads, kv_lora 512,
//   rope 64, nope/v 128), whose products are large enough for Eigen's heap fallbacks.
//
// Warm-up: the Workspace contract (layers/workspace.hpp) is that a call may add chunks, the next
// call's reset() merges them into one block, and from then on calls of that size allocate
// nothing. A decode step over a longer context is a bigger call (its score rows grow with L), so
// the warm-up decodes the whole measured range twice (with a separate prefill workspace, so the
// decode workspace is sized by decode steps alone), truncating the cache back each time, and the
// measured pass decodes the same range a third time. DecodeAllocations.ColdWorkspace* show what a
// cold workspace costs on a growing context.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>

#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"
#include "mla/presets.hpp"
#include "support/random.hpp"

#include "support/alloc_counter.hpp"

namespace mla {
namespace {

using testing::positions_from;
using testing::Rng;

/// Allocations (count, bytes) made by fn().
template <class Fn>
std::pair<long, long> count_allocs(Fn&& fn) {
  g_allocs = 0;
  g_alloc_bytes = 0;
  g_count_allocs = true;
  fn();
  g_count_allocs = false;
  return {g_allocs.load(), g_alloc_bytes.load()};
}

MlaConfig small_mla() {
  MlaConfig c;
  c.hidden_size = 48;
  c.num_attention_heads = 3;
  c.q_lora_rank = 24;
  c.kv_lora_rank = 20;
  c.qk_nope_head_dim = 12;
  c.qk_rope_head_dim = 6;
  c.v_head_dim = 10;
  c.rope = presets::deepseek_yarn(1.0);
  c.rope.original_max_position_embeddings = 32;
  c.max_position_embeddings = 1024;
  return c;
}

/// DeepSeek-V3's attention dims; a small hidden size and plain q_proj keep the weights at ~22M
/// values (the attention math does not depend on them).
MlaConfig v3_attention_dims() {
  MlaConfig c = presets::deepseek_v3();
  c.hidden_size = 128;
  c.q_lora_rank = 0;
  c.max_position_embeddings = 1024;
  return c;
}

AttentionConfig small_gqa() {
  AttentionConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.qkv_bias = true;
  c.max_position_embeddings = 1024;
  return c;
}

/// Llama-3.1-8B's attention dims (32 heads over 8 KV heads of 128) with a small hidden size.
AttentionConfig llama8b_attention_dims() {
  AttentionConfig c = presets::llama3_1_8b();
  c.hidden_size = 256;
  c.max_position_embeddings = 1024;
  return c;
}

/// Context before the measured decode steps, and the number of measured steps.
struct Range {
  Index prefill, steps;
};
constexpr Range kSmallRange{40, 24};
// DeepSeek-V3 dims: the naive-recompute path decompresses every cached token each step (a
// [L, 512] x [512, 32768] product), so a short range keeps the ASan build fast.
constexpr Range kV3Range{10, 6};
constexpr Index kColdPrefill = kSmallRange.prefill;  // for the cold-workspace tests

/// Prefills r.prefill tokens (own workspace), warms `ws` up on decode steps over the measured
/// range, truncates, then decodes the range again counting allocations per step. `step(t, ws)`
/// decodes token t (position t) into the cache.
template <class Cache, class Prefill, class Step>
void expect_zero_alloc_decode(const std::string& what, Range r, Cache& cache, Prefill prefill,
                              Step step) {
  const Index kPrefill = r.prefill, kSteps = r.steps;
  Workspace ws_prefill;
  prefill(ws_prefill);
  ASSERT_EQ(cache.size(), kPrefill);
  Workspace ws;
  // Warm-up: two passes over the measured range. The first may add chunks to ws; the first
  // call of the second pass merges them into one block (Workspace::reset), after which every
  // step of this size fits.
  for (int pass = 0; pass < 2; ++pass) {
    for (Index t = kPrefill; t < kPrefill + kSteps; ++t) step(t, ws);
    cache.truncate(kPrefill);
  }
  long total = 0;
  for (Index t = kPrefill; t < kPrefill + kSteps; ++t) {
    const auto [n, bytes] = count_allocs([&] { step(t, ws); });
    EXPECT_EQ(n, 0) << what << ": decode step at context " << t + 1 << " allocated " << n
                    << " times, " << bytes << " bytes";
    total += n;
  }
  EXPECT_EQ(cache.size(), kPrefill + kSteps);
  ::testing::Test::RecordProperty(what, std::to_string(total));
}

template <class T>
void check_mla(const MlaConfig& cfg, Range r, unsigned seed, const std::string& name) {
  Rng rng(seed);
  const MultiHeadLatentAttention<float> layer(cfg, testing::random_mla_weights<float>(cfg, rng));
  const Index kPrefill = r.prefill, hidden = cfg.hidden_size, total = r.prefill + r.steps;
  const Matrix<float> seq = rng.normal<float>(total, hidden);
  const Positions all = positions_from(0, total);
  // Preallocated per-step buffers: x, positions and out are filled in place.
  Matrix<float> x(1, hidden), out(1, hidden), prompt_out(kPrefill, hidden);
  Positions pos(1);

  for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
    auto cache = layer.template make_latent_cache<T>(total);
    expect_zero_alloc_decode(
        name + " latent<" + (std::is_same_v<T, float> ? "float" : "bf16") + "> " +
            to_string(path),
        r, cache,
        [&](Workspace& ws) {
          layer.forward(seq.topRows(kPrefill), all.head(kPrefill), cache, prompt_out, ws);
        },
        [&](Index t, Workspace& ws) {
          x = seq.row(t);
          pos[0] = t;
          layer.forward(x, pos, cache, out, ws, path);
        });
  }
  auto kv = layer.template make_decompressed_cache<T>(total);
  expect_zero_alloc_decode(
      name + " naive-cached<" + (std::is_same_v<T, float> ? "float" : "bf16") + ">", r, kv,
      [&](Workspace& ws) {
        layer.forward(seq.topRows(kPrefill), all.head(kPrefill), kv, prompt_out, ws);
      },
      [&](Index t, Workspace& ws) {
        x = seq.row(t);
        pos[0] = t;
        layer.forward(x, pos, kv, out, ws);
      });
}

template <class T>
void check_gqa(const AttentionConfig& cfg, Range r, unsigned seed, const std::string& name) {
  Rng rng(seed);
  const GroupedQueryAttention<float> layer(cfg, testing::random_gqa_weights<float>(cfg, rng));
  const Index kPrefill = r.prefill, hidden = cfg.hidden_size, total = r.prefill + r.steps;
  const Matrix<float> seq = rng.normal<float>(total, hidden);
  const Positions all = positions_from(0, total);
  Matrix<float> x(1, hidden), out(1, hidden), prompt_out(kPrefill, hidden);
  Positions pos(1);
  auto cache = layer.template make_cache<T>(total);
  expect_zero_alloc_decode(
      name + " kv<" + (std::is_same_v<T, float> ? "float" : "bf16") + ">", r, cache,
      [&](Workspace& ws) {
        layer.forward(seq.topRows(kPrefill), all.head(kPrefill), cache, prompt_out, ws);
      },
      [&](Index t, Workspace& ws) {
        x = seq.row(t);
        pos[0] = t;
        layer.forward(x, pos, cache, out, ws);
      });
}

TEST(DecodeAllocations, MlaSmallDimsFloatCache) {
  check_mla<float>(small_mla(), kSmallRange, 1, "mla small");
}
TEST(DecodeAllocations, MlaSmallDimsBf16Cache) {
  check_mla<bfloat16>(small_mla(), kSmallRange, 2, "mla small");
}
TEST(DecodeAllocations, MlaDeepSeekV3DimsFloatCache) {
  check_mla<float>(v3_attention_dims(), kV3Range, 3, "mla v3");
}
TEST(DecodeAllocations, MlaDeepSeekV3DimsBf16Cache) {
  check_mla<bfloat16>(v3_attention_dims(), kV3Range, 4, "mla v3");
}
TEST(DecodeAllocations, GqaSmallDims) {
  check_gqa<float>(small_gqa(), kSmallRange, 5, "gqa small");
  check_gqa<bfloat16>(small_gqa(), kSmallRange, 6, "gqa small");
}
TEST(DecodeAllocations, GqaLlama8bDims) {
  check_gqa<float>(llama8b_attention_dims(), kSmallRange, 7, "gqa llama8b");
  check_gqa<bfloat16>(llama8b_attention_dims(), kSmallRange, 8, "gqa llama8b");
}

// ---- Cold workspace on a growing context. ----

constexpr Index kColdSteps = 96;

/// Decodes kColdSteps tokens after a kColdPrefill prompt with a fresh decode workspace; returns how
/// many steps allocated, and prints the count and bytes of each that did.
template <class Cache, class Prefill, class Step>
long allocating_steps_cold(const std::string& what, Cache& cache, Prefill prefill, Step step) {
  const Index start = cache.size();
  Workspace ws_prefill;
  prefill(ws_prefill);
  EXPECT_EQ(cache.size(), start + kColdPrefill);
  Workspace ws;
  long steps = 0;
  std::string detail;
  for (Index t = kColdPrefill; t < kColdPrefill + kColdSteps; ++t) {
    const auto [n, bytes] = count_allocs([&] { step(t, ws); });
    if (n != 0 && t > kColdPrefill) {  // the very first step sizes the workspace
      ++steps;
      detail += " L=" + std::to_string(t + 1) + ":" + std::to_string(n) + "x" +
                std::to_string(bytes);
    }
  }
  std::printf("%s: %ld of %ld steps allocated;%s\n", what.c_str(), steps, long(kColdSteps - 1),
              detail.c_str());
  return steps;
}

/// Growth must be amortised: at most one step in 8 may grow a cold workspace. (Workspace adds
/// chunks of max(needed, 64 KiB) and merges them on the next call, so a path whose scratch grows
/// by more than 64 KiB per token would allocate on every step.)
constexpr long kMaxColdAllocatingSteps = kColdSteps / 8;

template <class T>
void check_mla_cold(const MlaConfig& cfg, unsigned seed, const std::string& name) {
  Rng rng(seed);
  const MultiHeadLatentAttention<float> layer(cfg, testing::random_mla_weights<float>(cfg, rng));
  const Index hidden = cfg.hidden_size, total = kColdPrefill + kColdSteps;
  const Matrix<float> seq = rng.normal<float>(total, hidden);
  const Positions all = positions_from(0, total);
  Matrix<float> x(1, hidden), out(1, hidden), prompt_out(kColdPrefill, hidden);
  Positions pos(1);
  const std::string type = std::is_same_v<T, float> ? "float" : "bf16";
  // Absorbed only: the naive-recompute path's scratch is O(L x H x (N+V)) by design (it is the
  // prefill path; kAuto never picks it for decode).
  for (MlaPath path : {MlaPath::kAbsorbed}) {
    auto cache = layer.template make_latent_cache<T>(total);
    const std::string what = name + " latent<" + type + "> " + to_string(path);
    EXPECT_LE(allocating_steps_cold(
                  what, cache,
                  [&](Workspace& ws) {
                    layer.forward(seq.topRows(kColdPrefill), all.head(kColdPrefill), cache, prompt_out, ws);
                  },
                  [&](Index t, Workspace& ws) {
                    x = seq.row(t);
                    pos[0] = t;
                    layer.forward(x, pos, cache, out, ws, path);
                  }),
              kMaxColdAllocatingSteps)
        << what;
  }
  auto kv = layer.template make_decompressed_cache<T>(total);
  const std::string what = name + " naive-cached<" + type + ">";
  EXPECT_LE(allocating_steps_cold(
                what, kv,
                [&](Workspace& ws) {
                  layer.forward(seq.topRows(kColdPrefill), all.head(kColdPrefill), kv, prompt_out, ws);
                },
                [&](Index t, Workspace& ws) {
                  x = seq.row(t);
                  pos[0] = t;
                  layer.forward(x, pos, kv, out, ws);
                }),
            kMaxColdAllocatingSteps)
      << what;
}

template <class T>
void check_gqa_cold(const AttentionConfig& cfg, unsigned seed, const std::string& name) {
  Rng rng(seed);
  const GroupedQueryAttention<float> layer(cfg, testing::random_gqa_weights<float>(cfg, rng));
  const Index hidden = cfg.hidden_size, total = kColdPrefill + kColdSteps;
  const Matrix<float> seq = rng.normal<float>(total, hidden);
  const Positions all = positions_from(0, total);
  Matrix<float> x(1, hidden), out(1, hidden), prompt_out(kColdPrefill, hidden);
  Positions pos(1);
  auto cache = layer.template make_cache<T>(total);
  const std::string what = name + " kv<" + (std::is_same_v<T, float> ? "float" : "bf16") + ">";
  EXPECT_LE(allocating_steps_cold(
                what, cache,
                [&](Workspace& ws) {
                  layer.forward(seq.topRows(kColdPrefill), all.head(kColdPrefill), cache, prompt_out, ws);
                },
                [&](Index t, Workspace& ws) {
                  x = seq.row(t);
                  pos[0] = t;
                  layer.forward(x, pos, cache, out, ws);
                }),
            kMaxColdAllocatingSteps)
      << what;
}

// Float layers run the fast kernels, whose scratch does not grow with L; only the score rows and
// projections of the Eigen parts do, and slowly. (Before the layers used the kernels, the bf16
// naive-cached MLA path widened every head's K and V into fresh workspace memory, 160 KiB per
// token at V3 dims, and so allocated on every step: Workspace grows by max(needed, 64 KiB)
// chunks, not geometrically. The double layers still take that generic path.)
TEST(DecodeAllocations, ColdWorkspaceGrowsAmortisedMla) {
  check_mla_cold<float>(v3_attention_dims(), 9, "mla v3");
  check_mla_cold<bfloat16>(v3_attention_dims(), 10, "mla v3");
}
TEST(DecodeAllocations, ColdWorkspaceGrowsAmortisedGqa) {
  check_gqa_cold<float>(llama8b_attention_dims(), 11, "gqa llama8b");
  check_gqa_cold<bfloat16>(llama8b_attention_dims(), 12, "gqa llama8b");
}

}  // namespace
}  // namespace mla
