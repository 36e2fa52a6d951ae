// Tests for the fast absorbed-MLA decode kernel against the double-precision reference loops:
// a sweep of shapes (query rows 1 .. 256, q_len 1 .. 4, cache lengths around the 64-row tile and
// the split boundaries, latent widths that are not multiples of the SIMD width), float and bf16
// caches, 1 and 2 threads, the AVX2 and the forced portable path; plus edge cases (huge logits,
// identical scores, a strided cache), argument checks, and a count of heap allocations per call.
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

#include "support/alloc_counter.hpp"

namespace {

using mla::Index;
using mla::bfloat16;
using mla::kernels::AbsorbedAttentionShape;
using mla::kernels::DecodeWorkspace;
using mla::kernels::KernelPath;

struct Inputs {
  AbsorbedAttentionShape shape;
  std::vector<float> q_lat, q_pe, cache_f;
  std::vector<bfloat16> cache_b;
};

Inputs make_inputs(Index q_len, Index heads, Index kv_lora, Index rope, Index cache_len,
                   Index stride_pad, unsigned seed) {
  Inputs in;
  in.shape.q_len = q_len;
  in.shape.num_heads = heads;
  in.shape.kv_lora = kv_lora;
  in.shape.rope = rope;
  in.shape.cache_len = cache_len;
  in.shape.row_stride = kv_lora + rope + stride_pad;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const Index m = in.shape.rows();
  in.q_lat.resize(std::size_t(m * kv_lora));
  in.q_pe.resize(std::size_t(m * rope));
  for (float& x : in.q_lat) x = u(rng);
  for (float& x : in.q_pe) x = u(rng);
  // Exactly cache_len rows: a read past the last valid row would leave the buffer (ASan-visible).
  const std::size_t n = std::size_t((cache_len - 1) * in.shape.row_stride + kv_lora + rope);
  in.cache_f.resize(n);
  in.cache_b.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    in.cache_b[i] = bfloat16(u(rng));
    in.cache_f[i] = u(rng);
  }
  return in;
}

float max_abs(const std::vector<float>& v) {
  float m = 0.0f;
  for (float x : v) m = std::max(m, std::abs(x));
  return m;
}

// Largest |a - b| relative to max|b| (b is the reference).
float rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  float e = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    e = std::max(e, std::abs(a[i] - b[i]));
  }
  return e / std::max(max_abs(b), 1e-30f);
}

template <class T>
const T* cache_of(const Inputs& in);
template <>
const float* cache_of<float>(const Inputs& in) { return in.cache_f.data(); }
template <>
const bfloat16* cache_of<bfloat16>(const Inputs& in) { return in.cache_b.data(); }

// Compares the fast kernel (both paths, null pool and 1/2-thread pools) with the reference.
template <class T>
void check_case(const Inputs& in, float scale, mla::ThreadPool* pool2, float tol = 1e-5f) {
  const Index m = in.shape.rows();
  std::vector<float> ref(std::size_t(m * in.shape.kv_lora));
  std::vector<float> ref_lse(static_cast<std::size_t>(m));
  mla::reference::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), cache_of<T>(in),
                                     scale, ref.data(), ref_lse.data());
  mla::ThreadPool pool1(1);
  DecodeWorkspace ws;
  for (KernelPath path : mla::kernels::available_paths()) {
    for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool1, pool2}) {
      std::vector<float> out(ref.size(), NAN), lse(std::size_t(m), NAN);
      mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), cache_of<T>(in),
                                       scale, out.data(), lse.data(), ws, pool, path);
      const std::string what = ::testing::PrintToString(
          std::vector<Index>{in.shape.q_len, in.shape.num_heads, in.shape.kv_lora, in.shape.rope,
                             in.shape.cache_len, in.shape.row_stride, mla::num_threads(pool),
                             Index(path)});
      ASSERT_LE(rel_err(out, ref), tol) << "q_len, heads, kv_lora, rope, L, stride, threads, path = " << what;
      for (Index i = 0; i < m; ++i)
        ASSERT_NEAR(lse[std::size_t(i)], ref_lse[std::size_t(i)], 1e-5f * std::max(1.0f, std::abs(ref_lse[std::size_t(i)])))
            << "lse row " << i << " of " << what;
    }
  }
}

