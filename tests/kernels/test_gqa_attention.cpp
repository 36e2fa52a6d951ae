// Tests for the fast MHA / GQA decode kernel against the double-precision reference loops: a sweep
// of head layouts (MHA, GQA, MQA), q_len 1 .. 4, cache lengths around the 64-row tile and the split
// boundaries, head widths that are not multiples of the SIMD width, float and bf16 caches, 1 and 2
// threads, the AVX2 and the forced portable path; plus huge logits, identical scores, padded head
// strides, argument checks and a count of heap allocations per call.
#include "mla/kernels/decode_engine.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "mla/core/threading.hpp"
#include "mla/reference/attention.hpp"

#include "support/compare.hpp"
#include "support/alloc_counter.hpp"

namespace {

using mla::Index;
using mla::bfloat16;
using mla::kernels::GqaAttentionShape;
using mla::kernels::DecodeWorkspace;
using mla::kernels::KernelPath;

struct Inputs {
  GqaAttentionShape shape;
  std::vector<float> q, k_f, v_f;
  std::vector<bfloat16> k_b, v_b;
};

// capacity_pad extra rows per head (head stride > cache_len * dim), as in a real cache.
Inputs make_inputs(Index q_len, Index heads, Index kv_heads, Index head_dim, Index v_dim,
                   Index cache_len, Index capacity_pad, unsigned seed) {
  Inputs in;
  GqaAttentionShape& s = in.shape;
  s.q_len = q_len;
  s.num_heads = heads;
  s.num_kv_heads = kv_heads;
  s.head_dim = head_dim;
  s.v_dim = v_dim;
  s.cache_len = cache_len;
  s.k_head_stride = (cache_len + capacity_pad) * head_dim;
  s.v_head_stride = (cache_len + capacity_pad) * v_dim;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  in.q.resize(std::size_t(q_len * heads * head_dim));
  for (float& x : in.q) x = u(rng);
  // The last head ends at row cache_len: reading past the last valid row leaves the buffer.
  const std::size_t nk = std::size_t((kv_heads - 1) * s.k_head_stride + cache_len * head_dim);
  const std::size_t nv = std::size_t((kv_heads - 1) * s.v_head_stride + cache_len * v_dim);
  in.k_f.resize(nk);
  in.k_b.resize(nk);
  in.v_f.resize(nv);
  in.v_b.resize(nv);
  for (std::size_t i = 0; i < nk; ++i) {
    in.k_f[i] = u(rng);
    in.k_b[i] = bfloat16(u(rng));
  }
  for (std::size_t i = 0; i < nv; ++i) {
    in.v_f[i] = u(rng);
    in.v_b[i] = bfloat16(u(rng));
  }
  return in;
}

using mla::testing::rel_err;

template <class T>
struct Cache;
template <>
struct Cache<float> {
  static const float* k(const Inputs& in) { return in.k_f.data(); }
  static const float* v(const Inputs& in) { return in.v_f.data(); }
};
template <>
struct Cache<bfloat16> {
  static const bfloat16* k(const Inputs& in) { return in.k_b.data(); }
  static const bfloat16* v(const Inputs& in) { return in.v_b.data(); }
};

template <class T>
void check_case(const Inputs& in, float scale, mla::ThreadPool* pool2, float tol = 1e-5f) {
  const GqaAttentionShape& s = in.shape;
  const std::size_t rows = std::size_t(s.q_len * s.num_heads);
  std::vector<float> ref(rows * std::size_t(s.v_dim));
  std::vector<float> ref_lse(rows);
  mla::reference::gqa_attention(s, in.q.data(), Cache<T>::k(in), Cache<T>::v(in), scale, ref.data(),
                                ref_lse.data());
  mla::ThreadPool pool1(1);
  DecodeWorkspace ws;
  for (KernelPath path : mla::kernels::available_paths()) {
    for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool1, pool2}) {
      std::vector<float> out(ref.size(), NAN), lse(rows, NAN);
      mla::kernels::gqa_attention(s, in.q.data(), Cache<T>::k(in), Cache<T>::v(in), scale, out.data(),
                                  lse.data(), ws, pool, path);
      const std::string what = ::testing::PrintToString(std::vector<Index>{
          s.q_len, s.num_heads, s.num_kv_heads, s.head_dim, s.v_dim, s.cache_len,
          s.k_head_stride, mla::num_threads(pool), Index(path)});
      ASSERT_LE(rel_err(out, ref), tol)
          << "q_len, heads, kv_heads, head_dim, v_dim, L, k_head_stride, threads, path = " << what;
      for (std::size_t i = 0; i < rows; ++i)
        ASSERT_NEAR(lse[i], ref_lse[i], 1e-5f * std::max(1.0f, std::abs(ref_lse[i]))) << "lse " << i << " " << what;
    }
  }
}

