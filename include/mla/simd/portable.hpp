// Portable pieces the SIMD helpers of every instruction set share: the base-2 softmax constants,
// the Taylor coefficients of the vector exp2s, row widening in plain C++, and a prefetch hint.
//
// The fast kernels keep scores in the base-2 domain (the query is pre-multiplied by
// scale * log2(e)), so their softmax needs exp2 only.
#pragma once

#include "mla/core/bf16.hpp"
#include "mla/core/types.hpp"

namespace mla {
namespace internal {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

/// Taylor coefficients of 2^f = exp(f ln 2): kExp2Taylor[i] = ln2^i / i!, for the vector exp2s.
inline constexpr float kExp2Taylor[8] = {1.0f,
                                         6.931471805599453e-01f,
                                         2.402265069591007e-01f,
                                         5.550410866482158e-02f,
                                         9.618129107628477e-03f,
                                         1.3333558146428443e-03f,
                                         1.5403530393381606e-04f,
                                         1.525273380405984e-05f};

/// Portable widening of `rows` rows of `cols` elements (source row stride `src_stride`) into a
/// float block with row stride `dst_stride`.
template <class T>
void widen_rows_portable(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                         Index dst_stride) {
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) dst[r * dst_stride + c] = to_float(src[r * src_stride + c]);
}

/// Asks for `rows` segments of `bytes` bytes (starting `row_bytes` apart at `p`) in L1: for reads
/// of many short row segments, which the hardware prefetcher does not follow.
inline void prefetch_row_segments(const void* p, Index rows, Index row_bytes, Index bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* base = static_cast<const char*>(p);
  for (Index r = 0; r < rows; ++r)
    for (Index b = 0; b < bytes; b += 64) __builtin_prefetch(base + r * row_bytes + b, 0, 3);
#else
  (void)p, (void)rows, (void)row_bytes, (void)bytes;
#endif
}

}  // namespace internal
}  // namespace mla