struct QShape {
  Index q_len, heads;
};

TEST(AbsorbedAttention, MatchesReferenceSmallDims) {
  mla::ThreadPool pool2(2);
  // M = 1..256 rows: with the AVX-512 blocks (groups of up to 4 16-row panels, 6-row output
  // blocks) M = 5, 21, 40, 80 leave every panel-group and row-block remainder; kv_lora = 100
  // ends in a partial 64-column strip whose last vector is empty.
  const QShape qs[] = {{1, 1}, {1, 3}, {3, 1}, {1, 5}, {3, 7}, {1, 40}, {1, 80},
                       {1, 128}, {2, 64}, {4, 32}, {2, 128}};
  const Index lens[] = {1, 2, 7, 63, 64, 65, 300, 1000};
  const std::pair<Index, Index> dims[] = {{20, 6}, {64, 16}, {100, 12}};
  unsigned seed = 1;
  for (auto [kv_lora, rope] : dims)
    for (const QShape& q : qs)
      for (Index len : lens) {
        if (len < q.q_len) continue;
        // Big shapes only on a few lengths to keep the double reference fast.
        if (q.q_len * q.heads > 3 && kv_lora > 20 && len == 1000) continue;
        const Inputs in = make_inputs(q.q_len, q.heads, kv_lora, rope, len, seed % 3 == 0 ? 5 : 0, seed);
        ++seed;
        check_case<float>(in, 0.3f, &pool2);
        check_case<bfloat16>(in, 0.3f, &pool2);
      }
}

TEST(AbsorbedAttention, MatchesReferenceDeepSeekDims) {
  mla::ThreadPool pool2(2);
  const float scale = 1.0f / std::sqrt(192.0f);  // DeepSeek-V3 absorbed-path scale
  const QShape qs[] = {{1, 1}, {1, 3}, {1, 128}, {2, 64}};
  const Index lens[] = {1, 7, 65, 300};
  unsigned seed = 100;
  for (const QShape& q : qs)
    for (Index len : lens) {
      if (len < q.q_len) continue;
      const Inputs in = make_inputs(q.q_len, q.heads, 512, 64, len, 0, seed++);
      check_case<float>(in, scale, &pool2);
      check_case<bfloat16>(in, scale, &pool2);
    }
  const Inputs in = make_inputs(2, 128, 512, 64, 65, 0, seed++);
  check_case<float>(in, scale, &pool2);
}

TEST(AbsorbedAttention, HugeLogitsStayFinite) {
  // Scores of order 1e4: the softmax is (almost) one-hot, an unguarded exp would overflow.
  mla::ThreadPool pool2(2);
  const Inputs in = make_inputs(2, 8, 20, 6, 300, 0, 7);
  check_case<float>(in, 1e4f, &pool2);
  check_case<bfloat16>(in, 1e4f, &pool2);
}

TEST(AbsorbedAttention, IdenticalScoresGiveTheMeanRow) {
  // Zero query: every visible row has score 0, so o = mean of the visible c rows (exactly known).
  const Index len = 97, q_len = 2, heads = 3, kv_lora = 20, rope = 6;
  Inputs in = make_inputs(q_len, heads, kv_lora, rope, len, 0, 9);
  std::fill(in.q_lat.begin(), in.q_lat.end(), 0.0f);
  std::fill(in.q_pe.begin(), in.q_pe.end(), 0.0f);
  mla::ThreadPool pool2(2);
  for (KernelPath path : mla::kernels::available_paths())
    for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool2}) {
      DecodeWorkspace ws;
      std::vector<float> out(std::size_t(q_len * heads * kv_lora)), lse(std::size_t(q_len * heads));
      mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_f.data(),
                                       1.0f, out.data(), lse.data(), ws, pool, path);
      for (Index m = 0; m < q_len * heads; ++m) {
        const Index visible = len - q_len + m / heads + 1;
        EXPECT_NEAR(lse[std::size_t(m)], std::log(double(visible)), 1e-5);
        for (Index d = 0; d < kv_lora; ++d) {
          double mean = 0.0;
          for (Index j = 0; j < visible; ++j) mean += in.cache_f[std::size_t(j * in.shape.row_stride + d)];
          mean /= double(visible);
          EXPECT_NEAR(out[std::size_t(m * kv_lora + d)], mean, 1e-5) << "row " << m << " col " << d;
        }
      }
    }
}