struct Heads {
  Index heads, kv_heads;
};

TEST(GqaAttention, MatchesReferenceSweep) {
  mla::ThreadPool pool2(2);
  // MHA, GQA (group 3, 4, 7, 8), MQA, odd kv head counts (threads do not divide them: split-KV).
  // group * q_len >= 6 query rows per kv head run the packed form, fewer the row-streaming form;
  // 7 and 12 rows leave partly filled 8-row panels.
  const Heads hs[] = {{1, 1}, {4, 4}, {6, 2}, {8, 2}, {3, 1}, {9, 3}, {7, 1}, {16, 2}};
  // Tiles of the row form are 96 cache rows for a float cache and 48 for bf16: one full tile,
  // one row either side of 96, and lengths that end in a partial tile.
  const Index lens[] = {1, 2, 7, 48, 95, 96, 97, 300, 1000};
  const std::pair<Index, Index> dims[] = {{20, 20}, {13, 29}, {64, 64}, {128, 128}};
  unsigned seed = 1;
  for (auto [head_dim, v_dim] : dims)
    for (const Heads& h : hs)
      for (Index q_len = 1; q_len <= 4; ++q_len)
        for (Index len : lens) {
          if (len < q_len) continue;
          // Keep the double reference quick: the widest heads on fewer combinations.
          if (head_dim >= 64 && (q_len == 2 || q_len == 3 || len == 1000 || h.heads > 6)) continue;
          const Inputs in = make_inputs(q_len, h.heads, h.kv_heads, head_dim, v_dim, len,
                                        seed % 2 == 0 ? 3 : 0, seed);
          ++seed;
          check_case<float>(in, 0.25f, &pool2);
          check_case<bfloat16>(in, 0.25f, &pool2);
        }
}

TEST(GqaAttention, HugeLogitsStayFinite) {
  mla::ThreadPool pool2(2);
  const Inputs in = make_inputs(2, 8, 2, 24, 24, 300, 0, 7);
  check_case<float>(in, 1e4f, &pool2);
  check_case<bfloat16>(in, 1e4f, &pool2);
}

TEST(GqaAttention, IdenticalScoresGiveTheMeanRow) {
  const Index q_len = 3, heads = 4, kv_heads = 2, dim = 12, len = 150;
  Inputs in = make_inputs(q_len, heads, kv_heads, dim, dim, len, 0, 9);
  std::fill(in.q.begin(), in.q.end(), 0.0f);
  mla::ThreadPool pool2(2);
  for (KernelPath path : mla::kernels::available_paths())
    for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool2}) {
      DecodeWorkspace ws;
      std::vector<float> out(std::size_t(q_len * heads * dim)), lse(std::size_t(q_len * heads));
      mla::kernels::gqa_attention(in.shape, in.q.data(), in.k_f.data(), in.v_f.data(), 1.0f,
                                  out.data(), lse.data(), ws, pool, path);
      for (Index t = 0; t < q_len; ++t)
        for (Index h = 0; h < heads; ++h) {
          const Index visible = len - q_len + t + 1;
          const Index kvh = h / (heads / kv_heads);
          EXPECT_NEAR(lse[std::size_t(t * heads + h)], std::log(double(visible)), 1e-5);
          for (Index d = 0; d < dim; ++d) {
            double mean = 0.0;
            for (Index j = 0; j < visible; ++j)
              mean += in.v_f[std::size_t(kvh * in.shape.v_head_stride + j * dim + d)];
            mean /= double(visible);
            EXPECT_NEAR(out[std::size_t((t * heads + h) * dim + d)], mean, 1e-5);
          }
        }
    }
}

TEST(GqaAttention, NoAllocationWithReservedWorkspace) {
  mla::ThreadPool pool2(2);
  const Inputs in = make_inputs(2, 6, 3, 128, 128, 500, 0, 5);
  DecodeWorkspace ws(in.shape, 2);
  const std::size_t bytes = ws.bytes();
  std::vector<float> out(std::size_t(2 * 6 * 128)), lse(12);
  for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool2})
    for (KernelPath path : mla::kernels::available_paths()) {
      g_allocs = 0;
      g_count_allocs = true;
      mla::kernels::gqa_attention(in.shape, in.q.data(), in.k_f.data(), in.v_f.data(), 0.1f,
                                  out.data(), lse.data(), ws, pool, path);
      mla::kernels::gqa_attention(in.shape, in.q.data(), in.k_b.data(), in.v_b.data(), 0.1f,
                                  out.data(), lse.data(), ws, pool, path);
      g_count_allocs = false;
      EXPECT_EQ(g_allocs.load(), 0) << "threads " << mla::num_threads(pool);
    }
  EXPECT_EQ(ws.bytes(), bytes);
}

