// decode_bench: one decode step (batch 1, one new token, one layer) of MHA, GQA and DeepSeek MLA
// on both of its paths, against this machine's limits measured in the same run.
//
// Benchmark names: <design>/<part>/<cache type>/L:<context>/threads:<n>[/real_time]
//   design  mha                  128 heads x 128 (hidden 7168 in the layer), K/V cache
//           gqa                  Qwen2.5-72B: 64 query heads over 8 KV heads x 128 (hidden 8192)
//           mla_absorbed         DeepSeek-V3: 128 heads, latent cache c_kv 512 + k_pe 64,
//                                attention in latent space (W_UK / W_UV absorbed)
//           mha_amx, gqa_amx,    mha, gqa and mla_absorbed on the AMX tile unit (KernelPath::kAmx:
//           mla_absorbed_amx     query and softmax weights rounded to bf16): core part, bf16
//                                cache, CPUs with AMX-BF16 only
//           mla_naive_recompute  DeepSeek-V3, same latent cache, K/V recomputed from it each step
//           mla_naive_cached     DeepSeek-V3 with a decompressed cache, 128 heads x (192 + 128)
//   part    core     attention only: query already projected, cache filled with L rows; the step
//                    appends the new token's cache row and attends over L + 1 rows
//           layer    the library's whole layer forward() (projections, RoPE, cache append,
//                    attention, o_proj) for one token at position L
//           prefill  whole MLA layer forward() over T new tokens into an empty cache, both paths
//   type    f32, bf16: cache element type (compute is float)
// After every step the cache is truncated back to L, so every iteration sees the same context.
// Caches are filled once per benchmark with random rows written directly (no prefill through the
// layer); layers have random weights. All times are wall-clock (UseRealTime).
//
// Counters (per step): tok_s new tokens per second; kv_bytes cache bytes read; gflops FLOPs of the
// path as executed (softmax and norms not counted; prefill counts the causal T(T+1)/2 pairs) per
// second; pct_peak the step's roofline bound max(FLOPs / FMA peak, bytes / read bandwidth) as % of
// the measured time, with the peaks of this thread count measured by the probe (at start-up and
// again before each benchmark, keeping the maximum: on a shared machine load only lowers it): for
// the compute-bound MLA paths that is the % of the FMA peak, for the memory-bound MHA, GQA and
// decompressed-cache steps the % of read bandwidth (a cache that fits in L3 can exceed 100%);
// the *_amx variants are held to the AMX tile peak (tdpbf16ps) the probe measures instead of
// the FMA peak (for mha_amx and gqa_amx the read bandwidth still bounds the step).
// Layers add their weights (float) to the bytes. mla_absorbed also gets speedup_vs_recompute and
// speedup_vs_cached: the naive variant's time divided by its own, for the same part, type, L and
// threads in this run (per repetition and for mean/median); absent where the naive one was not run.
//
// What each core step runs: mha/gqa/mla_naive_cached mla::kernels::gqa_attention; mla_absorbed
// mla::kernels::absorbed_attention; mla_naive_recompute per head K/V = C W_UK/UV^T (Eigen GEMMs,
// heads split over the pool), scores, softmax and P V: the FLOPs of the layer's naive path.
// The layer part runs the whole layer (projections through kernels::gemm, threaded by the
// Workspace's pool); layer_bf16w the same with Options::projection_weights = kBf16 (the bytes
// count 2 per projection weight).
//
// Modes: --quick (default) core, f32, L 1k and 4k, 1 and 2 threads, all designs: under a minute
// on 2 cores (about two with --benchmark_repetitions=3). --full: core, layer and layer_bf16w, f32
// and bf16 caches, L 1k/4k/16k/32k, threads 1 and 2; prefill
// T 512 and 2048. By default mla_naive_recompute is skipped above L = 4k (~137 GFLOP per step at
// 4k, 1.1 TFLOP at 32k) and mla_naive_cached above 16k (its f32 cache is 2.7 GB per layer at 16k);
// --no-skip runs them. Google Benchmark flags pass through (--benchmark_filter,
// --benchmark_repetitions, --benchmark_out=FILE --benchmark_out_format=json, ...).
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "bench_common.hpp"
#include "machine_probe.hpp"
#include "mla/cache/kv_cache.hpp"
#include "mla/cache/latent_cache.hpp"
#include "mla/core/threading.hpp"
#include "mla/layers/workspace.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"
#include "mla/presets.hpp"

