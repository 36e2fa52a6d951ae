// Compile-time benchmark: one translation unit that instantiates every layer path an engine may
// use (float and double MLA and GQA layers, every cache element type, the naive and absorbed
// paths, forward over the decompressed, FP8 and paged caches, batched decode in float and double
// over contiguous, FP8 and paged caches), so its
// compile time bounds what a user's TU pays for the library. docs/benchmarks.md ("Compile time")
// records how to time it and the numbers. It also runs: tiny layers take one prefill and one
// decode step on each path and the program exits non-zero unless every output is finite and the
// naive and absorbed paths agree (the tests check accuracy; this only keeps the program honest).
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include <mla/mla.hpp>

namespace {

using mla::Index;

template <class S>
mla::Matrix<S> fill(Index rows, Index cols, double s, double gain) {
  mla::Matrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(gain * std::sin(s * double(i + 1)));
  return m;
}

mla::MlaConfig mla_config(bool q_lora) {
  mla::MlaConfig cfg;
  cfg.hidden_size = 32;
  cfg.num_attention_heads = 2;
  cfg.kv_lora_rank = 16;
  cfg.qk_nope_head_dim = 8;
  cfg.qk_rope_head_dim = 4;
  cfg.v_head_dim = 8;
  if (q_lora) cfg.q_lora_rank = 12;
  return cfg;
}

template <class S>
typename mla::MultiHeadLatentAttention<S>::Weights mla_weights(const mla::MlaConfig& cfg) {
  const Index H = cfg.num_attention_heads, N = cfg.qk_nope_head_dim, P = cfg.qk_rope_head_dim,
              V = cfg.v_head_dim, R = cfg.kv_lora_rank, D = cfg.hidden_size;
  typename mla::MultiHeadLatentAttention<S>::Weights w;
  if (cfg.has_q_lora()) {
    w.q_a_proj.weight = fill<S>(cfg.q_lora_rank, D, 0.31, 0.2);
    w.q_a_layernorm = mla::Vector<S>::Ones(cfg.q_lora_rank);
    w.q_b_proj.weight = fill<S>(H * (N + P), cfg.q_lora_rank, 0.41, 0.3);
  } else {
    w.q_proj.weight = fill<S>(H * (N + P), D, 0.37, 0.2);
  }
  w.kv_a_proj_with_mqa.weight = fill<S>(R + P, D, 0.11, 0.2);
  w.kv_a_layernorm = mla::Vector<S>::Ones(R);
  w.kv_b_proj.weight = fill<S>(H * (N + V), R, 0.23, 0.3);
  w.o_proj.weight = fill<S>(D, H * V, 0.53, 0.3);
  return w;
}

bool finite(const Eigen::Ref<const mla::Matrix<double>>& m) { return m.allFinite(); }

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what);
    ++failures;
  }
}
/// Expects err <= tol (false for a NaN err).
void expect_within(double err, double tol, const char* what) {
  if (!(err <= tol)) {
    std::printf("FAILED: %s: max difference %.3g, tolerance %.3g\n", what, err, tol);
    ++failures;
  }
}

/// Prefill of 5 tokens then one decode step through `run(x, positions)`; returns the outputs.
template <class S, class Run>
mla::Matrix<double> prefill_and_step(Index hidden, Run run) {
  const mla::Matrix<S> x = fill<S>(6, hidden, 0.71, 1.0);
  const mla::Positions pos = mla::Positions::LinSpaced(6, 0, 5);
  mla::Matrix<S> y(6, hidden);
  y.topRows(5) = run(x.topRows(5), pos.head(5));
  y.bottomRows(1) = run(x.bottomRows(1), pos.tail(1));
  return y.template cast<double>();
}

