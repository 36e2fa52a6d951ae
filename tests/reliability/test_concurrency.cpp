// Layers are immutable after construction and shareable: one layer object serves several threads
// at once, each decoding its own sequence with its own cache and Workspace, and every thread's
// outputs are bitwise equal to a single-threaded run of the same sequence (same calls, same
// kernel thread count). Also: one Checkpoint loading layers from several threads (its shards open
// lazily under a mutex), and one ThreadPool shared by concurrent kernel calls (serialised).
// scripts/sanitize.sh builds and runs this file under ThreadSanitizer too (tests "Concurrency.*").
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "mla/core/threading.hpp"
#include "mla/io/load_layer.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/presets.hpp"
#include "support/random.hpp"
#include "support/reference_dir.hpp"

namespace mla {
namespace {

using testing::positions_from;
using testing::Rng;

constexpr int kThreads = 4;

/// Starts `n` threads running fn(i) as close to simultaneously as possible, and joins them.
template <class Fn>
void run_concurrently(int n, Fn fn) {
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      ready.fetch_add(1);
      while (ready.load() < n) std::this_thread::yield();
      fn(i);
    });
  }
  for (std::thread& t : threads) t.join();
}

template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(typename A::Scalar) * a.size()) == 0;
}

MlaConfig mla_config() {
  MlaConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.q_lora_rank = 32;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.rope = presets::deepseek_yarn(1.0);
  c.rope.original_max_position_embeddings = 16;
  c.max_position_embeddings = 256;
  return c;
}

AttentionConfig gqa_config() {
  AttentionConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.qkv_bias = true;
  c.max_position_embeddings = 256;
  return c;
}

constexpr Index kPrompt = 9;  // prefilled in one call, then
constexpr Index kDecode = 24; // decoded one token at a time (positions after the prompt)

/// How thread i uses the MLA layer: every cache type and path, so they all run side by side.
enum class MlaUse { kAbsorbedFloat, kAbsorbedBf16, kNaiveLatent, kNaiveCached };

/// The whole sequence of thread i: prefill, then token-by-token decode; returns all outputs.
Matrix<float> run_mla(const MultiHeadLatentAttention<float>& layer, const Matrix<float>& x,
                      std::int64_t start, MlaUse use) {
  const Index T = x.rows(), hidden = x.cols();
  Matrix<float> out(T, hidden);
  Workspace ws;
  auto latent_f = layer.make_latent_cache<float>(T);
  auto latent_b = layer.make_latent_cache<bfloat16>(T);
  auto kv = layer.make_decompressed_cache<float>(T);
  auto step = [&](Index first, Index n, MlaPath path) {
    const Positions pos = positions_from(start + first, n);
    Matrix<float> y(n, hidden);
    switch (use) {
      case MlaUse::kAbsorbedFloat: layer.forward(x.middleRows(first, n), pos, latent_f, y, ws, path); break;
      case MlaUse::kAbsorbedBf16: layer.forward(x.middleRows(first, n), pos, latent_b, y, ws, path); break;
      case MlaUse::kNaiveLatent: layer.forward(x.middleRows(first, n), pos, latent_f, y, ws, MlaPath::kNaive); break;
      case MlaUse::kNaiveCached: layer.forward(x.middleRows(first, n), pos, kv, y, ws); break;
    }
    out.middleRows(first, n) = y;
  };
  step(0, kPrompt, MlaPath::kAuto);
  for (Index t = kPrompt; t < T; ++t) step(t, 1, MlaPath::kAbsorbed);
  return out;
}

TEST(Concurrency, OneMlaLayerManySequences) {
  const MlaConfig cfg = mla_config();
  Rng rng(21);
  const MultiHeadLatentAttention<float> layer(cfg, testing::random_mla_weights<float>(cfg, rng));
  std::vector<Matrix<float>> inputs;
  for (int i = 0; i < kThreads; ++i)
    inputs.push_back(rng.normal<float>(kPrompt + kDecode, cfg.hidden_size));
  const MlaUse uses[kThreads] = {MlaUse::kAbsorbedFloat, MlaUse::kAbsorbedBf16,
                                 MlaUse::kNaiveLatent, MlaUse::kNaiveCached};
  const std::int64_t starts[kThreads] = {0, 17, 100, 3};

  // Single-threaded runs first: the expected outputs.
  std::vector<Matrix<float>> expected;
  for (int i = 0; i < kThreads; ++i) expected.push_back(run_mla(layer, inputs[i], starts[i], uses[i]));
  for (int round = 0; round < 2; ++round) {
    std::vector<Matrix<float>> got(kThreads);
    run_concurrently(kThreads, [&](int i) { got[i] = run_mla(layer, inputs[i], starts[i], uses[i]); });
    for (int i = 0; i < kThreads; ++i) {
      ASSERT_TRUE(expected[i].allFinite());
      EXPECT_TRUE(bitwise_equal(got[i], expected[i])) << "thread " << i << " round " << round;
    }
  }
  // Every thread running the same use at once must agree too (no shared scratch in the layer).
  std::vector<Matrix<float>> same(kThreads);
  run_concurrently(kThreads, [&](int i) {
    same[i] = run_mla(layer, inputs[0], starts[0], MlaUse::kAbsorbedFloat);
  });
  for (int i = 0; i < kThreads; ++i) EXPECT_TRUE(bitwise_equal(same[i], expected[0])) << i;
}