TEST(AbsorbedAttention, OnlyVisibleRowsMatter) {
  // Causal rule: rows past L - q_len + token must not change token's output.
  const Index q_len = 3, heads = 4, len = 70;
  Inputs a = make_inputs(q_len, heads, 20, 6, len, 0, 11);
  Inputs b = a;
  const Index row = len - 1;  // visible only to the last token
  for (Index k = 0; k < 26; ++k) b.cache_f[std::size_t(row * b.shape.row_stride + k)] = 1e3f;
  DecodeWorkspace ws;
  std::vector<float> oa(std::size_t(q_len * heads * 20)), ob(oa.size());
  mla::kernels::absorbed_attention(a.shape, a.q_lat.data(), a.q_pe.data(), a.cache_f.data(), 0.5f,
                                   oa.data(), nullptr, ws);
  mla::kernels::absorbed_attention(b.shape, b.q_lat.data(), b.q_pe.data(), b.cache_f.data(), 0.5f,
                                   ob.data(), nullptr, ws);
  for (Index m = 0; m < q_len * heads; ++m)
    for (Index d = 0; d < 20; ++d) {
      const std::size_t i = std::size_t(m * 20 + d);
      if (m / heads < q_len - 1) {
        EXPECT_EQ(oa[i], ob[i]);
      }
    }
  EXPECT_NE(oa.back(), ob.back());
}

TEST(AbsorbedAttention, NoAllocationWithReservedWorkspace) {
  mla::ThreadPool pool2(2);
  const Inputs in = make_inputs(1, 128, 512, 64, 200, 0, 5);
  DecodeWorkspace ws(128, 512, 64, 2);
  const std::size_t bytes = ws.bytes();
  std::vector<float> out(std::size_t(128 * 512)), lse(128);
  for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool2}) {
    for (KernelPath path : mla::kernels::available_paths()) {
      g_allocs = 0;
      g_count_allocs = true;
      mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_f.data(),
                                       0.1f, out.data(), lse.data(), ws, pool, path);
      mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_b.data(),
                                       0.1f, out.data(), lse.data(), ws, pool, path);
      g_count_allocs = false;
      EXPECT_EQ(g_allocs.load(), 0) << "threads " << mla::num_threads(pool);
    }
  }
  EXPECT_EQ(ws.bytes(), bytes);
  // A workspace that is too small grows on the call, to what the call's plan needs.
  DecodeWorkspace small(1, 20, 6, 1);
  const std::size_t small_bytes = small.bytes();
  g_allocs = 0;
  g_count_allocs = true;
  mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_f.data(), 0.1f,
                                   out.data(), nullptr, small, &pool2);
  g_count_allocs = false;
  EXPECT_GE(g_allocs.load(), 1);
  EXPECT_GT(small.bytes(), small_bytes);
  EXPECT_GE(small.bytes(), std::size_t(small.plan().workspace_floats()) * sizeof(float));
  EXPECT_LE(small.bytes(), bytes);  // the reservation for this shape covered the call
}

TEST(AbsorbedAttention, RejectsBadShapes) {
  const Inputs in = make_inputs(1, 2, 20, 6, 10, 0, 3);
  DecodeWorkspace ws;
  std::vector<float> out(40);
  auto call = [&](AbsorbedAttentionShape s) {
    mla::kernels::absorbed_attention(s, in.q_lat.data(), in.q_pe.data(), in.cache_f.data(), 1.0f,
                                     out.data(), nullptr, ws);
  };
  AbsorbedAttentionShape s = in.shape;
  s.cache_len = 0;
  EXPECT_THROW(call(s), std::invalid_argument);
  s = in.shape;
  s.q_len = 11;  // more new tokens than cache rows
  EXPECT_THROW(call(s), std::invalid_argument);
  s = in.shape;
  s.row_stride = 25;
  EXPECT_THROW(call(s), std::invalid_argument);
  s = in.shape;
  s.num_heads = 0;
  EXPECT_THROW(call(s), std::invalid_argument);
  try {
    s = in.shape;
    s.row_stride = 25;
    call(s);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("row_stride (25)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(),
                                                static_cast<const float*>(nullptr), 1.0f, out.data(),
                                                nullptr, ws),
               std::invalid_argument);
}

