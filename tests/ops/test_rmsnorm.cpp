// ops/rmsnorm.hpp against its definition, y = w * x / sqrt(mean(x^2) + eps), evaluated here in
// long double: on float and double rows, in place on a block of a wider row (the latent half of
// kv_a_proj_with_mqa's output), on rows whose squares overflow float (the mean is accumulated in
// double), and on an all-zero row (eps keeps it finite).
#include <gtest/gtest.h>

#include <cmath>

#include "mla/ops/rmsnorm.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using testing::Rng;

/// The definition, row by row, in long double.
template <class Scalar>
Matrix<double> rmsnorm_definition(const Matrix<Scalar>& x, const Vector<Scalar>& w, double eps) {
  Matrix<double> y(x.rows(), x.cols());
  for (Index r = 0; r < x.rows(); ++r) {
    long double ss = 0;
    for (Index i = 0; i < x.cols(); ++i) ss += static_cast<long double>(x(r, i)) * x(r, i);
    const long double rms = std::sqrt(ss / x.cols() + eps);
    for (Index i = 0; i < x.cols(); ++i)
      y(r, i) = static_cast<double>(static_cast<long double>(w[i]) * x(r, i) / rms);
  }
  return y;
}

template <class Scalar>
void expect_matches_definition(double tol) {
  Rng rng(5);
  const Matrix<Scalar> x = rng.normal<Scalar>(7, 48, 3.0);
  const Vector<Scalar> w = rng.norm_weight<Scalar>(48);
  Matrix<Scalar> y = x;
  rmsnorm_inplace(y, w, 1e-6);
  const Matrix<double> want = rmsnorm_definition(x, w, 1e-6);
  EXPECT_LE(testing::rel_max_err(y.template cast<double>(), want), tol);
}

TEST(RmsNorm, MatchesTheDefinition) {
  expect_matches_definition<float>(1e-6);   // float rounding of each output
  expect_matches_definition<double>(1e-14);
}

TEST(RmsNorm, NormalisesOnlyTheBlockItIsGiven) {
  // A row [c (16) | k (4)]: only c is normalised, k is left as it was.
  Rng rng(6);
  const Matrix<double> x = rng.normal<double>(3, 20);
  const Vector<double> w = rng.norm_weight<double>(16);
  Matrix<double> y = x;
  rmsnorm_inplace(y.leftCols(16), w, 1e-6);
  EXPECT_EQ(Matrix<double>(y.rightCols(4)), Matrix<double>(x.rightCols(4)));
  EXPECT_LE(testing::rel_max_err(Matrix<double>(y.leftCols(16)),
                                 rmsnorm_definition<double>(x.leftCols(16), w, 1e-6)),
            1e-14);
}

TEST(RmsNorm, FloatRowsWhoseSquaresOverflowFloat) {
  // (3e20)^2 = 9e40 > FLT_MAX: a float accumulator would give inf and zeros.
  Matrix<float> x(1, 4);
  x << 3e20f, -4e20f, 0.0f, 1.0f;
  const Vector<float> w = Vector<float>::Ones(4);
  Matrix<float> y = x;
  rmsnorm_inplace(y, w, 1e-6);
  ASSERT_TRUE(y.allFinite());
  // rms = sqrt((9 + 16) e40 / 4) = 2.5e20.
  EXPECT_FLOAT_EQ(y(0, 0), 3.0f / 2.5f);
  EXPECT_FLOAT_EQ(y(0, 1), -4.0f / 2.5f);
  EXPECT_EQ(y(0, 2), 0.0f);
  EXPECT_NEAR(y(0, 3), 1.0 / 2.5e20, 1e-27);
}

TEST(RmsNorm, ZeroRowStaysZeroAndEpsEntersUnderTheRoot) {
  Matrix<float> zero = Matrix<float>::Zero(1, 8);
  rmsnorm_inplace(zero, Vector<float>::Ones(8), 1e-6);
  EXPECT_TRUE((zero.array() == 0.0f).all());
  // A constant row of 1e-3 with eps 1e-6: y = 1e-3 / sqrt(1e-6 + 1e-6) = 1 / sqrt(2).
  Matrix<double> x = Matrix<double>::Constant(1, 8, 1e-3);
  rmsnorm_inplace(x, Vector<double>::Ones(8), 1e-6);
  for (Index i = 0; i < 8; ++i) EXPECT_NEAR(x(0, i), 1.0 / std::sqrt(2.0), 1e-15);
}

}  // namespace
}  // namespace mla
