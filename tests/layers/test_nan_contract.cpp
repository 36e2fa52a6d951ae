// The README's NaN contract at the layers, for calls with several new tokens: a NaN in new token
// t's input reaches the outputs of tokens >= t of that call and never those of earlier tokens.
// GQA over float and bf16 caches on every compiled attention path, with more new tokens than
// one kernel call takes (kKernelTokensPerCall); MLA over its decompressed cache (the same
// kernel); mla_decode_batch with several new tokens per sequence. The earlier tokens' outputs
// must equal a run that never saw token t: the double layer for float caches, the float layer
// on the clean tokens < t for bf16 caches (its rounding of K/V is the same), and bit for bit the
// same batched call on clean input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "mla/layers/batched_decode.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using kernels::KernelPath;
using testing::positions_from;
using testing::rel_max_err;
using testing::Rng;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr Index kHistory = 5, kNew = 11;  // 11 new tokens: two kernel calls (8 + 3)

Linear<float> to_float(const Linear<double>& l) { return {l.weight.cast<float>(), l.bias.cast<float>()}; }

/// Rows < t of `y` finite and within `tol` of `want` (t rows); rows >= t hold a NaN.
void expect_contract(const Matrix<float>& y, Index t, const Matrix<double>& want, double tol,
                     const std::string& what) {
  ASSERT_EQ(want.rows(), t);
  if (t > 0) {
    EXPECT_TRUE(y.topRows(t).allFinite()) << what << ": the NaN reached an earlier token";
    if (y.topRows(t).allFinite()) {
      EXPECT_LE(rel_max_err(y.topRows(t).cast<double>(), want), tol) << what;
    }
  }
  for (Index r = t; r < y.rows(); ++r) EXPECT_TRUE(y.row(r).hasNaN()) << what << ": token " << r;
}

template <class T>
std::string cache_name() {
  return std::is_same_v<T, float> ? "float cache" : "bf16 cache";
}

template <class T>
void check_gqa(const std::vector<Index>& nan_at) {
  AttentionConfig cfg;
  cfg.hidden_size = 48;
  cfg.num_attention_heads = 8;
  cfg.num_key_value_heads = 2;  // groups of 4: the packed form for several tokens
  cfg.head_dim = 16;
  cfg.max_position_embeddings = 64;
  Rng rng(11);
  const auto wd = testing::random_gqa_weights<double>(cfg, rng);
  const typename GroupedQueryAttention<float>::Weights wf{to_float(wd.q_proj), to_float(wd.k_proj),
                                                          to_float(wd.v_proj), to_float(wd.o_proj)};
  const GroupedQueryAttention<double> ld(cfg, wd);
  const Matrix<double> history = rng.normal<double>(kHistory, cfg.hidden_size).cast<float>().cast<double>();
  const Matrix<double> x = rng.normal<double>(kNew, cfg.hidden_size).cast<float>().cast<double>();
  const Positions pos = positions_from(kHistory, kNew);
  for (KernelPath path : kernels::available_paths()) {
    typename GroupedQueryAttention<float>::Options options;
    options.attention_path = path;
    const GroupedQueryAttention<float> lf(cfg, wf, options);
    for (Index t : nan_at) {
      const std::string what = cache_name<T>() + ", path " + kernels::path_name(path) +
                               ", NaN in token " + std::to_string(t);
      auto run = [&](const Matrix<float>& xs) {
        auto cache = lf.template make_cache<T>(kHistory + kNew);
        lf.forward(history.cast<float>(), positions_from(0, kHistory), cache);
        return lf.forward(xs, pos.head(xs.rows()), cache);
      };
      Matrix<float> bad = x.cast<float>();
      bad(t, 3) = kNaN;
      const Matrix<float> y = run(bad);
      Matrix<double> want;
      if constexpr (std::is_same_v<T, float>) {
        auto cache = ld.make_cache(kHistory + kNew);
        ld.forward(history, positions_from(0, kHistory), cache);
        want = ld.forward(x.topRows(t), pos.head(t), cache);
      } else {
        want = run(x.topRows(t).cast<float>()).template cast<double>();
      }
      expect_contract(y, t, want, 1e-5, "GQA, " + what);
    }
  }
}

TEST(NanContract, GqaFloatCache) { check_gqa<float>({0, 1, 7, 8, 10}); }
TEST(NanContract, GqaBf16Cache) { check_gqa<bfloat16>({0, 1, 7, 8, 10}); }

