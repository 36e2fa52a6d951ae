// Reference decode-attention loops that the fast kernels in mla/kernels/ are tested against.
// They take the same arguments as the fast kernels, minus the execution resources (workspace,
// thread pool, code path), and are written to be obviously right rather than fast: one query row
// at a time, a two-pass softmax, every sum accumulated in double. Cache elements are read through
// `static_cast<double>`, so a bf16 cache is compared on exactly the values the fast kernel reads.
//
// Causal rule shared by both kernels: the q_len new tokens are the last q_len rows of the cache,
// so query token t (0-based) sees cache rows 0 .. cache_len - q_len + t inclusive.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "mla/core/check.hpp"
#include "mla/core/shapes.hpp"
#include "mla/core/types.hpp"

namespace mla {
namespace reference {

/// Absorbed MLA decode attention (DeepSeek-V2/V3 "weight absorption"), reference loops.
///
/// For every query row m (token m / num_heads, head m % num_heads) and visible cache row j:
///   s_j = scale * (q_lat[m] . c_j + q_pe[m] . p_j),   o_lat[m] = sum_j softmax(s)_j * c_j,
/// where cache row j = [c_j (kv_lora) | p_j (rope)]. lse[m] = log(sum_j exp(s_j)) when lse != null.
/// Shapes: q_lat [M, kv_lora], q_pe [M, rope], cache rows [cache_len, row_stride],
/// o_lat [M, kv_lora], lse [M], with M = q_len * num_heads (all row-major, contiguous).
template <class CacheScalar>
void absorbed_attention(const kernels::AbsorbedAttentionShape& shape, const float* q_lat,
                        const float* q_pe, const CacheScalar* cache, float softmax_scale,
                        float* o_lat, float* lse = nullptr) {
  shape.validate();
  const Index rows = shape.rows();
  const Index d = shape.kv_lora;
  const Index r = shape.rope;
  std::vector<double> s(static_cast<std::size_t>(shape.cache_len));
  std::vector<double> acc(static_cast<std::size_t>(d));
  for (Index m = 0; m < rows; ++m) {
    const Index token = m / shape.num_heads;
    const Index visible = shape.cache_len - shape.q_len + token + 1;
    double max_s = -std::numeric_limits<double>::infinity();
    for (Index j = 0; j < visible; ++j) {
      const CacheScalar* row = cache + j * shape.row_stride;
      double dot = 0.0;
      for (Index k = 0; k < d; ++k) dot += double(q_lat[m * d + k]) * static_cast<double>(row[k]);
      for (Index k = 0; k < r; ++k) dot += double(q_pe[m * r + k]) * static_cast<double>(row[d + k]);
      s[j] = double(softmax_scale) * dot;
      max_s = std::max(max_s, s[j]);
    }
    double sum = 0.0;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (Index j = 0; j < visible; ++j) {
      const double p = std::exp(s[j] - max_s);
      sum += p;
      const CacheScalar* row = cache + j * shape.row_stride;
      for (Index k = 0; k < d; ++k) acc[k] += p * static_cast<double>(row[k]);
    }
    for (Index k = 0; k < d; ++k) o_lat[m * d + k] = static_cast<float>(acc[k] / sum);
    if (lse != nullptr) lse[m] = static_cast<float>(max_s + std::log(sum));
  }
}

/// MHA / GQA decode attention over a head-major KV cache, reference loops.
///
/// Query head h reads kv head h / group (group = num_heads / num_kv_heads). For token t, head h:
///   s_j = scale * q[t, h] . K[h / group, j],   out[t, h] = sum_j softmax(s)_j * V[h / group, j],
/// over visible rows j. lse[t, h] = log(sum_j exp(s_j)) when lse != null.
/// Shapes: q [q_len, num_heads, head_dim], k [num_kv_heads, capacity, head_dim] (head stride
/// k_head_stride, row stride head_dim), v [num_kv_heads, capacity, v_dim] (head stride
/// v_head_stride), out [q_len, num_heads, v_dim], lse [q_len, num_heads].
template <class CacheScalar>
void gqa_attention(const kernels::GqaAttentionShape& shape, const float* q, const CacheScalar* k,
                   const CacheScalar* v, float softmax_scale, float* out, float* lse = nullptr) {
  shape.validate();
  const Index group = shape.group_size();
  const Index dk = shape.head_dim;
  const Index dv = shape.v_dim;
  std::vector<double> s(static_cast<std::size_t>(shape.cache_len));
  std::vector<double> acc(static_cast<std::size_t>(dv));
  for (Index token = 0; token < shape.q_len; ++token) {
    const Index visible = shape.cache_len - shape.q_len + token + 1;
    for (Index h = 0; h < shape.num_heads; ++h) {
      const float* qh = q + (token * shape.num_heads + h) * dk;
      const CacheScalar* kh = k + (h / group) * shape.k_head_stride;
      const CacheScalar* vh = v + (h / group) * shape.v_head_stride;
      double max_s = -std::numeric_limits<double>::infinity();
      for (Index j = 0; j < visible; ++j) {
        double dot = 0.0;
        for (Index i = 0; i < dk; ++i) dot += double(qh[i]) * static_cast<double>(kh[j * dk + i]);
        s[j] = double(softmax_scale) * dot;
        max_s = std::max(max_s, s[j]);
      }
      double sum = 0.0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (Index j = 0; j < visible; ++j) {
        const double p = std::exp(s[j] - max_s);
        sum += p;
        for (Index i = 0; i < dv; ++i) acc[i] += p * static_cast<double>(vh[j * dv + i]);
      }
      float* oh = out + (token * shape.num_heads + h) * dv;
      for (Index i = 0; i < dv; ++i) oh[i] = static_cast<float>(acc[i] / sum);
      if (lse != nullptr) lse[token * shape.num_heads + h] = static_cast<float>(max_s + std::log(sum));
    }
  }
}

}  // namespace reference
}  // namespace mla