namespace {

using mla::Index;

enum class Design {
  kMha, kGqa, kMlaAbsorbed, kMlaNaiveRecompute, kMlaNaiveCached,
  kMhaAmx, kGqaAmx, kMlaAbsorbedAmx  // the first three on the AMX tiles (KernelPath::kAmx)
};

bool is_amx(Design d) {
  return d == Design::kMhaAmx || d == Design::kGqaAmx || d == Design::kMlaAbsorbedAmx;
}
/// The design an AMX variant computes (its shapes and FLOPs).
Design base_design(Design d) {
  return d == Design::kMhaAmx ? Design::kMha
         : d == Design::kGqaAmx ? Design::kGqa
         : d == Design::kMlaAbsorbedAmx ? Design::kMlaAbsorbed
                                        : d;
}
mla::kernels::KernelPath path_of(Design d) {
  return is_amx(d) ? mla::kernels::KernelPath::kAmx : mla::kernels::KernelPath::kAuto;
}
enum class Part { kCore, kLayer, kLayerBf16Weights, kPrefill };
enum class CacheType { kF32, kBf16 };

const char* name_of(Design d) {
  switch (d) {
    case Design::kMha: return "mha";
    case Design::kGqa: return "gqa";
    case Design::kMlaAbsorbed: return "mla_absorbed";
    case Design::kMlaAbsorbedAmx: return "mla_absorbed_amx";
    case Design::kMhaAmx: return "mha_amx";
    case Design::kGqaAmx: return "gqa_amx";
    case Design::kMlaNaiveRecompute: return "mla_naive_recompute";
    case Design::kMlaNaiveCached: return "mla_naive_cached";
  }
  return "?";
}
const char* name_of(Part p) {
  switch (p) {
    case Part::kCore: return "core";
    case Part::kLayer: return "layer";
    case Part::kLayerBf16Weights: return "layer_bf16w";
    case Part::kPrefill: return "prefill";
  }
  return "?";
}
const char* name_of(CacheType t) { return t == CacheType::kF32 ? "f32" : "bf16"; }
std::size_t element_bytes(CacheType t) { return t == CacheType::kF32 ? 4 : 2; }

/// One benchmark: L is the context for decode (cached tokens before the step), T for prefill.
struct Case {
  Design design;
  Part part;
  CacheType type;
  Index length;
  int threads;
  std::string name() const {
    std::ostringstream os;
    os << name_of(design) << '/' << name_of(part) << '/' << name_of(type) << '/'
       << (part == Part::kPrefill ? "T:" : "L:") << length << "/threads:" << threads;
    return os.str();
  }
};

// ---- shapes ----------------------------------------------------------------------------------

const mla::MlaConfig& v3() {
  static const mla::MlaConfig c = mla::presets::deepseek_v3();
  return c;
}
/// MHA: 128 heads x 128 (the mha_128x128 preset's heads) at DeepSeek-V3's width 7168, so its
/// projections have the shapes of V3's o_proj.
mla::AttentionConfig mha_config() {
  mla::AttentionConfig c = mla::presets::mha_128x128();
  c.hidden_size = v3().hidden_size;
  return c;
}
/// GQA: Qwen2.5-72B (64 query heads, 8 KV heads of 128, hidden 8192, q/k/v bias).
mla::AttentionConfig gqa_config() { return mla::presets::qwen2_5_72b(); }

struct KvDims {
  Index heads, kv_heads, head_dim, v_dim;
};
KvDims kv_dims(Design d) {
  if (d == Design::kMha) {
    const auto c = mha_config();
    return {c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.head_dim};
  }
  if (d == Design::kGqa) {
    const auto c = gqa_config();
    return {c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.head_dim};
  }
  return {v3().num_attention_heads, v3().num_attention_heads, v3().qk_head_dim(), v3().v_head_dim};
}

// ---- cost model: FLOPs and bytes of one step as executed -------------------------------------

struct StepCost {
  double flops = 0;
  double cache_bytes = 0;   // cache read per step (the kv_bytes counter)
  double weight_bytes = 0;  // weights read per step (layer and prefill)
  double tokens = 1;        // new tokens per step
};

StepCost core_cost(Design d, Index L, std::size_t eb) {
  d = base_design(d);
  const double lc = double(L + 1);
  const auto& c = v3();
  const double H = double(c.num_attention_heads), R = double(c.kv_lora_rank),
               P = double(c.qk_rope_head_dim), N = double(c.qk_nope_head_dim),
               V = double(c.v_head_dim);
  StepCost s;
  switch (d) {
    case Design::kMha:
    case Design::kGqa:
    case Design::kMlaNaiveCached: {
      const KvDims k = kv_dims(d);
      s.flops = 2.0 * double(k.heads) * lc * double(k.head_dim + k.v_dim);
      s.cache_bytes = lc * double(k.kv_heads * (k.head_dim + k.v_dim)) * double(eb);
      break;
    }
    case Design::kMlaAbsorbed:
      s.flops = 2.0 * H * lc * (R + P) + 2.0 * H * lc * R;
      s.cache_bytes = lc * (R + P) * double(eb);
      break;
    case Design::kMlaNaiveRecompute:
      s.flops = 2.0 * lc * R * H * (N + V) + 2.0 * H * lc * (N + P + V);
      s.cache_bytes = lc * (R + P) * double(eb);
      s.weight_bytes = H * (N + V) * R * 4.0;  // kv_b_proj
      break;
    default:
      break;
  }
  return s;
}

/// Projections of one token through the MLA layer (q_a, q_b, kv_a, o_proj): FLOPs and params.
void mla_projection_cost(double& flops, double& params) {
  const auto& c = v3();
  const double hidden = double(c.hidden_size), QL = double(c.q_lora_rank),
               H = double(c.num_attention_heads), R = double(c.kv_lora_rank),
               P = double(c.qk_rope_head_dim), N = double(c.qk_nope_head_dim),
               V = double(c.v_head_dim);
  params = hidden * QL + QL * H * (N + P) + hidden * (R + P) + H * V * hidden;
  flops = 2.0 * params;
}

/// `wb`: bytes per projection weight (4 float, 2 with Options::projection_weights = kBf16; the
/// MLA up-projections kv_b / W_UK / W_UV stay float).
StepCost layer_cost(Design d, Index L, std::size_t eb, double wb) {
  StepCost s = core_cost(d, L, eb);
  if (d == Design::kMha || d == Design::kGqa) {
    const auto c = d == Design::kMha ? mha_config() : gqa_config();
    const double params =
        double(c.hidden_size) * double(c.num_attention_heads + 2 * c.num_key_value_heads) *
            double(c.head_dim) +
        double(c.num_attention_heads * c.head_dim) * double(c.hidden_size);
    s.flops += 2.0 * params;
    s.weight_bytes = wb * params;
    return s;
  }
  const auto& c = v3();
  const double H = double(c.num_attention_heads), R = double(c.kv_lora_rank),
               N = double(c.qk_nope_head_dim), V = double(c.v_head_dim);
  double pf = 0, params = 0;
  mla_projection_cost(pf, params);
  s.flops += pf;
  const double up = H * (N + V) * R;  // W_UK + W_UV (absorbed) or kv_b_proj (naive)
  if (d == Design::kMlaAbsorbed) s.flops += 2.0 * up;  // fold W_UK into q, W_UV after
  if (d == Design::kMlaNaiveCached) s.flops += 2.0 * up;  // decompress the new token
  s.weight_bytes = wb * params + 4.0 * up;
  return s;
}

StepCost prefill_cost(Design d, Index T) {
  const auto& c = v3();
  const double t = double(T), pairs = t * (t + 1) / 2;
  const double H = double(c.num_attention_heads), R = double(c.kv_lora_rank),
               P = double(c.qk_rope_head_dim), N = double(c.qk_nope_head_dim),
               V = double(c.v_head_dim);
  double pf = 0, params = 0;
  mla_projection_cost(pf, params);
  StepCost s;
  s.tokens = t;
  s.flops = t * pf;
  if (d == Design::kMlaAbsorbed)
    s.flops += t * 2.0 * H * (N + V) * R + pairs * 2.0 * H * (2 * R + P);
  else
    s.flops += t * 2.0 * R * H * (N + V) + pairs * 2.0 * H * (N + P + V);
  s.weight_bytes = 4.0 * (params + H * (N + V) * R);
  s.cache_bytes = t * (R + P) * 4.0;
  return s;
}

StepCost cost_of(const Case& c) {
  const std::size_t eb = element_bytes(c.type);
  switch (c.part) {
    case Part::kCore: return core_cost(c.design, c.length, eb);
    case Part::kLayer: return layer_cost(c.design, c.length, eb, 4.0);
    case Part::kLayerBf16Weights: return layer_cost(c.design, c.length, eb, 2.0);
    case Part::kPrefill: return prefill_cost(c.design, c.length);
  }
  return {};
}

// ---- shared state ----------------------------------------------------------------------------

mla_bench::MachinePeaks g_peaks;
Index g_max_positions = 1 << 16;

/// Re-measures the FMA peak and read bandwidth for `threads` threads and keeps the higher of the
/// new and the known values. Called before each benchmark: other processes on a shared machine
/// can only lower a probe's result, so the running maximum is the best estimate of the limit,
/// and a benchmark is never held to a peak lower than what the machine showed just before it.
void refresh_peaks(int threads) {
  static std::unique_ptr<float, void (*)(float*)> buf(nullptr, [](float* p) {
    ::operator delete(p, std::align_val_t(64));
  });
  const std::size_t n = (std::size_t(256) << 20) / sizeof(float);  // 8x the 32 MiB L3
  if (!buf) {
    buf.reset(static_cast<float*>(::operator new(n * sizeof(float), std::align_val_t(64))));
    std::fill(buf.get(), buf.get() + n, 1.0f);
  }
  const double fma = mla_bench::internal::measure_fma_gflops(threads);
  const double bw = mla_bench::internal::measure_read_gbps(buf.get(), n, threads);
  double& fma_peak = threads >= 2 ? g_peaks.fma_gflops_2t : g_peaks.fma_gflops_1t;
  double& bw_peak = threads >= 2 ? g_peaks.read_gbps_2t : g_peaks.read_gbps_1t;
  fma_peak = std::max(fma_peak, fma);
  bw_peak = std::max(bw_peak, bw);
}

mla::ThreadPool& pool(int threads) {
  static std::map<int, std::unique_ptr<mla::ThreadPool>> pools;
  auto& p = pools[threads];
  if (!p) p = std::make_unique<mla::ThreadPool>(threads);
  return *p;
}

/// Appends `L` random rows to a cache in chunks (cache rows written directly, no layer).
template <class Cache, class AppendChunk>
void fill_rows(Cache& cache, Index L, Index row_values, std::uint64_t seed, AppendChunk append) {
  const Index chunk = std::max<Index>(1, (Index(1) << 20) / row_values);
  std::vector<float> buf(std::size_t(chunk * row_values));
  for (Index done = 0; done < L; done += chunk) {
    const Index n = std::min(chunk, L - done);
    mla_bench::fill_random(buf.data(), std::size_t(n * row_values), seed + std::uint64_t(done));
    append(cache, buf.data(), n);
  }
}

/// One benchmark's prepared state; step() runs one decode (or prefill) step and restores the cache.
struct Fixture {
  virtual ~Fixture() = default;
  virtual void step(int threads) = 0;
  std::set<int> warmed;
};

// Core: MHA / GQA / naive with decompressed cache through kernels::gqa_attention.
template <class T>
struct KvCoreFixture : Fixture {
  KvCoreFixture(Design d, Index L) : path(path_of(d)), len(L) {
    const KvDims k = kv_dims(base_design(d));
    cache = mla::KvCache<T>(k.kv_heads, k.head_dim, k.v_dim, L + 1);
    const Index row = k.kv_heads * (k.head_dim + k.v_dim);
    fill_rows(cache, L, row, 11, [&](mla::KvCache<T>& c, const float* src, Index n) {
      // Token-major [n, kv_heads, head_dim] keys followed by values from the same random block.
      c.append(src, row, src + k.kv_heads * k.head_dim, row, n);
    });
    shape.q_len = 1;
    shape.num_heads = k.heads;
    shape.num_kv_heads = k.kv_heads;
    shape.head_dim = k.head_dim;
    shape.v_dim = k.v_dim;
    shape.cache_len = L + 1;
    shape.k_head_stride = cache.k_head_stride();
    shape.v_head_stride = cache.v_head_stride();
    q.resize(std::size_t(k.heads * k.head_dim));
    k_new.resize(std::size_t(k.kv_heads * k.head_dim));
    v_new.resize(std::size_t(k.kv_heads * k.v_dim));
    out.resize(std::size_t(k.heads * k.v_dim));
    mla_bench::fill_random(q.data(), q.size(), 21);
    mla_bench::fill_random(k_new.data(), k_new.size(), 22);
    mla_bench::fill_random(v_new.data(), v_new.size(), 23);
    scale = float(1.0 / std::sqrt(double(k.head_dim)));
  }
  void step(int threads) override {
    cache.append(k_new.data(), Index(k_new.size()), v_new.data(), Index(v_new.size()), 1);
    mla::kernels::gqa_attention(shape, q.data(), cache.k_head(0), cache.v_head(0), scale,
                                out.data(), nullptr, ws[threads], &pool(threads), path);
    cache.truncate(len);
    benchmark::DoNotOptimize(out.data());
  }
  mla::kernels::KernelPath path;
  Index len;
  mla::KvCache<T> cache;
  mla::kernels::GqaAttentionShape shape;
  std::vector<float> q, k_new, v_new, out;
  std::map<int, mla::kernels::DecodeWorkspace> ws;
  float scale = 1;
};

/// kv_b_proj [H*(N+V), R] of the naive-recompute core, shared by its fixtures.
const mla::Matrix<float>& naive_kv_b() {
  static const mla::Matrix<float> w = mla_bench::random_matrix<float>(
      v3().num_attention_heads * (v3().qk_nope_head_dim + v3().v_head_dim), v3().kv_lora_rank,
      31, 1.0f / std::sqrt(float(v3().kv_lora_rank)));
  return w;
}

// Core: MLA over the latent cache, absorbed (kernels::absorbed_attention) or naive recompute.
template <class T>
struct LatentCoreFixture : Fixture {
  LatentCoreFixture(Design d, Index L)
      : naive(d == Design::kMlaNaiveRecompute),
        path(path_of(d)),
        len(L) {
    const auto& c = v3();
    H = c.num_attention_heads;
    R = c.kv_lora_rank;
    P = c.qk_rope_head_dim;
    N = c.qk_nope_head_dim;
    V = c.v_head_dim;
    cache = mla::LatentCache<T>(R, P, L + 1);
    fill_rows(cache, L, R + P, 12, [](mla::LatentCache<T>& lc, const float* src, Index n) {
      lc.append(src, lc.row_dim(), n);
    });
    row_new.resize(std::size_t(R + P));
    mla_bench::fill_random(row_new.data(), row_new.size(), 24);
    shape.q_len = 1;
    shape.num_heads = H;
    shape.kv_lora = R;
    shape.rope = P;
    shape.cache_len = L + 1;
    shape.row_stride = R + P;
    scale = float(c.softmax_scale());
    q_pe.resize(std::size_t(H * P));
    mla_bench::fill_random(q_pe.data(), q_pe.size(), 25);
    if (naive) {
      q_nope.resize(std::size_t(H * N));
      mla_bench::fill_random(q_nope.data(), q_nope.size(), 26);
      heads.resize(std::size_t(H * V));
      if (!std::is_same_v<T, float>) widened.resize(std::size_t((L + 1) * (R + P)));
      (void)naive_kv_b();
    } else {
      q_lat.resize(std::size_t(H * R));
      mla_bench::fill_random(q_lat.data(), q_lat.size(), 27);
      o_lat.resize(std::size_t(H * R));
    }
  }

