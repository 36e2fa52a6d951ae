// Absorbed MLA decode on the GPU over a paged latent cache: the entry an engine calls once per
// layer, after planning the step once (mla/cuda/decode_plan.cuh). The GPU form of the CPU
// engine's run_decode (mla/kernels/decode_engine.hpp), with FlashMLA's tensor layouts:
//
//   q    [total_q_tokens, heads, 576] bf16   per query row: q_lat = W_UK^T q_nope (512) | q_pe (64)
//   out  [total_q_tokens, heads, 512] bf16   o_lat = sum_j softmax(s)_j c_j
//   lse  [total_q_tokens, heads]      float  ln sum_j exp(s_j)   (optional)
//   s_j = softmax_scale (q_lat . c_j + q_pe . k_pe_j)
//
// Sequence b's q_lens[b] query tokens are rows q_tok_b .. q_tok_b + q_lens[b] - 1 of q and out
// (the sequences packed in order, so a uniform q_len is q [batch, q_len, heads, 576]); its cache
// holds lens[b] rows, the new tokens' last, and new token t sees rows 0 .. lens[b] - q_lens[b] + t.
// DeepSeek-V3 uses softmax_scale = 1 / sqrt(192) (qk_nope_head_dim + qk_rope_head_dim), not
// 1 / sqrt(576): the absorbed product equals the unabsorbed one.
//
// run_decode allocates nothing and does not synchronise: two kernel launches on `stream` (the
// combine only when the plan cut a sequence).
#pragma once

#include <sstream>
#include <stdexcept>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "mla/cuda/cuda_check.cuh"
#include "mla/cuda/decode_plan.cuh"
#include "mla/cuda/mla_decode_kernel.cuh"
#include "mla/cuda/paged_latent.cuh"