TEST(GqaAttention, RejectsBadShapes) {
  const Inputs in = make_inputs(1, 4, 2, 8, 8, 10, 0, 3);
  DecodeWorkspace ws;
  std::vector<float> out(32);
  auto call = [&](GqaAttentionShape s) {
    mla::kernels::gqa_attention(s, in.q.data(), in.k_f.data(), in.v_f.data(), 1.0f, out.data(),
                                nullptr, ws);
  };
  GqaAttentionShape s = in.shape;
  s.num_kv_heads = 3;  // 4 heads do not split into 3 groups
  EXPECT_THROW(call(s), std::invalid_argument);
  s = in.shape;
  s.q_len = 11;
  EXPECT_THROW(call(s), std::invalid_argument);
  s = in.shape;
  s.k_head_stride = 8 * 9;  // shorter than cache_len rows
  EXPECT_THROW(call(s), std::invalid_argument);
  try {
    s = in.shape;
    s.num_kv_heads = 3;
    call(s);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("num_heads (4)"), std::string::npos) << e.what();
  }
}

// ---- The AMX-BF16 path (KernelPath::kAmx, bf16 cache): see amx_attention.hpp ----

template <class Check>
void for_each_amx_run(const Inputs& in, float scale, Check&& check) {
  mla::ThreadPool pool1(1), pool2(2);
  DecodeWorkspace ws;
  const std::size_t rows = std::size_t(in.shape.q_len * in.shape.num_heads);
  for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool1, &pool2}) {
    std::vector<float> out(rows * std::size_t(in.shape.v_dim), NAN), lse(rows, NAN);
    mla::kernels::gqa_attention(in.shape, in.q.data(), in.k_b.data(), in.v_b.data(), scale,
                                out.data(), lse.data(), ws, pool, KernelPath::kAmx);
    const GqaAttentionShape& s = in.shape;
    check(out, lse, ::testing::PrintToString(std::vector<Index>{
                        s.q_len, s.num_heads, s.num_kv_heads, s.head_dim, s.v_dim, s.cache_len,
                        Index(mla::num_threads(pool))}));
  }
}

// Integer base-2 scores (a query of 0s and 1s times scale * log2 e = 1, K and V in {-1, 0, 1}):
// every weight is a power of two and nothing is rounded, so the AMX path must match the float64
// reference to float accuracy.
TEST(GqaAttentionAmx, ExactWhenWeightsArePowersOfTwo) {
  if (!mla::kernels::path_available(KernelPath::kAmx)) GTEST_SKIP() << "no AMX-BF16 on this CPU";
  const float scale = 1.0f / 1.4426950408889634f;
  const Heads hs[] = {{1, 1}, {4, 4}, {8, 2}, {9, 3}, {16, 2}, {64, 8}};
  const Index lens[] = {1, 2, 31, 33, 255, 256, 257, 700};
  const std::pair<Index, Index> dims[] = {{20, 20}, {13, 29}, {128, 128}};
  unsigned seed = 700;
  for (auto [head_dim, v_dim] : dims)
    for (const Heads& h : hs)
      for (Index q_len : {1, 3})
        for (Index len : lens) {
          if (len < q_len || (h.heads > 16 && head_dim != 128)) continue;
          Inputs in = make_inputs(q_len, h.heads, h.kv_heads, head_dim, v_dim, len, seed % 2 == 0 ? 3 : 0, seed);
          ++seed;
          std::mt19937 rng(seed);
          std::uniform_int_distribution<int> pick(-1, 1);
          for (float& x : in.q) x = 0.0f;
          for (Index r = 0; r < q_len * h.heads; ++r)
            for (int i = 0; i < 6; ++i) in.q[std::size_t(r * head_dim) + rng() % std::uint32_t(head_dim)] = 1.0f;
          for (auto& x : in.k_b) x = bfloat16(float(pick(rng)));
          for (auto& x : in.v_b) x = bfloat16(float(pick(rng)));
          const std::size_t rows = std::size_t(q_len * h.heads);
          std::vector<float> ref(rows * std::size_t(v_dim)), ref_lse(rows);
          mla::reference::gqa_attention(in.shape, in.q.data(), in.k_b.data(), in.v_b.data(), scale,
                                        ref.data(), ref_lse.data());
          for_each_amx_run(in, scale, [&](const std::vector<float>& out, const std::vector<float>& lse, const std::string& what) {
            ASSERT_LE(rel_err(out, ref), 1e-5f) << what;
            for (std::size_t i = 0; i < rows; ++i)
              ASSERT_NEAR(lse[i], ref_lse[i], 1e-5f * std::max(1.0f, std::abs(ref_lse[i]))) << "lse " << i << " " << what;
          });
        }
}

