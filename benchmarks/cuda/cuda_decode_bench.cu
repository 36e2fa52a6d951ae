// cuda_decode_bench: GPU time of one absorbed MLA decode call (mla/cuda/mla_decode.cuh) on the
// DeepSeek-V3 shape (128 heads, d = 576, dv = 512, one new token, block 64, every sequence full)
// for B = 1, 8, 32, 64, 128 and L = 4096, 16384, bf16 and FP8 caches, each kernel form the GPU
// runs (wgmma on sm_90a, mma.sync everywhere; --kernel picks one), with the limits of the
// same GPU probed in the same binary: a cuBLAS bf16 GEMM (8192^3) and a device-to-device copy.
//
// Each call is timed alone with CUDA events after the L2 is flushed (a 512 MiB memset), every
// kernel of the call included (decode + combine; the plan is made once per shape, outside the
// timing, as an engine makes it once per step). Reported per shape: median ms,
//   TFLOP/s = 2 B heads L (576 + 512) / t,   GB/s = (cache bytes read + q + out) / t,
// and the percentages of the probed GEMM and copy rates. --json FILE writes everything.
//
//   cuda_decode_bench [--json FILE] [--iters N] [--heads H] [--batches 1,8] [--lens 4096]
//                     [--kernel all|mma|wgmma] [--quick]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "mla/cuda/cuda.cuh"

