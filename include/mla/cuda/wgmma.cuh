// Hopper warpgroup matrix multiply (wgmma, sm_90a) for the CUDA decode kernel: shared-memory
// matrix descriptors for the 128-byte swizzled layout, fences, and the two shapes the kernel uses.
// Compiled to a trap on other architectures (MLA_CUDA_HAS_WGMMA is 0 there); the host checks
// hopper_kernels_available() before launching a kernel that uses them.
//
// 128-byte swizzled tile of bf16 (PTX ISA "Shared Memory Matrix Layout", swizzle mode 128B): rows
// of 64 values (128 B) in atoms of 8 rows (1024 B, 1024-aligned); the 16-byte chunk c of row r is
// stored at chunk c ^ (r % 8). A [rows x 576] operand is 9 such column blocks of 64 values, one
// after the other, each [rows x 128 B]. The same bytes serve as
// - a K-major operand (rows = M or N, the 64 values = K): SBO = 1024 B between 8-row groups, a
//   k16 step is +32 B of start address inside the 128-byte row;
// - an MN-major operand (rows = K, the 64 values = N): SBO = 1024 B between groups of 8 K rows,
//   LBO = the column-block size between consecutive groups of 64 N values.
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MLA_CUDA_HAS_WGMMA 1
#else
#define MLA_CUDA_HAS_WGMMA 0
#endif

namespace mla {
namespace cuda {
namespace internal {

/// Byte offset of 16-byte chunk `c` (0..7) of row `r` inside a 128-byte-swizzled column block.
__host__ __device__ constexpr int swizzle128(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

/// A shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
/// offsets (all in 16-byte units in the descriptor).
__device__ __forceinline__ std::uint64_t wgmma_desc_sw128(std::uint32_t smem_byte_addr, std::uint32_t lbo,
                                                          std::uint32_t sbo) {
  std::uint64_t d = 0;
  d |= std::uint64_t((smem_byte_addr & 0x3FFFF) >> 4);
  d |= std::uint64_t((lbo & 0x3FFFF) >> 4) << 16;
  d |= std::uint64_t((sbo & 0x3FFFF) >> 4) << 32;
  d |= std::uint64_t(1) << 62;  // swizzle mode 1: 128 B
  return d;
}

/// Orders this thread's register writes before the warpgroup's next wgmma reads them.
__device__ __forceinline__ void wgmma_fence() {
#if MLA_CUDA_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if MLA_CUDA_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
/// Waits until at most N committed wgmma groups are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if MLA_CUDA_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/// Makes this thread's generic-proxy shared-memory writes (stores, cp.async) visible to the async
/// proxy that wgmma reads through; call before the barrier that publishes them.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if MLA_CUDA_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/// d[64 x 32] (+)= A[64 x 16] B[16 x 32], A and B from shared memory (descriptors); d zeroed first
/// unless `accumulate`. Thread layout of d: as m16n8k16's C per warp (rows 16 w .. + 16), n8 block
/// j in d[4 j .. 4 j + 3].
__device__ __forceinline__ void wgmma_m64n32k16_ss(float (&d)[16], std::uint64_t desc_a,
                                                  std::uint64_t desc_b, bool accumulate) {
#if MLA_CUDA_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));
#else
  (void)d; (void)desc_a; (void)desc_b; (void)accumulate;
  __trap();
#endif
}

/// d[64 x 256] += A[64 x 16] B[16 x 256]: A from registers (each warp its 16 rows, in m16n8k16's A
/// fragment layout), B from shared memory stored MN-major (transposed).
__device__ __forceinline__ void wgmma_m64n256k16_rs_tnsp_b(float (&d)[128], const std::uint32_t (&a)[4],
                                                         std::uint64_t desc_b) {
#if MLA_CUDA_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
#else
  (void)d; (void)a; (void)desc_b;
  __trap();
#endif
}
/// Writes 1 when this build has the wgmma kernels for the device it runs on (sm_90a), else 0.
__global__ void wgmma_probe_kernel(int* has_wgmma) { *has_wgmma = MLA_CUDA_HAS_WGMMA; }

}  // namespace internal
}  // namespace cuda
}  // namespace mla
