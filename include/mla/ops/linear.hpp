// Linear projection y = x W^T + b with PyTorch nn.Linear weight layout W [out_features,
// in_features], so safetensors weights are used as stored. With a GEMM workspace (what the layers
// pass) float products run mla::kernels::gemm: a packed GEMM for prefill, and for 1-3 tokens a
// row-streaming product that reads W once (split across the pool's threads by output rows).
// Without one, or for double, Eigen evaluates the product.
//
// A float projection can keep its weight as bfloat16 only (store_as_bf16(), or a layer's
// Options::projection_weights): decode at batch 1 streams every weight once per token, so bf16
// halves the bytes and the time of the step's largest part. The GEMM widens bf16 to float as it
// reads (bf16 -> float is exact), so the result equals the float layer run on bf16-rounded
// weights.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <type_traits>

#include "mla/core/check.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/gemm.hpp"
#include "mla/ops/matmul.hpp"

namespace mla {

/// How a layer keeps its projection weights: as loaded (the layer's Scalar), or rounded to
/// bfloat16 (float layers only; round to nearest even).
enum class WeightFormat { kAsLoaded, kBf16 };

/// Weight and optional bias of one projection.
template <class Scalar>
struct Linear {
  Matrix<Scalar> weight;  ///< [out_features, in_features]; empty once stored as bf16
  Vector<Scalar> bias;    ///< [out_features] or empty for no bias
  Matrix<bfloat16> weight_bf16 = {};  ///< [out_features, in_features] after store_as_bf16(), else empty

  bool stored_as_bf16() const { return weight_bf16.size() != 0; }
  Index in_features() const { return stored_as_bf16() ? weight_bf16.cols() : weight.cols(); }
  Index out_features() const { return stored_as_bf16() ? weight_bf16.rows() : weight.rows(); }
  bool has_bias() const { return bias.size() != 0; }
  /// Bytes of weight and bias.
  std::size_t bytes() const {
    return static_cast<std::size_t>(weight.size()) * sizeof(Scalar) +
           static_cast<std::size_t>(weight_bf16.size()) * sizeof(bfloat16) +
           static_cast<std::size_t>(bias.size()) * sizeof(Scalar);
  }

  /// Rounds the weight to bfloat16 and keeps only that copy (the bias stays in Scalar). Float
  /// only: a double layer is the float layer's reference and keeps its precision.
  void store_as_bf16() {
    static_assert(std::is_same_v<Scalar, float>, "Linear::store_as_bf16: float layers only");
    if (weight.size() == 0) return;
    weight_bf16 = weight.template cast<bfloat16>();
    weight = Matrix<Scalar>();
  }

  /// Throws std::invalid_argument unless weight is [out, in] and bias is empty or [out].
  void check_shape(const char* name, Index out, Index in) const {
    MLA_CHECK_ARG(out_features() == out && in_features() == in, "weight '", name,
                  "': expected shape [", out, ", ", in, "], got [", out_features(), ", ",
                  in_features(), "]");
    MLA_CHECK_ARG(bias.size() == 0 || bias.size() == out, "bias '", name,
                  "': expected shape [", out, "], got [", bias.size(), "]");
  }

  /// y [T, out] = x [T, in] W^T + b. `y` must not alias `x`.
  template <class In, class Out>
  void apply(const Eigen::MatrixBase<In>& x, Eigen::MatrixBase<Out>& y) const {
    MLA_DCHECK(x.cols() == in_features() && y.rows() == x.rows() && y.cols() == out_features());
    if (stored_as_bf16())
      internal::eigen_matmul(x, weight_bf16, kernels::GemmB::kTransposed, y, false);
    else
      internal::eigen_matmul(x, weight, kernels::GemmB::kTransposed, y, false);
    add_bias(y);
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
    MLA_DCHECK(x.cols() == in_features() && y.rows() == x.rows() && y.cols() == out_features());
    if (stored_as_bf16())
      internal::matmul(x, weight_bf16, kernels::GemmB::kTransposed, y, false, gemm_ws, pool);
    else
      internal::matmul(x, weight, kernels::GemmB::kTransposed, y, false, gemm_ws, pool);
    add_bias(const_cast<Eigen::MatrixBase<Out>&>(y));
  }

  /// y [T, out] += b on every row (nothing without a bias).
  template <class Out>
  void add_bias(Eigen::MatrixBase<Out>& y) const {
    if (has_bias()) y.rowwise() += bias.transpose();
  }
};

/// Applies a layer's WeightFormat to its projections (kBf16: store_as_bf16() on each; throws
/// std::invalid_argument for a non-float layer).
template <class Scalar>
void apply_weight_format(WeightFormat format, std::initializer_list<Linear<Scalar>*> projections) {
  if (format == WeightFormat::kAsLoaded) return;
  if constexpr (std::is_same_v<Scalar, float>) {
    for (Linear<Scalar>* p : projections) p->store_as_bf16();
  } else {
    MLA_CHECK_ARG(false, "projection_weights = kBf16 needs a float layer (this one is not)");
  }
}

}  // namespace mla