namespace {

using mla::cuda::DeviceBuffer;
using mla::cuda::LatentFormat;

#define BENCH_CUBLAS_CHECK(call)                                                       \
  do {                                                                                 \
    const cublasStatus_t s_ = (call);                                                  \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                 \
      std::fprintf(stderr, "%s failed: cuBLAS status %d\n", #call, int(s_));           \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

__device__ std::uint32_t hash32(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return std::uint32_t(x);
}
/// A value in [-2, 2) from an index and a seed.
__device__ float rand_value(std::uint64_t i, std::uint32_t seed) {
  return (hash32(i * 0x9E3779B97F4A7C15ULL + seed) >> 8) * (4.0f / 16777216.0f) - 2.0f;
}
__global__ void fill_bf16(__nv_bfloat16* p, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x)
    p[i] = __float2bfloat16(rand_value(i, seed));
}
/// FP8 rows: random non-NaN codes, scales 2 / 448 (values in [-2, 2]), bf16 k_pe.
__global__ void fill_fp8_rows(std::uint8_t* p, std::size_t rows, std::uint32_t seed) {
  constexpr int kRow = mla::cuda::MlaDims::kFp8RowBytes;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < rows * kRow;
       i += std::size_t(gridDim.x) * blockDim.x) {
    const int b = int(i % kRow);
    std::uint8_t* row = p + (i - b);
    if (b < 512) {
      std::uint8_t c = std::uint8_t(hash32(i + seed));
      if ((c & 0x7F) == 0x7F) c ^= 1;
      row[b] = c;
    } else if (b < 528) {
      if (b % 4 == 0) *reinterpret_cast<float*>(row + b) = 2.0f / 448.0f;
    } else if (b % 2 == 0) {
      *reinterpret_cast<__nv_bfloat16*>(row + b) = __float2bfloat16(rand_value(i, seed));
    }
  }
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    MLA_CUDA_CHECK(cudaEventCreate(&a));
    MLA_CUDA_CHECK(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

/// Median GPU ms of f() over `iters` calls, each after an L2 flush when `flush` is non-null.
template <class F>
double time_ms(F f, int iters, DeviceBuffer<std::uint8_t>* flush) {
  Timer t;
  std::vector<double> ms;
  f();  // warm-up (module load, first-touch)
  MLA_CUDA_CHECK(cudaDeviceSynchronize());
  for (int i = 0; i < iters; ++i) {
    if (flush) MLA_CUDA_CHECK(cudaMemsetAsync(flush->data(), i & 0xFF, flush->capacity()));
    MLA_CUDA_CHECK(cudaEventRecord(t.a));
    f();
    MLA_CUDA_CHECK(cudaEventRecord(t.b));
    MLA_CUDA_CHECK(cudaEventSynchronize(t.b));
    float v = 0;
    MLA_CUDA_CHECK(cudaEventElapsedTime(&v, t.a, t.b));
    ms.push_back(v);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Row {
  int batch, len, heads;
  const char* format;
  const char* kernel;
  double ms, tflops, gbs, pct_gemm, pct_copy;
  int parts, row_tiles;
};

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  int iters = 20, heads = 128;
  bool quick = false;
  std::string kernel_arg = "all";
  std::vector<int> batches{1, 8, 32, 64, 128}, lens{4096, 16384};
  auto parse_list = [](const char* arg) {
    std::vector<int> v;
    for (const char* p = arg; *p;) {
      v.push_back(std::atoi(p));
      while (*p && *p != ',') ++p;
      if (*p == ',') ++p;
    }
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) json = argv[++i];
    else if (a == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
    else if (a == "--heads" && i + 1 < argc) heads = std::atoi(argv[++i]);
    else if (a == "--quick") quick = true;
    else if (a == "--kernel" && i + 1 < argc) kernel_arg = argv[++i];
    else if (a == "--batches" && i + 1 < argc) batches = parse_list(argv[++i]);
    else if (a == "--lens" && i + 1 < argc) lens = parse_list(argv[++i]);
    else {
      std::fprintf(stderr,
                   "usage: %s [--json FILE] [--iters N] [--heads H] [--batches B,..] [--lens L,..] "
                   "[--kernel all|mma|wgmma] [--quick]\n",
                   argv[0]);
      return 2;
    }
  }
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("cuda_decode_bench: no CUDA GPU, nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  MLA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, cc %d.%d\n", prop.name, prop.multiProcessorCount, prop.major,
              prop.minor);

  DeviceBuffer<std::uint8_t> flush(512u << 20);

  // Limits: bf16 GEMM 8192^3 (cuBLAS, float accumulation) and a device-to-device copy.
  double gemm_tflops = 0, copy_gbs = 0;
  {
    const int n = 8192;
    DeviceBuffer<__nv_bfloat16> a(std::size_t(n) * n), b(std::size_t(n) * n), c(std::size_t(n) * n);
    fill_bf16<<<1024, 256>>>(a.data(), std::size_t(n) * n, 1);
    fill_bf16<<<1024, 256>>>(b.data(), std::size_t(n) * n, 2);
    cublasHandle_t h;
    BENCH_CUBLAS_CHECK(cublasCreate(&h));
    const float one = 1.0f, zero = 0.0f;
    auto gemm = [&] {
      BENCH_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a.data(),
                                      CUDA_R_16BF, n, b.data(), CUDA_R_16BF, n, &zero, c.data(),
                                      CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    };
    const double ms = time_ms(gemm, 10, nullptr);
    gemm_tflops = 2.0 * n * double(n) * n / (ms * 1e-3) / 1e12;
    cublasDestroy(h);
    const std::size_t bytes = std::size_t(1) << 30;
    DeviceBuffer<std::uint8_t> src(bytes), dst(bytes);
    MLA_CUDA_CHECK(cudaMemset(src.data(), 1, bytes));
    const double cms = time_ms(
        [&] { MLA_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice)); },
        10, nullptr);
    copy_gbs = 2.0 * bytes / (cms * 1e-3) / 1e9;  // read + written
  }
  std::printf("limits: bf16 GEMM 8192^3 %.0f TFLOP/s, device copy %.0f GB/s (read + written)\n",
              gemm_tflops, copy_gbs);

  if (quick) {
    batches = {1, 32, 128};
    lens = {4096};
  }
  std::vector<Row> rows;
  std::vector<mla::cuda::DecodeKernel> kernels;
  const bool has_wgmma = mla::cuda::DecodePlan().has_wgmma();
  if (kernel_arg != "mma" && has_wgmma) kernels.push_back(mla::cuda::DecodeKernel::kWgmma);
  if (kernel_arg != "wgmma") kernels.push_back(mla::cuda::DecodeKernel::kMmaSync);
  std::printf("%-5s %-9s %4s %6s %10s %9s %8s %7s %7s %6s\n", "cache", "kernel", "B", "L", "ms",
              "TFLOP/s", "GB/s", "%GEMM", "%copy", "parts");
  for (const LatentFormat fmt : {LatentFormat::kBf16, LatentFormat::kFp8}) {
    for (int L : lens)
      for (int B : batches) {
        const int row_bytes = mla::cuda::latent_row_bytes(fmt);
        const int blocks_per_seq = L / 64, num_blocks = B * blocks_per_seq;
        DeviceBuffer<std::uint8_t> pool(std::size_t(num_blocks) * 64 * row_bytes);
        if (fmt == LatentFormat::kBf16)
          fill_bf16<<<4096, 256>>>(reinterpret_cast<__nv_bfloat16*>(pool.data()),
                                   pool.capacity() / 2, 3);
        else
          fill_fp8_rows<<<4096, 256>>>(pool.data(), std::size_t(num_blocks) * 64, 3);
        // Blocks scattered over the pool (a permutation), as a serving engine's would be.
        std::vector<std::int32_t> table(num_blocks);
        for (int i = 0; i < num_blocks; ++i)
          table[i] = int((std::int64_t(i) * 7919) % num_blocks);
        if (num_blocks % 7919 == 0)
          for (int i = 0; i < num_blocks; ++i) table[i] = i;
        DeviceBuffer<std::int32_t> dtable(num_blocks);
        MLA_CUDA_CHECK(cudaMemcpy(dtable.data(), table.data(), num_blocks * 4, cudaMemcpyHostToDevice));
        DeviceBuffer<__nv_bfloat16> q(std::size_t(B) * heads * 576), out(std::size_t(B) * heads * 512);
        DeviceBuffer<float> lse(std::size_t(B) * heads);
        fill_bf16<<<256, 256>>>(q.data(), q.capacity(), 4);
        MLA_CUDA_CHECK(cudaDeviceSynchronize());

        std::vector<int> q_lens(B, 1), seq_lens(B, L);
        for (const mla::cuda::DecodeKernel kernel : kernels) {
        mla::cuda::CudaDecodeOptions options;
        options.kernel = kernel;
        const char* kname = kernel == mla::cuda::DecodeKernel::kWgmma ? "wgmma" : "mma.sync";
        mla::cuda::DecodePlan plan;
        plan.plan(heads, q_lens.data(), seq_lens.data(), B, nullptr, options);
        mla::cuda::DecodeTensors t;
        t.q = q.data();
        t.out = out.data();
        t.lse = lse.data();
        t.cache.format = fmt;
        t.cache.pool = pool.data();
        t.cache.block_stride = std::int64_t(64) * row_bytes;
        t.cache.block_table = dtable.data();
        t.cache.table_stride = blocks_per_seq;
        t.softmax_scale = 0.0721687836f;  // 1 / sqrt(192)
        const double ms = time_ms([&] { mla::cuda::run_decode(plan, t); }, iters, &flush);
        const double flop = 2.0 * B * double(heads) * L * (576 + 512);
        const double bytes = double(B) * L * row_bytes + B * heads * (576.0 + 512.0) * 2;
        Row r{B, L, heads, fmt == LatentFormat::kBf16 ? "bf16" : "fp8", kname, ms,
              flop / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e9, 0, 0, plan.num_parts(),
              plan.row_tiles()};
        r.pct_gemm = 100.0 * r.tflops / gemm_tflops;
        r.pct_copy = 100.0 * r.gbs / copy_gbs;
        rows.push_back(r);
        std::printf("%-5s %-9s %4d %6d %10.4f %9.1f %8.0f %6.1f%% %6.1f%% %6d\n", r.format, kname, B,
                    L, ms, r.tflops, r.gbs, r.pct_gemm, r.pct_copy, r.parts);
        }
      }
  }
  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json.c_str());
      return 1;
    }
    std::fprintf(f, "{\n  \"device\": \"%s\", \"sms\": %d,\n", prop.name, prop.multiProcessorCount);
    std::fprintf(f, "  \"gemm_bf16_tflops\": %.1f, \"copy_gbs\": %.1f, \"iters\": %d,\n", gemm_tflops,
                 copy_gbs, iters);
    std::fprintf(f, "  \"timing\": \"median GPU ms per call, L2 flushed before each call\",\n");
    std::fprintf(f, "  \"results\": [\n");
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::fprintf(f,
                   "    {\"cache\": \"%s\", \"kernel\": \"%s\", \"batch\": %d, \"len\": %d, \"heads\": %d, \"q_len\": 1, "
                   "\"ms\": %.5f, \"tflops\": %.2f, \"gbs\": %.1f, \"pct_gemm\": %.2f, "
                   "\"pct_copy\": %.2f, \"parts\": %d, \"row_tiles\": %d}%s\n",
                   r.format, r.kernel, r.batch, r.len, r.heads, r.ms, r.tflops, r.gbs, r.pct_gemm, r.pct_copy,
                   r.parts, r.row_tiles, i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
  }
  return 0;
}