  void step(int threads) override {
    cache.append(row_new.data(), R + P, 1);
    if (naive)
      naive_step(threads);
    else
      mla::kernels::absorbed_attention(shape, q_lat.data(), q_pe.data(), cache.data(), scale,
                                       o_lat.data(), nullptr, ws[threads], &pool(threads), path);
    cache.truncate(len);
    benchmark::DoNotOptimize(naive ? heads.data() : o_lat.data());
  }

  // Naive recompute, per head h: KV_h = C W_h^T [Lc, N+V] (K_nope | V), scores
  // s = scale (K_nope q_nope_h + K_pe q_pe_h), p = softmax(s), o_h = V_h^T p.
  void naive_step(int threads) {
    using Strided = Eigen::Map<const mla::Matrix<float>, 0, Eigen::OuterStride<>>;
    using VecMap = Eigen::Map<const Eigen::VectorXf>;
    const Index lc = len + 1, W = R + P;
    mla::ThreadPool& tp = pool(threads);
    const float* c = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      c = cache.data();
    } else {
      const T* src = cache.data();
      float* dst = widened.data();
      const Index parts = threads;
      tp.parallel_for(parts, [&](Index part, int) {
        const Index b = lc * W * part / parts, e = lc * W * (part + 1) / parts;
        for (Index i = b; i < e; ++i) dst[i] = static_cast<float>(src[i]);
      });
      c = dst;
    }
    auto& scratch = naive_scratch[threads];
    scratch.resize(std::size_t(threads));
    for (auto& m : scratch) m.resize(lc, N + V + 1);
    const Strided c_kv(c, lc, R, Eigen::OuterStride<>(W));
    const Strided k_pe(c + R, lc, P, Eigen::OuterStride<>(W));
    const mla::Matrix<float>& kv_b = naive_kv_b();
    tp.parallel_for(H, [&](Index h, int thread) {
      mla::Matrix<float>& kv = scratch[std::size_t(thread)];
      auto kv_h = kv.leftCols(N + V);
      kv_h.noalias() = c_kv * kv_b.middleRows(h * (N + V), N + V).transpose();
      auto s = kv.col(N + V);
      s.noalias() = kv.leftCols(N) * VecMap(q_nope.data() + h * N, N);
      s.noalias() += k_pe * VecMap(q_pe.data() + h * P, P);
      s *= scale;
      const float mx = s.maxCoeff();
      s = (s.array() - mx).exp().matrix();
      const float inv = 1.0f / s.sum();
      Eigen::Map<Eigen::VectorXf> o(heads.data() + h * V, V);
      o.noalias() = kv.middleCols(N, V).transpose() * s;
      o *= inv;
    });
  }

