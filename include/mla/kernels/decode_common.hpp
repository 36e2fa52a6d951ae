// Pieces shared by the decode engine (decode_engine.hpp) and its tile operations (mla_tiles.hpp,
// gqa_tiles.hpp): the choice of a path's operations, picking a micro-kernel instantiation by a
// runtime size, the causal mask on a tile of scores, reading a cache tile as float rows, and the
// log-sum-exp combine of split-KV partial results. It also brings in what every kernel builds on: the call shapes
// (core/shapes.hpp), the kernel path and its runtime choice (core/isa.hpp), aligned scratch
// (core/arena.hpp) and the per-instruction-set SIMD helpers (mla/simd/).
//
// Both attention kernels are "flash decoding" (Dao et al., FlashAttention-2 / Flash-Decoding):
// the cache is walked in tiles with an online softmax, and long caches are split across threads,
// each split producing a partial (O, max, sum) that a log-sum-exp combine merges. Scores are kept
// in the base-2 domain (the query is pre-multiplied by scale * log2(e)), so the softmax needs
// exp2 only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "mla/core/arena.hpp"
#include "mla/core/bf16.hpp"
#include "mla/core/check.hpp"
#include "mla/core/isa.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/shapes.hpp"
#include "mla/core/types.hpp"
#include "mla/simd/avx2.hpp"
#include "mla/simd/avx512.hpp"
#include "mla/simd/portable.hpp"

namespace mla {
namespace internal {

/// Calls f(std::integral_constant<int, n>) for a runtime n in [1, N]: picks the instantiation of
/// a micro-kernel whose width (or height) is a template parameter.
template <int N, class F>
void dispatch_width(Index n, F&& f) {
  if constexpr (N >= 1) {
    if (n == N) {
      f(std::integral_constant<int, N>{});
      return;
    }
    dispatch_width<N - 1>(n, std::forward<F>(f));
  }
}

/// A kernel's tile operation sets, one per path, for with_path_ops.
template <class PortableOps, class Avx2Ops, class Avx512Ops, class AmxOps>
struct PathOps {
  using Portable = PortableOps;
  using Avx2 = Avx2Ops;
  using Avx512 = Avx512Ops;
  using Amx = AmxOps;
};

/// Calls fn(Ops{}) for the kernel path `path` picks at run time, Ops being one of a kernel's tile
/// operation sets, named by `Set` (a PathOps); throws as kernels::resolve_path does when the
/// CPU lacks the path. kAmx is only taken when asked for (resolve_path never picks it).
template <class Set, class Fn>
void with_path_ops(kernels::KernelPath path, Fn&& fn) {
  const kernels::KernelPath p = kernels::resolve_path(path);
#if MLA_X86_SIMD
  if (path == kernels::KernelPath::kAmx) return fn(typename Set::Amx{});
  if (p == kernels::KernelPath::kAvx512) return fn(typename Set::Avx512{});
  if (p == kernels::KernelPath::kAvx2) return fn(typename Set::Avx2{});
#endif
  (void)p;
  fn(typename Set::Portable{});
}

/// Causal rule on a tile of scores stored column-wise, S^T[t * lds + i] for the tile's cache rows
/// t0 .. t0 + tn - 1 and query rows i < rows: query row i belongs to token (row0 + i) /
/// rows_per_token and cannot see cache rows >= first_masked + that token (set to -inf).
inline void mask_hidden_rows(float* st, Index lds, Index t0, Index tn, Index rows, Index row0,
                             Index rows_per_token, Index first_masked) {
  if (t0 + tn <= first_masked) return;
  for (Index t = std::max<Index>(0, first_masked - t0); t < tn; ++t)
    for (Index i = 0; i < rows; ++i)
      if (t0 + t >= first_masked + (row0 + i) / rows_per_token)
        st[t * lds + i] = -std::numeric_limits<float>::infinity();
}

/// Rows [0, tn) of a cache tile (`cols` values used per row, rows `stride` apart) as float rows for
/// the micro-kernels: widened by `Ops::widen` into `wide` (rows `wide_stride` apart) for bf16;
/// for a float cache read in place, or copied into `wide` where `Ops::kDenseFloatTiles` (the copy
/// reads the tile once, row after row, which the hardware prefetcher follows; the micro-kernels
/// then read it from L1/L2 in any order). Returns the rows and sets `row_stride` to their stride.
template <class Ops, class T>
const float* rows_as_float(const T* rows, Index stride, Index tn, Index cols, float* wide,
                           Index wide_stride, Index& row_stride) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (Ops::kDenseFloatTiles) {
      for (Index r = 0; r < tn; ++r) std::memcpy(wide + r * wide_stride, rows + r * stride, sizeof(float) * std::size_t(cols));
      row_stride = wide_stride;
      return wide;
    }
    row_stride = stride;
    return rows;
  } else {
    Ops::widen(rows, stride, tn, cols, wide, wide_stride);
    row_stride = wide_stride;
    return wide;
  }
}

/// Log-sum-exp merge of split-KV partial results for one output row. Split s holds an
/// unnormalised accumulator o[s] (`split_stride` floats after o[s - 1]), its running max mx[s]
/// (base-2 scores) and its sum l[s] of 2^(score - max) (mx and l entries `mstride` floats apart).
/// Writes out[d] = sum_s w_s o_s[d] / sum_s w_s l_s with w_s = 2^(mx_s - max_s mx_s), and returns
/// the natural-log LSE of all scores.
inline float combine_splits(const float* o, Index split_stride, const float* mx, const float* l,
                            Index mstride, Index splits, Index dim, float* out) {
  float gmax = -std::numeric_limits<float>::infinity();
  for (Index s = 0; s < splits; ++s) gmax = std::fmax(gmax, mx[s * mstride]);
  float den = 0.0f;
  for (Index s = 0; s < splits; ++s) den += std::exp2(mx[s * mstride] - gmax) * l[s * mstride];
  const float inv = 1.0f / den;
  for (Index d = 0; d < dim; ++d) out[d] = 0.0f;
  for (Index s = 0; s < splits; ++s) {
    // A split in which this query row saw no cache row (sum of weights 0) adds nothing; any
    // other split is added even at weight 0, so that a NaN in its scores or values still
    // reaches the output.
    if (l[s * mstride] == 0.0f) continue;
    const float w = std::exp2(mx[s * mstride] - gmax) * inv;
    const float* os = o + s * split_stride;
    for (Index d = 0; d < dim; ++d) out[d] += w * os[d];
  }
  return (gmax + std::log2(den)) * kLn2;
}

}  // namespace internal
}  // namespace mla