TEST(AbsorbedAttention, RefusesAPathTheCpuLacks) {
  const Inputs in = make_inputs(1, 2, 20, 6, 10, 0, 3);
  DecodeWorkspace ws;
  std::vector<float> out(40);
  for (KernelPath path : {KernelPath::kAvx2, KernelPath::kAvx512, KernelPath::kAmx}) {
    auto call = [&] {
      mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_f.data(),
                                       1.0f, out.data(), nullptr, ws, nullptr, path);
    };
    if (mla::kernels::path_available(path))
      EXPECT_NO_THROW(call()) << mla::kernels::path_name(path);
    else
      EXPECT_THROW(call(), std::invalid_argument) << mla::kernels::path_name(path);
  }
}

// ---- The AMX-BF16 path (KernelPath::kAmx): bf16 query and weights, float accumulation ----

// Runs the AMX path over a bf16 cache on no pool, one thread and two threads.
template <class Check>
void for_each_amx_run(const Inputs& in, float scale, Check&& check) {
  mla::ThreadPool pool1(1), pool2(2);
  DecodeWorkspace ws;
  const Index m = in.shape.rows();
  for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool1, &pool2}) {
    std::vector<float> out(std::size_t(m * in.shape.kv_lora), NAN), lse(std::size_t(m), NAN);
    mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_b.data(),
                                     scale, out.data(), lse.data(), ws, pool, KernelPath::kAmx);
    check(out, lse, mla::num_threads(pool));
  }
}

std::string shape_text(const AbsorbedAttentionShape& s, int threads) {
  return ::testing::PrintToString(std::vector<Index>{s.q_len, s.num_heads, s.kv_lora, s.rope,
                                                     s.cache_len, s.row_stride, Index(threads)});
}

// Scores that are small integers in base 2 make every softmax weight a power of two, which bf16
// holds exactly, and a query of 0s and 1s (times scale * log2 e = 1) is exact in bf16 too. The
// AMX path then rounds nothing, and must match the float64 reference to float accuracy: this
// checks the staging, the tile products, the transposes and the chunk-to-chunk rescaling.
TEST(AbsorbedAttentionAmx, ExactWhenWeightsArePowersOfTwo) {
  if (!mla::kernels::path_available(KernelPath::kAmx)) GTEST_SKIP() << "no AMX-BF16 on this CPU";
  const float scale = 1.0f / 1.4426950408889634f;  // scale * log2 e rounds to 1 in bf16
  const QShape qs[] = {{1, 1}, {1, 5}, {3, 7}, {1, 40}, {1, 128}, {2, 64}, {2, 128}};
  const Index lens[] = {1, 2, 31, 33, 255, 256, 257, 700};
  const std::pair<Index, Index> dims[] = {{20, 6}, {100, 12}, {512, 64}};
  unsigned seed = 500;
  for (auto [kv_lora, rope] : dims)
    for (const QShape& q : qs)
      for (Index len : lens) {
        if (len < q.q_len || (q.q_len * q.heads > 40 && len > 300 && kv_lora < 512)) continue;
        Inputs in = make_inputs(q.q_len, q.heads, kv_lora, rope, len, seed % 3 == 0 ? 7 : 0, seed);
        ++seed;
        std::mt19937 rng(seed);
        std::uniform_int_distribution<int> pick(-1, 1);
        const Index k_dim = kv_lora + rope;
        // Six ones per query row: scores in [-6, 6], weights 2^-12 .. 1.
        for (Index m = 0; m < in.shape.rows(); ++m) {
          for (Index k = 0; k < kv_lora; ++k) in.q_lat[std::size_t(m * kv_lora + k)] = 0.0f;
          for (Index k = 0; k < rope; ++k) in.q_pe[std::size_t(m * rope + k)] = 0.0f;
          for (int i = 0; i < 6; ++i) {
            const Index k = Index(rng() % std::uint32_t(k_dim));
            if (k < kv_lora) in.q_lat[std::size_t(m * kv_lora + k)] = 1.0f;
            else in.q_pe[std::size_t(m * rope + k - kv_lora)] = 1.0f;
          }
        }
        for (auto& c : in.cache_b) c = bfloat16(float(pick(rng)));
        const Index m = in.shape.rows();
        std::vector<float> ref(std::size_t(m * kv_lora)), ref_lse(static_cast<std::size_t>(m));
        mla::reference::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(),
                                           in.cache_b.data(), scale, ref.data(), ref_lse.data());
        for_each_amx_run(in, scale, [&](const std::vector<float>& out, const std::vector<float>& lse, int threads) {
          ASSERT_LE(rel_err(out, ref), 1e-5f) << shape_text(in.shape, threads);
          for (Index i = 0; i < m; ++i)
            ASSERT_NEAR(lse[std::size_t(i)], ref_lse[std::size_t(i)], 1e-5f * std::max(1.0f, std::abs(ref_lse[std::size_t(i)])))
                << "lse row " << i << " of " << shape_text(in.shape, threads);
        });
      }
}

