// Determinism. For a fixed kernel thread count, results are bitwise repeatable: the pool hands
// tasks out dynamically, but each task's result depends only on the task index (threading.hpp)
// and the split-KV partial results are merged in split order by one thread. Across thread counts
// they agree within float tolerance but not bitwise: the decode kernels split the cache rows
// into min(threads, L / 32) ranges [L s / splits, L (s+1) / splits) (the GQA kernel only when
// num_kv_heads is not a multiple of the thread count), each range keeps its own running max and
// sum, and a log-sum-exp combine merges them, so the order of the float additions depends on the
// thread count. A null pool and a 1-thread pool are the same computation.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "mla/core/threading.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"
#include "mla/presets.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using testing::positions_from;
using testing::rel_max_err;
using testing::Rng;

template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(typename A::Scalar) * a.size()) == 0;
}

constexpr int kRepeats = 4;
const int kThreadCounts[] = {0, 1, 2, 3, 4};  // 0 = no pool

/// A pool with `n` threads, or none for n = 0.
std::unique_ptr<ThreadPool> make_pool(int n) {
  return n == 0 ? nullptr : std::make_unique<ThreadPool>(n);
}

/// Runs `run(pool)` kRepeats times per thread count: bitwise equal within a thread count, within
/// `tol` of the single-threaded result across them, and the null and 1-thread pools identical.
template <class Run>
void check_determinism(const std::string& what, Run run, double tol) {
  Matrix<float> single;
  for (int n : kThreadCounts) {
    auto pool = make_pool(n);
    const Matrix<float> first = run(pool.get());
    ASSERT_TRUE(first.allFinite()) << what;
    for (int r = 1; r < kRepeats; ++r)
      EXPECT_TRUE(bitwise_equal(run(pool.get()), first))
          << what << ": repeat " << r << " with " << n << " threads differs";
    if (n == 0) {
      single = first;
    } else if (n == 1) {
      EXPECT_TRUE(bitwise_equal(first, single)) << what << ": 1-thread pool != no pool";
    } else {
      const double err = rel_max_err(first.cast<double>(), single.cast<double>());
      EXPECT_LE(err, tol) << what << ": " << n << " threads";
      std::printf("%s, %d threads vs 1: %s (max rel diff %.3g)\n", what.c_str(), n,
                  bitwise_equal(first, single) ? "bitwise equal" : "differs", err);
    }
  }
}

TEST(Determinism, AbsorbedKernelAcrossThreadCounts) {
  for (const Index cache_len : {Index(33), Index(300), Index(1000)}) {
    kernels::AbsorbedAttentionShape shape;
    shape.q_len = 2;
    shape.num_heads = 16;
    shape.kv_lora = 512;
    shape.rope = 64;
    shape.cache_len = cache_len;
    shape.row_stride = 576;
    Rng rng(31);
    const Matrix<float> q_lat = rng.normal<float>(shape.rows(), shape.kv_lora);
    const Matrix<float> q_pe = rng.normal<float>(shape.rows(), shape.rope);
    const Matrix<float> cache = rng.normal<float>(cache_len, shape.row_stride);
    Matrix<bfloat16> cache_b = cache.cast<bfloat16>();
    for (bool bf16 : {false, true}) {
      check_determinism(
          "absorbed L=" + std::to_string(cache_len) + (bf16 ? " bf16" : " float"),
          [&](ThreadPool* pool) {
            Matrix<float> out(shape.rows(), shape.kv_lora);
            kernels::DecodeWorkspace ws;
            if (bf16)
              kernels::absorbed_attention(shape, q_lat.data(), q_pe.data(), cache_b.data(), 0.07f,
                                          out.data(), nullptr, ws, pool);
            else
              kernels::absorbed_attention(shape, q_lat.data(), q_pe.data(), cache.data(), 0.07f,
                                          out.data(), nullptr, ws, pool);
            return out;
          },
          2e-6);
    }
  }
}

TEST(Determinism, GqaKernelAcrossThreadCounts) {
  // 3 KV heads: not a multiple of 2 or 4 threads, so the cache rows are split too.
  for (const Index kv_heads : {Index(3), Index(4)}) {
    kernels::GqaAttentionShape shape;
    shape.q_len = 3;
    shape.num_heads = 4 * kv_heads;
    shape.num_kv_heads = kv_heads;
    shape.head_dim = 128;
    shape.v_dim = 128;
    shape.cache_len = 700;
    shape.k_head_stride = shape.cache_len * shape.head_dim;
    shape.v_head_stride = shape.cache_len * shape.v_dim;
    Rng rng(32);
    const Matrix<float> q = rng.normal<float>(shape.q_len * shape.num_heads, shape.head_dim);
    const Matrix<float> k = rng.normal<float>(kv_heads * shape.cache_len, shape.head_dim);
    const Matrix<float> v = rng.normal<float>(kv_heads * shape.cache_len, shape.v_dim);
    check_determinism(
        "gqa kv_heads=" + std::to_string(kv_heads),
        [&](ThreadPool* pool) {
          Matrix<float> out(shape.q_len * shape.num_heads, shape.v_dim);
          kernels::DecodeWorkspace ws;
          kernels::gqa_attention(shape, q.data(), k.data(), v.data(), 0.088f, out.data(), nullptr,
                                 ws, pool);
          return out;
        },
        2e-6);
  }
}

