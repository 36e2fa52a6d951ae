// kernels::gemm against reference::gemm (double sums): both B layouts, float and bf16 B, edge
// tiles (M, N not multiples of 6 and 16, K across several 256-deep blocks), the few-row streaming
// path (one row of B at a time, and four for long rows), padded strides, accumulate, 1-3 threads (bitwise equal to 1 thread), the portable path,
// and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "mla/core/threading.hpp"
#include "mla/kernels/gemm.hpp"
#include "mla/reference/gemm.hpp"

namespace mla {
namespace {

using kernels::GemmB;
using kernels::KernelPath;

template <class T>
std::vector<T> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<T> v(n);
  for (T& x : v) x = T(u(rng));
  return v;
}

struct Case {
  Index M, N, K;
};

template <class TB>
void check(const Case& cs, GemmB layout, bool accumulate, unsigned seed) {
  const Index pad = 3;  // row strides longer than the rows
  const Index lda = cs.K + pad, ldc = cs.N + pad;
  const Index b_rows = layout == GemmB::kTransposed ? cs.N : cs.K;
  const Index ldb = (layout == GemmB::kTransposed ? cs.K : cs.N) + pad;
  const auto a = random_values<float>(std::size_t(cs.M * lda), seed);
  const auto b = random_values<TB>(std::size_t(b_rows * ldb), seed + 1);
  const auto c0 = random_values<float>(std::size_t(cs.M * ldc), seed + 2);
  std::vector<float> want = c0;
  reference::gemm(cs.M, cs.N, cs.K, a.data(), lda, b.data(), ldb, layout, want.data(), ldc, accumulate);
  // |error| <= K * eps * sum |a||b| per element: bound it by K * 2^-22 * K (|a|, |b| <= 1) + slack.
  const double tol = 1e-6 * double(cs.K) + 1e-6;
  std::vector<float> first;
  ThreadPool pool2(2), pool3(3);
  kernels::GemmWorkspace ws;
  for (KernelPath path : mla::kernels::available_paths())
    for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
      std::vector<float> got = c0;
      kernels::gemm(cs.M, cs.N, cs.K, a.data(), lda, b.data(), ldb, layout, got.data(), ldc,
                    accumulate, ws, pool, path);
      for (Index m = 0; m < cs.M; ++m) {
        for (Index n = 0; n < cs.N; ++n)
          ASSERT_NEAR(got[std::size_t(m * ldc + n)], want[std::size_t(m * ldc + n)], tol)
              << "M=" << cs.M << " N=" << cs.N << " K=" << cs.K << " m=" << m << " n=" << n
              << " threads=" << num_threads(pool) << " path=" << mla::kernels::path_name(path);
        for (Index n = cs.N; n < ldc; ++n)  // the padding of C is never written
          ASSERT_EQ(got[std::size_t(m * ldc + n)], c0[std::size_t(m * ldc + n)]);
      }
      if (path == KernelPath::kAuto) {
        if (pool == nullptr) first = got;
        else EXPECT_EQ(got, first) << "threads=" << num_threads(pool) << " differs from 1 thread";
      }
    }
}

TEST(Gemm, MatchesReference) {
  const Case cases[] = {{1, 1, 1},    {1, 37, 300},  {3, 50, 20},   {4, 16, 8},   {6, 16, 256},
                        {7, 17, 257}, {13, 33, 513}, {72, 48, 100}, {80, 100, 64}, {150, 40, 300},
                        {5, 2100, 9}, {20, 1030, 30},
                        // few rows of A with B rows of >= 8 KiB: read four rows of B at a time
                        // (f32 and bf16 at K = 4100; f32 only at 2050), N not a multiple of 4
                        // and thread ranges that cut the groups of four
                        {1, 301, 4100}, {3, 131, 2050}};
  unsigned seed = 1;
  for (const Case& cs : cases)
    for (GemmB layout : {GemmB::kTransposed, GemmB::kPlain})
      for (bool accumulate : {false, true}) {
        check<float>(cs, layout, accumulate, seed);
        check<bfloat16>(cs, layout, accumulate, seed + 100);
        seed += 3;
      }
}

TEST(Gemm, EmptyAndZeroDepth) {
  kernels::GemmWorkspace ws;
  std::vector<float> c(12, 5.0f);
  kernels::gemm<float>(3, 4, 0, nullptr, 0, nullptr, 4, GemmB::kPlain, c.data(), 4, false, ws);
  for (float x : c) EXPECT_EQ(x, 0.0f);  // K = 0: C = 0
  std::fill(c.begin(), c.end(), 5.0f);
  kernels::gemm<float>(3, 4, 0, nullptr, 0, nullptr, 4, GemmB::kPlain, c.data(), 4, true, ws);
  for (float x : c) EXPECT_EQ(x, 5.0f);  // ... or C unchanged when accumulating
  kernels::gemm<float>(0, 4, 3, nullptr, 3, nullptr, 4, GemmB::kPlain, nullptr, 4, false, ws);
}

TEST(Gemm, RejectsBadArguments) {
  kernels::GemmWorkspace ws;
  std::vector<float> a(64), b(64), c(64);
  EXPECT_THROW(kernels::gemm(-1, 2, 2, a.data(), 2, b.data(), 2, GemmB::kPlain, c.data(), 2, false, ws),
               std::invalid_argument);
  EXPECT_THROW(kernels::gemm(2, 4, 3, a.data(), 2, b.data(), 4, GemmB::kPlain, c.data(), 4, false, ws),
               std::invalid_argument);  // lda < K
  EXPECT_THROW(kernels::gemm(2, 4, 3, a.data(), 3, b.data(), 2, GemmB::kTransposed, c.data(), 4, false, ws),
               std::invalid_argument);  // ldb < K for B^T
  EXPECT_THROW(kernels::gemm(2, 4, 3, a.data(), 3, b.data(), 4, GemmB::kPlain, c.data(), 3, false, ws),
               std::invalid_argument);  // ldc < N
  EXPECT_THROW(kernels::gemm<float>(2, 4, 3, nullptr, 3, b.data(), 4, GemmB::kPlain, c.data(), 4, false, ws),
               std::invalid_argument);
}

}  // namespace
}  // namespace mla
