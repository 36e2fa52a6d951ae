// serving_bench: the serving features of the MLA attention core at DeepSeek-V3's shapes (128
// heads, kv_lora 512, rope 64; one new token per sequence): what paging costs, what batching
// many sequences of different lengths gains, and what the 8-bit cache costs in accuracy.
//
// Benchmarks (all wall-clock; each iteration runs every variant once, in alternating order, and
// the counters are medians of the per-iteration times and of the per-iteration ratios, so the
// comparisons are paired and survive other load on the machine):
//
//   paging/<type>/L:<L>/threads:<n>     one sequence of L cached tokens
//     contiguous_ms      kernels::absorbed_attention over a LatentCache (fp8: the decode engine
//                        over a contiguous Fp8LatentCache's rows; every variant but blockwise is
//                        the same engine over another rows view)
//     paged_ms           kernels::paged_absorbed_attention over a PagedLatentCache, 64-token
//                        blocks scattered over the pool (a shuffled free list)
//     in_order_ms        the same with the blocks adjacent (a fresh pool)
//     blockwise_ms       test_support::paged_absorbed_attention_blockwise: one public-kernel call per
//                        block, LSE-merged (the straightforward design, for comparison)
//     overhead_pct       100 (paged / contiguous - 1); in_order_overhead_pct, blockwise_overhead_pct
//     tok_s              1 / paged time;   bytes_per_token   cache bytes per token
//   batched/<type>/B:<B>/threads:<n>    B sequences of mixed lengths, one token each
//     batched_ms         one kernels::batched_absorbed_attention call over the B paged caches
//     separate_ms        B calls of paged_absorbed_attention, one per sequence, on the same
//                        paged caches (each call splits its own rows over the threads)
//     contiguous_ms      B calls of absorbed_attention on contiguous copies of the caches
//                        (fp8: paged_absorbed_attention on contiguous Fp8LatentCaches)
//     tok_s              B / batched time (new tokens per second); separate_tok_s and
//                        contiguous_tok_s likewise
//     speedup_vs_separate    separate / batched: what scheduling the batch as one call gains
//     speedup_vs_contiguous  contiguous / batched: paging and batching together
//     cached_tokens      sum of the B lengths
//   type: f32, bf16, fp8 (FlashMLA's 656-byte FP8 row: e4m3 c_kv, 4 float scales, bf16 k_pe),
//         int8 (648-byte row: int8 c_kv, a float scale and the code sum, bf16 k_pe; c_kv scores on
//         AVX512-VNNI where the CPU has it). Not run unless asked (--types=...,int8).
//   Lengths for B > 1: sequence 0 holds 16384 tokens (the long one that must not leave threads
//   idle), the others are log-uniform in [256, 8192] from a fixed seed; B = 1 holds 4096.
//
// Context: bytes per token of each cache type, and the 8-bit cache's accuracy on the Hugging
// Face reference cases (../shared/reference, or --reference-dir / $MLA_REFERENCE_DIR): the layer
// run with a float cache (MultiHeadLatentAttention::forward) against mla_decode_batch with a
// paged FP8 cache (and a bf16 one), prefill of half the tokens then one at a time;
// max |y_cache - y_float| / max |y_float| per case.
//
// Flags: --lengths=4096,16384 --batches=1,4,16,64 --threads=1,2 --types=f32,bf16,fp8,int8
// --parts=paging,batched --reference-dir=DIR, plus Google Benchmark's (--benchmark_filter,
// --benchmark_out=FILE --benchmark_out_format=json, --benchmark_min_time=...). Every iteration
// is one paired sample, so on a shared machine give it time: --benchmark_min_time=5 gives
// 20-100 pairs per paging case (the default 0.5 s gives one pair for B = 64).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "mla/cache/latent_cache.hpp"
#include "mla/cache/paged_latent_cache.hpp"
#include "mla/cache/quantized_latent_cache.hpp"
#include "mla/conformance/hf_reference.hpp"
#include "mla/core/threading.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/layers/batched_decode.hpp"
#include "mla/presets.hpp"
#include "../tests/support/blockwise_absorbed.hpp"

