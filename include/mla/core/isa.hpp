// Which instruction sets the CPU running this process offers, and the choice of kernel path.
//
// Every translation unit compiles every path's kernels (in target regions, core/macros.hpp), so
// the choice is made at run time: KernelPath::kAuto takes the widest path this CPU and its OS
// support, found once per process with cpuid (which sets the CPU has) and xgetbv (which register
// states the OS saves on a context switch: without that a path's registers would be clobbered).
// The environment variable MLA_KERNEL_PATH (portable, avx2 or avx512) caps what kAuto takes, to
// run a narrower path without rebuilding; an explicit KernelPath argument is taken as asked.
// A build's -march no longer decides which kernels exist, only how the code around them is
// compiled.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "mla/core/check.hpp"
#include "mla/core/macros.hpp"

#if MLA_X86_64
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif
#if MLA_X86_64 && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace mla {
namespace kernels {

/// Which implementation a fast kernel runs, named by the widest instruction set it may use
/// (kPortable < kAvx2 < kAvx512). kAuto takes the widest one the CPU supports (capped by the
/// environment variable MLA_KERNEL_PATH); kAvx2 needs AVX2+FMA, kAvx512 AVX-512 F/BW/DQ/VL. A
/// kernel without an implementation at the requested level runs its next lower one (the GEMM and
/// GQA kernels stop at AVX2 for their products). Tests loop over available_paths() so every path
/// the CPU has, the portable fallback included, is exercised. Asking for a level the CPU does not
/// have throws std::invalid_argument.
///
/// kAmx is not a level of the same kind and kAuto never picks it: absorbed_attention and
/// gqa_attention over a bf16 cache then run on the AMX tile unit (Sapphire Rapids and later:
/// AMX-TILE, AMX-BF16 and AVX512-BF16), rounding the query and the softmax weights to bf16 before
/// the two products (float accumulation; see amx_attention.hpp for the error this adds).
/// Everything else (float caches, the GEMM, the paged / batched absorbed kernel) runs its kAvx512
/// code for it. It needs the OS to grant the AMX register state (Linux >= 5.16, arch_prctl); a
/// refusal throws std::runtime_error.
enum class KernelPath { kAuto, kPortable, kAvx2, kAvx512, kAmx };

/// Its name, for reports and MLA_KERNEL_PATH: "amx-bf16", "avx512", "avx2+fma", "portable" or
/// "auto".
constexpr const char* path_name(KernelPath p) {
  return p == KernelPath::kAmx      ? "amx-bf16"
         : p == KernelPath::kAvx512 ? "avx512"
         : p == KernelPath::kAvx2   ? "avx2+fma"
         : p == KernelPath::kPortable ? "portable"
                                      : "auto";
}

}  // namespace kernels

namespace internal {

/// What the CPU and the OS offer, per kernel path.
struct CpuFeatures {
  bool avx2_fma = false;  // AVX2 + FMA, YMM state saved by the OS
  bool avx512 = false;    // AVX-512 F/BW/DQ/VL (+ AVX2/FMA), opmask and ZMM state saved
  bool avx512_bf16 = false;  // AVX512-BF16 (vdpbf16ps) on top of the AVX-512 sets
  bool avx512_vnni = false;  // AVX512-VNNI (vpdpbusd) on top of the AVX-512 sets
  bool amx = false;       // AMX-TILE + AMX-BF16 + AVX512-BF16 (+ the AVX-512 sets), tile state
                          // enabled by the OS (the per-process grant is asked for separately)
};

#if MLA_X86_64
/// cpuid leaf / subleaf registers {eax, ebx, ecx, edx}; zeros past the highest leaf.
inline void cpuid(unsigned leaf, unsigned subleaf, unsigned r[4]) {
  r[0] = r[1] = r[2] = r[3] = 0;
#if defined(_MSC_VER) && !defined(__clang__)
  int v[4];
  __cpuidex(v, int(leaf), int(subleaf));
  for (int i = 0; i < 4; ++i) r[i] = unsigned(v[i]);
#else
  __get_cpuid_count(leaf, subleaf, &r[0], &r[1], &r[2], &r[3]);  // leaves r zero if unsupported
#endif
}

/// XCR0: the register states the OS saves and restores (only valid when cpuid reports OSXSAVE).
inline std::uint64_t xcr0() {
#if defined(_MSC_VER) && !defined(__clang__)
  return _xgetbv(0);
#else
  // The instruction itself rather than _xgetbv(), which GCC only offers in -mxsave code.
  std::uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (std::uint64_t(hi) << 32) | lo;
#endif
}
#endif

/// Asks cpuid and xgetbv (not cached; see cpu_features()).
inline CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if MLA_X86_64
  unsigned r[4];
  cpuid(0, 0, r);
  const unsigned max_leaf = r[0];
  if (max_leaf < 7) return f;
  cpuid(1, 0, r);
  const bool fma = (r[2] >> 12) & 1u, osxsave = (r[2] >> 27) & 1u, avx = (r[2] >> 28) & 1u;
  if (!osxsave || !avx) return f;
  const std::uint64_t xcr = xcr0();
  // XCR0 bits: 1 SSE, 2 AVX (upper YMM), 5 opmask, 6 upper ZMM 0-15, 7 ZMM 16-31, 17 tile
  // configuration, 18 tile data.
  const bool os_ymm = (xcr & 0x6u) == 0x6u;
  const bool os_zmm = (xcr & 0xE6u) == 0xE6u;
  const bool os_tiles = (xcr & 0x60000u) == 0x60000u;
  cpuid(7, 0, r);
  const unsigned max_sub7 = r[0], ebx7 = r[1], ecx7 = r[2], edx7 = r[3];
  const bool avx2 = (ebx7 >> 5) & 1u;
  const bool avx512 = ((ebx7 >> 16) & 1u) && ((ebx7 >> 17) & 1u) &&  // F, DQ
                      ((ebx7 >> 30) & 1u) && ((ebx7 >> 31) & 1u);     // BW, VL
  const bool amx_bf16 = (edx7 >> 22) & 1u, amx_tile = (edx7 >> 24) & 1u;
  bool avx512_bf16 = false;
  if (max_sub7 >= 1) {
    cpuid(7, 1, r);
    avx512_bf16 = (r[0] >> 5) & 1u;
  }
  f.avx2_fma = avx2 && fma && os_ymm;
  f.avx512 = f.avx2_fma && avx512 && os_zmm;
  f.avx512_bf16 = f.avx512 && avx512_bf16;
  f.avx512_vnni = f.avx512 && ((ecx7 >> 11) & 1u);
  f.amx = f.avx512_bf16 && amx_tile && amx_bf16 && os_tiles;
#endif
  return f;
}

