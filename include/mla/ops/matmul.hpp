// Matrix products of the layers on Eigen operands: C = A op(B) (+ C), with op(B) = B^T for
// nn.Linear weights [out, in] and K-like rows, op(B) = B for V-like rows. Float operands with
// row-major, unit-stride rows run mla::kernels::gemm (packed AVX2 / AVX-512 GEMM, threaded through
// the caller's pool); anything else (the double instantiations the float path is tested against,
// column-major or strided operands) is evaluated by Eigen through eigen_matmul().
//
// eigen_matmul() reduces every operand to a pointer and a row and column stride and hands them to
// strided_gemm(), a function of the scalar type only, which runs Eigen's blocked GEMM kernel on
// them. A translation unit thus compiles Eigen's GEMM twice per scalar type (B row- or
// column-major) instead of Eigen's whole product evaluator (GEMM, GEMV and a coefficient-wise
// product) for every combination of block, map and transpose expressions the layers pass in.
#pragma once

#include <algorithm>
#include <type_traits>
#include <utility>

#include "mla/core/check.hpp"
#include "mla/core/macros.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/gemm.hpp"

namespace mla {
namespace internal {

/// True for Eigen expressions whose rows are contiguous in memory (row-major with direct access).
template <class E>
constexpr bool has_contiguous_rows() {
  return (int(E::Flags) & Eigen::DirectAccessBit) != 0 && (int(E::Flags) & Eigen::RowMajorBit) != 0;
}

/// A matrix in memory: element (i, j) at data[i * row_stride + j * col_stride].
template <class S>
struct StridedMatrix {
  S* data;
  Index rows, cols, row_stride, col_stride;