  bool naive;
  mla::kernels::KernelPath path;
  Index len, H = 0, R = 0, P = 0, N = 0, V = 0;
  mla::LatentCache<T> cache;
  mla::kernels::AbsorbedAttentionShape shape;
  std::vector<float> row_new, q_lat, q_pe, q_nope, o_lat, heads, widened;
  std::map<int, mla::kernels::DecodeWorkspace> ws;
  std::map<int, std::vector<mla::Matrix<float>>> naive_scratch;
  float scale = 1;
};

// ---- layers (one alive at a time; benchmarks are registered grouped by layer) ----------------

struct Layers {
  std::unique_ptr<mla::MultiHeadLatentAttention<float>> mla_layer;
  std::unique_ptr<mla::GroupedQueryAttention<float>> gqa_layer;
  Design gqa_kind = Design::kMha;
  mla::WeightFormat mla_format = mla::WeightFormat::kAsLoaded;
  mla::WeightFormat gqa_format = mla::WeightFormat::kAsLoaded;
};
Layers g_layers;

const mla::MultiHeadLatentAttention<float>& mla_layer(
    mla::WeightFormat format = mla::WeightFormat::kAsLoaded) {
  if (!g_layers.mla_layer || g_layers.mla_format != format) {
    g_layers.gqa_layer.reset();
    g_layers.mla_layer.reset();
    typename mla::MultiHeadLatentAttention<float>::Options opt;
    opt.max_positions = g_max_positions;
    opt.projection_weights = format;
    g_layers.mla_layer = std::make_unique<mla::MultiHeadLatentAttention<float>>(
        v3(), mla_bench::random_mla_weights<float>(v3(), 41), opt);
    g_layers.mla_format = format;
  }
  return *g_layers.mla_layer;
}

