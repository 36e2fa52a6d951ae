// Linear projection y = x W^T + b with PyTorch nn.Linear weight layout W [out_features,
// in_features], so safetensors weights are used as stored. With a GEMM workspace (what the layers
// pass) float products run mla::kernels::gemm: a packed GEMM for prefill, and for 1-3 tokens a
// row-streaming product that reads W once (split across the pool's threads by output rows).
// Without one, or for double, Eigen evaluates the product.
#pragma once

#include "mla/core/check.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/gemm.hpp"
#include "mla/ops/matmul.hpp"

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

  /// As apply(x, y), through mla::kernels::gemm for float (scratch in `gemm_ws`, threads from
  /// `pool`, which may be null).
  template <class In, class Out>
  void apply(const Eigen::MatrixBase<In>& x, const Eigen::MatrixBase<Out>& y,
             kernels::GemmWorkspace& gemm_ws, ThreadPool* pool) const {
    MLA_DCHECK(x.cols() == weight.cols() && y.rows() == x.rows() && y.cols() == weight.rows());
    internal::matmul(x, weight, kernels::GemmB::kTransposed, y, false, gemm_ws, pool);
    if (has_bias()) const_cast<Eigen::MatrixBase<Out>&>(y).rowwise() += bias.transpose();
  }
};

}  // namespace mla
