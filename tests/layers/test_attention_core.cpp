// The naive path's causal products (attention_core.hpp) against plain masked loops in double:
// causal_probs_times_values for T across its 64-row sub-tiles and 256-row tiles, with and without
// cached rows before the new tokens, through the float GEMM and the double (Eigen) instantiation;
// and the masking rule that a later token's value row never reaches an earlier token's output,
// even when it holds a NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <type_traits>

#include "mla/layers/attention_core.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using testing::Rng;

/// out[t] = sum_{j <= L0 + t} p[t][j] v[j] in double, reading only the visible columns.
Matrix<double> masked_reference(const Matrix<double>& p, const Matrix<double>& v) {
  const Index T = p.rows(), L0 = p.cols() - T;
  Matrix<double> out = Matrix<double>::Zero(T, v.cols());
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j <= L0 + t; ++j)
      for (Index d = 0; d < v.cols(); ++d) out(t, d) += p(t, j) * v(j, d);
  return out;
}

template <class Scalar>
void check_probs_times_values(Index T, Index L0, Index Dv, unsigned seed) {
  Rng rng(seed);
  const Matrix<double> p = rng.normal<double>(T, L0 + T), v = rng.normal<double>(L0 + T, Dv);
  const Matrix<double> want = masked_reference(p, v);
  const Matrix<Scalar> ps = p.cast<Scalar>(), vs = v.cast<Scalar>();
  Matrix<Scalar> got = Matrix<Scalar>::Constant(T, Dv, Scalar(7));  // every entry overwritten
  Workspace ws;
  internal::causal_probs_times_values(ps, vs, got, ws);
  // |error| <= (L0 + T) * eps * sum |p||v|; with N(0,1) entries that sum is about (L0 + T).
  const double eps = std::is_same_v<Scalar, float> ? 6e-8 : 1.2e-16;
  const double tol = 4.0 * eps * double(L0 + T) * double(L0 + T) + 1e-12;
  for (Index t = 0; t < T; ++t)
    for (Index d = 0; d < Dv; ++d)
      ASSERT_NEAR(double(got(t, d)), want(t, d), tol)
          << "T=" << T << " L0=" << L0 << " t=" << t << " d=" << d;
}

TEST(CausalProbsTimesValues, MatchesMaskedLoops) {
  unsigned seed = 11;
  for (Index T : {1, 2, 63, 64, 65, 130, 255, 256, 257, 600})
    for (Index L0 : {0, 7}) {
      check_probs_times_values<float>(T, L0, 20, seed);
      check_probs_times_values<double>(T, L0, 5, seed + 1);
      seed += 2;
    }
}

TEST(CausalProbsTimesValues, LaterValueRowsNeverReachEarlierTokens) {
  // Token t's own value row is cache row L0 + t; put a NaN there, for t on sub-tile and tile
  // edges. Earlier tokens (rows < t) stay finite; t and every later token see the NaN.
  const Index T = 300, L0 = 3, Dv = 17;
  Rng rng(5);
  for (Index t : {0, 63, 64, 200, 255, 256, 299}) {
    Matrix<float> p = rng.normal<float>(T, L0 + T), v = rng.normal<float>(L0 + T, Dv);
    v(L0 + t, 4) = std::numeric_limits<float>::quiet_NaN();
    Matrix<float> out(T, Dv);
    Workspace ws;
    internal::causal_probs_times_values(p, v, out, ws);
    for (Index r = 0; r < T; ++r) {
      if (r < t) {
        EXPECT_TRUE(out.row(r).allFinite()) << "NaN in value row of token " << t
                                            << " reached token " << r;
      } else {
        EXPECT_TRUE(std::isnan(out(r, 4))) << "token " << r << " sees token " << t;
      }
    }
  }
}

}  // namespace
}  // namespace mla