const mla::GroupedQueryAttention<float>& gqa_layer(Design d, mla::WeightFormat format) {
  if (!g_layers.gqa_layer || g_layers.gqa_kind != d || g_layers.gqa_format != format) {
    g_layers.mla_layer.reset();
    g_layers.gqa_layer.reset();
    const mla::AttentionConfig c = d == Design::kMha ? mha_config() : gqa_config();
    typename mla::GroupedQueryAttention<float>::Options opt;
    opt.max_positions = g_max_positions;
    opt.projection_weights = format;
    g_layers.gqa_layer = std::make_unique<mla::GroupedQueryAttention<float>>(
        c, mla_bench::random_gqa_weights<float>(c, 51), opt);
    g_layers.gqa_kind = d;
    g_layers.gqa_format = format;
  }
  return *g_layers.gqa_layer;
}

// Layer decode over a latent cache (absorbed / naive recompute) or a decompressed KvCache.
template <class T>
struct MlaLayerFixture : Fixture {
  MlaLayerFixture(Design d, Index L, mla::WeightFormat format)
      : layer(mla_layer(format)), design(d), len(L) {
    const auto& c = v3();
    if (d == Design::kMlaNaiveCached) {
      kv = layer.make_decompressed_cache<T>(L + 1);
      const Index kd = c.num_attention_heads * c.qk_head_dim(),
                  vd = c.num_attention_heads * c.v_head_dim;
      fill_rows(kv, L, kd + vd, 13, [&](mla::KvCache<T>& cc, const float* src, Index n) {
        cc.append(src, kd + vd, src + kd, kd + vd, n);
      });
    } else {
      latent = layer.make_latent_cache<T>(L + 1);
      fill_rows(latent, L, c.latent_dim(), 14,
                [](mla::LatentCache<T>& lc, const float* src, Index n) {
                  lc.append(src, lc.row_dim(), n);
                });
    }
    x = mla_bench::random_matrix<float>(1, c.hidden_size, 61);
    out.resize(1, c.hidden_size);
    pos.resize(1);
    pos[0] = L;
  }
  void step(int threads) override {
    ws.set_thread_pool(threads > 1 ? &pool(threads) : nullptr);
    if (design == Design::kMlaNaiveCached) {
      layer.forward(x, pos, kv, out, ws);
      kv.truncate(len);
    } else {
      layer.forward(x, pos, latent, out, ws,
                    design == Design::kMlaAbsorbed ? mla::MlaPath::kAbsorbed
                                                   : mla::MlaPath::kNaive);
      latent.truncate(len);
    }
    benchmark::DoNotOptimize(out.data());
  }
  const mla::MultiHeadLatentAttention<float>& layer;
  Design design;
  Index len;
  mla::LatentCache<T> latent;
  mla::KvCache<T> kv;
  mla::Matrix<float> x, out;
  mla::Positions pos;
  mla::Workspace ws;
};

template <class T>
struct GqaLayerFixture : Fixture {
  GqaLayerFixture(Design d, Index L, mla::WeightFormat format)
      : layer(gqa_layer(d, format)), len(L) {
    const auto& c = layer.config();
    cache = layer.make_cache<T>(L + 1);
    const Index kd = c.num_key_value_heads * c.head_dim;
    fill_rows(cache, L, 2 * kd, 15, [&](mla::KvCache<T>& cc, const float* src, Index n) {
      cc.append(src, 2 * kd, src + kd, 2 * kd, n);
    });
    x = mla_bench::random_matrix<float>(1, c.hidden_size, 62);
    out.resize(1, c.hidden_size);
    pos.resize(1);
    pos[0] = L;
  }
  void step(int threads) override {
    ws.set_thread_pool(threads > 1 ? &pool(threads) : nullptr);
    layer.forward(x, pos, cache, out, ws);
    cache.truncate(len);
    benchmark::DoNotOptimize(out.data());
  }
  const mla::GroupedQueryAttention<float>& layer;
  Index len;
  mla::KvCache<T> cache;
  mla::Matrix<float> x, out;
  mla::Positions pos;
  mla::Workspace ws;
};

// Prefill: T tokens at positions 0..T-1 into an empty latent cache, then the cache is cleared.
struct PrefillFixture : Fixture {
  PrefillFixture(Design d, Index T) : layer(mla_layer()), design(d) {
    cache = layer.make_latent_cache<float>(T);
    x = mla_bench::random_matrix<float>(T, v3().hidden_size, 63);
    out.resize(T, v3().hidden_size);
    pos.resize(T);
    for (Index t = 0; t < T; ++t) pos[t] = t;
  }
  void step(int) override {
    layer.forward(x, pos, cache, out, ws,
                  design == Design::kMlaAbsorbed ? mla::MlaPath::kAbsorbed : mla::MlaPath::kNaive);
    cache.clear();
    benchmark::DoNotOptimize(out.data());
  }
  const mla::MultiHeadLatentAttention<float>& layer;
  Design design;
  mla::LatentCache<float> cache;
  mla::Matrix<float> x, out;
  mla::Positions pos;
  mla::Workspace ws;
};

template <class T>
std::unique_ptr<Fixture> make_fixture_t(const Case& c) {
  switch (c.part) {
    case Part::kCore:
      if (c.design == Design::kMlaAbsorbed || c.design == Design::kMlaAbsorbedAmx ||
          c.design == Design::kMlaNaiveRecompute)
        return std::make_unique<LatentCoreFixture<T>>(c.design, c.length);
      return std::make_unique<KvCoreFixture<T>>(c.design, c.length);
    case Part::kLayer:
    case Part::kLayerBf16Weights: {
      const mla::WeightFormat f =
          c.part == Part::kLayer ? mla::WeightFormat::kAsLoaded : mla::WeightFormat::kBf16;
      if (c.design == Design::kMha || c.design == Design::kGqa)
        return std::make_unique<GqaLayerFixture<T>>(c.design, c.length, f);
      return std::make_unique<MlaLayerFixture<T>>(c.design, c.length, f);
    }
    case Part::kPrefill: return std::make_unique<PrefillFixture>(c.design, c.length);
  }
  return nullptr;
}

