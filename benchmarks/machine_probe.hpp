// Measures this machine's peaks so kernel benchmarks can report "% of peak" instead of bare
// GFLOP/s: fp32 FMA throughput on 1 and 2 threads (independent FMA chains on the widest vectors the
// CPU has, 16-wide with AVX-512 and 8-wide with AVX2, enough of them to cover the FMA latency
// on every pipe), the bf16 dot-product peak where the CPU has AVX512-BF16 (vdpbf16ps, two
// bf16 products per fp32 lane) and STREAM-like read bandwidth (sum of a 256 MiB buffer, as one
// sequential stream per thread and as eight interleaved ones, the better of the two). Without bf16
// dot instructions the bf16 peak is reported as 0 (absent). Header-only; takes ~0.5 s.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include <time.h>

#include "mla/core/isa.hpp"
#include "mla/core/macros.hpp"
#include "mla/kernels/amx_attention.hpp"  // AMX tile set-up, for the tile probe

#if MLA_X86_64
#include <immintrin.h>
#endif

namespace mla_bench {

/// Peaks measured on this machine (best of a few repeats; others may share the cores).
struct MachinePeaks {
  double fma_gflops_1t = 0;      // fp32 FMA GFLOP/s (2 FLOP per lane per FMA), 1 thread
  double fma_gflops_2t = 0;      // same, 2 threads
  double read_gbps_1t = 0;       // read bandwidth from DRAM, GB/s (1e9 B/s), 1 thread
  double read_gbps_2t = 0;       // same, 2 threads
  double bf16_dot_gflops_1t = 0; // bf16 dot-product peak; 0 = no such instructions
  double amx_bf16_gflops_1t = 0; // AMX tile bf16 peak (tdpbf16ps); 0 = no AMX or not granted
  double amx_bf16_gflops_2t = 0; // same, 2 threads
  const char* fma_isa = "portable";  // vectors of the FMA probe: "avx512", "avx2" or "portable"
};

namespace internal {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

#if defined(CLOCK_THREAD_CPUTIME_ID)
inline double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}
#endif

// Runs fn(thread) on `threads` threads at once and returns the time taken. One thread is timed in
// CPU time of the calling thread where POSIX offers it (as kernel_bench times its 1-thread rows:
// on a shared machine wall time would include other processes' time slices), several threads in
// wall time.
template <class Fn>
double run_threads(int threads, Fn fn) {
#if defined(CLOCK_THREAD_CPUTIME_ID)
  if (threads == 1) {
    const double c0 = thread_cpu_seconds();
    fn(0);
    return thread_cpu_seconds() - c0;
  }
#endif
  const auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(fn, t);
  fn(0);
  for (std::thread& th : pool) th.join();
  return seconds_since(t0);
}

// The FMA, bf16-dot and read probes use the widest vectors this CPU has (core/isa.hpp); each
// instruction set's loop is compiled in its own target region, as the kernels are.
}  // namespace internal
}  // namespace mla_bench

#if MLA_X86_SIMD
MLA_TARGET_AVX512_BEGIN
namespace mla_bench {
namespace internal {
// Keeps the chains' results alive. (Not _mm512_reduce_add_ps: GCC 12 warns inside it, bug 105593.)
inline void sink_lanes(__m512 s) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, s);
  volatile float sink = lanes[0] + lanes[15];
  (void)sink;
}

// 16 independent FMA chains (zmm) run `iters` times: 2 FMA pipes x 4-cycle latency need >= 8;
// 16 also covers cores whose 512-bit units have a longer latency. Returns the FLOPs.
inline double fma_loop_avx512(std::int64_t iters) {
  const __m512 a = _mm512_set1_ps(0.999999f);
  const __m512 b = _mm512_set1_ps(1e-7f);
  __m512 c[16];
  for (int i = 0; i < 16; ++i) c[i] = _mm512_set1_ps(0.01f * float(i));
  for (std::int64_t i = 0; i < iters; ++i) {
    MLA_UNROLL
    for (int j = 0; j < 16; ++j) c[j] = _mm512_fmadd_ps(c[j], a, b);
  }
  __m512 s = c[0];
  for (int j = 1; j < 16; ++j) s = _mm512_add_ps(s, c[j]);
  sink_lanes(s);
  return double(iters) * 16 * 16 * 2;
}
}  // namespace internal
}  // namespace mla_bench
MLA_TARGET_END