// Random data, the query's bf16 rounding reproduced in the reference's input: what remains is
// each weight's rounding to bf16, |o~ - o| <= ((1 + u') / (1 - u') - 1) max|v| with u' = 2^-8 +
// 3e-6 (exp2 polynomial), and the log-sum-exp within -log(1 - u').
TEST(GqaAttentionAmx, WithinTheBoundOfBf16Weights) {
  if (!mla::kernels::path_available(KernelPath::kAmx)) GTEST_SKIP() << "no AMX-BF16 on this CPU";
  const Heads hs[] = {{1, 1}, {8, 2}, {9, 3}, {64, 8}};
  const Index lens[] = {1, 7, 97, 300, 1000};
  const std::pair<Index, Index> dims[] = {{13, 29}, {128, 128}};
  const float u = 1.0f / 256.0f + 3e-6f;
  const float bound = (1.0f + u) / (1.0f - u) - 1.0f;
  unsigned seed = 800;
  for (auto [head_dim, v_dim] : dims)
    for (const Heads& h : hs)
      for (Index q_len : {1, 2})
        for (Index len : lens) {
          if (len < q_len) continue;
          const Inputs in = make_inputs(q_len, h.heads, h.kv_heads, head_dim, v_dim, len, 0, seed++);
          const float scale = 1.0f / std::sqrt(float(head_dim));
          const float qscale = scale * 1.4426950408889634f;
          std::vector<float> q_rounded = in.q;
          for (float& x : q_rounded) x = float(bfloat16(x * qscale)) / qscale;
          const std::size_t rows = std::size_t(q_len * h.heads);
          std::vector<float> ref(rows * std::size_t(v_dim)), ref_lse(rows);
          mla::reference::gqa_attention(in.shape, q_rounded.data(), in.k_b.data(), in.v_b.data(),
                                        scale, ref.data(), ref_lse.data());
          float max_v = 0.0f;
          for (bfloat16 x : in.v_b) max_v = std::max(max_v, std::abs(float(x)));
          for_each_amx_run(in, scale, [&](const std::vector<float>& out, const std::vector<float>& lse, const std::string& what) {
            for (std::size_t i = 0; i < out.size(); ++i)
              ASSERT_LE(std::abs(out[i] - ref[i]), bound * max_v + 1e-5f * max_v) << "element " << i << " of " << what;
            for (std::size_t i = 0; i < rows; ++i)
              ASSERT_NEAR(lse[i], ref_lse[i], -std::log1p(-u) + 1e-5f * std::max(1.0f, std::abs(ref_lse[i])))
                  << "lse " << i << " " << what;
          });
        }
}

TEST(GqaAttentionAmx, FloatCacheAndNoAllocation) {
  if (!mla::kernels::path_available(KernelPath::kAmx)) GTEST_SKIP() << "no AMX-BF16 on this CPU";
  mla::ThreadPool pool2(2);
  const Inputs in = make_inputs(2, 16, 2, 128, 128, 700, 0, 9);
  DecodeWorkspace ws(in.shape, 2);
  const std::size_t bytes = ws.bytes();
  std::vector<float> a(std::size_t(2 * 16 * 128)), b(a.size()), lse(32);
  // kAmx leaves a float cache to the AVX2 kernels: the same result bit for bit.
  mla::kernels::gqa_attention(in.shape, in.q.data(), in.k_f.data(), in.v_f.data(), 0.1f, a.data(),
                              nullptr, ws, nullptr, KernelPath::kAmx);
  mla::kernels::gqa_attention(in.shape, in.q.data(), in.k_f.data(), in.v_f.data(), 0.1f, b.data(),
                              nullptr, ws, nullptr, KernelPath::kAvx512);
  EXPECT_EQ(a, b);
  for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool2}) {
    g_allocs = 0;
    g_count_allocs = true;
    mla::kernels::gqa_attention(in.shape, in.q.data(), in.k_b.data(), in.v_b.data(), 0.1f, a.data(),
                                lse.data(), ws, pool, KernelPath::kAmx);
    g_count_allocs = false;
    EXPECT_EQ(g_allocs.load(), 0) << "threads " << mla::num_threads(pool);
  }
  EXPECT_EQ(ws.bytes(), bytes);
}

}  // namespace