/// MLA layer on every latent-cache element and path, and on the decompressed cache.
/// `tol` bounds naive vs absorbed (same cache contents), `cached_tol` the decompressed cache,
/// which rounds K/V rather than the latent to T.
template <class S, class T>
void mla_paths(const mla::MultiHeadLatentAttention<S>& layer, double tol, double cached_tol,
               const char* name) {
  const Index hidden = layer.config().hidden_size;
  mla::Workspace ws;
  auto latent = [&](mla::MlaPath path) {
    auto cache = layer.template make_latent_cache<T>(8);
    return prefill_and_step<S>(hidden, [&](const mla::Matrix<S>& x, const mla::Positions& p) {
      mla::Matrix<S> out(x.rows(), hidden);
      layer.forward(x, p, cache, out, ws, path);
      return out;
    });
  };
  const mla::Matrix<double> absorbed = latent(mla::MlaPath::kAbsorbed);
  const mla::Matrix<double> naive = latent(mla::MlaPath::kNaive);
  auto kv = layer.template make_decompressed_cache<T>(8);
  const mla::Matrix<double> cached =
      prefill_and_step<S>(hidden, [&](const mla::Matrix<S>& x, const mla::Positions& p) {
        mla::Matrix<S> out(x.rows(), hidden);
        layer.forward(x, p, kv, out, ws);
        return out;
      });
  expect(finite(absorbed) && finite(naive) && finite(cached), name);
  expect_within((absorbed - naive).cwiseAbs().maxCoeff(), tol, name);
  expect_within((absorbed - cached).cwiseAbs().maxCoeff(), cached_tol, name);
}

/// GQA layer on one cache element type.
template <class S, class T>
mla::Matrix<double> gqa_path(const mla::GroupedQueryAttention<S>& layer) {
  const Index hidden = layer.config().hidden_size;
  mla::Workspace ws;
  auto cache = layer.template make_cache<T>(8);
  return prefill_and_step<S>(hidden, [&](const mla::Matrix<S>& x, const mla::Positions& p) {
    mla::Matrix<S> out(x.rows(), hidden);
    layer.forward(x, p, cache, out, ws);
    return out;
  });
}

template <class S>
mla::GroupedQueryAttention<S> gqa_layer() {
  mla::AttentionConfig cfg;
  cfg.hidden_size = 32;
  cfg.num_attention_heads = 4;
  cfg.num_key_value_heads = 2;
  cfg.head_dim = 8;
  typename mla::GroupedQueryAttention<S>::Weights w;
  w.q_proj.weight = fill<S>(32, 32, 0.17, 0.2);
  w.k_proj.weight = fill<S>(16, 32, 0.19, 0.2);
  w.v_proj.weight = fill<S>(16, 32, 0.29, 0.2);
  w.o_proj.weight = fill<S>(32, 32, 0.43, 0.2);
  return mla::GroupedQueryAttention<S>(cfg, std::move(w));
}

/// mla_decode_batch over two sequences of `Cache`, made by `make`, against the layer's absorbed
/// path on a float LatentCache.
template <class Cache, class Make>
void batched(const mla::MultiHeadLatentAttention<float>& layer, Make make, const char* name) {
  const Index hidden = layer.config().hidden_size;
  std::unique_ptr<Cache> a = make(), b = make();
  mla::Workspace ctx;
  const mla::Matrix<float> x = fill<float>(3, hidden, 0.61, 1.0);
  const mla::Positions pos = (mla::Positions(3) << 0, 1, 0).finished();
  mla::Matrix<float> y(3, hidden);
  mla::mla_decode_batch(layer, x, pos, {2, 1}, std::vector<Cache*>{a.get(), b.get()}, y, ctx);
  mla::Workspace ws;
  auto ref_cache = layer.make_latent_cache(4);
  mla::Matrix<float> ref(2, hidden);
  layer.forward(x.topRows(2), pos.head(2), ref_cache, ref, ws, mla::MlaPath::kAbsorbed);
  expect(y.allFinite(), name);
  expect_within(double((y.topRows(2) - ref).cwiseAbs().maxCoeff()), 0.1, name);
}

/// forward() over the FP8 and paged caches (absorbed and naive), and mla_decode_batch, for the
/// layer's scalar type, against the absorbed path on a LatentCache.
template <class S>
void other_caches(const mla::MultiHeadLatentAttention<S>& layer, const char* name) {
  const Index hidden = layer.config().hidden_size;
  const mla::Matrix<S> x = fill<S>(3, hidden, 0.43, 1.0);
  const mla::Positions pos = (mla::Positions(3) << 0, 1, 2).finished();
  mla::Workspace ws;
  auto ref = layer.make_latent_cache(4);
  mla::Matrix<S> want(3, hidden), y(3, hidden);
  layer.forward(x, pos, ref, want, ws, mla::MlaPath::kAbsorbed);
  auto fp8 = layer.make_fp8_latent_cache(4);
  layer.forward(x, pos, fp8, y, ws, mla::MlaPath::kAbsorbed);
  expect_within(double((y - want).cwiseAbs().maxCoeff()), 0.1, name);
  auto pool = layer.template make_block_pool<S>(4, 2);
  auto paged = layer.make_paged_cache(pool, 4);
  layer.forward(x, pos, paged, y, ws, mla::MlaPath::kNaive);
  expect_within(double((y - want).cwiseAbs().maxCoeff()), 1e-4, name);
  auto a = layer.make_latent_cache(4), b = layer.make_latent_cache(4);
  const mla::Positions batch_pos = (mla::Positions(3) << 0, 1, 0).finished();
  mla::mla_decode_batch(layer, x, batch_pos, {2, 1}, {&a, &b}, y, ws);
  expect(y.allFinite(), name);
}

}  // namespace