MLA_TARGET_BEGIN("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")
namespace mla_bench {
namespace internal {
// vdpbf16ps: per fp32 lane two bf16 products added to the accumulator (4 FLOP per lane), 16
// independent chains. On Sapphire Rapids it issues at half the rate of a 512-bit FMA, so this
// peak (in FLOP) equals the fp32 FMA peak or less; on cores that run it at full rate it is twice.
inline double bf16_dot_loop(std::int64_t iters) {
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80);  // 1.0
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3380);  // 2^-24
  __m512 c[16];
  for (int i = 0; i < 16; ++i) c[i] = _mm512_set1_ps(0.01f * float(i));
  for (std::int64_t i = 0; i < iters; ++i) {
    MLA_UNROLL
    for (int j = 0; j < 16; ++j) c[j] = _mm512_dpbf16_ps(c[j], a, b);
  }
  __m512 s = c[0];
  for (int j = 1; j < 16; ++j) s = _mm512_add_ps(s, c[j]);
  sink_lanes(s);
  return double(iters) * 16 * 16 * 4;
}
}  // namespace internal
}  // namespace mla_bench
MLA_TARGET_END

MLA_TARGET_AMX_BEGIN
namespace mla_bench {
namespace internal {
// tdpbf16ps on four independent accumulator tiles from operands held in tiles: 16 x 16 x 32
// multiply-adds (16384 FLOP) per instruction, the unit's issue rate with no memory traffic.
inline double amx_bf16_loop(std::int64_t iters) {
  alignas(64) std::uint16_t ones[512];
  std::fill(ones, ones + 512, std::uint16_t(0x3f80));  // bf16 1.0
  mla::internal::amx_configure_tiles();
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  for (std::int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float out[256];
  _tile_stored(0, out, 64);
  _tile_release();
  sink_lanes(_mm512_load_ps(out));
  return double(iters) * 4 * 16 * 16 * 32 * 2;
}
}  // namespace internal
}  // namespace mla_bench
MLA_TARGET_END

MLA_TARGET_AVX2_BEGIN
namespace mla_bench {
namespace internal {
// 12 independent chains in named registers: 2 FMA pipes x 4-5 cycle latency need >= 8-10 in
// flight. (An array plus an asm barrier would push them through memory and halve the rate.)
inline double fma_loop_avx2(std::int64_t iters) {
  const __m256 a = _mm256_set1_ps(0.999999f);
  const __m256 b = _mm256_set1_ps(1e-7f);
  __m256 c0 = _mm256_set1_ps(0.00f), c1 = _mm256_set1_ps(0.01f), c2 = _mm256_set1_ps(0.02f);
  __m256 c3 = _mm256_set1_ps(0.03f), c4 = _mm256_set1_ps(0.04f), c5 = _mm256_set1_ps(0.05f);
  __m256 c6 = _mm256_set1_ps(0.06f), c7 = _mm256_set1_ps(0.07f), c8 = _mm256_set1_ps(0.08f);
  __m256 c9 = _mm256_set1_ps(0.09f), c10 = _mm256_set1_ps(0.10f), c11 = _mm256_set1_ps(0.11f);
  for (std::int64_t i = 0; i < iters; ++i) {
    c0 = _mm256_fmadd_ps(c0, a, b);
    c1 = _mm256_fmadd_ps(c1, a, b);
    c2 = _mm256_fmadd_ps(c2, a, b);
    c3 = _mm256_fmadd_ps(c3, a, b);
    c4 = _mm256_fmadd_ps(c4, a, b);
    c5 = _mm256_fmadd_ps(c5, a, b);
    c6 = _mm256_fmadd_ps(c6, a, b);
    c7 = _mm256_fmadd_ps(c7, a, b);
    c8 = _mm256_fmadd_ps(c8, a, b);
    c9 = _mm256_fmadd_ps(c9, a, b);
    c10 = _mm256_fmadd_ps(c10, a, b);
    c11 = _mm256_fmadd_ps(c11, a, b);
  }
  const __m256 s = _mm256_add_ps(
      _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                    _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7))),
      _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
  volatile float sink = _mm256_cvtss_f32(s);
  (void)sink;
  return double(iters) * 12 * 8 * 2;
}

// Sums [p, p + n) with 8 independent accumulators so the adds never limit the read rate.
[[gnu::noinline]] inline float read_sum_avx2(const float* p, std::size_t n) {
  __m256 acc[8];
  for (__m256& a : acc) a = _mm256_setzero_ps();
  std::size_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int c = 0; c < 8; ++c) acc[c] = _mm256_add_ps(acc[c], _mm256_load_ps(p + i + 8 * c));
  __m256 s = acc[0];
  for (int c = 1; c < 8; ++c) s = _mm256_add_ps(s, acc[c]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  float r = 0;
  for (float x : lanes) r += x;
  for (; i < n; ++i) r += p[i];
  return r;
}

// read_sum_streams (below) on AVX2: `streams` segments of `seg` floats, one line of each per step.
inline float read_sum_streams_avx2(const float* p, std::size_t seg, int streams) {
  __m256 acc[8];
  for (__m256& a : acc) a = _mm256_setzero_ps();
  for (std::size_t i = 0; i < seg; i += 16)
    for (int s = 0; s < streams; ++s) {
      const float* q = p + std::size_t(s) * seg + i;
      acc[s] = _mm256_add_ps(acc[s], _mm256_add_ps(_mm256_load_ps(q), _mm256_load_ps(q + 8)));
    }
  __m256 sum = acc[0];
  for (int s = 1; s < streams; ++s) sum = _mm256_add_ps(sum, acc[s]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  return lanes[0] + lanes[7];
}
}  // namespace internal
}  // namespace mla_bench
MLA_TARGET_END
#endif  // MLA_X86_SIMD

