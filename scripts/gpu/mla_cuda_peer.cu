// A C entry to our CUDA decode for the Python peer harness (scripts/gpu/mla_decode_peers_ours.py):
// built as a shared library on the GPU machine and called through ctypes on torch tensors, so our
// kernel is timed on the same data, with the same timing code, in the same run as FlashMLA.
//   nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC -gencode arch=compute_90a,code=sm_90a \
//        -Iinclude scripts/gpu/mla_cuda_peer.cu -o build-cuda/libmla_cuda_peer.so
#include <cstdio>
#include <exception>
#include <vector>

#include "mla/cuda/cuda.cuh"

extern "C" {

/// A plan for `batch` sequences of `len` rows with `q_len` new tokens each, for kernel form
/// `kernel` (0: automatic, 1: mma.sync, 2: wgmma); null on error.
void* mla_cuda_peer_plan(int heads, int batch, int len, int q_len, int kernel) {
  try {
    auto* plan = new mla::cuda::DecodePlan();
    std::vector<int> q_lens(batch, q_len), lens(batch, len);
    mla::cuda::CudaDecodeOptions options;
    options.kernel = kernel == 1   ? mla::cuda::DecodeKernel::kMmaSync
                     : kernel == 2 ? mla::cuda::DecodeKernel::kWgmma
                                   : mla::cuda::DecodeKernel::kAuto;
    plan->plan(heads, q_lens.data(), lens.data(), batch, nullptr, options);
    MLA_CUDA_CHECK(cudaDeviceSynchronize());
    return plan;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mla_cuda_peer_plan: %s\n", e.what());
    return nullptr;
  }
}

void mla_cuda_peer_free(void* plan) { delete static_cast<mla::cuda::DecodePlan*>(plan); }

/// One decode call on the current stream (`stream` as an integer, 0: the default stream).
/// Returns 0, or 1 after printing the error.
int mla_cuda_peer_run(void* plan, const void* q, const void* pool, long long block_stride,
                      const int* table, int table_stride, int fp8, void* out, float* lse,
                      float scale, unsigned long long stream) {
  try {
    mla::cuda::DecodeTensors t;
    t.q = static_cast<const __nv_bfloat16*>(q);
    t.out = static_cast<__nv_bfloat16*>(out);
    t.lse = lse;
    t.cache.format = fp8 ? mla::cuda::LatentFormat::kFp8 : mla::cuda::LatentFormat::kBf16;
    t.cache.pool = static_cast<const std::uint8_t*>(pool);
    t.cache.block_stride = block_stride;
    t.cache.block_table = table;
    t.cache.table_stride = table_stride;
    t.softmax_scale = scale;
    mla::cuda::run_decode(*static_cast<mla::cuda::DecodePlan*>(plan), t,
                          reinterpret_cast<cudaStream_t>(stream));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mla_cuda_peer_run: %s\n", e.what());
    return 1;
  }
}

}  // extern "C"
