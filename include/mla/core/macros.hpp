// Compiler macros shared by the kernels: loop unrolling, out-of-line micro-kernels, register
// pinning, and the instruction-set target regions that let one translation unit hold every
// instruction set's kernels (runtime dispatch picks one; see mla/core/isa.hpp).
//
// A target region compiles the functions defined inside it for a wider instruction set than the
// translation unit's -march, so that AVX2 and AVX-512 kernels exist in a build for plain x86-64
// and run where the CPU has them:
//
//   MLA_TARGET_AVX512_BEGIN
//   inline __m512 twice(__m512 x) { return _mm512_add_ps(x, x); }
//   MLA_TARGET_END
//
// Rules for code inside a region (GCC and Clang enforce the first two at compile time):
// - A function that uses an instruction set's intrinsics must be defined in a region of that set
//   (or a wider one). Helpers it should inline must be in the same region or a narrower one (or
//   in no region): the compiler inlines a callee only into callers whose set contains the
//   callee's, and otherwise calls it out of line or, for always_inline intrinsics, refuses.
// - No #include inside a region: everything a region's code uses is included before it opens, so
//   that library headers (Eigen, the standard library) keep the translation unit's target.
// - Regions do not nest. Each ends with MLA_TARGET_END in the same header.
// - Calls from code outside any region into a region are fine (that is how dispatch enters a
//   kernel); they are not inlined, so what crosses the boundary is a whole tile operation or a
//   micro-kernel, never a per-element helper.
#pragma once

/// 1 on x86-64, where the SIMD kernels exist; elsewhere only the portable loops are compiled.
#if defined(__x86_64__) || defined(_M_X64)
#define MLA_X86_64 1
#else
#define MLA_X86_64 0
#endif

/// 1 where the x86 SIMD kernels are compiled: x86-64 with a compiler that can compile a function
/// for an instruction set the translation unit does not target (GCC, Clang, MSVC).
#if MLA_X86_64 && (defined(__GNUC__) || defined(__clang__) || defined(_MSC_VER))
#define MLA_X86_SIMD 1
#else
#define MLA_X86_SIMD 0
#endif

#define MLA_PRAGMA(x) _Pragma(#x)

// The instruction sets of each kernel path (see kernels::KernelPath), as target attribute lists.
// They must match what isa.hpp checks with cpuid: a region may use exactly what its path's check
// guarantees.
#if defined(__clang__)
#define MLA_TARGET_BEGIN(isa) \
  MLA_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define MLA_TARGET_END MLA_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define MLA_TARGET_BEGIN(isa) MLA_PRAGMA(GCC push_options) MLA_PRAGMA(GCC target(isa))
#define MLA_TARGET_END MLA_PRAGMA(GCC pop_options)
#else  // MSVC compiles any intrinsic in any function
#define MLA_TARGET_BEGIN(isa)
#define MLA_TARGET_END
#endif

/// AVX2 + FMA (KernelPath::kAvx2).
#define MLA_TARGET_AVX2_BEGIN MLA_TARGET_BEGIN("avx2,fma")
/// AVX-512 F/BW/DQ/VL, with AVX2 + FMA (KernelPath::kAvx512; the x86-64-v4 vector sets).
#define MLA_TARGET_AVX512_BEGIN MLA_TARGET_BEGIN("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")
/// The AVX-512 sets plus AVX512-VNNI (vpdpbusd), for the int8 products on the AVX-512 path when
/// the CPU has them (cpu_features().avx512_vnni).
#define MLA_TARGET_AVX512_VNNI_BEGIN \
  MLA_TARGET_BEGIN("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")
/// The AVX-512 sets plus AVX512-BF16 and the AMX tile unit with its bf16 products
/// (KernelPath::kAmx).
#define MLA_TARGET_AMX_BEGIN \
  MLA_TARGET_BEGIN("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16")

// Full unrolling of the fixed-trip loops inside micro-kernels. Without it GCC may keep the
// accumulator arrays in memory (stack stores every iteration), which halves the FMA rate.
#if defined(__clang__)
#define MLA_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define MLA_UNROLL _Pragma("GCC unroll 16")
#else
#define MLA_UNROLL
#endif

// Keeps a SIMD value in a register: GCC otherwise re-loads a value used by several FMAs as a
// memory operand of each, which costs load-port slots the micro-kernels need.
#if defined(__GNUC__) || defined(__clang__)
#define MLA_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define MLA_IN_REGISTER(v) (void)(v)
#endif

// Micro-kernels stay out of line: inlined into their callers GCC spills their accumulators or
// pinned operands; a call per block of a few hundred FMAs costs nothing measurable.
#if defined(__GNUC__) || defined(__clang__)
#define MLA_NOINLINE __attribute__((noinline))
#else
#define MLA_NOINLINE
#endif