/// The fixture of `c`, reused across the calls Google Benchmark makes (iteration estimation,
/// repetitions) and across thread counts; only one is alive, so big caches are freed in turn.
Fixture& fixture_for(const Case& c) {
  static std::unique_ptr<Fixture> current;
  static std::string current_key;
  std::ostringstream key;
  key << name_of(c.design) << '/' << name_of(c.part) << '/' << name_of(c.type) << '/'
      << c.length;
  if (!current || current_key != key.str()) {
    current.reset();
    current_key.clear();
    current = c.type == CacheType::kF32 ? make_fixture_t<float>(c)
                                        : make_fixture_t<mla::bfloat16>(c);
    current_key = key.str();
  }
  return *current;
}

void run_case(benchmark::State& state, const Case& c) {
  static std::set<std::string> probed;
  if (probed.insert(c.name()).second) refresh_peaks(c.threads);
  Fixture* f = nullptr;
  try {
    f = &fixture_for(c);
    // Two untimed steps per thread count: workspaces and pools reach their steady state. The
    // first may spread a Workspace over several chunks, which the second's reset() merges into
    // one new block; that block's pages are first touched (zeroed by the kernel) during the
    // second step. With one warm-up step those page faults fell into the timed step: 13% of the
    // prefill T = 2048 profile, where a step is a single iteration.
    if (f->warmed.insert(c.threads).second) {
      f->step(c.threads);
      f->step(c.threads);
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  for (auto _ : state) {
    f->step(c.threads);
    benchmark::ClobberMemory();
  }
  const StepCost s = cost_of(c);
  const mla_bench::Limits lim = mla_bench::limits_for(g_peaks, c.threads, c.type == CacheType::kBf16,
                                                      is_amx(c.design));
  const double bound = mla_bench::roofline_seconds(s.flops, s.cache_bytes + s.weight_bytes, lim);
  using benchmark::Counter;
  state.counters["tok_s"] = Counter(s.tokens, Counter::kIsIterationInvariantRate);
  state.counters["kv_bytes"] = Counter(s.cache_bytes);
  state.counters["gflops"] = Counter(s.flops / 1e9, Counter::kIsIterationInvariantRate);
  state.counters["pct_peak"] = Counter(100.0 * bound, Counter::kIsIterationInvariantRate);
}

// ---- speed-up of absorbed over the naive paths, from runs of this process --------------------

/// Remembers the naive runs' times and adds speedup_vs_recompute / speedup_vs_cached to the
/// matching mla_absorbed and mla_absorbed_amx runs (same part, type, L and threads; same
/// repetition index, or the same mean/median aggregate). Registration puts the naive benchmarks
/// first.
class SpeedupTable {
 public:
  void augment(std::vector<benchmark::BenchmarkReporter::Run>& runs) {
    for (auto& run : runs) {
      if (run.error_occurred) continue;
      const std::string& fn = run.run_name.function_name;
      const auto slash = fn.find('/');
      if (slash == std::string::npos) continue;
      const std::string design = fn.substr(0, slash), rest = fn.substr(slash);
      std::string tag;
      if (run.run_type == benchmark::BenchmarkReporter::Run::RT_Aggregate) {
        if (run.aggregate_name != "mean" && run.aggregate_name != "median") continue;
        tag = run.aggregate_name;
      } else {
        tag = std::to_string(run.repetition_index);
      }
      const double t = run.GetAdjustedRealTime();
      if (design == "mla_naive_recompute" || design == "mla_naive_cached") {
        times_[design + rest + "|" + tag] = t;
      } else if ((design == "mla_absorbed" || design == "mla_absorbed_amx") && t > 0) {
        for (const char* naive : {"mla_naive_recompute", "mla_naive_cached"}) {
          const auto it = times_.find(std::string(naive) + rest + "|" + tag);
          if (it == times_.end()) continue;
          run.counters[std::strcmp(naive, "mla_naive_cached") == 0 ? "speedup_vs_cached"
                                                                   : "speedup_vs_recompute"] =
              benchmark::Counter(it->second / t);
        }
      }
    }
  }

 private:
  std::map<std::string, double> times_;
};
SpeedupTable g_speedups;

template <class Base>
class SpeedupReporter : public Base {
 public:
  using Base::Base;
  void ReportRuns(const std::vector<benchmark::BenchmarkReporter::Run>& runs) override {
    std::vector<benchmark::BenchmarkReporter::Run> copy = runs;
    g_speedups.augment(copy);
    // pct_peak is final (divided by the time) at this point; drop the rate flag so the console
    // does not print it as "%/s".
    for (auto& run : copy) {
      const auto it = run.counters.find("pct_peak");
      if (it != run.counters.end())
        it->second.flags = benchmark::Counter::Flags(it->second.flags & ~benchmark::Counter::kIsRate);
    }
    Base::ReportRuns(copy);
  }
};

std::unique_ptr<benchmark::BenchmarkReporter> make_reporter(const std::string& format,
                                                            bool console_color, bool tabular) {
  if (format == "json") return std::make_unique<SpeedupReporter<benchmark::JSONReporter>>();
  if (format == "console" || format.empty()) {
    int opts = benchmark::ConsoleReporter::OO_None;
    if (console_color) opts |= benchmark::ConsoleReporter::OO_Color;
    if (tabular) opts |= benchmark::ConsoleReporter::OO_Tabular;
    return std::make_unique<SpeedupReporter<benchmark::ConsoleReporter>>(
        static_cast<benchmark::ConsoleReporter::OutputOptions>(opts));
  }
  return nullptr;  // csv and anything else: Google Benchmark's own reporter (no speed-ups)
}

// ---- command line ----------------------------------------------------------------------------

struct Options {
  bool full = false;
  bool no_skip = false;
  std::vector<Index> contexts;
  std::vector<int> threads;
  std::vector<CacheType> types;
  std::vector<Part> parts;
  std::vector<Index> prefill_lengths;
};

void usage() {
  std::cout <<
      "usage: decode_bench [--quick | --full] [--contexts=1024,4096,...] [--threads=1,2]\n"
      "                    [--types=f32,bf16] [--parts=core,layer,layer_bf16w,prefill]\n"
      "                    [--no-skip]\n"
      "                    [Google Benchmark flags, e.g. --benchmark_repetitions=3\n"
      "                     --benchmark_out=decode.json --benchmark_out_format=json\n"
      "                     --benchmark_filter=mla_absorbed]\n"
      "  --quick     (default) core part, f32 cache, L = 1k and 4k, 1 and 2 threads\n"
      "  --full      core, layer and layer_bf16w (bf16 projection weights), f32 and bf16\n"
      "              caches, L = 1k/4k/16k/32k, 1 and 2 threads; prefill T = 512 and 2048\n"
      "              (MLA, both paths, 1 thread)\n"
      "  --contexts  decode context lengths (e.g. add 65536 where memory allows)\n"
      "  --no-skip   also run mla_naive_recompute above L = 4096 and mla_naive_cached above\n"
      "              L = 16384 (skipped by default: minutes per step / GBs of cache)\n"
      "Names: <design>/<part>/<f32|bf16>/L:<n>/threads:<n>; counters tok_s, kv_bytes, gflops,\n"
      "pct_peak (% of this run's measured FMA peak or read bandwidth, whichever bounds the step),\n"
      "speedup_vs_recompute and speedup_vs_cached on mla_absorbed.\n";
}

template <class T, class Parse>
bool parse_list(const std::string& s, std::vector<T>& out, Parse parse) {
  out.clear();
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    T v;
    if (!parse(item, v)) return false;
    out.push_back(v);
  }
  return !out.empty();
}

bool parse_int(const std::string& s, long long& v) {
  char* end = nullptr;
  v = std::strtoll(s.c_str(), &end, 10);
  if (end != s.c_str() && (*end == 'k' || *end == 'K')) {
    v *= 1024;
    ++end;
  }
  return end != s.c_str() && *end == '\0' && v > 0;
}

bool skipped_by_default(Design d, Index L) {
  return (d == Design::kMlaNaiveRecompute && L > 4096) ||
         (d == Design::kMlaNaiveCached && L > 16384);
}

void register_all(const Options& o) {
  auto add = [](const Case& c) {
    benchmark::RegisterBenchmark(c.name().c_str(),
                                 [c](benchmark::State& st) { run_case(st, c); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  // Naive before absorbed for each (part, type, L, threads), so the speed-ups can be formed.
  const Design mla_order[] = {Design::kMlaNaiveRecompute, Design::kMlaNaiveCached,
                              Design::kMlaAbsorbed};
  for (Part part : o.parts) {
    if (part == Part::kCore) {
      for (CacheType t : o.types)
        for (Index L : o.contexts)
          for (Design d : {Design::kMha, Design::kGqa, mla_order[0], mla_order[1], mla_order[2],
                           Design::kMhaAmx, Design::kGqaAmx, Design::kMlaAbsorbedAmx})
            for (int th : o.threads) {
              // The AMX variants: bf16 caches on CPUs with AMX-BF16 only.
              if (is_amx(d) && (t != CacheType::kBf16 ||
                                !mla::kernels::path_available(mla::kernels::KernelPath::kAmx)))
                continue;
              if (o.no_skip || !skipped_by_default(d, L)) add({d, part, t, L, th});
            }
    } else if (part == Part::kLayer || part == Part::kLayerBf16Weights) {
      // Grouped by layer so each layer's weights are built once; the Workspace carries the pool.
      for (Design d : {Design::kMha, Design::kGqa})
        for (CacheType t : o.types)
          for (Index L : o.contexts)
            for (int th : o.threads) add({d, part, t, L, th});
      for (CacheType t : o.types)
        for (Index L : o.contexts)
          for (Design d : mla_order)
            for (int th : o.threads)
              if (o.no_skip || !skipped_by_default(d, L)) add({d, part, t, L, th});
    } else {
      for (Index T : o.prefill_lengths)
        for (Design d : {Design::kMlaNaiveRecompute, Design::kMlaAbsorbed})
          add({d, part, CacheType::kF32, T, 1});
    }
  }
}

std::string join(const std::vector<Index>& v) {
  std::string s;
  for (Index x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool contexts_set = false, threads_set = false, types_set = false, parts_set = false;
  std::string display_format = "console", out_format = "json", out_file;
  bool tabular = false;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      const std::size_t n = std::strlen(flag);
      return a.compare(0, n, flag) == 0 ? a.c_str() + n : nullptr;
    };
    bool ok = true;
    if (a == "--help" || a == "-h") {
      usage();
      return 0;
    } else if (a == "--quick") {
      o.full = false;
    } else if (a == "--full") {
      o.full = true;
    } else if (a == "--no-skip") {
      o.no_skip = true;
    } else if (const char* v = value("--contexts=")) {
      contexts_set = ok = parse_list<Index>(v, o.contexts, [](const std::string& s, Index& x) {
        long long y;
        if (!parse_int(s, y)) return false;
        x = Index(y);
        return true;
      });
    } else if (const char* v2 = value("--threads=")) {
      threads_set = ok = parse_list<int>(v2, o.threads, [](const std::string& s, int& x) {
        long long y;
        if (!parse_int(s, y) || y > 256) return false;
        x = int(y);
        return true;
      });
    } else if (const char* v3s = value("--types=")) {
      types_set = ok = parse_list<CacheType>(v3s, o.types, [](const std::string& s, CacheType& x) {
        if (s != "f32" && s != "bf16") return false;
        x = s == "f32" ? CacheType::kF32 : CacheType::kBf16;
        return true;
      });
    } else if (const char* v4 = value("--parts=")) {
      parts_set = ok = parse_list<Part>(v4, o.parts, [](const std::string& s, Part& x) {
        if (s == "core") x = Part::kCore;
        else if (s == "layer") x = Part::kLayer;
        else if (s == "layer_bf16w") x = Part::kLayerBf16Weights;
        else if (s == "prefill") x = Part::kPrefill;
        else return false;
        return true;
      });
    } else {
      // Google Benchmark's flags: remember the reporter choices, then pass them on.
      if (const char* f = value("--benchmark_format=")) display_format = f;
      if (const char* f = value("--benchmark_out_format=")) out_format = f;
      if (const char* f = value("--benchmark_out=")) out_file = f;
      if (const char* f = value("--benchmark_counters_tabular=")) tabular = std::strcmp(f, "true") == 0;
      rest.push_back(argv[i]);
    }
    if (!ok) {
      std::cerr << "decode_bench: bad value in '" << a << "'\n";
      usage();
      return 2;
    }
  }
  if (!contexts_set)
    o.contexts = o.full ? std::vector<Index>{1024, 4096, 16384, 32768} : std::vector<Index>{1024, 4096};
  if (!threads_set) o.threads = {1, 2};
  if (!types_set)
    o.types = o.full ? std::vector<CacheType>{CacheType::kF32, CacheType::kBf16}
                     : std::vector<CacheType>{CacheType::kF32};
  if (!parts_set)
    o.parts = o.full ? std::vector<Part>{Part::kCore, Part::kLayer, Part::kLayerBf16Weights, Part::kPrefill}
                     : std::vector<Part>{Part::kCore};
  o.prefill_lengths = {512, 2048};
  Index longest = *std::max_element(o.contexts.begin(), o.contexts.end());
  longest = std::max<Index>(longest, 2048);
  g_max_positions = longest + 8;

  int rest_argc = int(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 1;
  register_all(o);

  // Best of three probes (each already best of three): other processes on a shared machine can
  // only lower a measured peak, never raise it.
  for (int i = 0; i < 3; ++i) {
    const mla_bench::MachinePeaks p = mla_bench::measure_machine_peaks();
    g_peaks.fma_isa = p.fma_isa;
    g_peaks.fma_gflops_1t = std::max(g_peaks.fma_gflops_1t, p.fma_gflops_1t);
    g_peaks.fma_gflops_2t = std::max(g_peaks.fma_gflops_2t, p.fma_gflops_2t);
    g_peaks.read_gbps_1t = std::max(g_peaks.read_gbps_1t, p.read_gbps_1t);
    g_peaks.read_gbps_2t = std::max(g_peaks.read_gbps_2t, p.read_gbps_2t);
    g_peaks.bf16_dot_gflops_1t = std::max(g_peaks.bf16_dot_gflops_1t, p.bf16_dot_gflops_1t);
    g_peaks.amx_bf16_gflops_1t = std::max(g_peaks.amx_bf16_gflops_1t, p.amx_bf16_gflops_1t);
    g_peaks.amx_bf16_gflops_2t = std::max(g_peaks.amx_bf16_gflops_2t, p.amx_bf16_gflops_2t);
  }
  auto num = [](double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.1f", v);
    return std::string(b);
  };
  benchmark::AddCustomContext("cpu_model", mla_bench::cpu_model_name());
  benchmark::AddCustomContext("peak_fma_gflops_1t", num(g_peaks.fma_gflops_1t));
  benchmark::AddCustomContext("peak_fma_gflops_2t", num(g_peaks.fma_gflops_2t));
  benchmark::AddCustomContext("peak_read_gbps_1t", num(g_peaks.read_gbps_1t));
  benchmark::AddCustomContext("peak_read_gbps_2t", num(g_peaks.read_gbps_2t));
  benchmark::AddCustomContext("peak_bf16_dot_gflops_1t", g_peaks.bf16_dot_gflops_1t > 0
                                                             ? num(g_peaks.bf16_dot_gflops_1t)
                                                             : std::string("absent"));
  if (mla::kernels::path_available(mla::kernels::KernelPath::kAmx)) {
    benchmark::AddCustomContext("peak_amx_bf16_gflops_1t", g_peaks.amx_bf16_gflops_1t > 0
                                                               ? num(g_peaks.amx_bf16_gflops_1t)
                                                               : std::string("not granted"));
    benchmark::AddCustomContext("peak_amx_bf16_gflops_2t", num(g_peaks.amx_bf16_gflops_2t));
  }
  benchmark::AddCustomContext("kernels", mla::kernels::path_name(mla::kernels::auto_path()));
  benchmark::AddCustomContext("peak_fma_isa", g_peaks.fma_isa);
  benchmark::AddCustomContext("mode", o.full ? "full" : "quick");
  {
    // Other work on the machine lowers both the peaks and the results: record it.
    std::ifstream load("/proc/loadavg");
    std::string l1;
    if (load >> l1) benchmark::AddCustomContext("loadavg_1min_at_start", l1);
  }
  benchmark::AddCustomContext("contexts", join(o.contexts));
  benchmark::AddCustomContext(
      "skipped", o.no_skip ? std::string("none")
                           : std::string("mla_naive_recompute above L=4096, mla_naive_cached "
                                         "above L=16384 (--no-skip runs them)"));
  benchmark::AddCustomContext("pct_peak",
                              "roofline: max(FLOPs/FMA peak, bytes/read bandwidth) / time, peaks "
                              "of the same thread count: the maximum of the probes at start-up "
                              "and before each benchmark so far");

  const bool color = isatty(STDOUT_FILENO) != 0;
  std::unique_ptr<benchmark::BenchmarkReporter> display = make_reporter(display_format, color, tabular);
  std::unique_ptr<benchmark::BenchmarkReporter> file;
  if (!out_file.empty()) file = make_reporter(out_format, false, tabular);
  if (display && (file || out_file.empty()))
    benchmark::RunSpecifiedBenchmarks(display.get(), file.get());
  else if (display)
    benchmark::RunSpecifiedBenchmarks(display.get());
  else
    benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::fprintf(stderr,
               "decode_bench: peaks at the end of the run (maximum over the probes before each "
               "benchmark): FMA %.1f / %.1f GFLOP/s, read %.1f / %.1f GB/s (1 / 2 threads)\n",
               g_peaks.fma_gflops_1t, g_peaks.fma_gflops_2t, g_peaks.read_gbps_1t,
               g_peaks.read_gbps_2t);
  return 0;
}