TEST(NanContract, MlaDecompressedCache) {
  MlaConfig cfg;
  cfg.hidden_size = 32;
  cfg.num_attention_heads = 4;
  cfg.q_lora_rank = 12;
  cfg.kv_lora_rank = 16;
  cfg.qk_nope_head_dim = 8;
  cfg.qk_rope_head_dim = 4;
  cfg.v_head_dim = 6;
  cfg.max_position_embeddings = 64;
  Rng rng(12);
  const auto wd = testing::random_mla_weights<double>(cfg, rng);
  typename MultiHeadLatentAttention<float>::Weights wf;
  wf.q_a_proj = to_float(wd.q_a_proj);
  wf.q_a_layernorm = wd.q_a_layernorm.cast<float>();
  wf.q_b_proj = to_float(wd.q_b_proj);
  wf.kv_a_proj_with_mqa = to_float(wd.kv_a_proj_with_mqa);
  wf.kv_a_layernorm = wd.kv_a_layernorm.cast<float>();
  wf.kv_b_proj = to_float(wd.kv_b_proj);
  wf.o_proj = to_float(wd.o_proj);
  const MultiHeadLatentAttention<double> ld(cfg, wd);
  const MultiHeadLatentAttention<float> lf(cfg, wf);
  const Matrix<double> history = rng.normal<double>(kHistory, cfg.hidden_size).cast<float>().cast<double>();
  const Matrix<double> x = rng.normal<double>(kNew, cfg.hidden_size).cast<float>().cast<double>();
  const Positions pos = positions_from(kHistory, kNew);
  for (Index t : {0, 2, 8, 10}) {
    auto cf = lf.make_decompressed_cache(kHistory + kNew);
    lf.forward(history.cast<float>(), positions_from(0, kHistory), cf);
    Matrix<float> bad = x.cast<float>();
    bad(t, 3) = kNaN;
    const Matrix<float> y = lf.forward(bad, pos, cf);
    auto cd = ld.make_decompressed_cache(kHistory + kNew);
    ld.forward(history, positions_from(0, kHistory), cd);
    const Matrix<double> want = ld.forward(x.topRows(t), pos.head(t), cd);
    expect_contract(y, t, want, 1e-5, "MLA decompressed, NaN in token " + std::to_string(t));
  }
}

TEST(NanContract, BatchedDecodeSeveralTokensPerSequence) {
  MlaConfig cfg;
  cfg.hidden_size = 32;
  cfg.num_attention_heads = 4;
  cfg.q_lora_rank = 0;
  cfg.kv_lora_rank = 16;
  cfg.qk_nope_head_dim = 8;
  cfg.qk_rope_head_dim = 4;
  cfg.v_head_dim = 6;
  cfg.max_position_embeddings = 64;
  Rng rng(13);
  const MultiHeadLatentAttention<float> layer(cfg, testing::random_mla_weights<float>(cfg, rng));
  const Matrix<float> history = rng.normal<float>(2 * kHistory, cfg.hidden_size);
  const std::vector<Index> q_lens{3, 6};
  const Matrix<float> x = rng.normal<float>(9, cfg.hidden_size);
  Positions pos(9);
  for (Index i = 0; i < 9; ++i) pos[i] = kHistory + (i < 3 ? i : i - 3);
  ThreadPool pool2(2);
  for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &pool2}) {
    auto run = [&](const Matrix<float>& xs) {
      LatentCache<float> a = layer.make_latent_cache(16), b = layer.make_latent_cache(16);
      const std::vector<LatentCache<float>*> caches{&a, &b};
      Workspace ctx;
      ctx.set_thread_pool(pool);
      ctx.decode_options.min_rows_per_part = 2;  // several parts, so sequences are split
      Matrix<float> y(2 * kHistory, cfg.hidden_size);
      Positions hp(2 * kHistory);
      for (Index i = 0; i < 2 * kHistory; ++i) hp[i] = i % kHistory;
      mla_decode_batch(layer, history, hp, {kHistory, kHistory}, caches, y, ctx);
      Matrix<float> out(xs.rows(), cfg.hidden_size);
      mla_decode_batch(layer, xs, pos, q_lens, caches, out, ctx);
      return out;
    };
    const Matrix<float> clean = run(x);
    for (Index t : {0, 2, 5}) {  // token t of sequence 1 (rows 3 + t)
      Matrix<float> bad = x;
      bad(3 + t, 3) = kNaN;
      const Matrix<float> y = run(bad);
      const std::string what = "batched, NaN in token " + std::to_string(t) + " of sequence 1, " +
                               std::to_string(num_threads(pool)) + " threads";
      // Sequence 0 and sequence 1's tokens < t: bit for bit the clean call's outputs.
      EXPECT_EQ(std::memcmp(y.data(), clean.data(), sizeof(float) * std::size_t((3 + t) * y.cols())), 0)
          << what;
      for (Index r = 3 + t; r < 9; ++r) EXPECT_TRUE(y.row(r).hasNaN()) << what << ": row " << r;
    }
    // The clean call itself matches the layer's per-sequence absorbed forward.
    for (Index s = 0; s < 2; ++s) {
      LatentCache<float> c = layer.make_latent_cache(16);
      layer.forward(history.middleRows(s * kHistory, kHistory), positions_from(0, kHistory), c,
                    MlaPath::kAbsorbed);
      const Index row = s == 0 ? 0 : 3;
      const Matrix<float> want = layer.forward(x.middleRows(row, q_lens[std::size_t(s)]),
                                               pos.segment(row, q_lens[std::size_t(s)]), c,
                                               MlaPath::kAbsorbed);
      EXPECT_LE(rel_max_err(clean.middleRows(row, q_lens[std::size_t(s)]), want), 1e-5) << s;
    }
  }
}

}  // namespace
}  // namespace mla
