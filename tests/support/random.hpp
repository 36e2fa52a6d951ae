// Random layers for tests: weights N(0,1)/sqrt(fan_in) (as the reference data draws them),
// norms 1 + 0.1 N(0,1), inputs N(0,1), all from a seeded generator so failures reproduce.
#pragma once

#include <random>

#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"

namespace mla::testing {

class Rng {
 public:
  explicit Rng(unsigned seed) : gen_(seed) {}
  template <class Scalar>
  Matrix<Scalar> normal(Index rows, Index cols, double stddev = 1.0) {
    std::normal_distribution<double> d(0.0, stddev);
    Matrix<Scalar> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(d(gen_));
    return m;
  }
  template <class Scalar>
  Linear<Scalar> linear(Index out, Index in, bool bias = false) {
    Linear<Scalar> l;
    l.weight = normal<Scalar>(out, in, 1.0 / std::sqrt(static_cast<double>(in)));
    if (bias) l.bias = normal<Scalar>(out, 1, 0.1);
    return l;
  }
  template <class Scalar>
  Vector<Scalar> norm_weight(Index n) {
    return (Matrix<Scalar>::Ones(n, 1) + normal<Scalar>(n, 1, 0.1)).col(0);
  }

 private:
  std::mt19937_64 gen_;
};

template <class Scalar>
typename MultiHeadLatentAttention<Scalar>::Weights random_mla_weights(const MlaConfig& c,
                                                                      Rng& rng) {
  typename MultiHeadLatentAttention<Scalar>::Weights w;
  const Index H = c.num_attention_heads, qk = c.qk_head_dim();
  if (c.has_q_lora()) {
    w.q_a_proj = rng.linear<Scalar>(c.q_lora_rank, c.hidden_size, c.attention_bias);
    w.q_a_layernorm = rng.norm_weight<Scalar>(c.q_lora_rank);
    w.q_b_proj = rng.linear<Scalar>(H * qk, c.q_lora_rank);
  } else {
    w.q_proj = rng.linear<Scalar>(H * qk, c.hidden_size);
  }
  w.kv_a_proj_with_mqa =
      rng.linear<Scalar>(c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size, c.attention_bias);
  w.kv_a_layernorm = rng.norm_weight<Scalar>(c.kv_lora_rank);
  w.kv_b_proj = rng.linear<Scalar>(H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  w.o_proj = rng.linear<Scalar>(c.hidden_size, H * c.v_head_dim, c.attention_bias);
  return w;
}

template <class Scalar>
typename GroupedQueryAttention<Scalar>::Weights random_gqa_weights(const AttentionConfig& c,
                                                                   Rng& rng) {
  typename GroupedQueryAttention<Scalar>::Weights w;
  const Index H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  w.q_proj = rng.linear<Scalar>(H * D, c.hidden_size, c.qkv_bias);
  w.k_proj = rng.linear<Scalar>(KV * D, c.hidden_size, c.qkv_bias);
  w.v_proj = rng.linear<Scalar>(KV * D, c.hidden_size, c.qkv_bias);
  w.o_proj = rng.linear<Scalar>(c.hidden_size, H * D, c.o_bias);
  return w;
}

/// Consecutive positions start, start+1, ...
inline Positions positions_from(std::int64_t start, Index n) {
  Positions p(n);
  for (Index i = 0; i < n; ++i) p[i] = start + i;
  return p;
}

/// max |a - b| / max |b| (0 when b is all zeros and a == b).
template <class A, class B>
double rel_max_err(const A& a, const B& b) {
  const double denom = b.cwiseAbs().maxCoeff();
  const double num = (a - b).cwiseAbs().maxCoeff();
  return denom == 0 ? num : num / denom;
}

}  // namespace mla::testing