MlaConfig mla_config() {
  MlaConfig c = presets::deepseek_v3();  // V3 attention dims, 16 heads, small hidden size
  c.hidden_size = 128;
  c.num_attention_heads = 16;
  c.q_lora_rank = 64;
  c.max_position_embeddings = 1024;
  return c;
}

TEST(Determinism, MlaLayerDecodeRepeatsBitwiseForEachThreadCount) {
  const MlaConfig cfg = mla_config();
  Rng rng(33);
  const MultiHeadLatentAttention<float> layer(cfg, testing::random_mla_weights<float>(cfg, rng));
  const Index prompt = 150, decode = 4;
  const Matrix<float> x = rng.normal<float>(prompt + decode, cfg.hidden_size);
  for (bool bf16 : {false, true}) {
    check_determinism(
        std::string("mla layer absorbed decode, ") + (bf16 ? "bf16" : "float") + " cache",
        [&](ThreadPool* pool) {
          Workspace ws;
          ws.set_thread_pool(pool);
          Matrix<float> out(decode, cfg.hidden_size);
          auto run = [&](auto& cache) {
            Matrix<float> p(prompt, cfg.hidden_size);
            layer.forward(x.topRows(prompt), positions_from(0, prompt), cache, p, ws);
            for (Index t = 0; t < decode; ++t)
              layer.forward(x.middleRows(prompt + t, 1), positions_from(prompt + t, 1), cache,
                            out.middleRows(t, 1), ws, MlaPath::kAbsorbed);
          };
          if (bf16) {
            auto cache = layer.make_latent_cache<bfloat16>(prompt + decode);
            run(cache);
          } else {
            auto cache = layer.make_latent_cache<float>(prompt + decode);
            run(cache);
          }
          return out;
        },
        1e-5);
  }
}

TEST(Determinism, GqaLayerDecodeRepeatsBitwiseForEachThreadCount) {
  AttentionConfig cfg = presets::qwen2_5_32b();  // 40 query heads over 8 KV heads of 128
  cfg.hidden_size = 256;
  cfg.max_position_embeddings = 1024;
  cfg.num_key_value_heads = 5;  // not a multiple of 2, 3 or 4 threads: split-KV
  Rng rng(34);
  const GroupedQueryAttention<float> layer(cfg, testing::random_gqa_weights<float>(cfg, rng));
  const Index prompt = 200, decode = 3;
  const Matrix<float> x = rng.normal<float>(prompt + decode, cfg.hidden_size);
  check_determinism(
      "gqa layer decode",
      [&](ThreadPool* pool) {
        Workspace ws;
        ws.set_thread_pool(pool);
        auto cache = layer.make_cache<float>(prompt + decode);
        Matrix<float> p(prompt, cfg.hidden_size), out(decode, cfg.hidden_size);
        layer.forward(x.topRows(prompt), positions_from(0, prompt), cache, p, ws);
        for (Index t = 0; t < decode; ++t)
          layer.forward(x.middleRows(prompt + t, 1), positions_from(prompt + t, 1), cache,
                        out.middleRows(t, 1), ws);
        return out;
      },
      1e-5);
}

TEST(Determinism, DoubleLayersRepeatBitwise) {
  // The generic (Eigen) path of every scalar type: no threads, a fixed evaluation order.
  const MlaConfig cfg = mla_config();
  Rng rng(35);
  const MultiHeadLatentAttention<double> layer(cfg, testing::random_mla_weights<double>(cfg, rng));
  const Matrix<double> x = rng.normal<double>(20, cfg.hidden_size);
  Matrix<double> first;
  for (int r = 0; r < kRepeats; ++r) {
    for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
      auto cache = layer.make_latent_cache(20);
      Matrix<double> y = layer.forward(x.topRows(12), positions_from(0, 12), cache, path);
      Matrix<double> all(20, cfg.hidden_size);
      all.topRows(12) = y;
      for (Index t = 12; t < 20; ++t)
        all.row(t) = layer.forward(x.middleRows(t, 1), positions_from(t, 1), cache, path);
      if (r == 0 && path == MlaPath::kAbsorbed) first = all;
      if (path == MlaPath::kAbsorbed) {
        EXPECT_TRUE(bitwise_equal(all, first)) << "repeat " << r;
      } else {
        EXPECT_LE(rel_max_err(all, first), 1e-12);  // another path: same function
      }
    }
  }
}

}  // namespace
}  // namespace mla
