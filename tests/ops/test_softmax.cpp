// softmax_inplace<float> (the portable loop and the AVX2 form, where the CPU has it) against
// softmax_inplace<double> on the same inputs: lengths around the 8-lane blocks, masked (-inf)
// entries, huge logits, all masked, NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "mla/ops/softmax.hpp"

namespace mla {
namespace {

TEST(Softmax, FloatMatchesDouble) {
  const float inf = std::numeric_limits<float>::infinity();
  for (kernels::KernelPath path : kernels::available_paths()) {
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 8.0f);
    for (Index n : {1, 2, 7, 8, 9, 15, 16, 17, 63, 100, 2049}) {
      for (int variant = 0; variant < 3; ++variant) {
        std::vector<float> xf(static_cast<std::size_t>(n));
        for (float& v : xf) v = normal(rng) + (variant == 2 ? 1e30f : 0.0f);
        if (variant == 1)
          for (Index i = 1; i < n; i += 3) xf[std::size_t(i)] = -inf;  // masked entries
        std::vector<double> xd(xf.begin(), xf.end());
        softmax_inplace(xf.data(), n, path);
        softmax_inplace(xd.data(), n);
        double total = 0.0;
        for (Index i = 0; i < n; ++i) {
          ASSERT_NEAR(xf[std::size_t(i)], xd[std::size_t(i)],
                      2e-6 * std::max(1e-3, xd[std::size_t(i)]) + 1e-9)
              << "n=" << n << " variant=" << variant << " i=" << i
              << " path=" << kernels::path_name(path);
          total += xf[std::size_t(i)];
        }
        EXPECT_NEAR(total, 1.0, 1e-5) << "n=" << n << " path=" << kernels::path_name(path);
      }
    }
  }
}

TEST(Softmax, AllMaskedGivesZerosAndNanPropagates) {
  const float inf = std::numeric_limits<float>::infinity();
  for (kernels::KernelPath path : kernels::available_paths()) {
    std::vector<float> masked(19, -inf);
    softmax_inplace(masked.data(), Index(masked.size()), path);
    for (float v : masked) EXPECT_EQ(v, 0.0f) << kernels::path_name(path);
    std::vector<float> with_nan(19, 1.0f);
    with_nan[11] = std::numeric_limits<float>::quiet_NaN();
    softmax_inplace(with_nan.data(), Index(with_nan.size()), path);
    for (float v : with_nan) EXPECT_TRUE(std::isnan(v)) << kernels::path_name(path);
  }
}

}  // namespace
}  // namespace mla