// Random data: the error must stay within what rounding the weights to bf16 allows. The query's
// rounding is reproduced in the reference's input (bf16 of q * scale * log2 e, as the kernel
// computes it), so what remains is each weight's relative error |rho_j| <= u = 2^-8 (plus 3e-6
// for the exp2 polynomial). Then o~ = sum_j w_j r_j c_j / sum_j w_j r_j with r_j in
// [1 - u', 1 + u'], so |o~ - o| <= ((1 + u') / (1 - u') - 1) max_j |c_j| ~ 2u' max|c|, and the
// log-sum-exp moves by at most -log(1 - u').
TEST(AbsorbedAttentionAmx, WithinTheBoundOfBf16Weights) {
  if (!mla::kernels::path_available(KernelPath::kAmx)) GTEST_SKIP() << "no AMX-BF16 on this CPU";
  const QShape qs[] = {{1, 1}, {1, 3}, {3, 7}, {1, 128}, {2, 64}};
  const Index lens[] = {1, 7, 65, 300, 1000};
  const std::pair<Index, Index> dims[] = {{20, 6}, {100, 12}, {512, 64}};
  const float u = 1.0f / 256.0f + 3e-6f;
  const float bound = (1.0f + u) / (1.0f - u) - 1.0f;
  unsigned seed = 900;
  for (auto [kv_lora, rope] : dims)
    for (const QShape& q : qs)
      for (Index len : lens) {
        if (len < q.q_len || (q.q_len * q.heads > 3 && kv_lora > 20 && len == 1000)) continue;
        const Inputs in = make_inputs(q.q_len, q.heads, kv_lora, rope, len, 0, seed++);
        const float scale = kv_lora == 512 ? 1.0f / std::sqrt(192.0f) : 0.3f;
        const float qscale = scale * 1.4426950408889634f;
        Inputs rounded = in;
        for (float& x : rounded.q_lat) x = float(bfloat16(x * qscale)) / qscale;
        for (float& x : rounded.q_pe) x = float(bfloat16(x * qscale)) / qscale;
        const Index m = in.shape.rows();
        std::vector<float> ref(std::size_t(m * kv_lora)), ref_lse(static_cast<std::size_t>(m));
        mla::reference::absorbed_attention(in.shape, rounded.q_lat.data(), rounded.q_pe.data(),
                                           in.cache_b.data(), scale, ref.data(), ref_lse.data());
        float max_c = 0.0f;
        for (bfloat16 c : in.cache_b) max_c = std::max(max_c, std::abs(float(c)));
        for_each_amx_run(in, scale, [&](const std::vector<float>& out, const std::vector<float>& lse, int threads) {
          for (std::size_t i = 0; i < out.size(); ++i)
            ASSERT_LE(std::abs(out[i] - ref[i]), bound * max_c + 1e-5f * max_c)
                << "element " << i << " of " << shape_text(in.shape, threads);
          for (Index i = 0; i < m; ++i)
            ASSERT_NEAR(lse[std::size_t(i)], ref_lse[std::size_t(i)], -std::log1p(-u) + 1e-5f * std::max(1.0f, std::abs(ref_lse[std::size_t(i)])))
                << "lse row " << i << " of " << shape_text(in.shape, threads);
        });
      }
}

