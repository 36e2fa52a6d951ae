// Grouped-query attention (Ainslie et al. 2023) and its special case multi-head attention, as in
// Llama and Qwen2 (transformers LlamaAttention / Qwen2Attention):
//
//   q = x Wq^T (+bq) -> [T, H, D];  k = x Wk^T (+bk) -> [T, KV, D];  v = x Wv^T (+bv) -> [T, KV, D]
//   q, k <- RoPE(q, k) at each token's position (rotate-half for Llama/Qwen2)
//   out_h = softmax(D^-0.5 q_h K_{h/g}^T, causal) V_{h/g}      (g = H / KV query heads per KV head)
//   y = concat_h(out_h) Wo^T (+bo)
//
// The layer is immutable after construction and may be shared by threads; each sequence owns its
// KvCache, and each concurrent caller its Workspace. forward() appends the new tokens to the
// cache and attends over everything cached, so prefill, chunked prefill and token-by-token decode
// are the same call with different T.
#pragma once

#include <memory>
#include <utility>

#include "mla/cache/kv_cache.hpp"
#include "mla/config.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"
#include "mla/layers/workspace.hpp"
#include "mla/layers/attention_core.hpp"
#include "mla/layers/layer_options.hpp"
#include "mla/ops/linear.hpp"
#include "mla/ops/rope.hpp"

namespace mla {

template <class Scalar>
class GroupedQueryAttention {
 public:
  /// Weights with Hugging Face names (model.layers.N.self_attn.<name>.weight / .bias).
  struct Weights {
    Linear<Scalar> q_proj;  ///< [H*D, hidden]
    Linear<Scalar> k_proj;  ///< [KV*D, hidden]
    Linear<Scalar> v_proj;  ///< [KV*D, hidden]
    Linear<Scalar> o_proj;  ///< [hidden, H*D]
  };
  /// Construction options (layers/layer_options.hpp).
  using Options = AttentionLayerOptions;

  /// Validates `config` and every weight shape against it (std::invalid_argument naming the
  /// weight, the expected and the actual shape).
  GroupedQueryAttention(const AttentionConfig& config, Weights weights, Options options = {})
      : cfg_(config), w_(std::move(weights)) {
    cfg_.validate();
    const Index hidden = cfg_.hidden_size, H = cfg_.num_attention_heads,
                KV = cfg_.num_key_value_heads, D = cfg_.head_dim;
    w_.q_proj.check_shape("q_proj", H * D, hidden);
    w_.k_proj.check_shape("k_proj", KV * D, hidden);
    w_.v_proj.check_shape("v_proj", KV * D, hidden);
    w_.o_proj.check_shape("o_proj", hidden, H * D);
    MLA_CHECK_ARG(cfg_.qkv_bias == (w_.q_proj.has_bias() && w_.k_proj.has_bias() &&
                                    w_.v_proj.has_bias()),
                  "q/k/v biases: config says qkv_bias=", cfg_.qkv_bias,
                  " but the weights ", cfg_.qkv_bias ? "lack" : "have", " them");
    MLA_CHECK_ARG(cfg_.o_bias == w_.o_proj.has_bias(), "o_proj bias: config says o_bias=",
                  cfg_.o_bias, " but the weights ", cfg_.o_bias ? "lack" : "have", " it");
    rope_ = std::make_shared<const RotaryEmbedding<Scalar>>(
        cfg_.rope, D, options.positions_or(cfg_.max_position_embeddings));
    attention_path_ = options.attention_path;
    apply_weight_format<Scalar>(options.projection_weights,
                                {&w_.q_proj, &w_.k_proj, &w_.v_proj, &w_.o_proj});
  }

  const AttentionConfig& config() const { return cfg_; }
  const Weights& weights() const { return w_; }
  const RotaryEmbedding<Scalar>& rope() const { return *rope_; }

  /// An empty cache for this layer with room for `capacity` tokens.
  template <class T = Scalar>
  KvCache<T> make_cache(Index capacity) const {
    return KvCache<T>(cfg_.num_key_value_heads, cfg_.head_dim, cfg_.head_dim, capacity);
  }

