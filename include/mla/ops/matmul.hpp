// Matrix products of the layers on Eigen operands: C = A op(B) (+ C), with op(B) = B^T for
// nn.Linear weights [out, in] and K-like rows, op(B) = B for V-like rows. Float operands with
// row-major, unit-stride rows run mla::kernels::gemm (packed AVX2 GEMM, threaded through the
// caller's pool); anything else (the double instantiations the float path is tested against,
// column-major or strided expressions) is evaluated by Eigen.
#pragma once

#include <type_traits>

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

/// C = A op(B), or C += A op(B) when `accumulate`. C must not alias A or B.
template <class A, class B, class C>
void matmul(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b, kernels::GemmB layout,
            const Eigen::MatrixBase<C>& c_const, bool accumulate, kernels::GemmWorkspace& ws,
            ThreadPool* pool) {
  // Eigen's idiom for writing through a const reference to an expression (blocks are temporaries).
  auto& c = const_cast<Eigen::MatrixBase<C>&>(c_const);
  using SA = typename A::Scalar;
  using SB = typename B::Scalar;
  using SC = typename C::Scalar;
  const bool transposed = layout == kernels::GemmB::kTransposed;
  MLA_DCHECK(c.rows() == a.rows() && a.cols() == (transposed ? b.cols() : b.rows()) &&
             c.cols() == (transposed ? b.rows() : b.cols()));
  if constexpr (std::is_same_v<SA, float> && std::is_same_v<SC, float> &&
                (std::is_same_v<SB, float> || std::is_same_v<SB, bfloat16>) &&
                has_contiguous_rows<A>() && has_contiguous_rows<B>() && has_contiguous_rows<C>()) {
    const auto& ad = a.derived();
    const auto& bd = b.derived();
    auto& cd = c.derived();
    if (ad.innerStride() == 1 && bd.innerStride() == 1 && cd.innerStride() == 1) {
      // A single row reports outerStride() == its length whatever its storage; that is all gemm
      // reads of it.
      const Index lda = a.rows() == 1 ? a.cols() : ad.outerStride();
      const Index ldb = b.rows() == 1 ? b.cols() : bd.outerStride();
      const Index ldc = c.rows() == 1 ? c.cols() : cd.outerStride();
      kernels::gemm(c.rows(), c.cols(), a.cols(), ad.data(), lda, bd.data(), ldb, layout, cd.data(),
                    ldc, accumulate, ws, pool);
      return;
    }
  }
  if constexpr (std::is_same_v<SB, SA>) {
    if (transposed) {
      if (accumulate) c.noalias() += a * b.transpose();
      else c.noalias() = a * b.transpose();
    } else {
      if (accumulate) c.noalias() += a * b;
      else c.noalias() = a * b;
    }
  } else {
    if (transposed) {
      if (accumulate) c.noalias() += a * b.template cast<SA>().transpose();
      else c.noalias() = a * b.template cast<SA>().transpose();
    } else {
      if (accumulate) c.noalias() += a * b.template cast<SA>();
      else c.noalias() = a * b.template cast<SA>();
    }
  }
}

}  // namespace internal
}  // namespace mla