namespace mla {
namespace cuda {

/// The tensors of one layer's decode call (device pointers; see the header comment for shapes).
struct DecodeTensors {
  const __nv_bfloat16* q = nullptr;  ///< [total_q_tokens, heads, 576]
  PagedLatentView cache;             ///< the layer's cache: pool, block table, row format
  __nv_bfloat16* out = nullptr;      ///< [total_q_tokens, heads, 512]
  float* lse = nullptr;              ///< [total_q_tokens, heads] or null
  float softmax_scale = 0.0f;        ///< e.g. 1 / sqrt(192) for DeepSeek-V3
};

namespace internal {

/// Largest dynamic shared memory a block may opt in to on `device` (bytes).
inline int max_optin_smem(int device) {
  int bytes = 0;
  MLA_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

template <LatentFormat F, int kStages, bool kHopper>
void launch_decode(const DecodeParams& params, const DecodePlan& plan, cudaStream_t stream) {
  using L = DecodeSmem<F, kStages, kHopper>;
  auto kernel = mla_decode_kernel<F, kStages, kHopper>;
  MLA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kBytes));
  const dim3 grid(plan.num_parts(), plan.row_tiles());
  kernel<<<grid, L::kThreads, L::kBytes, stream>>>(params);
  MLA_CUDA_CHECK(cudaGetLastError());
}

inline void check_tensor(bool ok, const char* what) {
  if (ok) return;
  std::ostringstream os;
  os << "cuda::run_decode: " << what;
  throw std::invalid_argument(os.str());
}

/// Pipeline stages the decode kernel of a row format and form gets on `device`: the most (up to
/// 3) whose shared memory fits, or 0 when not even 2 do.
template <bool kHopper>
int decode_stages(LatentFormat format, int device) {
  const int optin = max_optin_smem(device);
  if (format == LatentFormat::kBf16) {
    if (DecodeSmem<LatentFormat::kBf16, 3, kHopper>::kBytes <= optin) return 3;
    return DecodeSmem<LatentFormat::kBf16, 2, kHopper>::kBytes <= optin ? 2 : 0;
  }
  if (DecodeSmem<LatentFormat::kFp8, 3, kHopper>::kBytes <= optin) return 3;
  return DecodeSmem<LatentFormat::kFp8, 2, kHopper>::kBytes <= optin ? 2 : 0;
}

template <bool kHopper>
void launch_form(const DecodeParams& p, const DecodePlan& plan, LatentFormat format,
                 cudaStream_t stream) {
  const int stages = decode_stages<kHopper>(format, plan.device());
  if (stages == 0) {
    std::ostringstream os;
    os << "cuda::run_decode: device " << plan.device() << " offers "
       << max_optin_smem(plan.device()) << " bytes of shared memory per block, expected >= "
       << (format == LatentFormat::kBf16 ? DecodeSmem<LatentFormat::kBf16, 2, kHopper>::kBytes
                                         : DecodeSmem<LatentFormat::kFp8, 2, kHopper>::kBytes);
    throw std::invalid_argument(os.str());
  }
  if (format == LatentFormat::kFp8) {
    if (stages == 3)
      launch_decode<LatentFormat::kFp8, 3, kHopper>(p, plan, stream);
    else
      launch_decode<LatentFormat::kFp8, 2, kHopper>(p, plan, stream);
  }
  else if (stages == 3)
    launch_decode<LatentFormat::kBf16, 3, kHopper>(p, plan, stream);
  else
    launch_decode<LatentFormat::kBf16, 2, kHopper>(p, plan, stream);
}

}  // namespace internal

/// Runs one layer's absorbed MLA decode for the step `plan` was made for (see the header
/// comment). Throws std::invalid_argument for missing tensors or a cache the kernel cannot read,
/// CudaError when a launch fails.
inline void run_decode(const DecodePlan& plan, const DecodeTensors& t, cudaStream_t stream = nullptr) {
  using namespace internal;
  check_tensor(plan.batch() > 0, "the plan is empty (call DecodePlan::plan first)");
  check_tensor(t.q != nullptr && t.out != nullptr, "q and out must not be null");
  check_tensor(t.cache.pool != nullptr && t.cache.block_table != nullptr,
               "cache.pool and cache.block_table must not be null");
  check_tensor(reinterpret_cast<std::uintptr_t>(t.cache.pool) % 16 == 0 &&
                   t.cache.block_stride % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(t.q) % 16 == 0,
               "q, cache.pool and cache.block_stride must be 16-byte aligned");
  if (t.cache.block_stride < static_cast<std::int64_t>(MlaDims::kBlock) * t.cache.row_bytes()) {
    std::ostringstream os;
    os << "cuda::run_decode: cache.block_stride (" << t.cache.block_stride
       << ") is smaller than a block (expected >= " << MlaDims::kBlock * t.cache.row_bytes() << ")";
    throw std::invalid_argument(os.str());
  }
  DecodeParams p;
  p.q = t.q;
  p.out = t.out;
  p.lse = t.lse;
  p.cache = t.cache;
  p.seqs = plan.dev_seqs();
  p.parts = plan.dev_parts();
  p.part_o = plan.dev_part_o();
  p.part_lse = plan.dev_part_lse();
  p.batch = plan.batch();
  p.num_heads = plan.num_heads();
  p.scale_log2 = t.softmax_scale * 1.4426950408889634f;

  if (plan.kernel() == DecodeKernel::kWgmma) {
    check_tensor(plan.has_wgmma(),
                 "the plan asks for the wgmma kernel, which this build or device does not have "
                 "(it needs an sm_90a build on an sm_90 GPU)");
    launch_form<true>(p, plan, t.cache.format, stream);
  } else {
    launch_form<false>(p, plan, t.cache.format, stream);
  }
  if (plan.any_split()) {
    const dim3 grid(plan.batch(), (plan.max_rows() + 7) / 8);
    mla_combine_kernel<<<grid, 256, 0, stream>>>(p);
    MLA_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace cuda
}  // namespace mla
