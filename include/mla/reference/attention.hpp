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

namespace detail {

/// Scratch of attend_row for rows of up to `len` scores and `dv` output values.
struct RowScratch {
  RowScratch(Index len, Index dv)
      : s(static_cast<std::size_t>(len)), acc(static_cast<std::size_t>(dv)) {}
  std::vector<double> s, acc;
};

/// One query row over its `visible` cache rows, in double: s_j = scale * score(j), then
/// out = sum_j softmax(s)_j value(j)[0 .. dv) (value(j): the row's first value, read through
/// static_cast<double>) and *lse = log sum_j exp(s_j) when lse != null.
template <class Score, class Value>
void attend_row(Index visible, double scale, Score score, Value value, Index dv,
                RowScratch& scratch, float* out, float* lse) {
  double* s = scratch.s.data();
  double* acc = scratch.acc.data();
  double max_s = -std::numeric_limits<double>::infinity();
  for (Index j = 0; j < visible; ++j) {
    s[j] = scale * score(j);
    max_s = std::max(max_s, s[j]);
  }
  double sum = 0.0;
  std::fill(acc, acc + dv, 0.0);
  for (Index j = 0; j < visible; ++j) {
    const double p = std::exp(s[j] - max_s);
    sum += p;
    const auto* row = value(j);
    for (Index k = 0; k < dv; ++k) acc[k] += p * static_cast<double>(row[k]);
  }
  for (Index k = 0; k < dv; ++k) out[k] = static_cast<float>(acc[k] / sum);
  if (lse != nullptr) *lse = static_cast<float>(max_s + std::log(sum));
}

/// sum_k a[k] b[k] over n values, in double.
template <class A, class B>
double dot(const A* a, const B* b, Index n) {
  double d = 0.0;
  for (Index k = 0; k < n; ++k) d += static_cast<double>(a[k]) * static_cast<double>(b[k]);
  return d;
}

}  // namespace detail

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
  detail::RowScratch scratch(shape.cache_len, d);
  for (Index m = 0; m < rows; ++m) {
    const Index token = m / shape.num_heads;
    const Index visible = shape.cache_len - shape.q_len + token + 1;
    auto row = [&](Index j) { return cache + j * shape.row_stride; };
    auto score = [&](Index j) {
      return detail::dot(q_lat + m * d, row(j), d) + detail::dot(q_pe + m * r, row(j) + d, r);
    };
    detail::attend_row(visible, softmax_scale, score, row, d, scratch, o_lat + m * d,
                       lse == nullptr ? nullptr : lse + m);
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
  detail::RowScratch scratch(shape.cache_len, dv);
  for (Index token = 0; token < shape.q_len; ++token) {
    const Index visible = shape.cache_len - shape.q_len + token + 1;
    for (Index h = 0; h < shape.num_heads; ++h) {
      const Index m = token * shape.num_heads + h;
      const CacheScalar* kh = k + (h / group) * shape.k_head_stride;
      const CacheScalar* vh = v + (h / group) * shape.v_head_stride;
      detail::attend_row(
          visible, softmax_scale, [&](Index j) { return detail::dot(q + m * dk, kh + j * dk, dk); },
          [&](Index j) { return vh + j * dv; }, dv, scratch, out + m * dv,
          lse == nullptr ? nullptr : lse + m);
    }
  }
}

}  // namespace reference
}  // namespace mla