namespace mla_bench {
namespace internal {

// Portable: 16 scalar chains (the compiler may vectorise them).
inline double fma_loop_portable(std::int64_t iters) {
  constexpr int kChains = 16;
  float acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = 0.001f * float(c);
  for (std::int64_t i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * 0.999999f + 1e-7f;
  float s = 0;
  for (int c = 0; c < kChains; ++c) s += acc[c];
  volatile float sink = s;
  (void)sink;
  return double(iters) * kChains * 2;
}

/// The vectors of the FMA probe on this CPU: "avx512", "avx2" or "portable".
inline const char* fma_isa() {
  using mla::kernels::KernelPath;
  return mla::kernels::path_available(KernelPath::kAvx512) ? "avx512"
         : mla::kernels::path_available(KernelPath::kAvx2) ? "avx2"
                                                           : "portable";
}

// FLOPs done by fma_loop(iters), on the widest vectors the CPU has.
inline double fma_loop(std::int64_t iters) {
#if MLA_X86_SIMD
  using mla::kernels::KernelPath;
  if (mla::kernels::path_available(KernelPath::kAvx512)) return fma_loop_avx512(iters);
  if (mla::kernels::path_available(KernelPath::kAvx2)) return fma_loop_avx2(iters);
#endif
  return fma_loop_portable(iters);
}

// Best of 25 short windows of loop(iters) (which returns its FLOPs) on every thread: on a shared
// machine a short window is likelier to get a whole core.
template <class Loop>
inline double best_window_gflops(int threads, std::int64_t iters, Loop loop) {
  double best = 0;
  for (int rep = 0; rep < 25; ++rep) {
    double flops = 0;
    const double secs = run_threads(threads, [&](int t) {
      const double f = loop(iters);
      if (t == 0) flops = f;
    });
    best = std::max(best, flops * threads / secs / 1e9);
  }
  return best;
}

inline double measure_fma_gflops(int threads) {
  // ~2 ms per window at ~90 GFLOP/s (AVX2), ~3 ms at ~170 (AVX-512)
  return best_window_gflops(threads, 1'000'000, fma_loop);
}

inline double measure_bf16_dot_gflops() {
#if MLA_X86_SIMD
  if (mla::internal::cpu_features().avx512_bf16)
    return best_window_gflops(1, 500'000, bf16_dot_loop);
#endif
  return 0;  // no bf16 dot instructions on this CPU
}

// ~1 ms per window at ~2 TFLOP/s; 0 where the CPU has no AMX or the OS refuses the tile state.
inline double measure_amx_bf16_gflops(int threads) {
#if MLA_X86_SIMD
  if (mla::kernels::path_available(mla::kernels::KernelPath::kAmx) &&
      mla::internal::amx_tiles_granted())
    return best_window_gflops(threads, 30'000, amx_bf16_loop);
#endif
  (void)threads;
  return 0;
}

// Sums [begin, end) with 8 independent accumulators so the adds never limit the read rate.
// Out of line: inlined into the probe with a constant n, GCC 12 reports a bogus
// -Waggressive-loop-optimizations on the (empty) tail loop.
[[gnu::noinline]] inline float read_sum(const float* p, std::size_t n) {
#if MLA_X86_SIMD
  if (mla::kernels::path_available(mla::kernels::KernelPath::kAvx2)) return read_sum_avx2(p, n);
#endif
  float acc[8] = {};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int c = 0; c < 8; ++c) acc[c] += p[i + c];
  float r = 0;
  for (float x : acc) r += x;
  for (; i < n; ++i) r += p[i];
  return r;
}

// Sums 8 equal segments of [p, p + n) interleaved, one cache line of each per step: 8 sequential
// streams in flight. A core of an Intel server part reaches its bandwidth only with several
// streams, and the kernels read several (K and V, four weight rows at once), so one stream alone
// would understate the limit they are held to.
inline float read_sum_streams(const float* p, std::size_t n) {
  constexpr int kStreams = 8;
  const std::size_t seg = (n / kStreams) & ~std::size_t(15);
#if MLA_X86_SIMD
  if (mla::kernels::path_available(mla::kernels::KernelPath::kAvx2))
    return read_sum_streams_avx2(p, seg, kStreams);
#endif
  float acc[kStreams] = {};
  for (std::size_t i = 0; i < seg; i += 16)
    for (int s = 0; s < kStreams; ++s)
      for (std::size_t j = 0; j < 16; ++j) acc[s] += p[std::size_t(s) * seg + i + j];
  float r = 0;
  for (float x : acc) r += x;
  return r;
}

// Best of 1 and 8 streams per thread (see read_sum_streams), 4 windows each.
inline double measure_read_gbps(const float* buf, std::size_t n, int threads) {
  double best = 0;
  for (int rep = 0; rep < 8; ++rep) {
    const bool streams = rep % 2 == 1;
    const std::size_t chunk = (n / std::size_t(threads)) & ~std::size_t(127);
    const double secs = run_threads(threads, [&](int t) {
      const float* part = buf + std::size_t(t) * chunk;
      volatile float sink = streams ? read_sum_streams(part, chunk) : read_sum(part, chunk);
      (void)sink;
    });
    best = std::max(best, double(chunk) * double(threads) * sizeof(float) / secs / 1e9);
  }
  return best;
}

}  // namespace internal

/// Measures the peaks (about 0.5 s: 25 FMA windows per thread count, a 256 MiB buffer, 8x the
/// 32 MiB L3 of the Zen 4 VM this was written on, read 8 times per thread count, half of them as
/// 8 streams). Each peak is the best window.
inline MachinePeaks measure_machine_peaks() {
  MachinePeaks peaks;
  peaks.fma_isa = internal::fma_isa();
  peaks.fma_gflops_1t = internal::measure_fma_gflops(1);
  peaks.fma_gflops_2t = internal::measure_fma_gflops(2);

  const std::size_t n = (std::size_t(256) << 20) / sizeof(float);
  std::unique_ptr<float, void (*)(float*)> buf(
      static_cast<float*>(::operator new(n * sizeof(float), std::align_val_t(64))),
      [](float* p) { ::operator delete(p, std::align_val_t(64)); });
  // Write every page first: an untouched buffer maps the shared zero page and reads from cache.
  internal::run_threads(2, [&](int t) {
    const std::size_t half = n / 2;
    std::fill(buf.get() + std::size_t(t) * half, buf.get() + (t == 0 ? half : n), 1.0f);
  });
  peaks.read_gbps_1t = internal::measure_read_gbps(buf.get(), n, 1);
  peaks.read_gbps_2t = internal::measure_read_gbps(buf.get(), n, 2);
  peaks.bf16_dot_gflops_1t = internal::measure_bf16_dot_gflops();
  peaks.amx_bf16_gflops_1t = internal::measure_amx_bf16_gflops(1);
  peaks.amx_bf16_gflops_2t = internal::measure_amx_bf16_gflops(2);
  return peaks;
}

}  // namespace mla_bench
