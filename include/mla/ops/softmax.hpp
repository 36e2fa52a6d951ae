// Numerically safe softmax: subtract the row maximum before exponentiating, so huge finite
// logits never overflow, and accumulate the normaliser in double. A row whose entries are all
// -inf (nothing visible) becomes all zeros rather than NaN. NaN inputs propagate to the output.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "mla/core/isa.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/types.hpp"
#include "mla/simd/avx2.hpp"
#include "mla/simd/portable.hpp"

namespace mla {
namespace internal {

/// The rows no exponent is taken of, given whether the row holds a NaN and its maximum m: with a
/// NaN the row becomes all NaN, with m = -inf (nothing visible) all zeros. Returns whether the
/// row was one of these (and is done).
template <class Scalar>
bool softmax_special_row(Scalar* x, Index n, bool has_nan, Scalar m) {
  if (has_nan) {
    for (Index i = 0; i < n; ++i) x[i] = std::numeric_limits<Scalar>::quiet_NaN();
    return true;
  }
  if (m == -std::numeric_limits<Scalar>::infinity()) {
    for (Index i = 0; i < n; ++i) x[i] = Scalar(0);
    return true;
  }
  return false;
}

#if MLA_X86_SIMD
MLA_TARGET_AVX2_BEGIN

/// Float rows on AVX2: the same steps 8 lanes at a time, exp through exp2_avx2 (relative error
/// < 6e-9 besides rounding (x - max) * log2 e to float, as std::exp rounds its float argument),
/// the normaliser still summed in double. A long prefill's scores go through here, where a scalar
/// std::exp per score would be a visible share of the step (docs/benchmarks.md).
inline void softmax_inplace_avx2(float* x, Index n) {
  const Index n8 = n & ~Index(7);
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 unordered = _mm256_setzero_ps();
  for (Index i = 0; i < n8; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    vmax = _mm256_max_ps(vmax, v);
  }
  float m = hmax_avx2(vmax);
  bool has_nan = _mm256_movemask_ps(unordered) != 0;
  for (Index i = n8; i < n; ++i) {
    if (std::isnan(x[i])) has_nan = true;
    if (x[i] > m) m = x[i];
  }
  if (softmax_special_row(x, n, has_nan, m)) return;
  const __m256 vm = _mm256_set1_ps(m);
  const __m256 log2e = _mm256_set1_ps(kLog2e);
  __m256d sum_lo = _mm256_setzero_pd(), sum_hi = _mm256_setzero_pd();
  for (Index i = 0; i < n8; i += 8) {
    const __m256 e = exp2_avx2(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), log2e));
    _mm256_storeu_ps(x + i, e);
    sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double parts[4];
  _mm256_store_pd(parts, _mm256_add_pd(sum_lo, sum_hi));
  double sum = (parts[0] + parts[1]) + (parts[2] + parts[3]);
  for (Index i = n8; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += static_cast<double>(x[i]);
  }
  const float inv = static_cast<float>(1.0 / sum);
  const __m256 vinv = _mm256_set1_ps(inv);
  for (Index i = 0; i < n8; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
  for (Index i = n8; i < n; ++i) x[i] *= inv;
}

MLA_TARGET_END
#endif  // MLA_X86_SIMD

}  // namespace internal

/// In place: x[i] <- exp(x[i] - max) / sum_j exp(x[j] - max) over the first n entries. Float rows
/// run the AVX2 form on every `path` but kPortable (kAuto: where the CPU has it and
/// MLA_KERNEL_PATH allows it; core/isa.hpp); a path the CPU lacks throws std::invalid_argument.
template <class Scalar>
void softmax_inplace(Scalar* x, Index n, kernels::KernelPath path = kernels::KernelPath::kAuto) {
  if (n <= 0) return;
#if MLA_X86_SIMD
  if constexpr (std::is_same_v<Scalar, float>) {
    if (kernels::resolve_path(path) != kernels::KernelPath::kPortable) {
      internal::softmax_inplace_avx2(x, n);
      return;
    }
  }
#endif
  (void)path;
  Scalar m = -std::numeric_limits<Scalar>::infinity();
  bool has_nan = false;
  for (Index i = 0; i < n; ++i) {
    if (std::isnan(x[i])) has_nan = true;
    if (x[i] > m) m = x[i];
  }
  if (internal::softmax_special_row(x, n, has_nan, m)) return;
  double sum = 0.0;
  for (Index i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += static_cast<double>(x[i]);
  }
  const Scalar inv = static_cast<Scalar>(1.0 / sum);
  for (Index i = 0; i < n; ++i) x[i] *= inv;
}

/// Row-wise softmax of a row-major block, each row over its first `valid(r)` columns; the
/// rest of the row is set to zero (the causal mask).
template <class Derived, class ValidFn>
void softmax_rows_masked(Eigen::MatrixBase<Derived>& s, ValidFn valid) {
  for (Index r = 0; r < s.rows(); ++r) {
    const Index n = valid(r);
    auto row = s.row(r);
    softmax_inplace(&row(0), n);
    for (Index c = n; c < s.cols(); ++c) row(c) = 0;
  }
}

}  // namespace mla
