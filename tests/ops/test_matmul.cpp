// ops/matmul.hpp: internal::matmul on the Eigen operands the layers pass, against the product in
// double: both B layouts, overwrite and accumulate; float rows that reach kernels::gemm
// (contiguous, blocks of wider matrices with their own strides, single rows), bf16 B, and the
// operands that go to Eigen (column-major, double). A block written through must leave the rest
// of its matrix untouched.
#include <gtest/gtest.h>

#include "mla/core/threading.hpp"
#include "mla/ops/matmul.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using kernels::GemmB;
using testing::rel_max_err;
using testing::Rng;

/// A op(B) (+ C0) in double.
template <class A, class B, class C>
Matrix<double> product(const A& a, const B& b, GemmB layout, const C& c0, bool accumulate) {
  const Matrix<double> ad = a.template cast<double>(), bd = b.template cast<double>();
  Matrix<double> p = layout == GemmB::kTransposed ? Matrix<double>(ad * bd.transpose())
                                                  : Matrix<double>(ad * bd);
  if (accumulate) p += c0.template cast<double>();
  return p;
}

constexpr double kFloatTol = 1e-5;  // relative, K <= 300 products of N(0,1) values

TEST(Matmul, ContiguousFloatBothLayoutsOverwriteAndAccumulate) {
  Rng rng(21);
  kernels::GemmWorkspace ws;
  ThreadPool pool(2);
  for (Index M : {1, 3, 17})
    for (GemmB layout : {GemmB::kTransposed, GemmB::kPlain})
      for (bool acc : {false, true})
        for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
          const Index K = 300, N = 40;
          const Matrix<float> a = rng.normal<float>(M, K);
          const Matrix<float> b = layout == GemmB::kTransposed ? rng.normal<float>(N, K)
                                                               : rng.normal<float>(K, N);
          const Matrix<float> c0 = rng.normal<float>(M, N);
          Matrix<float> c = c0;
          internal::matmul(a, b, layout, c, acc, ws, p);
          EXPECT_LE(rel_max_err(c.cast<double>(), product(a, b, layout, c0, acc)), kFloatTol)
              << "M=" << M << " plain=" << (layout == GemmB::kPlain) << " acc=" << acc;
        }
}

TEST(Matmul, BlocksOfWiderMatricesUseTheirStrides) {
  // The layers multiply column slices (one head's columns of q, the latent part of a cache row).
  Rng rng(22);
  kernels::GemmWorkspace ws;
  const Matrix<float> wide_a = rng.normal<float>(9, 70);
  const Matrix<float> wide_b = rng.normal<float>(30, 50);
  const Matrix<float> c_before = rng.normal<float>(9, 40);
  for (bool acc : {false, true}) {
    Matrix<float> wide_c = c_before;
    const auto a = wide_a.middleCols(5, 48);      // [9, 48], row stride 70
    const auto b = wide_b.middleCols(2, 48);      // [30, 48] as B^T, row stride 50
    internal::matmul(a, b, GemmB::kTransposed, wide_c.middleCols(7, 30), acc, ws, nullptr);
    EXPECT_LE(rel_max_err(Matrix<double>(wide_c.middleCols(7, 30).cast<double>()),
                          product(a, b, GemmB::kTransposed, c_before.middleCols(7, 30), acc)),
              kFloatTol);
    EXPECT_EQ(Matrix<float>(wide_c.leftCols(7)), Matrix<float>(c_before.leftCols(7)));
    EXPECT_EQ(Matrix<float>(wide_c.rightCols(3)), Matrix<float>(c_before.rightCols(3)));
  }
  // One row of a strided block (its outer stride is reported as its length).
  Matrix<float> wide_c = c_before;
  const auto a1 = wide_a.middleRows(4, 1).middleCols(5, 48);
  const Matrix<float> b_plain = rng.normal<float>(48, 30);
  internal::matmul(a1, b_plain, GemmB::kPlain, wide_c.middleRows(2, 1).leftCols(30), false, ws,
                   nullptr);
  EXPECT_LE(rel_max_err(Matrix<double>(wide_c.middleRows(2, 1).leftCols(30).cast<double>()),
                        product(a1, b_plain, GemmB::kPlain, Matrix<float>(), false)),
            kFloatTol);
  EXPECT_EQ(Matrix<float>(wide_c.topRows(2)), Matrix<float>(c_before.topRows(2)));
}

TEST(Matmul, Bf16WeightsAreWidenedExactly) {
  Rng rng(23);
  kernels::GemmWorkspace ws;
  const Matrix<float> a = rng.normal<float>(5, 64);
  const Matrix<bfloat16> bt = rng.normal<float>(24, 64).cast<bfloat16>();
  const Matrix<bfloat16> bp = rng.normal<float>(64, 24).cast<bfloat16>();
  Matrix<float> c(5, 24);
  internal::matmul(a, bt, GemmB::kTransposed, c, false, ws, nullptr);
  EXPECT_LE(rel_max_err(c.cast<double>(), product(a, bt, GemmB::kTransposed, c, false)), kFloatTol);
  internal::matmul(a, bp, GemmB::kPlain, c, false, ws, nullptr);
  EXPECT_LE(rel_max_err(c.cast<double>(), product(a, bp, GemmB::kPlain, c, false)), kFloatTol);
}

TEST(Matmul, OperandsEigenEvaluates) {
  Rng rng(24);
  kernels::GemmWorkspace ws;
  // Column-major float A.
  const Eigen::MatrixXf a_col = rng.normal<float>(6, 32);
  const Matrix<float> b = rng.normal<float>(10, 32);
  const Matrix<float> c0 = rng.normal<float>(6, 10);
  Matrix<float> c = c0;
  internal::matmul(a_col, b, GemmB::kTransposed, c, true, ws, nullptr);
  EXPECT_LE(rel_max_err(c.cast<double>(), product(a_col, b, GemmB::kTransposed, c0, true)),
            kFloatTol);
  // Double, the reference instantiation: as exact as Eigen's double product.
  const Matrix<double> ad = rng.normal<double>(6, 32), bd = rng.normal<double>(32, 10);
  Matrix<double> cd(6, 10);
  internal::matmul(ad, bd, GemmB::kPlain, cd, false, ws, nullptr);
  EXPECT_LE(rel_max_err(cd, product(ad, bd, GemmB::kPlain, cd, false)), 1e-14);
  // Double A with bf16 B: B is widened to double.
  const Matrix<bfloat16> b16 = rng.normal<float>(10, 32).cast<bfloat16>();
  internal::matmul(ad, b16, GemmB::kTransposed, cd, false, ws, nullptr);
  EXPECT_LE(rel_max_err(cd, product(ad, b16, GemmB::kTransposed, cd, false)), 1e-14);
}

}  // namespace
}  // namespace mla
