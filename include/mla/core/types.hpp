// Eigen aliases used across the library. Activations and weights are row-major, matching the
// PyTorch / safetensors layout ([out_features, in_features] for nn.Linear weights, [tokens, features]
// for activations), so a checkpoint tensor maps onto a matrix without a transpose.
#pragma once

#include <cstdint>

#include <Eigen/Core>

namespace mla {

using Index = Eigen::Index;

/// Row-major dynamic matrix: [rows, cols] as in PyTorch.
template <class Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Zero-copy views over caller buffers.
template <class Scalar>
using MatrixMap = Eigen::Map<Matrix<Scalar>>;
template <class Scalar>
using ConstMatrixMap = Eigen::Map<const Matrix<Scalar>>;

/// Token positions for RoPE ([tokens]); any non-negative values, not only 0..T-1.
using Positions = Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>;
using PositionsRef = Eigen::Ref<const Positions>;

/// 16-bit storage types (Eigen's own; arithmetic converts through float).
using bfloat16 = Eigen::bfloat16;
using float16 = Eigen::half;

}  // namespace mla