namespace {

using mla::Index;
using Clock = std::chrono::steady_clock;

enum class CacheType { kF32, kBf16, kFp8, kInt8 };
const char* name_of(CacheType t) {
  switch (t) {
    case CacheType::kF32: return "f32";
    case CacheType::kBf16: return "bf16";
    case CacheType::kFp8: return "fp8";
    case CacheType::kInt8: return "int8";
  }
  return "";
}

const mla::MlaConfig& v3() {
  static const mla::MlaConfig c = mla::presets::deepseek_v3();
  return c;
}
constexpr Index kBlock = 64;

mla::ThreadPool& thread_pool(int threads) {
  static std::map<int, std::unique_ptr<mla::ThreadPool>> pools;
  auto& p = pools[threads];
  if (!p) p = std::make_unique<mla::ThreadPool>(threads);
  return *p;
}

template <class F>
double seconds(F&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Random rows appended to `cache` in chunks (values only need to look like latents).
template <class Cache>
void fill(Cache& cache, Index L, std::uint64_t seed) {
  const Index W = v3().latent_dim(), chunk = 1024;
  std::vector<float> buf(std::size_t(chunk * W));
  for (Index done = 0; done < L; done += chunk) {
    const Index n = std::min(chunk, L - done);
    mla_bench::fill_random(buf.data(), buf.size(), seed + std::uint64_t(done));
    cache.append(buf.data(), W, n);
  }
}

/// A pool whose free list is shuffled, so caches built from it get scattered blocks.
template <class T>
std::unique_ptr<mla::LatentBlockPool<T>> scattered_pool(Index blocks, std::uint64_t seed) {
  auto pool = std::make_unique<mla::LatentBlockPool<T>>(v3().kv_lora_rank, v3().qk_rope_head_dim,
                                                        blocks, kBlock);
  std::vector<std::int32_t> ids;
  pool->allocate(blocks, ids);
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(seed));
  for (std::int32_t id : ids) pool->free(id);
  return pool;
}

template <class T>
inline constexpr bool kQuantized =
    std::is_same_v<T, mla::Fp8Latent> || std::is_same_v<T, mla::Int8Latent>;

/// The contiguous cache type of an element type (8-bit: QuantizedLatentCache).
template <class T>
struct Contiguous {
  using type =
      std::conditional_t<kQuantized<T>, mla::QuantizedLatentCache<T>, mla::LatentCache<T>>;
  static type make(Index L) { return type(v3().kv_lora_rank, v3().qk_rope_head_dim, L); }
};

/// Query of one sequence: q_lat [q_len * H, R], q_pe [q_len * H, P], output o_lat.
struct Query {
  explicit Query(std::uint64_t seed) {
    const Index H = v3().num_attention_heads;
    q_lat.resize(std::size_t(H * v3().kv_lora_rank));
    q_pe.resize(std::size_t(H * v3().qk_rope_head_dim));
    o_lat.resize(q_lat.size());
    mla_bench::fill_random(q_lat.data(), q_lat.size(), seed);
    mla_bench::fill_random(q_pe.data(), q_pe.size(), seed + 1);
  }
  std::vector<float> q_lat, q_pe, o_lat;
};

/// One contiguous decode through the public kernel (8-bit: the engine on the contiguous view).
template <class T>
void contiguous_decode(const typename Contiguous<T>::type& cache, Query& q,
                       mla::kernels::DecodeWorkspace& kws,
                       mla::kernels::DecodeWorkspace& bws, mla::ThreadPool* pool) {
  const float scale = float(v3().softmax_scale());
  const Index H = v3().num_attention_heads;
  if constexpr (kQuantized<T>) {
    (void)kws;
    mla::kernels::paged_absorbed_attention(1, H, q.q_lat.data(), q.q_pe.data(),
                                           mla::latent_rows(cache), scale, q.o_lat.data(), nullptr,
                                           bws, pool);
  } else {
    (void)bws;
    mla::kernels::AbsorbedAttentionShape s;
    s.num_heads = H;
    s.kv_lora = v3().kv_lora_rank;
    s.rope = v3().qk_rope_head_dim;
    s.cache_len = cache.size();
    s.row_stride = cache.row_stride();
    mla::kernels::absorbed_attention(s, q.q_lat.data(), q.q_pe.data(), cache.data(), scale,
                                     q.o_lat.data(), nullptr, kws, pool);
  }
}

// ---- paging ----------------------------------------------------------------------------------

struct PagingFixtureBase {
  virtual ~PagingFixtureBase() = default;
  /// Runs variant v (0 contiguous, 1 paged scattered, 2 paged in order, 3 blockwise).
  virtual void run(int variant, mla::ThreadPool* pool) = 0;
  std::size_t bytes_per_token = 0;
};

template <class T>
struct PagingFixture : PagingFixtureBase {
  explicit PagingFixture(Index L) : query(7) {
    const Index blocks = (L + kBlock - 1) / kBlock;
    contiguous = Contiguous<T>::make(L);
    fill(contiguous, L, 1);
    scattered = scattered_pool<T>(blocks, 3);
    paged = mla::PagedLatentCache<T>(*scattered, L);
    fill(paged, L, 1);
    fresh = std::make_unique<mla::LatentBlockPool<T>>(v3().kv_lora_rank, v3().qk_rope_head_dim,
                                                      blocks, kBlock);
    in_order = mla::PagedLatentCache<T>(*fresh, L);
    fill(in_order, L, 1);
    bytes_per_token = paged.bytes_per_token();
  }
  void run(int variant, mla::ThreadPool* pool) override {
    const float scale = float(v3().softmax_scale());
    const Index H = v3().num_attention_heads;
    switch (variant) {
      case 0: contiguous_decode<T>(contiguous, query, kws, bws, pool); break;
      case 1:
      case 2:
        mla::kernels::paged_absorbed_attention(1, H, query.q_lat.data(), query.q_pe.data(),
                                               (variant == 1 ? paged : in_order).rows(), scale,
                                               query.o_lat.data(), nullptr, bws, pool);
        break;
      default:
        mla::test_support::paged_absorbed_attention_blockwise(1, H, query.q_lat.data(),
                                                         query.q_pe.data(), paged.rows(), scale,
                                                         query.o_lat.data(), nullptr, blw, pool);
    }
    benchmark::DoNotOptimize(query.o_lat.data());
  }
  Query query;
  typename Contiguous<T>::type contiguous;
  std::unique_ptr<mla::LatentBlockPool<T>> scattered, fresh;
  mla::PagedLatentCache<T> paged, in_order;
  mla::kernels::DecodeWorkspace kws;
  mla::kernels::DecodeWorkspace bws;
  mla::test_support::BlockwiseAbsorbedWorkspace blw;
};

/// One fixture alive at a time (a 16k f32 case holds ~110 MB of caches).
template <class Fixture, class Make>
Fixture& current_fixture(const std::string& key, Make make) {
  static std::unique_ptr<Fixture> current;
  static std::string current_key;
  if (!current || current_key != key) {
    current.reset();
    current = make();
    current_key = key;
  }
  return *current;
}

std::unique_ptr<PagingFixtureBase> make_paging(CacheType t, Index L) {
  switch (t) {
    case CacheType::kF32: return std::make_unique<PagingFixture<float>>(L);
    case CacheType::kBf16: return std::make_unique<PagingFixture<mla::bfloat16>>(L);
    case CacheType::kFp8: return std::make_unique<PagingFixture<mla::Fp8Latent>>(L);
    case CacheType::kInt8: return std::make_unique<PagingFixture<mla::Int8Latent>>(L);
  }
  return nullptr;
}

void run_paging(benchmark::State& state, CacheType type, Index L, int threads) {
  auto& f = current_fixture<PagingFixtureBase>(
      std::string("paging/") + name_of(type) + "/" + std::to_string(L),
      [&] { return make_paging(type, L); });
  mla::ThreadPool* pool = &thread_pool(threads);
  for (int v = 0; v < 4; ++v) f.run(v, pool);  // warm-up: workspaces reach their size
  std::vector<double> t[4], r_paged, r_in_order, r_blockwise;
  int iter = 0;
  for (auto _ : state) {
    double s[4];
    // Alternate the order so neither variant always runs on a warmer cache.
    for (int k = 0; k < 4; ++k) {
      const int v = iter % 2 ? 3 - k : k;
      s[v] = seconds([&] { f.run(v, pool); });
    }
    for (int v = 0; v < 4; ++v) t[v].push_back(s[v]);
    r_paged.push_back(s[1] / s[0]);
    r_in_order.push_back(s[2] / s[0]);
    r_blockwise.push_back(s[3] / s[0]);
    ++iter;
  }
  using benchmark::Counter;
  state.counters["contiguous_ms"] = Counter(1e3 * median(t[0]));
  state.counters["paged_ms"] = Counter(1e3 * median(t[1]));
  state.counters["in_order_ms"] = Counter(1e3 * median(t[2]));
  state.counters["blockwise_ms"] = Counter(1e3 * median(t[3]));
  state.counters["overhead_pct"] = Counter(100.0 * (median(r_paged) - 1.0));
  state.counters["in_order_overhead_pct"] = Counter(100.0 * (median(r_in_order) - 1.0));
  state.counters["blockwise_overhead_pct"] = Counter(100.0 * (median(r_blockwise) - 1.0));
  state.counters["tok_s"] = Counter(1.0 / median(t[1]));
  state.counters["bytes_per_token"] = Counter(double(f.bytes_per_token));
}

// ---- batched ---------------------------------------------------------------------------------

std::vector<Index> mixed_lengths(Index B) {
  if (B == 1) return {4096};
  std::vector<Index> lens{16384};
  mla_bench::FastRng rng(2024);
  for (Index b = 1; b < B; ++b) {
    const double u = 0.5 * (double(rng.uniform()) + 1.0);  // [0, 1)
    lens.push_back(Index(std::lround(256.0 * std::pow(32.0, u))));
  }
  return lens;
}

struct BatchedFixtureBase {
  virtual ~BatchedFixtureBase() = default;
  /// Runs variant v: 0 batched, 1 separate paged calls, 2 separate contiguous calls.
  virtual void run(int variant, mla::ThreadPool* pool) = 0;
  std::size_t bytes_per_token = 0;
  Index cached_tokens = 0;
};

template <class T>
struct BatchedFixture : BatchedFixtureBase {
  explicit BatchedFixture(Index B) : lens(mixed_lengths(B)) {
    Index blocks = 0;
    for (Index L : lens) blocks += (L + kBlock - 1) / kBlock;
    pool = scattered_pool<T>(blocks, 5);
    for (Index b = 0; b < B; ++b) {
      const Index L = lens[std::size_t(b)];
      cached_tokens += L;
      queries.emplace_back(100 + std::uint64_t(b) * 7);
      paged.emplace_back(*pool, L);
      fill(paged.back(), L, 1000 + std::uint64_t(b) * 13);
      contiguous.push_back(Contiguous<T>::make(L));
      fill(contiguous.back(), L, 1000 + std::uint64_t(b) * 13);
    }
    for (Index b = 0; b < B; ++b) {
      mla::kernels::DecodeSequence<T> s;
      s.q_len = 1;
      s.q_lat = queries[std::size_t(b)].q_lat.data();
      s.q_pe = queries[std::size_t(b)].q_pe.data();
      s.cache = paged[std::size_t(b)].rows();
      s.o_lat = queries[std::size_t(b)].o_lat.data();
      seqs.push_back(s);
    }
    bytes_per_token = pool->bytes_per_token();
  }
  void run(int variant, mla::ThreadPool* p) override {
    const float scale = float(v3().softmax_scale());
    const Index H = v3().num_attention_heads;
    if (variant == 0) {
      mla::kernels::batched_absorbed_attention(H, seqs.data(), Index(seqs.size()), scale, bws, p);
    } else if (variant == 1) {
      for (const auto& s : seqs)
        mla::kernels::paged_absorbed_attention(1, H, s.q_lat, s.q_pe, s.cache, scale, s.o_lat,
                                               nullptr, sws, p);
    } else {
      for (std::size_t b = 0; b < contiguous.size(); ++b)
        contiguous_decode<T>(contiguous[b], queries[b], kws, sws, p);
    }
    benchmark::DoNotOptimize(queries.back().o_lat.data());
  }
  std::vector<Index> lens;
  std::unique_ptr<mla::LatentBlockPool<T>> pool;
  std::vector<Query> queries;
  std::vector<mla::PagedLatentCache<T>> paged;
  std::vector<typename Contiguous<T>::type> contiguous;
  std::vector<mla::kernels::DecodeSequence<T>> seqs;
  mla::kernels::DecodeWorkspace bws, sws;
  mla::kernels::DecodeWorkspace kws;
};

std::unique_ptr<BatchedFixtureBase> make_batched(CacheType t, Index B) {
  switch (t) {
    case CacheType::kF32: return std::make_unique<BatchedFixture<float>>(B);
    case CacheType::kBf16: return std::make_unique<BatchedFixture<mla::bfloat16>>(B);
    case CacheType::kFp8: return std::make_unique<BatchedFixture<mla::Fp8Latent>>(B);
    case CacheType::kInt8: return std::make_unique<BatchedFixture<mla::Int8Latent>>(B);
  }
  return nullptr;
}

void run_batched(benchmark::State& state, CacheType type, Index B, int threads) {
  auto& f = current_fixture<BatchedFixtureBase>(
      std::string("batched/") + name_of(type) + "/" + std::to_string(B),
      [&] { return make_batched(type, B); });
  mla::ThreadPool* pool = &thread_pool(threads);
  for (int v = 0; v < 3; ++v) f.run(v, pool);  // warm-up
  std::vector<double> t[3], r_separate, r_contiguous;
  int iter = 0;
  for (auto _ : state) {
    double s[3];
    for (int k = 0; k < 3; ++k) {
      const int v = iter % 2 ? 2 - k : k;  // alternate the order
      s[v] = seconds([&] { f.run(v, pool); });
    }
    for (int v = 0; v < 3; ++v) t[v].push_back(s[v]);
    r_separate.push_back(s[1] / s[0]);
    r_contiguous.push_back(s[2] / s[0]);
    ++iter;
  }
  using benchmark::Counter;
  state.counters["batched_ms"] = Counter(1e3 * median(t[0]));
  state.counters["separate_ms"] = Counter(1e3 * median(t[1]));
  state.counters["contiguous_ms"] = Counter(1e3 * median(t[2]));
  state.counters["tok_s"] = Counter(double(B) / median(t[0]));
  state.counters["separate_tok_s"] = Counter(double(B) / median(t[1]));
  state.counters["contiguous_tok_s"] = Counter(double(B) / median(t[2]));
  state.counters["speedup_vs_separate"] = Counter(median(r_separate));
  state.counters["speedup_vs_contiguous"] = Counter(median(r_contiguous));
  state.counters["cached_tokens"] = Counter(double(f.cached_tokens));
  state.counters["bytes_per_token"] = Counter(double(f.bytes_per_token));
}

// ---- 8-bit cache accuracy on the reference cases ---------------------------------------------

struct CacheError {
  double fp8 = 0, bf16 = 0;
};

/// max |y_cache - y_float| / max |y_float| over a case's io files (see the header comment).
CacheError cache_error(const std::filesystem::path& folder) {
  namespace cd = mla::conformance::detail;
  const mla::io::Checkpoint ckpt(folder);
  const mla::MlaConfig cfg = mla::io::parse_mla_config(ckpt.config());
  const auto layer = mla::io::load_mla_layer<float>(ckpt, cfg, 0);
  CacheError e;
  for (const auto& io_path : cd::io_files(folder)) {
    const mla::io::SafetensorsFile f(io_path);
    const mla::Matrix<float> x = cd::read_2d<float>(f, "hidden_states");
    const mla::Positions pos = cd::read_positions(f);
    const Index T = x.rows();
    auto cf = layer.make_latent_cache<float>(T);
    auto cb = layer.make_latent_cache<mla::bfloat16>(T);
    mla::LatentBlockPool<mla::Fp8Latent> pool(cfg.kv_lora_rank, cfg.qk_rope_head_dim,
                                              (T + kBlock - 1) / kBlock, kBlock);
    mla::PagedLatentCache<mla::Fp8Latent> c8(pool, T);
    mla::Matrix<float> yf(T, cfg.hidden_size), yb(T, cfg.hidden_size), y8(T, cfg.hidden_size);
    mla::Workspace ws;
    mla::Workspace ctx;
    for (Index t0 = 0; t0 < T;) {
      const Index n = t0 == 0 ? T / 2 : 1;
      const mla::Matrix<float> xs = x.middleRows(t0, n);
      const mla::Positions ps = pos.segment(t0, n);
      mla::Matrix<float> out(n, cfg.hidden_size);
      layer.forward(xs, ps, cf, out, ws, mla::MlaPath::kAbsorbed);
      yf.middleRows(t0, n) = out;
      mla::mla_decode_batch(layer, xs, ps, {n}, std::vector<mla::LatentCache<mla::bfloat16>*>{&cb},
                            out, ctx);
      yb.middleRows(t0, n) = out;
      mla::mla_decode_batch(layer, xs, ps, {n},
                            std::vector<mla::PagedLatentCache<mla::Fp8Latent>*>{&c8}, out, ctx);
      y8.middleRows(t0, n) = out;
      t0 += n;
    }
    const double s = yf.cwiseAbs().maxCoeff();
    e.fp8 = std::max(e.fp8, double((y8 - yf).cwiseAbs().maxCoeff()) / s);
    e.bf16 = std::max(e.bf16, double((yb - yf).cwiseAbs().maxCoeff()) / s);
  }
  return e;
}

void add_accuracy_context(const std::filesystem::path& dir) {
  double worst = 0;
  int found = 0;
  for (const char* name : {"deepseek_v3_tiny", "deepseek_v2_lite_tiny", "deepseek_v3_realdims"}) {
    const auto folder = dir / name;
    if (!std::filesystem::is_directory(folder)) continue;
    try {
      const CacheError e = cache_error(folder);
      char buf[96];
      std::snprintf(buf, sizeof buf, "fp8 %.3e, bf16 %.3e", e.fp8, e.bf16);
      benchmark::AddCustomContext(std::string("cache_rel_err_") + name, buf);
      worst = std::max(worst, e.fp8);
      ++found;
    } catch (const std::exception& ex) {
      benchmark::AddCustomContext(std::string("cache_rel_err_") + name,
                                  std::string("error: ") + ex.what());
    }
  }
  if (found == 0) {
    benchmark::AddCustomContext("cache_rel_err", "reference cases not found in " + dir.string());
    return;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3e", worst);
  benchmark::AddCustomContext("fp8_cache_max_rel_err", buf);
}

// ---- command line ----------------------------------------------------------------------------

bool parse_ints(const std::string& s, std::vector<long long>& out) {
  out.clear();
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (end != item.c_str() && (*end == 'k' || *end == 'K')) {
      v *= 1024;
      ++end;
    }
    if (end == item.c_str() || *end != '\0' || v <= 0) return false;
    out.push_back(v);
  }
  return !out.empty();
}

void usage() {
  std::cout << "usage: serving_bench [--lengths=4096,16384] [--batches=1,4,16,64]\n"
               "                     [--threads=1,2] [--types=f32,bf16,fp8,int8]\n"
               "                     [--parts=paging,batched] [--reference-dir=DIR]\n"
               "                     [Google Benchmark flags]\n"
               "Names: paging/<type>/L:<n>/threads:<n>, batched/<type>/B:<n>/threads:<n>;\n"
               "see the comment at the top of benchmarks/serving_bench.cpp for the counters.\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<long long> lengths{4096, 16384}, batches{1, 4, 16, 64}, threads{1, 2};
  std::vector<CacheType> types{CacheType::kF32, CacheType::kBf16, CacheType::kFp8};
  bool paging = true, batched = true;
  std::filesystem::path ref_dir;
  if (const char* env = std::getenv("MLA_REFERENCE_DIR"); env && *env) ref_dir = env;
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
    } else if (const char* v = value("--lengths=")) {
      ok = parse_ints(v, lengths);
    } else if (const char* v2 = value("--batches=")) {
      ok = parse_ints(v2, batches);
    } else if (const char* v3s = value("--threads=")) {
      ok = parse_ints(v3s, threads);
    } else if (const char* v4 = value("--types=")) {
      types.clear();
      std::stringstream ss(v4);
      std::string item;
      while (ok && std::getline(ss, item, ',')) {
        if (item == "f32") types.push_back(CacheType::kF32);
        else if (item == "bf16") types.push_back(CacheType::kBf16);
        else if (item == "fp8") types.push_back(CacheType::kFp8);
        else if (item == "int8") types.push_back(CacheType::kInt8);
        else ok = false;
      }
      ok = ok && !types.empty();
    } else if (const char* v5 = value("--parts=")) {
      const std::string p = v5;
      paging = p.find("paging") != std::string::npos;
      batched = p.find("batched") != std::string::npos;
      ok = paging || batched;
    } else if (const char* v6 = value("--reference-dir=")) {
      ref_dir = v6;
    } else {
      rest.push_back(argv[i]);
    }
    if (!ok) {
      std::cerr << "serving_bench: bad value in '" << a << "'\n";
      usage();
      return 2;
    }
  }
  if (ref_dir.empty()) ref_dir = std::filesystem::path(MLA_REFERENCE_DIR_DEFAULT);

  int rest_argc = int(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 1;

  auto reg = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  if (paging)
    for (CacheType t : types)
      for (long long L : lengths)
        for (long long th : threads)
          reg(std::string("paging/") + name_of(t) + "/L:" + std::to_string(L) + "/threads:" +
                  std::to_string(th),
              [t, L, th](benchmark::State& s) { run_paging(s, t, Index(L), int(th)); });
  if (batched)
    for (CacheType t : types)
      for (long long B : batches)
        for (long long th : threads)
          reg(std::string("batched/") + name_of(t) + "/B:" + std::to_string(B) + "/threads:" +
                  std::to_string(th),
              [t, B, th](benchmark::State& s) { run_batched(s, t, Index(B), int(th)); });

  const Index R = v3().kv_lora_rank, P = v3().qk_rope_head_dim;
  benchmark::AddCustomContext("cpu_model", mla_bench::cpu_model_name());
  benchmark::AddCustomContext("shapes", "DeepSeek-V3: 128 heads, kv_lora 512, rope 64, block 64");
  benchmark::AddCustomContext("bytes_per_token_f32", std::to_string((R + P) * 4));
  benchmark::AddCustomContext("bytes_per_token_bf16", std::to_string((R + P) * 2));
  benchmark::AddCustomContext("bytes_per_token_fp8",
                              std::to_string(mla::Fp8LatentLayout{R, P}.bytes_per_token()));
  add_accuracy_context(ref_dir);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