  /// The projection step alone: q [T, H*D], k [T, KV*D], v [T, KV*D] with RoPE applied to q and
  /// k at `positions`. Exposed so tests and engines can check or fuse it.
  template <class Q, class K, class V>
  void project_qkv(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                   Eigen::MatrixBase<Q>& q, Eigen::MatrixBase<K>& k,
                   Eigen::MatrixBase<V>& v) const {
    Workspace ws;
    project_qkv(x, positions, q, k, v, ws);
  }
  /// As above, with the GEMM scratch and thread pool of `ws`.
  template <class Q, class K, class V>
  void project_qkv(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                   Eigen::MatrixBase<Q>& q, Eigen::MatrixBase<K>& k, Eigen::MatrixBase<V>& v,
                   Workspace& ws) const {
    w_.q_proj.apply(x, q, ws.gemm_kernel, ws.thread_pool());
    w_.k_proj.apply(x, k, ws.gemm_kernel, ws.thread_pool());
    w_.v_proj.apply(x, v, ws.gemm_kernel, ws.thread_pool());
    const Index D = cfg_.head_dim;
    for (Index t = 0; t < x.rows(); ++t) {
      rope_->rotate_strided(&q(t, 0), cfg_.num_attention_heads, D, positions[t]);
      rope_->rotate_strided(&k(t, 0), cfg_.num_key_value_heads, D, positions[t]);
    }
  }

  /// Causal attention of the T tokens `x` [T, hidden] at `positions` [T]: appends their K/V to
  /// `cache`, attends over all cached tokens, writes `out` [T, hidden]. Allocates nothing when
  /// `ws` has served a call of this size before. Every argument (and Options::attention_path) is
  /// checked before the cache changes; a call that fails leaves the cache as it was.
  template <class T>
  void forward(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
               KvCache<T>& cache, Eigen::Ref<Matrix<Scalar>> out, Workspace& ws) const {
    const Index n = x.rows(), H = cfg_.num_attention_heads, KV = cfg_.num_key_value_heads,
                D = cfg_.head_dim;
    check_call(x, positions, out, cache);
    if (n == 0) return;
    ws.reset();
    MatrixMap<Scalar> q = ws.matrix<Scalar>(n, H * D);
    MatrixMap<Scalar> k = ws.matrix<Scalar>(n, KV * D);
    MatrixMap<Scalar> v = ws.matrix<Scalar>(n, KV * D);
    MatrixMap<Scalar> heads = ws.matrix<Scalar>(n, H * D);
    project_qkv(x, positions, q, k, v, ws);
    auto undo = internal::truncate_on_throw(cache);
    cache.append(k.data(), KV * D, v.data(), KV * D, n);
    internal::gqa_attention(q.data(), n, H, cache, cfg_.softmax_scale(), heads.data(), ws,
                            attention_path_);
    w_.o_proj.apply(heads, out, ws.gemm_kernel, ws.thread_pool());
    undo.dismiss();
  }

  /// Convenience overload that allocates its result and scratch.
  template <class T>
  Matrix<Scalar> forward(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                         KvCache<T>& cache) const {
    return internal::forward_allocating<Scalar>(*this, x, positions, cache);
  }

 private:
  /// Everything forward() needs, checked before it changes anything: shapes, positions, the
  /// cache's shape and room, and the attention kernel path.
  template <class T>
  void check_call(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                  const Eigen::Ref<Matrix<Scalar>>& out, const KvCache<T>& cache) const {
    const Index KV = cfg_.num_key_value_heads, D = cfg_.head_dim;
    MLA_CHECK_ARG(x.cols() == cfg_.hidden_size, "input x: expected [T, ", cfg_.hidden_size,
                  "], got [", x.rows(), ", ", x.cols(), "]");
    MLA_CHECK_ARG(positions.size() == x.rows(), "positions: expected ", x.rows(),
                  " entries (one per token), got ", positions.size());
    MLA_CHECK_ARG(out.rows() == x.rows() && out.cols() == cfg_.hidden_size,
                  "output: expected [", x.rows(), ", ", cfg_.hidden_size, "], got [", out.rows(),
                  ", ", out.cols(), "]");
    rope_->check_positions(positions);
    MLA_CHECK_ARG(cache.kv_heads() == KV && cache.head_dim() == D && cache.v_dim() == D,
                  "KvCache shape [kv_heads ", cache.kv_heads(), ", head_dim ", cache.head_dim(),
                  ", v_dim ", cache.v_dim(), "] does not match the layer [", KV, ", ", D, ", ",
                  D, "]");
    cache.check_room(x.rows());
    internal::check_attention_path<Scalar, T>(attention_path_);
  }

  AttentionConfig cfg_;
  Weights w_;
  std::shared_ptr<const RotaryEmbedding<Scalar>> rope_;
  kernels::KernelPath attention_path_ = kernels::KernelPath::kAuto;
};

/// Multi-head attention: grouped-query attention with num_key_value_heads == num_attention_heads.
template <class Scalar>
using MultiHeadAttention = GroupedQueryAttention<Scalar>;

}  // namespace mla