TEST(AbsorbedAttentionAmx, IdenticalScoresGiveTheMeanRow) {
  if (!mla::kernels::path_available(KernelPath::kAmx)) GTEST_SKIP() << "no AMX-BF16 on this CPU";
  // Zero query: every weight is exactly 1 (no rounding), o = mean of the visible rows.
  const Index len = 300, q_len = 2, heads = 24, kv_lora = 100, rope = 12;
  Inputs in = make_inputs(q_len, heads, kv_lora, rope, len, 3, 13);
  std::fill(in.q_lat.begin(), in.q_lat.end(), 0.0f);
  std::fill(in.q_pe.begin(), in.q_pe.end(), 0.0f);
  for_each_amx_run(in, 1.0f, [&](const std::vector<float>& out, const std::vector<float>& lse, int threads) {
    for (Index m = 0; m < q_len * heads; ++m) {
      const Index visible = len - q_len + m / heads + 1;
      ASSERT_NEAR(lse[std::size_t(m)], std::log(double(visible)), 1e-5) << threads;
      for (Index d = 0; d < kv_lora; ++d) {
        double mean = 0.0;
        for (Index j = 0; j < visible; ++j) mean += float(in.cache_b[std::size_t(j * in.shape.row_stride + d)]);
        mean /= double(visible);
        ASSERT_NEAR(out[std::size_t(m * kv_lora + d)], mean, 1e-5) << "row " << m << " col " << d << " threads " << threads;
      }
    }
  });
}

TEST(AbsorbedAttentionAmx, FloatCacheRunsTheAvx512Path) {
  if (!mla::kernels::path_available(KernelPath::kAmx)) GTEST_SKIP() << "no AMX-BF16 on this CPU";
  // kAmx changes only bf16 caches: a float cache gives the AVX-512 result bit for bit.
  const Inputs in = make_inputs(1, 128, 512, 64, 300, 0, 21);
  DecodeWorkspace ws;
  std::vector<float> a(std::size_t(128 * 512)), b(a.size());
  mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_f.data(), 0.07f,
                                   a.data(), nullptr, ws, nullptr, KernelPath::kAmx);
  mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_f.data(), 0.07f,
                                   b.data(), nullptr, ws, nullptr, KernelPath::kAvx512);
  EXPECT_EQ(a, b);
}

TEST(AbsorbedAttentionAmx, NoAllocationWithReservedWorkspace) {
  if (!mla::kernels::path_available(KernelPath::kAmx)) GTEST_SKIP() << "no AMX-BF16 on this CPU";
  mla::ThreadPool pool2(2);
  const Inputs in = make_inputs(1, 128, 512, 64, 700, 0, 5);
  DecodeWorkspace ws(128, 512, 64, 2);
  const std::size_t bytes = ws.bytes();
  std::vector<float> out(std::size_t(128 * 512)), lse(128);
  // The first call may ask the OS for the tile state; count from the second.
  mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_b.data(), 0.1f,
                                   out.data(), lse.data(), ws, &pool2, KernelPath::kAmx);
  for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), &pool2}) {
    g_allocs = 0;
    g_count_allocs = true;
    mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(), in.cache_b.data(),
                                     0.1f, out.data(), lse.data(), ws, pool, KernelPath::kAmx);
    g_count_allocs = false;
    EXPECT_EQ(g_allocs.load(), 0) << "threads " << mla::num_threads(pool);
  }
  EXPECT_EQ(ws.bytes(), bytes);
}

TEST(ThreadPool, RunsEveryTaskOnceOnValidThreads) {
  for (int threads : {1, 2, 3}) {
    mla::ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (Index n : {0, 1, 2, 5, 100}) {
      std::vector<std::atomic<int>> hits(std::size_t(n > 0 ? n : 1));
      std::atomic<bool> bad_thread{false};
      mla::parallel_for(&pool, n, [&](Index task, int thread) {
        hits[std::size_t(task)].fetch_add(1);
        if (thread < 0 || thread >= threads) bad_thread = true;
      });
      for (Index i = 0; i < n; ++i) EXPECT_EQ(hits[std::size_t(i)].load(), 1);
      EXPECT_FALSE(bad_thread.load());
    }
  }
  EXPECT_THROW(mla::ThreadPool(0), std::invalid_argument);
}

