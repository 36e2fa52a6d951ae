// Benchmarks of the fast decode-attention kernels against this machine's measured peaks.
//
// - Absorbed MLA (DeepSeek-V3 dims: 128 heads, kv_lora 512, rope 64): GFLOP/s and % of the fp32
//   FMA peak (probe, same thread count), float and bf16 caches, 1 and 2 threads (on AMX builds
//   also <bf16,amx>: KernelPath::kAmx, with pct_amx_peak against the tile probe); beside it an Eigen
//   GEMM formulation of the same attention and, at a short cache, the double reference (ratios).
// - MHA / GQA decode: GB/s of K+V streamed and % of the probe's STREAM-like read bandwidth.
//
// FLOPs counted for absorbed attention: 2 * M * L * (kv_lora + rope) for the scores plus
// 2 * M * L * kv_lora for P.C (softmax and combine not counted). Bytes for GQA: K and V rows read.
//
// With --benchmark_repetitions=N every benchmark also reports "best" aggregates (fastest time,
// highest rates): the machine may be shared, and the best repetition is the least disturbed.
//
//   kernel_bench --benchmark_filter=Absorbed --benchmark_repetitions=5
//   kernel_bench --benchmark_out=kernels.json --benchmark_out_format=json
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "machine_probe.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/reference/attention.hpp"

