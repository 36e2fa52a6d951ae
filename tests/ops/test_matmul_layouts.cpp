// internal::matmul / eigen_matmul on every operand shape the Eigen route handles, against plain
// loops in long double: row-major, column-major and arbitrarily strided A, B and C (the strided
// ones are copied, a column-major C is computed transposed), both B layouts, accumulate, single
// rows and columns, empty K, expressions without direct access, bf16 B, and garbage (NaN) in C
// before a non-accumulating product. Float with contiguous rows runs kernels::gemm.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "mla/ops/matmul.hpp"

namespace mla {
namespace {

using kernels::GemmB;
using Stride2 = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using ColMajor = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

template <class S>
Matrix<S> random_matrix(Index rows, Index cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  Matrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(u(rng));
  return m;
}

/// c0 + a op(b) (c0 zero unless accumulating), every sum in long double.
template <class S, class A, class B, class C0>
Matrix<long double> expected(const A& a, const B& b, GemmB layout, const C0& c0, bool accumulate) {
  const bool t = layout == GemmB::kTransposed;
  const Index M = a.rows(), K = a.cols(), N = t ? b.rows() : b.cols();
  Matrix<long double> c(M, N);
  for (Index i = 0; i < M; ++i)
    for (Index j = 0; j < N; ++j) {
      long double acc = accumulate ? static_cast<long double>(c0(i, j)) : 0.0L;
      for (Index k = 0; k < K; ++k)
        acc += static_cast<long double>(a(i, k)) *
               static_cast<long double>(static_cast<S>(t ? b(j, k) : b(k, j)));
      c(i, j) = acc;
    }
  return c;
}

template <class S>
constexpr double tol() {
  return std::is_same_v<S, float> ? 2e-5 : 1e-13;
}

template <class S, class C>
void expect_near(const C& got, const Matrix<long double>& want, const char* what) {
  ASSERT_EQ(got.rows(), want.rows()) << what;
  ASSERT_EQ(got.cols(), want.cols()) << what;
  for (Index i = 0; i < want.rows(); ++i)
    for (Index j = 0; j < want.cols(); ++j)
      ASSERT_NEAR(double(got(i, j)), double(want(i, j)), tol<S>()) << what << " at " << i << ", " << j;
}

/// Runs matmul on (a, b, c) for both accumulate settings, C pre-filled with `init` (NaN checks that a
/// non-accumulating product overwrites whatever C held).
template <class S, class A, class B, class C>
void check(const A& a, const B& b, GemmB layout, C&& c, const char* what) {
  kernels::GemmWorkspace ws;
  for (bool accumulate : {false, true}) {
    const Matrix<S> before = random_matrix<S>(c.rows(), c.cols(), 99);
    if (accumulate) c = before;
    else c.setConstant(std::numeric_limits<S>::quiet_NaN());
    const Matrix<long double> want = expected<S>(a, b, layout, before, accumulate);
    internal::matmul(a, b, layout, c, accumulate, ws, nullptr);
    expect_near<S>(c, want, what);
  }
}

template <class S>
void check_all_layouts(Index M, Index N, Index K) {
  SCOPED_TRACE(testing::Message() << "M " << M << " N " << N << " K " << K);
  const Matrix<S> a = random_matrix<S>(M, K, 1);
  const Matrix<S> bt = random_matrix<S>(N, K, 2);  // [N, K] for kTransposed
  const Matrix<S> bp = random_matrix<S>(K, N, 3);  // [K, N] for kPlain
  // Padded row-major storage: blocks of a wider matrix.
  Matrix<S> a_wide = random_matrix<S>(M, K + 3, 4);
  a_wide.leftCols(K) = a;
  Matrix<S> c_wide(M, N + 5);

  check<S>(a, bt, GemmB::kTransposed, Matrix<S>(M, N), "row-major, B transposed");
  check<S>(a, bp, GemmB::kPlain, Matrix<S>(M, N), "row-major, B plain");
  check<S>(a_wide.leftCols(K), bt, GemmB::kTransposed, c_wide.leftCols(N), "padded rows");
  // Column-major operands (C column-major is computed as C^T = op(B)^T A^T).
  const ColMajor<S> a_cm = a, bt_cm = bt, bp_cm = bp;
  check<S>(a_cm, bt_cm, GemmB::kTransposed, ColMajor<S>(M, N), "column-major, B transposed");
  check<S>(a_cm, bp_cm, GemmB::kPlain, ColMajor<S>(M, N), "column-major, B plain");
  check<S>(a, bp, GemmB::kPlain, ColMajor<S>(M, N), "column-major C only");
  // Neither rows nor columns contiguous: every other element of a buffer.
  std::vector<S> a_buf(std::size_t(2 * M * K + 2)), b_buf(std::size_t(2 * N * K + 2)),
      c_buf(std::size_t(2 * M * N + 2));
  Eigen::Map<Matrix<S>, 0, Stride2> a_s(a_buf.data(), M, K, Stride2(2 * K, 2));
  Eigen::Map<Matrix<S>, 0, Stride2> b_s(b_buf.data(), N, K, Stride2(2 * K, 2));
  Eigen::Map<Matrix<S>, 0, Stride2> c_s(c_buf.data(), M, N, Stride2(2 * N, 2));
  a_s = a;
  b_s = bt;
  check<S>(a_s, b_s, GemmB::kTransposed, c_s, "strided A, B and C");
  check<S>(a_s, bp, GemmB::kPlain, Matrix<S>(M, N), "strided A");
  // An expression without direct access is evaluated first.
  check<S>(a * S(2), bt, GemmB::kTransposed, Matrix<S>(M, N), "A expression");
  check<S>(a, bp * S(2), GemmB::kPlain, Matrix<S>(M, N), "B expression");
}

TEST(MatmulLayouts, DoubleEveryLayout) {
  for (Index M : {1, 2, 7, 40})
    for (Index N : {1, 3, 17})
      for (Index K : {1, 5, 33}) check_all_layouts<double>(M, N, K);
}

TEST(MatmulLayouts, FloatEveryLayout) {
  for (Index M : {1, 2, 7, 40})
    for (Index N : {1, 3, 17})
      for (Index K : {1, 5, 33}) check_all_layouts<float>(M, N, K);
}

TEST(MatmulLayouts, LargeDoubleGoesThroughEigenGemm) {
  // Past Eigen's small-product threshold, so its blocked GEMM runs on the maps.
  check_all_layouts<double>(70, 90, 130);
}

TEST(MatmulLayouts, EmptyDepthWritesZerosOrKeepsC) {
  kernels::GemmWorkspace ws;
  const Matrix<double> a(4, 0), b(0, 3);
  Matrix<double> c = Matrix<double>::Constant(4, 3, std::nan(""));
  internal::matmul(a, b, GemmB::kPlain, c, false, ws, nullptr);
  EXPECT_TRUE((c.array() == 0.0).all());
  c.setConstant(1.5);
  internal::matmul(a, b, GemmB::kPlain, c, true, ws, nullptr);
  EXPECT_TRUE((c.array() == 1.5).all());
}

TEST(MatmulLayouts, Bf16WeightsWithFloatActivations) {
  const Matrix<float> a = random_matrix<float>(5, 24, 7);
  const Matrix<bfloat16> w = random_matrix<float>(9, 24, 8).cast<bfloat16>();
  // Contiguous rows: kernels::gemm widens bf16; column-major A: widened copy through Eigen.
  check<float>(a, w, GemmB::kTransposed, Matrix<float>(5, 9), "bf16 B, kernel");
  const ColMajor<float> a_cm = a;
  check<float>(a_cm, w, GemmB::kTransposed, Matrix<float>(5, 9), "bf16 B, Eigen");
}

}  // namespace
}  // namespace mla
