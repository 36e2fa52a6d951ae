// The NaN contract of the GQA kernel (kernels::gqa_attention): with q_len new tokens, a NaN in
// new token t's K or V row (cache row L - q_len + t) of one kv head reaches the outputs of tokens
// >= t of the query heads that read that kv head, and nothing else: the outputs of tokens < t,
// and of the other heads, are as if the row were clean. Swept over every compiled path (plus kAmx
// on a bf16 cache where built), float and bf16 caches, groups and q_len that run the
// row-streaming (group * q_len < 6) and the packed form, one and two threads (split-KV beside
// the causal-triangle task; kv heads that do and do not share out evenly), cache lengths that put
// the first new token on tile edges of both forms and of the AMX chunks, a NaN at every t.
#include "mla/kernels/decode_engine.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "mla/core/threading.hpp"
#include "mla/reference/attention.hpp"

namespace {

using mla::Index;
using mla::bfloat16;
using mla::kernels::GqaAttentionShape;
using mla::kernels::DecodeWorkspace;
using mla::kernels::KernelPath;

constexpr float kScale = 0.3f;

template <class T>
struct Case {
  GqaAttentionShape shape;
  std::vector<float> q;
  std::vector<T> k, v;
};

template <class T>
Case<T> make_case(Index q_len, Index heads, Index kv_heads, Index head_dim, Index v_dim,
                  Index cache_len, unsigned seed) {
  Case<T> c;
  GqaAttentionShape& s = c.shape;
  s.q_len = q_len;
  s.num_heads = heads;
  s.num_kv_heads = kv_heads;
  s.head_dim = head_dim;
  s.v_dim = v_dim;
  s.cache_len = cache_len;
  s.k_head_stride = (cache_len + 3) * head_dim;  // room past the valid rows, as in a KvCache
  s.v_head_stride = (cache_len + 3) * v_dim;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  c.q.resize(std::size_t(q_len * heads * head_dim));
  for (float& x : c.q) x = u(rng);
  c.k.resize(std::size_t(kv_heads * s.k_head_stride));
  c.v.resize(std::size_t(kv_heads * s.v_head_stride));
  for (T& x : c.k) x = T(u(rng));
  for (T& x : c.v) x = T(u(rng));
  return c;
}

template <class T>
std::vector<float> run(const Case<T>& c, KernelPath path, mla::ThreadPool* pool,
                       DecodeWorkspace& ws) {
  std::vector<float> out(std::size_t(c.shape.q_len * c.shape.num_heads * c.shape.v_dim), 7.0f);
  mla::kernels::gqa_attention(c.shape, c.q.data(), c.k.data(), c.v.data(), kScale, out.data(),
                              nullptr, ws, pool, path);
  return out;
}

std::vector<KernelPath> paths_for(bool bf16) {
  std::vector<KernelPath> paths = mla::kernels::available_paths();
  if (bf16 && mla::kernels::path_available(KernelPath::kAmx)) paths.push_back(KernelPath::kAmx);
  return paths;
}

template <class T>
void check_layout(Index group, Index q_len, Index kv_heads, Index bulk, mla::ThreadPool* pool2,
                  unsigned seed) {
  const Index head_dim = 20, v_dim = 12;  // not multiples of the vector width
  const Index heads = group * kv_heads, cache_len = bulk + q_len - 1;
  const Case<T> clean = make_case<T>(q_len, heads, kv_heads, head_dim, v_dim, cache_len, seed);
  const GqaAttentionShape& s = clean.shape;
  std::vector<float> ref(std::size_t(q_len * heads * v_dim));
  mla::reference::gqa_attention(s, clean.q.data(), clean.k.data(), clean.v.data(), kScale,
                                ref.data());
  DecodeWorkspace ws;
  for (KernelPath path : paths_for(std::is_same_v<T, bfloat16>)) {
    for (mla::ThreadPool* pool : {static_cast<mla::ThreadPool*>(nullptr), pool2}) {
      const std::vector<float> base = run(clean, path, pool, ws);
      for (Index t = 0; t < q_len; ++t) {
        for (bool in_v : {false, true}) {
          // One element of kv head 0's row for token t.
          Case<T> bad = clean;
          const Index row = cache_len - q_len + t;
          (in_v ? bad.v[std::size_t(row * v_dim + 5)] : bad.k[std::size_t(row * head_dim + 7)]) =
              T(std::numeric_limits<float>::quiet_NaN());
          const std::vector<float> out = run(bad, path, pool, ws);
          std::ostringstream what;
          what << (in_v ? "V" : "K") << " NaN at t=" << t << ": group " << group << ", q_len "
               << q_len << ", kv_heads " << kv_heads << ", L " << cache_len << ", path "
               << mla::kernels::path_name(path) << ", threads " << mla::num_threads(pool);
          double err = 0.0, mag = 0.0;
          for (Index token = 0; token < q_len; ++token)
            for (Index h = 0; h < heads; ++h) {
              const std::size_t o = std::size_t((token * heads + h) * v_dim);
              const bool poisoned = token >= t && h / group == 0;
              if (poisoned) {
                EXPECT_TRUE(std::any_of(out.begin() + o, out.begin() + o + v_dim,
                                        [](float x) { return std::isnan(x); }))
                    << what.str() << ": token " << token << " head " << h << " sees the NaN";
                continue;
              }
              // Never saw the row: bit for bit the clean call's result, and finite.
              EXPECT_EQ(std::memcmp(out.data() + o, base.data() + o, sizeof(float) * v_dim), 0)
                  << what.str() << ": token " << token << " head " << h << " changed";
              for (Index d = 0; d < v_dim; ++d) {
                ASSERT_TRUE(std::isfinite(out[o + d]))
                    << what.str() << ": token " << token << " head " << h;
                err = std::max(err, double(std::abs(out[o + d] - ref[o + d])));
                mag = std::max(mag, double(std::abs(ref[o + d])));
              }
            }
          // ... and the double reference over the clean rows (kAmx rounds to bf16: its own
          // bounds are tested in test_gqa_attention).
          if (path != KernelPath::kAmx) {
            EXPECT_LE(err, 1e-5 * std::max(mag, 1e-30)) << what.str();
          }
        }
      }
    }
  }
}

template <class T>
void sweep() {
  mla::ThreadPool pool2(2);
  unsigned seed = 1;
  // group * q_len: 2 and 5 run the row-streaming form, >= 6 the packed one.
  // The first new token's row: the first row; right after whole packed (36), bf16 (48) and
  // float (96) tiles; one past an AMX chunk (256).
  const Index bulks[] = {1, 36, 48, 96, 257};
  for (Index group : {1, 3, 8}) {
    for (Index q_len : {2, 5}) {
      for (Index kv_heads : {2, 3}) {  // 2 share out over 2 threads; 3 split every head's rows
        for (Index bulk : bulks) check_layout<T>(group, q_len, kv_heads, bulk, &pool2, seed++);
      }
    }
  }
}

TEST(GqaNanContract, FloatCache) { sweep<float>(); }
TEST(GqaNanContract, Bf16Cache) { sweep<bfloat16>(); }

TEST(GqaNanContract, EightTokensAsTheLayersCallIt) {
  // kKernelTokensPerCall new tokens per call, GQA group 4: the layers' multi-token calls.
  mla::ThreadPool pool2(2);
  check_layout<float>(4, 8, 2, 100, &pool2, 99);
  check_layout<bfloat16>(4, 8, 2, 100, &pool2, 100);
}

}  // namespace