/// This CPU's features, detected on first use and kept for the life of the process.
inline const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect_cpu_features();
  return features;
}

/// Asks the OS once per process for the AMX tile register state (Linux gates it behind
/// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); the grant covers every thread). Without
/// it the first tile instruction would kill the process with SIGILL. False where there is no
/// such CPU or OS.
inline bool amx_tiles_granted() {
  static const bool granted = [] {
#if MLA_X86_64 && defined(__linux__)
    if (!cpu_features().amx) return false;
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return granted;
}

/// The full-precision path an MLA_KERNEL_PATH value names; throws std::invalid_argument naming
/// the value and the accepted ones.
inline kernels::KernelPath parse_kernel_path_cap(const char* value) {
  using kernels::KernelPath;
  if (std::strcmp(value, "portable") == 0) return KernelPath::kPortable;
  if (std::strcmp(value, "avx2") == 0) return KernelPath::kAvx2;
  if (std::strcmp(value, "avx512") == 0) return KernelPath::kAvx512;
  throw std::invalid_argument(str_cat("MLA_KERNEL_PATH is \"", value,
                                      "\"; expected portable, avx2 or avx512 (or unset for the "
                                      "widest path the CPU has)"));
}

/// What kAuto stands for when the CPU's widest full-precision path is `widest` and
/// MLA_KERNEL_PATH is `env_value` (null or empty: unset): the narrower of the two.
inline kernels::KernelPath auto_path_for(kernels::KernelPath widest, const char* env_value) {
  if (env_value == nullptr || *env_value == '\0') return widest;
  const kernels::KernelPath cap = parse_kernel_path_cap(env_value);
  return static_cast<int>(cap) < static_cast<int>(widest) ? cap : widest;
}

}  // namespace internal

namespace kernels {

/// True when this CPU (and its OS) can run `path`; kAuto and kPortable always. For kAmx this
/// checks the CPU and the OS's tile support, not yet the per-process grant (resolve_path asks).
inline bool path_available(KernelPath path) {
  const internal::CpuFeatures& f = internal::cpu_features();
  switch (path) {
    case KernelPath::kAuto:
    case KernelPath::kPortable: return true;
    case KernelPath::kAvx2: return MLA_X86_SIMD && f.avx2_fma;
    case KernelPath::kAvx512: return MLA_X86_SIMD && f.avx512;
    case KernelPath::kAmx: return MLA_X86_SIMD && f.amx;
  }
  return false;
}

/// The widest full-precision path this CPU supports.
inline KernelPath widest_available_path() {
  return path_available(KernelPath::kAvx512) ? KernelPath::kAvx512
         : path_available(KernelPath::kAvx2) ? KernelPath::kAvx2
                                             : KernelPath::kPortable;
}

/// Every full-precision path this CPU supports, portable first (kAmx, which rounds operands to
/// bf16, is left out; its tests hold it to its own error bound).
inline std::vector<KernelPath> available_paths() {
  std::vector<KernelPath> paths{KernelPath::kPortable};
  if (path_available(KernelPath::kAvx2)) paths.push_back(KernelPath::kAvx2);
  if (path_available(KernelPath::kAvx512)) paths.push_back(KernelPath::kAvx512);
  return paths;
}

/// What kAuto runs: the widest available path, capped by MLA_KERNEL_PATH. Read once per process;
/// throws std::invalid_argument (on every call) when the variable holds something else.
inline KernelPath auto_path() {
  static const KernelPath path =
      internal::auto_path_for(widest_available_path(), std::getenv("MLA_KERNEL_PATH"));
  return path;
}

/// The concrete level `requested` stands for (kAuto -> auto_path(); kAmx -> kAvx512, the level
/// every kernel but the bf16 attention ones runs for it). Throws std::invalid_argument when the
/// CPU lacks the path and std::runtime_error when the OS refuses the AMX tile state.
inline KernelPath resolve_path(KernelPath requested) {
  if (requested == KernelPath::kAuto) return auto_path();
  MLA_CHECK_ARG(path_available(requested), "kernel path ", path_name(requested),
                " is not supported by this CPU (widest: ", path_name(widest_available_path()),
                requested == KernelPath::kAmx ? "; AMX needs AMX-TILE, AMX-BF16 and AVX512-BF16)"
                                              : ")");
  if (requested == KernelPath::kAmx) {
    MLA_CHECK_DATA(internal::amx_tiles_granted(),
                   "kernel path amx-bf16: the OS did not grant the AMX tile state "
                   "(arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) failed; Linux >= 5.16 needed)");
    return KernelPath::kAvx512;
  }
  return requested;
}

}  // namespace kernels
}  // namespace mla
