// Numerically safe softmax: subtract the row maximum before exponentiating, so huge finite
// logits never overflow, and accumulate the normaliser in double. A row whose entries are all
// -inf (nothing visible) becomes all zeros rather than NaN. NaN inputs propagate to the output.
#pragma once

#include <cmath>
#include <limits>

#include "mla/core/types.hpp"

namespace mla {

/// In place: x[i] <- exp(x[i] - max) / sum_j exp(x[j] - max) over the first n entries.
template <class Scalar>
void softmax_inplace(Scalar* x, Index n) {
  if (n <= 0) return;
  Scalar m = -std::numeric_limits<Scalar>::infinity();
  bool has_nan = false;
  for (Index i = 0; i < n; ++i) {
    if (std::isnan(x[i])) has_nan = true;
    if (x[i] > m) m = x[i];
  }
  if (has_nan) {
    for (Index i = 0; i < n; ++i) x[i] = std::numeric_limits<Scalar>::quiet_NaN();
    return;
  }
  if (m == -std::numeric_limits<Scalar>::infinity()) {
    for (Index i = 0; i < n; ++i) x[i] = Scalar(0);
    return;
  }
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