  /// Rows contiguous (a row-major view with outer stride row_stride serves); a single column
  /// qualifies whatever its column stride.
  bool row_major() const { return col_stride == 1 || cols == 1; }
  /// Columns contiguous (a column-major view with outer stride col_stride serves).
  bool col_major() const { return row_stride == 1 || rows == 1; }
  /// The transpose: the same memory with the strides swapped.
  StridedMatrix transposed() const { return {data, cols, rows, col_stride, row_stride}; }
};

/// C [m, n] = A [m, k] B [k, n], or C += A B when `accumulate`, evaluated by Eigen. C must not
/// overlap A or B. The layers pass A and C with contiguous rows and B with contiguous rows (V-like
/// operands) or columns (transposed weights and K rows): those run on the caller's memory. Any
/// other operand is first copied into a row-major temporary (a column-major C is computed as
/// C^T = B^T A^T instead). One instantiation per scalar type: see the header comment.
template <class S>
MLA_NOINLINE void strided_gemm(StridedMatrix<const S> a, StridedMatrix<const S> b,
                               StridedMatrix<S> c, bool accumulate) {
  using RowMajor = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  MLA_DCHECK(a.rows == c.rows && b.cols == c.cols && a.cols == b.rows);
  if (c.rows == 0 || c.cols == 0) return;
  if (!c.row_major()) {
    if (c.col_major()) {
      // C^T = B^T A^T, whose result is row-major.
      strided_gemm<S>(b.transposed(), a.transposed(), c.transposed(), accumulate);
    } else {
      RowMajor tmp(c.rows, c.cols);
      strided_gemm<S>(a, b, {tmp.data(), c.rows, c.cols, c.cols, 1}, false);
      for (Index i = 0; i < c.rows; ++i)
        for (Index j = 0; j < c.cols; ++j) {
          S& dst = c.data[i * c.row_stride + j * c.col_stride];
          dst = accumulate ? dst + tmp(i, j) : tmp(i, j);
        }
    }
    return;
  }
  RowMajor a_copy, b_copy;
  auto copy = [](StridedMatrix<const S> m, RowMajor& dst) {
    dst.resize(m.rows, m.cols);
    for (Index i = 0; i < m.rows; ++i)
      for (Index j = 0; j < m.cols; ++j) dst(i, j) = m.data[i * m.row_stride + j * m.col_stride];
    return StridedMatrix<const S>{dst.data(), m.rows, m.cols, m.cols, 1};
  };
  if (!a.row_major()) a = copy(a, a_copy);
  if (!b.row_major() && !b.col_major()) b = copy(b, b_copy);
  if (!accumulate) {
    for (Index i = 0; i < c.rows; ++i)
      std::fill(c.data + i * c.row_stride, c.data + i * c.row_stride + c.cols, S(0));
  }
  if (a.cols == 0) return;
#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && !EIGEN_VERSION_AT_LEAST(3, 4, 90)
  // Eigen's blocked GEMM kernel itself, as its product evaluator calls it for large operands:
  // one instantiation per layout of B, and none of the GEMV and coefficient-wise product code
  // that the evaluator compiles for small and vector operands (most of its compile time). Small
  // and single-row products thus also take the blocked kernel, which sums in another order.
  using Blocking =
      Eigen::internal::gemm_blocking_space<Eigen::RowMajor, S, S, Eigen::Dynamic, Eigen::Dynamic,
                                           Eigen::Dynamic>;
  Blocking blocking(c.rows, c.cols, a.cols, 1, true);
  if (b.row_major())
    Eigen::internal::general_matrix_matrix_product<Index, S, Eigen::RowMajor, false, S, Eigen::RowMajor,
                                                   false, Eigen::RowMajor, 1>::run(
        c.rows, c.cols, a.cols, a.data, a.row_stride, b.data, b.row_stride, c.data, 1, c.row_stride,
        S(1), blocking, nullptr);
  else
    Eigen::internal::general_matrix_matrix_product<Index, S, Eigen::RowMajor, false, S, Eigen::ColMajor,
                                                   false, Eigen::RowMajor, 1>::run(
        c.rows, c.cols, a.cols, a.data, a.row_stride, b.data, b.col_stride, c.data, 1, c.row_stride,
        S(1), blocking, nullptr);
#else
  // Other Eigen versions: the public product on maps (the evaluator picks GEMM, GEMV or a
  // coefficient-wise product by size).
  using ColMajor = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  using Stride = Eigen::OuterStride<>;
  Eigen::Map<RowMajor, 0, Stride> cm(c.data, c.rows, c.cols, Stride(c.row_stride));
  const Eigen::Map<const RowMajor, 0, Stride> am(a.data, a.rows, a.cols, Stride(a.row_stride));
  if (b.row_major())
    cm.noalias() += am * Eigen::Map<const RowMajor, 0, Stride>(b.data, b.rows, b.cols, Stride(b.row_stride));
  else
    cm.noalias() += am * Eigen::Map<const ColMajor, 0, Stride>(b.data, b.rows, b.cols, Stride(b.col_stride));
#endif
}

/// The StridedMatrix of an expression with direct access (Map, Ref, Block of one, ...); its
/// elements are const unless `e` is a writable expression passed as non-const.
template <class MB>
auto strided_matrix(MB& e) {
  using S = std::remove_pointer_t<decltype(e.derived().data())>;
  return StridedMatrix<S>{e.derived().data(), e.rows(), e.cols(), e.derived().rowStride(),
                          e.derived().colStride()};
}

/// C = A op(B), or C += A op(B) when `accumulate`, evaluated by Eigen through strided_gemm. B of
/// another scalar type than A (bfloat16 weights) and operands without direct access are
/// evaluated into a temporary of A's scalar type first. C must not alias A or B.
template <class A, class B, class C>
void eigen_matmul(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                  kernels::GemmB layout, const Eigen::MatrixBase<C>& c_const, bool accumulate) {
  using S = typename A::Scalar;
  static_assert(std::is_same_v<typename C::Scalar, S>, "eigen_matmul: C and A differ in scalar");
  constexpr bool a_direct = (int(A::Flags) & Eigen::DirectAccessBit) != 0;
  constexpr bool b_direct = (int(B::Flags) & Eigen::DirectAccessBit) != 0 &&
                            std::is_same_v<typename B::Scalar, S>;
  constexpr bool c_direct = (int(C::Flags) & Eigen::DirectAccessBit) != 0 &&
                            (int(C::Flags) & Eigen::LvalueBit) != 0;
  auto& c = const_cast<Eigen::MatrixBase<C>&>(c_const);
  if constexpr (!a_direct) {
    const Matrix<S> a_eval = a;
    eigen_matmul(a_eval, b, layout, c, accumulate);
  } else if constexpr (!b_direct) {
    const Matrix<S> b_eval = b.template cast<S>();
    eigen_matmul(a, b_eval, layout, c, accumulate);
  } else if constexpr (!c_direct) {
    Matrix<S> c_eval(c.rows(), c.cols());
    eigen_matmul(a, b, layout, c_eval, false);
    if (accumulate) c += c_eval;
    else c = c_eval;
  } else {
    const StridedMatrix<const S> sb = strided_matrix(b);
    strided_gemm<S>(strided_matrix(a),
                    layout == kernels::GemmB::kTransposed ? sb.transposed() : sb,
                    strided_matrix(c), accumulate);
  }
}

/// C = A op(B), or C += A op(B) when `accumulate`: kernels::gemm for float operands with
/// contiguous rows (B float or bfloat16), else eigen_matmul. C must not alias A or B.
template <class A, class B, class C>
void matmul(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b, kernels::GemmB layout,
            const Eigen::MatrixBase<C>& c, bool accumulate, kernels::GemmWorkspace& ws,
            ThreadPool* pool) {
  using SA = typename A::Scalar;
  using SB = typename B::Scalar;
  using SC = typename C::Scalar;
  const bool transposed = layout == kernels::GemmB::kTransposed;
  MLA_DCHECK(c.rows() == a.rows() && a.cols() == (transposed ? b.cols() : b.rows()) &&
             c.cols() == (transposed ? b.rows() : b.cols()));
  (void)transposed;
  if constexpr (std::is_same_v<SA, float> && std::is_same_v<SC, float> &&
                (std::is_same_v<SB, float> || std::is_same_v<SB, bfloat16>) &&
                has_contiguous_rows<A>() && has_contiguous_rows<B>() && has_contiguous_rows<C>()) {
    const auto& ad = a.derived();
    const auto& bd = b.derived();
    auto& cd = const_cast<C&>(c.derived());
    // Unit inner strides known at compile time (maps, blocks, Refs of row-major matrices): no
    // Eigen fallback is compiled for this call.
    constexpr bool unit_strides = int(A::InnerStrideAtCompileTime) == 1 &&
                                  int(B::InnerStrideAtCompileTime) == 1 &&
                                  int(C::InnerStrideAtCompileTime) == 1;
    if (unit_strides || (ad.innerStride() == 1 && bd.innerStride() == 1 && cd.innerStride() == 1)) {
      // A single row reports outerStride() == its length whatever its storage; that is all gemm
      // reads of it.
      const Index lda = a.rows() == 1 ? a.cols() : ad.outerStride();
      const Index ldb = b.rows() == 1 ? b.cols() : bd.outerStride();
      const Index ldc = c.rows() == 1 ? c.cols() : cd.outerStride();
      kernels::gemm(c.rows(), c.cols(), a.cols(), ad.data(), lda, bd.data(), ldb, layout, cd.data(),
                    ldc, accumulate, ws, pool);
      return;
    }
    if constexpr (!unit_strides) eigen_matmul(a, b, layout, c, accumulate);
  } else {
    eigen_matmul(a, b, layout, c, accumulate);
  }
}

}  // namespace internal
}  // namespace mla
