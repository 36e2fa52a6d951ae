// ops/linear.hpp: y = x W^T + b with nn.Linear's [out, in] layout, against the sum written out in
// double; both apply() overloads (Eigen, and the GEMM workspace the layers pass) for 1-3 tokens
// and prefill; bf16-stored weights equal the float projection over bf16-rounded weights; shape
// checks name the projection, expected and actual; WeightFormat on a double layer is refused.
#include <gtest/gtest.h>

#include "mla/core/threading.hpp"
#include "mla/ops/linear.hpp"
#include "support/error_message.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using testing::invalid_argument_of;
using testing::rel_max_err;
using testing::Rng;

/// y[t, o] = sum_i x[t, i] W[o, i] + b[o], element by element in double.
Matrix<double> linear_definition(const Matrix<double>& x, const Matrix<double>& w,
                                 const Vector<double>& b) {
  Matrix<double> y(x.rows(), w.rows());
  for (Index t = 0; t < x.rows(); ++t)
    for (Index o = 0; o < w.rows(); ++o) {
      double s = b.size() ? b[o] : 0.0;
      for (Index i = 0; i < x.cols(); ++i) s += x(t, i) * w(o, i);
      y(t, o) = s;
    }
  return y;
}

TEST(Linear, BothApplyPathsMatchTheDefinition) {
  Rng rng(31);
  ThreadPool pool(2);
  kernels::GemmWorkspace ws;
  for (bool bias : {false, true})
    for (Index T : {1, 2, 3, 20}) {
      const Linear<float> l = rng.linear<float>(40, 96, bias);
      const Matrix<float> x = rng.normal<float>(T, 96);
      const Matrix<double> want =
          linear_definition(x.cast<double>(), l.weight.cast<double>(),
                            bias ? Vector<double>(l.bias.cast<double>()) : Vector<double>());
      Matrix<float> y(T, 40);
      l.apply(x, y);
      EXPECT_LE(rel_max_err(y.cast<double>(), want), 1e-5) << "T=" << T << " bias=" << bias;
      for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
        Matrix<float> yg = Matrix<float>::Constant(T, 40, 7.0f);  // overwritten, not added to
        l.apply(x, yg, ws, p);
        EXPECT_LE(rel_max_err(yg.cast<double>(), want), 1e-5) << "T=" << T << " bias=" << bias;
      }
    }
  // Double: the reference instantiation, exact to double rounding.
  const Linear<double> ld = rng.linear<double>(12, 30, true);
  const Matrix<double> xd = rng.normal<double>(4, 30);
  Matrix<double> yd(4, 12);
  ld.apply(xd, yd);
  EXPECT_LE(rel_max_err(yd, linear_definition(xd, ld.weight, ld.bias)), 1e-14);
}

TEST(Linear, Bf16StoredWeightsEqualTheRoundedFloatProjection) {
  Rng rng(32);
  Linear<float> l = rng.linear<float>(24, 64, true);
  const Matrix<double> rounded = l.weight.cast<bfloat16>().cast<float>().cast<double>();
  const Vector<double> bias = l.bias.cast<double>();
  const std::size_t float_bytes = l.bytes();
  EXPECT_EQ(float_bytes, std::size_t(24 * 64 + 24) * sizeof(float));
  l.store_as_bf16();
  EXPECT_TRUE(l.stored_as_bf16());
  EXPECT_EQ(l.weight.size(), 0);
  EXPECT_EQ(l.out_features(), 24);
  EXPECT_EQ(l.in_features(), 64);
  EXPECT_EQ(l.bytes(), std::size_t(24 * 64) * sizeof(bfloat16) + 24 * sizeof(float));
  kernels::GemmWorkspace ws;
  for (Index T : {1, 9}) {
    const Matrix<float> x = rng.normal<float>(T, 64);
    const Matrix<double> want = linear_definition(x.cast<double>(), rounded, bias);
    Matrix<float> y(T, 24), yg(T, 24);
    l.apply(x, y);
    l.apply(x, yg, ws, nullptr);
    EXPECT_LE(rel_max_err(y.cast<double>(), want), 1e-5) << T;
    EXPECT_LE(rel_max_err(yg.cast<double>(), want), 1e-5) << T;
  }
  Linear<float> empty;
  empty.store_as_bf16();  // nothing to round: stays empty
  EXPECT_FALSE(empty.stored_as_bf16());
}

TEST(Linear, ShapeChecksNameTheProjection) {
  Rng rng(33);
  Linear<float> l = rng.linear<float>(4, 3, true);
  EXPECT_NO_THROW(l.check_shape("q_proj", 4, 3));
  EXPECT_HAS(invalid_argument_of([&] { l.check_shape("q_proj", 3, 4); }),
             "weight 'q_proj': expected shape [3, 4], got [4, 3]");
  l.bias = Vector<float>::Ones(5);
  EXPECT_HAS(invalid_argument_of([&] { l.check_shape("q_proj", 4, 3); }),
             "bias 'q_proj': expected shape [4], got [5]");
}

TEST(Linear, WeightFormat) {
  Rng rng(34);
  Linear<float> a = rng.linear<float>(4, 8), b = rng.linear<float>(2, 8);
  apply_weight_format<float>(WeightFormat::kAsLoaded, {&a, &b});
  EXPECT_FALSE(a.stored_as_bf16());
  apply_weight_format<float>(WeightFormat::kBf16, {&a, &b});
  EXPECT_TRUE(a.stored_as_bf16());
  EXPECT_TRUE(b.stored_as_bf16());
  Linear<double> d = rng.linear<double>(4, 8);
  EXPECT_HAS(invalid_argument_of([&] { apply_weight_format<double>(WeightFormat::kBf16, {&d}); }),
             "needs a float layer");
  EXPECT_NO_THROW(apply_weight_format<double>(WeightFormat::kAsLoaded, {&d}));
}

}  // namespace
}  // namespace mla
