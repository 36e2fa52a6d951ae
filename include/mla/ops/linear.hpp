// Linear projection y = x W^T + b with PyTorch nn.Linear weight layout W [out_features,
// in_features], so safetensors weights are used as stored. Eigen evaluates the product: a GEMM for
// prefill, a matrix-vector product for a single decode token (row-major W makes that a
// contiguous dot product per output, streaming W once).
#pragma once

#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla {

/// Weight and optional bias of one projection.
template <class Scalar>
struct Linear {
  Matrix<Scalar> weight;  ///< [out_features, in_features]
  Vector<Scalar> bias;    ///< [out_features] or empty for no bias

  Index in_features() const { return weight.cols(); }
  Index out_features() const { return weight.rows(); }
  bool has_bias() const { return bias.size() != 0; }

  /// Throws std::invalid_argument unless weight is [out, in] and bias is empty or [out].
  void check_shape(const char* name, Index out, Index in) const {
    MLA_CHECK_ARG(weight.rows() == out && weight.cols() == in, "weight '", name,
                  "': expected shape [", out, ", ", in, "], got [", weight.rows(), ", ",
                  weight.cols(), "]");
    MLA_CHECK_ARG(bias.size() == 0 || bias.size() == out, "bias '", name,
                  "': expected shape [", out, "], got [", bias.size(), "]");
  }

  /// y [T, out] = x [T, in] W^T + b. `y` must not alias `x`.
  template <class In, class Out>
  void apply(const Eigen::MatrixBase<In>& x, Eigen::MatrixBase<Out>& y) const {
    MLA_DCHECK(x.cols() == weight.cols() && y.rows() == x.rows() && y.cols() == weight.rows());
    y.noalias() = x * weight.transpose();
    if (has_bias()) y.rowwise() += bias.transpose();
  }
  template <class In, class Out>
  void apply(const Eigen::MatrixBase<In>& x, Eigen::MatrixBase<Out>&& y) const {
    apply(x, y);
  }
};

}  // namespace mla
