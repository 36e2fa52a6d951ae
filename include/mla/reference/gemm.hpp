// Reference matrix product that mla::kernels::gemm is tested against: plain loops, every sum in
// double, B elements read through static_cast<double> (so a bf16 B is compared on exactly the
// values the fast kernel widens).
#pragma once

#include "mla/core/shapes.hpp"
#include "mla/core/types.hpp"

namespace mla {
namespace reference {

/// C [M, N] = A [M, K] op(B) (+ C when accumulate); same layouts as kernels::gemm.
template <class TB>
void gemm(Index M, Index N, Index K, const float* a, Index lda, const TB* b, Index ldb,
          kernels::GemmB layout, float* c, Index ldc, bool accumulate) {
  for (Index m = 0; m < M; ++m)
    for (Index n = 0; n < N; ++n) {
      double acc = accumulate ? double(c[m * ldc + n]) : 0.0;
      for (Index k = 0; k < K; ++k) {
        const TB bkn = layout == kernels::GemmB::kTransposed ? b[n * ldb + k] : b[k * ldb + n];
        acc += double(a[m * lda + k]) * static_cast<double>(static_cast<float>(bkn));
      }
      c[m * ldc + n] = static_cast<float>(acc);
    }
}

}  // namespace reference
}  // namespace mla
