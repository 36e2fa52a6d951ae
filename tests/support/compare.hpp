// Error measures the kernel tests share.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace mla::testing {

/// max |a - b| / max |b| over float vectors of the same size; infinity if `a` holds a NaN or an
/// infinity (so a non-finite result never passes a bound).
inline float rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  float e = 0.0f, m = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    e = std::max(e, std::abs(a[i] - b[i]));
    m = std::max(m, std::abs(b[i]));
  }
  return e / std::max(m, 1e-30f);
}

}  // namespace mla::testing
