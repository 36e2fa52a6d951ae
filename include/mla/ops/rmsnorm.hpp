// RMSNorm (Zhang & Sennrich 2019) as used by Llama and DeepSeek: y = w * x / sqrt(mean(x^2) + eps).
// The mean of squares is accumulated in double, so float activations with large magnitudes
// neither overflow nor lose the small components (transformers upcasts to float32 for the same
// reason; the reference vectors use float64 throughout).
#pragma once

#include <cmath>

#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla {

/// Normalises each row of `x` [rows, n] in place by its root mean square, then scales by
/// `weight` [n]. `x` may be any Eigen row-major block (e.g. the first R columns of a wider row).
template <class Derived, class WeightVec>
void rmsnorm_inplace(Eigen::MatrixBase<Derived>& x, const WeightVec& weight, double eps) {
  MLA_DCHECK(x.cols() == weight.size());
  using Scalar = typename Derived::Scalar;
  const Index n = x.cols();
  for (Index r = 0; r < x.rows(); ++r) {
    double sum_sq = 0.0;
    for (Index i = 0; i < n; ++i) {
      const double v = static_cast<double>(x(r, i));
      sum_sq += v * v;
    }
    const double inv_rms = 1.0 / std::sqrt(sum_sq / static_cast<double>(n) + eps);
    for (Index i = 0; i < n; ++i)
      x(r, i) = static_cast<Scalar>(static_cast<double>(weight[i]) *
                                    (static_cast<double>(x(r, i)) * inv_rms));
  }
}

template <class Derived, class WeightVec>
void rmsnorm_inplace(Eigen::MatrixBase<Derived>&& x, const WeightVec& weight, double eps) {
  rmsnorm_inplace(x, weight, eps);
}

}  // namespace mla