TEST(ThreadPool, InlineRunsAllocateNothing) {
  mla::ThreadPool pool1(1), pool2(2);
  long sum = 0;
  g_allocs = 0;
  g_count_allocs = true;
  mla::parallel_for(nullptr, 10, [&](Index task, int) { sum += task; });
  mla::parallel_for(&pool1, 10, [&](Index task, int) { sum += task; });
  std::atomic<long> asum{0};
  mla::parallel_for(&pool2, 10, [&](Index task, int) { asum += task; });
  g_count_allocs = false;
  EXPECT_EQ(g_allocs.load(), 0);
  EXPECT_EQ(sum + asum.load(), 3 * 45);
}

}  // namespace

namespace {

// A NaN in a new token's cache row (its c_kv part, read by both products, or its k_pe part, read
// by the scores only) reaches that token's query rows and later ones, never an earlier token's:
// the engine adds a causal row only to the rows that see it. Earlier tokens must equal the
// reference over the clean cache. Units that hold several tokens (5 heads) and one token each
// (128 heads), 1 and 2 threads, the cut of the rows into parts at every place, every path but
// the AMX form (documented as NaN-exact for q_len = 1 only).
template <class T>
void check_nan_in_new_row(Index heads, Index q_len, Index cache_len, Index kv_lora, Index rope,
                          mla::ThreadPool* pool2) {
  const Inputs clean = make_inputs(q_len, heads, kv_lora, rope, cache_len, 0, 21);
  const Index m = clean.shape.rows(), R = kv_lora, W = kv_lora + rope;
  std::vector<float> ref(std::size_t(m * R));
  mla::reference::absorbed_attention(clean.shape, clean.q_lat.data(), clean.q_pe.data(),
                                     cache_of<T>(clean), 0.2f, ref.data(), nullptr);
  DecodeWorkspace ws;
  for (Index token = 0; token < q_len; ++token) {
    for (Index column : {Index(1), R + rope / 2}) {
      Inputs in = clean;
      const std::size_t at = std::size_t((cache_len - q_len + token) * W + column);
      in.cache_f[at] = NAN;
      in.cache_b[at] = bfloat16(NAN);
      for (KernelPath path : mla::kernels::available_paths()) {
        if (path == KernelPath::kAmx) continue;
        for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), pool2}) {
          std::vector<float> out(std::size_t(m * R));
          mla::kernels::absorbed_attention(in.shape, in.q_lat.data(), in.q_pe.data(),
                                           cache_of<T>(in), 0.2f, out.data(), nullptr, ws, pool,
                                           path);
          const std::string what = "heads " + std::to_string(heads) + ", NaN in token " +
                                   std::to_string(token) + " column " + std::to_string(column) +
                                   ", path " + mla::kernels::path_name(path) + ", threads " +
                                   std::to_string(mla::num_threads(pool));
          for (Index row = 0; row < m; ++row) {
            const Index t = row / heads;
            bool has_nan = false;
            float err = 0.0f, scale = 0.0f;
            for (Index d = 0; d < R; ++d) {
              const float v = out[std::size_t(row * R + d)], r = ref[std::size_t(row * R + d)];
              has_nan = has_nan || std::isnan(v);
              err = std::max(err, std::abs(v - r));
              scale = std::max(scale, std::abs(r));
            }
            if (t < token) {
              ASSERT_FALSE(has_nan) << what << ": reached query row " << row;
              ASSERT_LE(err, 1e-5f * scale) << what << ": query row " << row;
            } else {
              ASSERT_TRUE(has_nan) << what << ": lost at query row " << row;
            }
          }
        }
      }
    }
  }
}

TEST(AbsorbedAttention, NanInANewRowStaysWithLaterTokens) {
  mla::ThreadPool pool2(2);
  check_nan_in_new_row<float>(5, 4, 77, 20, 6, &pool2);
  check_nan_in_new_row<bfloat16>(5, 3, 40, 36, 8, &pool2);
  check_nan_in_new_row<float>(128, 2, 70, 64, 16, &pool2);
}

}  // namespace