int main() {
  for (bool q_lora : {false, true}) {
    const mla::MlaConfig cfg = mla_config(q_lora);
    const mla::MultiHeadLatentAttention<double> layer_d(cfg, mla_weights<double>(cfg));
    mla_paths<double, double>(layer_d, 1e-12, 1e-12, "mla double");
    const mla::MultiHeadLatentAttention<float> layer_f(cfg, mla_weights<float>(cfg));
    mla_paths<float, float>(layer_f, 1e-4, 1e-4, "mla float");
    mla_paths<float, mla::bfloat16>(layer_f, 1e-4, 0.05, "mla float, bf16 cache");
    typename mla::MultiHeadLatentAttention<float>::Options bf16_weights;
    bf16_weights.projection_weights = mla::WeightFormat::kBf16;
    const mla::MultiHeadLatentAttention<float> layer_w(cfg, mla_weights<float>(cfg), bf16_weights);
    mla_paths<float, float>(layer_w, 1e-4, 1e-4, "mla float, bf16 weights");
    other_caches(layer_f, "mla float, fp8 and paged caches");
    other_caches(layer_d, "mla double, fp8 and paged caches");

    const Index R = cfg.kv_lora_rank, P = cfg.qk_rope_head_dim;
    batched<mla::LatentCache<float>>(
        layer_f, [&] { return std::make_unique<mla::LatentCache<float>>(R, P, 4); },
        "batched float");
    batched<mla::LatentCache<mla::bfloat16>>(
        layer_f, [&] { return std::make_unique<mla::LatentCache<mla::bfloat16>>(R, P, 4); },
        "batched bf16");
    batched<mla::Fp8LatentCache>(
        layer_f, [&] { return std::make_unique<mla::Fp8LatentCache>(R, P, 4); }, "batched fp8");
    mla::LatentBlockPool<float> pool_f(R, P, 8, 2);
    batched<mla::PagedLatentCache<float>>(
        layer_f, [&] { return std::make_unique<mla::PagedLatentCache<float>>(pool_f, 4); },
        "batched paged float");
    mla::LatentBlockPool<mla::bfloat16> pool_b(R, P, 8, 2);
    batched<mla::PagedLatentCache<mla::bfloat16>>(
        layer_f, [&] { return std::make_unique<mla::PagedLatentCache<mla::bfloat16>>(pool_b, 4); },
        "batched paged bf16");
    mla::LatentBlockPool<mla::Fp8Latent> pool_8(R, P, 8, 2);
    batched<mla::PagedLatentCache<mla::Fp8Latent>>(
        layer_f, [&] { return std::make_unique<mla::PagedLatentCache<mla::Fp8Latent>>(pool_8, 4); },
        "batched paged fp8");
  }

  const mla::Matrix<double> gqa_d = gqa_path<double, double>(gqa_layer<double>());
  const mla::Matrix<double> gqa_f = gqa_path<float, float>(gqa_layer<float>());
  const mla::Matrix<double> gqa_b = gqa_path<float, mla::bfloat16>(gqa_layer<float>());
  expect(finite(gqa_d) && finite(gqa_f) && finite(gqa_b), "gqa finite");
  expect_within((gqa_d - gqa_f).cwiseAbs().maxCoeff(), 1e-4, "gqa float vs double");
  expect_within((gqa_d - gqa_b).cwiseAbs().maxCoeff(), 0.1, "gqa bf16 cache vs double");

  std::printf("compile_all_paths: %s\n", failures == 0 ? "ok" : "FAILED");
  return failures == 0 ? 0 : 1;
}