namespace {

using mla::Index;

mla_bench::MachinePeaks g_peaks;

// "best" statistics over repetitions: min for times, max for rates (Google Benchmark applies one
// statistic to every value, so both are registered and each is read for its own kind of value).
double stat_min(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
double stat_max(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

double fma_peak_flops(int threads) {
  return 1e9 * (threads >= 2 ? g_peaks.fma_gflops_2t : g_peaks.fma_gflops_1t);
}
double read_peak_bytes(int threads) {
  return 1e9 * (threads >= 2 ? g_peaks.read_gbps_2t : g_peaks.read_gbps_1t);
}

template <class T>
std::vector<T> random_vector(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<T> v(n);
  for (T& x : v) x = T(u(rng));
  return v;
}

constexpr Index kHeads = 128, kKvLora = 512, kRope = 64;

void set_flop_counters(benchmark::State& state, double flops_per_iter, int threads) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_iter / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["pct_fma_peak"] = benchmark::Counter(
      100.0 * flops_per_iter / fma_peak_flops(threads), benchmark::Counter::kIsIterationInvariantRate);
}

double absorbed_flops(Index m, Index len) {
  return 2.0 * double(m) * double(len) * double(kKvLora + kRope + kKvLora);
}

// Args: cache_len, threads. Registered in register_benchmarks(), once per compiled SIMD path.
template <class T>
void BM_AbsorbedAttention(benchmark::State& state, mla::kernels::KernelPath path) {
  const Index len = state.range(0);
  const int threads = int(state.range(1));
  mla::kernels::AbsorbedAttentionShape shape;
  shape.q_len = 1;
  shape.num_heads = kHeads;
  shape.kv_lora = kKvLora;
  shape.rope = kRope;
  shape.cache_len = len;
  shape.row_stride = kKvLora + kRope;
  const auto q_lat = random_vector<float>(std::size_t(kHeads * kKvLora), 1);
  const auto q_pe = random_vector<float>(std::size_t(kHeads * kRope), 2);
  const auto cache = random_vector<T>(std::size_t(len * shape.row_stride), 3);
  std::vector<float> out(std::size_t(kHeads * kKvLora)), lse(kHeads);
  mla::ThreadPool pool(threads);
  mla::kernels::DecodeWorkspace ws(kHeads, kKvLora, kRope, threads);
  const float scale = 1.0f / std::sqrt(192.0f);
  for (auto _ : state) {
    mla::kernels::absorbed_attention(shape, q_lat.data(), q_pe.data(), cache.data(), scale,
                                     out.data(), lse.data(), ws, &pool, path);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(state, absorbed_flops(kHeads, len), threads);
  if (path == mla::kernels::KernelPath::kAmx) {
    const double amx = 1e9 * (threads >= 2 ? g_peaks.amx_bf16_gflops_2t : g_peaks.amx_bf16_gflops_1t);
    if (amx > 0)
      state.counters["pct_amx_peak"] = benchmark::Counter(100.0 * absorbed_flops(kHeads, len) / amx,
                                                          benchmark::Counter::kIsIterationInvariantRate);
  }
}
// The same attention written as Eigen GEMMs over the whole cache (S = Q C^T, row softmax,
// O = P C[:, :kv_lora]); Eigen is single-threaded here. Arg: cache_len.
void BM_AbsorbedAttentionEigen(benchmark::State& state) {
  const Index len = state.range(0);
  const Index k_dim = kKvLora + kRope;
  mla::Matrix<float> q = mla::ConstMatrixMap<float>(
      random_vector<float>(std::size_t(kHeads * k_dim), 1).data(), kHeads, k_dim);
  const auto cache = random_vector<float>(std::size_t(len * k_dim), 3);
  const mla::ConstMatrixMap<float> c(cache.data(), len, k_dim);
  mla::Matrix<float> s(kHeads, len), o(kHeads, kKvLora);
  const float scale = 1.0f / std::sqrt(192.0f);
  for (auto _ : state) {
    s.noalias() = (q * scale) * c.transpose();
    for (Index m = 0; m < kHeads; ++m) {
      auto row = s.row(m);
      row = (row.array() - row.maxCoeff()).exp().matrix();
      row /= row.sum();
    }
    o.noalias() = s * c.leftCols(kKvLora);
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(state, absorbed_flops(kHeads, len), 1);
}
BENCHMARK(BM_AbsorbedAttentionEigen)
    ->ArgName("L")
    ->Arg(4096)
    ->Arg(16384)
    ->ComputeStatistics("min", stat_min)
    ->ComputeStatistics("max", stat_max)
    ->Unit(benchmark::kMillisecond);

// Double-precision reference loops at a short cache (the ratio to BM_AbsorbedAttention/256/1).
void BM_AbsorbedAttentionReference(benchmark::State& state) {
  const Index len = state.range(0);
  mla::kernels::AbsorbedAttentionShape shape;
  shape.num_heads = kHeads;
  shape.cache_len = len;
  const auto q_lat = random_vector<float>(std::size_t(kHeads * kKvLora), 1);
  const auto q_pe = random_vector<float>(std::size_t(kHeads * kRope), 2);
  const auto cache = random_vector<float>(std::size_t(len * shape.row_stride), 3);
  std::vector<float> out(std::size_t(kHeads * kKvLora));
  for (auto _ : state) {
    mla::reference::absorbed_attention(shape, q_lat.data(), q_pe.data(), cache.data(), 0.07f,
                                       out.data());
    benchmark::DoNotOptimize(out.data());
  }
  set_flop_counters(state, absorbed_flops(kHeads, len), 1);
}
BENCHMARK(BM_AbsorbedAttentionReference)->ArgName("L")->Arg(256)->Unit(benchmark::kMillisecond);

// MHA / GQA decode. Args: num_heads, num_kv_heads, cache_len, threads, q_len; head_dim = v_dim = 128.
// Registered in register_benchmarks().
template <class T>
void BM_GqaAttention(benchmark::State& state) {
  mla::kernels::GqaAttentionShape shape;
  shape.num_heads = state.range(0);
  shape.num_kv_heads = state.range(1);
  shape.cache_len = state.range(2);
  const int threads = int(state.range(3));
  shape.q_len = state.range(4);
  shape.head_dim = 128;
  shape.v_dim = 128;
  shape.k_head_stride = shape.cache_len * shape.head_dim;
  shape.v_head_stride = shape.cache_len * shape.v_dim;
  const auto q = random_vector<float>(std::size_t(shape.q_len * shape.num_heads * shape.head_dim), 1);
  const auto k = random_vector<T>(std::size_t(shape.num_kv_heads * shape.k_head_stride), 2);
  const auto v = random_vector<T>(std::size_t(shape.num_kv_heads * shape.v_head_stride), 3);
  std::vector<float> out(std::size_t(shape.q_len * shape.num_heads * shape.v_dim));
  mla::ThreadPool pool(threads);
  mla::kernels::DecodeWorkspace ws(shape, threads);
  for (auto _ : state) {
    mla::kernels::gqa_attention(shape, q.data(), k.data(), v.data(), 0.088f, out.data(), nullptr,
                                ws, &pool);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double bytes = double(shape.num_kv_heads) * double(shape.cache_len) *
                       double(shape.head_dim + shape.v_dim) * sizeof(T);
  state.SetBytesProcessed(int64_t(bytes) * state.iterations());
  state.counters["pct_stream"] = benchmark::Counter(100.0 * bytes / read_peak_bytes(threads),
                                                    benchmark::Counter::kIsIterationInvariantRate);
}
// Registration: 1-thread runs are timed in CPU time of the calling thread (the only thread that
// works; on a shared machine this leaves out time the scheduler gave to other processes), runs
// on more threads in wall time (UseRealTime), which also counts any wait for the slower thread.
template <class F>
benchmark::internal::Benchmark* register_kernel(const std::string& name, F fn, int threads) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), fn);
  if (threads > 1) b->UseRealTime();
  b->ComputeStatistics("min", stat_min)->ComputeStatistics("max", stat_max);
  return b;
}

void register_benchmarks() {
  // The path kAuto takes under the plain name; narrower SIMD paths under "<T,path>" so one run
  // compares them (on an AVX-512 CPU: the AVX2 kernels on the same machine).
  using mla::kernels::KernelPath;
  std::vector<std::pair<std::string, KernelPath>> paths{{"", KernelPath::kAuto}};
  if (mla::kernels::path_available(KernelPath::kAvx512))
    paths.emplace_back(",avx2", KernelPath::kAvx2);
  for (const auto& [suffix, path] : paths) {
    const KernelPath p = path;
    for (int threads : {1, 2}) {
      for (long len : {4096L, 16384L}) {
        register_kernel("BM_AbsorbedAttention<float" + suffix + ">",
                        [p](benchmark::State& st) { BM_AbsorbedAttention<float>(st, p); }, threads)
            ->ArgNames({"L", "threads"})->Args({len, threads})->Unit(benchmark::kMillisecond);
        register_kernel("BM_AbsorbedAttention<bf16" + suffix + ">",
                        [p](benchmark::State& st) { BM_AbsorbedAttention<mla::bfloat16>(st, p); }, threads)
            ->ArgNames({"L", "threads"})->Args({len, threads})->Unit(benchmark::kMillisecond);
      }
    }
  }
  if (mla::kernels::path_available(KernelPath::kAmx))
    for (int threads : {1, 2})
      for (long len : {4096L, 16384L})
        register_kernel("BM_AbsorbedAttention<bf16,amx>",
                        [](benchmark::State& st) { BM_AbsorbedAttention<mla::bfloat16>(st, mla::kernels::KernelPath::kAmx); },
                        threads)
            ->ArgNames({"L", "threads"})->Args({len, threads})->Unit(benchmark::kMillisecond);
  // Short cache: compare with BM_AbsorbedAttentionReference (same shape).
  register_kernel("BM_AbsorbedAttention<float>",
                  [](benchmark::State& st) { BM_AbsorbedAttention<float>(st, mla::kernels::KernelPath::kAuto); }, 1)
      ->ArgNames({"L", "threads"})->Args({256, 1})->Unit(benchmark::kMillisecond);
  // MHA (32 kv heads) and GQA (8 kv heads, group 4), head_dim 128, one new token.
  for (int threads : {1, 2})
    for (long kv_heads : {32L, 8L})
      for (long len : {4096L, 16384L, 32768L}) {
        register_kernel("BM_GqaAttention<float>", BM_GqaAttention<float>, threads)
            ->ArgNames({"heads", "kv_heads", "L", "threads", "q_len"})
            ->Args({32, kv_heads, len, threads, 1})->Unit(benchmark::kMicrosecond);
        register_kernel("BM_GqaAttention<bf16>", BM_GqaAttention<mla::bfloat16>, threads)
            ->ArgNames({"heads", "kv_heads", "L", "threads", "q_len"})
            ->Args({32, kv_heads, len, threads, 1})->Unit(benchmark::kMicrosecond);
      }
  // Multi-token decode (speculative / chunked): 4 new tokens per call.
  register_kernel("BM_GqaAttention<float>", BM_GqaAttention<float>, 1)
      ->ArgNames({"heads", "kv_heads", "L", "threads", "q_len"})
      ->Args({32, 8, 16384, 1, 4})->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_benchmarks();
  g_peaks = mla_bench::measure_machine_peaks();
  benchmark::AddCustomContext("peak_fma_isa", g_peaks.fma_isa);
  benchmark::AddCustomContext("kernels", mla::kernels::path_name(mla::kernels::auto_path()));
  benchmark::AddCustomContext("peak_fma_gflops_1t", std::to_string(g_peaks.fma_gflops_1t));
  benchmark::AddCustomContext("peak_fma_gflops_2t", std::to_string(g_peaks.fma_gflops_2t));
  benchmark::AddCustomContext("peak_read_gbps_1t", std::to_string(g_peaks.read_gbps_1t));
  benchmark::AddCustomContext("peak_read_gbps_2t", std::to_string(g_peaks.read_gbps_2t));
  if (mla::kernels::path_available(mla::kernels::KernelPath::kAmx)) {
    benchmark::AddCustomContext("peak_amx_bf16_gflops_1t", std::to_string(g_peaks.amx_bf16_gflops_1t));
    benchmark::AddCustomContext("peak_amx_bf16_gflops_2t", std::to_string(g_peaks.amx_bf16_gflops_2t));
  }
  benchmark::AddCustomContext("peak_bf16_dot_gflops_1t",
                              g_peaks.bf16_dot_gflops_1t > 0 ? std::to_string(g_peaks.bf16_dot_gflops_1t)
                                                             : std::string("absent"));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