Matrix<float> run_gqa(const GroupedQueryAttention<float>& layer, const Matrix<float>& x,
                      std::int64_t start, bool bf16) {
  const Index T = x.rows(), hidden = x.cols();
  Matrix<float> out(T, hidden);
  Workspace ws;
  auto cf = layer.make_cache<float>(T);
  auto cb = layer.make_cache<bfloat16>(T);
  auto step = [&](Index first, Index n) {
    const Positions pos = positions_from(start + first, n);
    Matrix<float> y(n, hidden);
    if (bf16)
      layer.forward(x.middleRows(first, n), pos, cb, y, ws);
    else
      layer.forward(x.middleRows(first, n), pos, cf, y, ws);
    out.middleRows(first, n) = y;
  };
  step(0, kPrompt);
  for (Index t = kPrompt; t < T; ++t) step(t, 1);
  return out;
}

TEST(Concurrency, OneGqaLayerManySequences) {
  const AttentionConfig cfg = gqa_config();
  Rng rng(22);
  const GroupedQueryAttention<float> layer(cfg, testing::random_gqa_weights<float>(cfg, rng));
  std::vector<Matrix<float>> inputs, expected;
  for (int i = 0; i < kThreads; ++i) {
    inputs.push_back(rng.normal<float>(kPrompt + kDecode, cfg.hidden_size));
    expected.push_back(run_gqa(layer, inputs[i], 5 * i, i % 2 == 1));
  }
  for (int round = 0; round < 2; ++round) {
    std::vector<Matrix<float>> got(kThreads);
    run_concurrently(kThreads, [&](int i) { got[i] = run_gqa(layer, inputs[i], 5 * i, i % 2 == 1); });
    for (int i = 0; i < kThreads; ++i) {
      ASSERT_TRUE(expected[i].allFinite());
      EXPECT_TRUE(bitwise_equal(got[i], expected[i])) << "thread " << i << " round " << round;
    }
  }
}

TEST(Concurrency, OneCheckpointLoadsLayersInManyThreads) {
  // Checkpoint's const members may be called concurrently: shards open lazily under its mutex.
  const io::Checkpoint ckpt(testing::reference_dir() / "deepseek_v3_tiny");
  const MlaConfig cfg = io::parse_mla_config(ckpt.config());
  std::vector<Matrix<float>> kv_b(kThreads);
  run_concurrently(kThreads, [&](int i) {
    const auto layer = io::load_mla_layer<float>(ckpt, cfg, 0);
    kv_b[i] = layer.weights().kv_b_proj.weight;
  });
  EXPECT_EQ(ckpt.num_open_shards(), 1u);
  for (int i = 1; i < kThreads; ++i) EXPECT_TRUE(bitwise_equal(kv_b[i], kv_b[0])) << i;
  EXPECT_EQ(kv_b[0].rows(), cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim));
}

TEST(Concurrency, SharedThreadPoolSerialisesKernelCalls) {
  // "One pool serves one parallel_for at a time (calls from several threads are serialised)":
  // several threads call the absorbed kernel through one 2-thread pool; each result must equal
  // the same call made alone.
  ThreadPool pool(2);
  kernels::AbsorbedAttentionShape shape;
  shape.q_len = 1;
  shape.num_heads = 16;
  shape.kv_lora = 64;
  shape.rope = 16;
  shape.cache_len = 100;  // >= 2 x 32 rows: split over both pool threads
  shape.row_stride = 80;
  Rng rng(23);
  const Matrix<float> cache = rng.normal<float>(shape.cache_len, shape.row_stride);
  std::vector<Matrix<float>> q_lat, q_pe, expected;
  for (int i = 0; i < kThreads; ++i) {
    q_lat.push_back(rng.normal<float>(shape.num_heads, shape.kv_lora));
    q_pe.push_back(rng.normal<float>(shape.num_heads, shape.rope));
    expected.emplace_back(shape.num_heads, shape.kv_lora);
    kernels::DecodeWorkspace ws;
    kernels::absorbed_attention(shape, q_lat[i].data(), q_pe[i].data(), cache.data(), 0.125f,
                                expected[i].data(), nullptr, ws, &pool);
  }
  std::vector<Matrix<float>> got(kThreads, Matrix<float>(shape.num_heads, shape.kv_lora));
  run_concurrently(kThreads, [&](int i) {
    kernels::DecodeWorkspace ws;
    for (int rep = 0; rep < 3; ++rep)
      kernels::absorbed_attention(shape, q_lat[i].data(), q_pe[i].data(), cache.data(), 0.125f,
                                  got[i].data(), nullptr, ws, &pool);
  });
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_TRUE(expected[i].allFinite());
    EXPECT_TRUE(bitwise_equal(got[i], expected[i])) << "thread " << i;
  }
}

TEST(Concurrency, ThreadPoolRunsEveryTaskOnceWhetherWorkersSpinOrSleep) {
  // Workers poll for a while after each job, then block (threading.hpp, kSpinMicros). Calls back
  // to back reach polling workers; calls after a pause reach sleeping ones; task counts below,
  // at and above the thread count leave some workers without a task. Every task must run exactly
  // once per call, and a call must not return before all its tasks have finished.
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    std::vector<std::atomic<int>> runs(64);
    for (int call = 0; call < 60; ++call) {
      const Index n_tasks = 1 + (call * 7) % 40;
      for (auto& r : runs) r.store(0);
      pool.parallel_for(n_tasks, [&](Index task, int thread) {
        ASSERT_GE(thread, 0);
        ASSERT_LT(thread, threads);
        runs[std::size_t(task)].fetch_add(1);
      });
      for (Index t = 0; t < Index(runs.size()); ++t)
        ASSERT_EQ(runs[std::size_t(t)].load(), t < n_tasks ? 1 : 0) << "call " << call << " task " << t;
      if (call % 10 == 9) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // workers block
    }
  }
}

}  // namespace
}  // namespace mla
