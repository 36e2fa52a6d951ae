// Multi-head Latent Attention (DeepSeek-V2, arXiv:2405.04434; DeepSeek-V3, arXiv:2412.19437),
// with its two execution paths side by side.
//
// Per token x [hidden] (H heads, R = kv_lora_rank, P = qk_rope_head_dim, N = qk_nope_head_dim,
// V = v_head_dim; Hugging Face weight names):
//
//   q      = q_b_proj(RMSNorm(q_a_proj(x), q_a_layernorm))   or q_proj(x) without q LoRA  [H, N+P]
//   q_nope = q[:, :N];  q_pe = RoPE(q[:, N:])                                           [H, N], [H, P]
//   c      = kv_a_proj_with_mqa(x)                                                         [R+P]
//   c_kv   = RMSNorm(c[:R], kv_a_layernorm)      <- cached                                 [R]
//   k_pe   = RoPE(c[R:])                         <- cached, shared by all heads            [P]
//   kv_b_proj [H*(N+V), R] = per head [W_UK_h [N, R]; W_UV_h [V, R]]
//
// Naive path (decompress, then ordinary attention with k_h = [k_nope_h | k_pe]):
//   k_nope_{h,j} = W_UK_h c_kv_j,  v_{h,j} = W_UV_h c_kv_j
//   o_h = sum_j softmax_j(scale (q_nope_h . k_nope_{h,j} + q_pe_h . k_pe_j)) v_{h,j}
// Absorbed path (reassociate, never materialise per-head K/V):
//   q_lat_h = W_UK_h^T q_nope_h                                                            [R]
//   score_{h,j} = scale (q_lat_h . c_kv_j + q_pe_h . k_pe_j)     (q_nope.W_UK c = (W_UK^T q_nope).c)
//   o_lat_h = sum_j p_{h,j} c_kv_j;   o_h = W_UV_h o_lat_h
// Both: y = o_proj(concat_h o_h). scale = (N+P)^-0.5 * yarn mscale^2 (MlaConfig::softmax_scale).
//
// Caches serve these paths:
//   latent caches (R+P values/token): LatentCache<float | bf16 | double>, Fp8LatentCache (656 B per
//     V3 token), Int8LatentCache (648 B), PagedLatentCache<float | bf16 | Fp8Latent | Int8Latent>
//     (blocks of a LatentBlockPool)
//                                    -> absorbed, or naive recomputing K/V from the latent each step
//   KvCache (H*(N+P+V) values/token) -> naive with a decompressed per-head cache (what MLA avoids)
//
// Where sources differ: transformers' DeepseekV3 applies interleaved RoPE and returns the rotated
// pairs permuted as [even | odd]; DeepSeek's inference code and DeepseekV2 keep them in place.
// Scores are identical either way (q and k are permuted alike); we keep the in-place order, so
// cached k_pe matches DeepSeek's and FlashMLA's layout. Both norms use eps 1e-6 as transformers
// does (the released config's rms_norm_eps is also 1e-6).
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

#include "mla/cache/kv_cache.hpp"
#include "mla/cache/latent_cache.hpp"
#include "mla/cache/paged_latent_cache.hpp"
#include "mla/cache/quantized_latent_cache.hpp"
#include "mla/config.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"
#include "mla/layers/workspace.hpp"
#include "mla/layers/attention_core.hpp"
#include "mla/layers/layer_options.hpp"
#include "mla/ops/linear.hpp"
#include "mla/ops/matmul.hpp"
#include "mla/ops/rmsnorm.hpp"
#include "mla/ops/rope.hpp"

namespace mla {

/// Which way forward() computes attention over a LatentCache.
enum class MlaPath {
  kAuto,      ///< the cheaper one by FLOP count (absorbed for decode, naive for long prefills)
  kNaive,     ///< decompress K/V of every cached token, then ordinary attention
  kAbsorbed,  ///< attend in latent space; W_UK folded into q, W_UV applied after
};

inline const char* to_string(MlaPath p) {
  switch (p) {
    case MlaPath::kAuto: return "auto";
    case MlaPath::kNaive: return "naive";
    case MlaPath::kAbsorbed: return "absorbed";
  }
  return "?";
}

/// The path MlaPath::kAuto picks for `num_tokens` new tokens attending over `context` cached
/// tokens (new ones included). FLOPs per head, up to a common factor 2:
///   naive    = L R (N+V)           decompress every cached token
///            + T L (N+P+V)          attention
///   absorbed = T N R + T R V        fold W_UK into q, W_UV into the output
///            + T L (2R+P)           attention in latent space
/// For V3 dims absorbed wins until T ~ 170 new tokens at any L.
inline MlaPath choose_mla_path(const MlaConfig& cfg, Index num_tokens, Index context) {
  const double T = static_cast<double>(num_tokens), L = static_cast<double>(context);
  const double R = static_cast<double>(cfg.kv_lora_rank),
               N = static_cast<double>(cfg.qk_nope_head_dim),
               P = static_cast<double>(cfg.qk_rope_head_dim),
               V = static_cast<double>(cfg.v_head_dim);
  const double naive = L * R * (N + V) + T * L * (N + P + V);
  const double absorbed = T * N * R + T * R * V + T * L * (2 * R + P);
  return absorbed <= naive ? MlaPath::kAbsorbed : MlaPath::kNaive;
}

template <class Scalar>
class MultiHeadLatentAttention {
 public:
  /// Weights with the checkpoint names (model.layers.N.self_attn.<name>.weight).
  struct Weights {
    Linear<Scalar> q_a_proj;            ///< [q_lora_rank, hidden]   (q LoRA only)
    Vector<Scalar> q_a_layernorm;       ///< [q_lora_rank]           (q LoRA only)
    Linear<Scalar> q_b_proj;            ///< [H*(N+P), q_lora_rank]  (q LoRA only)
    Linear<Scalar> q_proj;              ///< [H*(N+P), hidden]       (no q LoRA)
    Linear<Scalar> kv_a_proj_with_mqa;  ///< [R+P, hidden]
    Vector<Scalar> kv_a_layernorm;      ///< [R]
    Linear<Scalar> kv_b_proj;           ///< [H*(N+V), R]
    Linear<Scalar> o_proj;              ///< [hidden, H*V]
  };
  /// Construction options (layers/layer_options.hpp).
  using Options = AttentionLayerOptions;

  /// Validates the config and every weight shape (std::invalid_argument naming the weight, the
  /// expected and the actual shape), then splits kv_b_proj into per-head W_UK and W_UV once.
  MultiHeadLatentAttention(const MlaConfig& config, Weights weights, Options options = {})
      : cfg_(config), w_(std::move(weights)) {
    cfg_.validate();
    check_weights();
    const Index H = cfg_.num_attention_heads, N = cfg_.qk_nope_head_dim, V = cfg_.v_head_dim,
                R = cfg_.kv_lora_rank;
    w_uk_.resize(H * N, R);
    w_uv_.resize(H * V, R);
    for (Index h = 0; h < H; ++h) {
      w_uk_.middleRows(h * N, N) = w_.kv_b_proj.weight.middleRows(h * (N + V), N);
      w_uv_.middleRows(h * V, V) = w_.kv_b_proj.weight.middleRows(h * (N + V) + N, V);
    }
    rope_ = std::make_shared<const RotaryEmbedding<Scalar>>(
        cfg_.rope, cfg_.qk_rope_head_dim,
        options.positions_or(cfg_.max_position_embeddings));
    attention_path_ = options.attention_path;
    apply_weight_format<Scalar>(options.projection_weights,
                                {&w_.q_a_proj, &w_.q_b_proj, &w_.q_proj, &w_.kv_a_proj_with_mqa, &w_.o_proj});
  }

  const MlaConfig& config() const { return cfg_; }
  const Weights& weights() const { return w_; }
  const RotaryEmbedding<Scalar>& rope() const { return *rope_; }
  /// Per-head up-projections split from kv_b_proj: W_UK [H*N, R] and W_UV [H*V, R].
  const Matrix<Scalar>& w_uk() const { return w_uk_; }
  const Matrix<Scalar>& w_uv() const { return w_uv_; }

  /// Latent cache (R+P values per token) for the absorbed and naive-recompute paths.
  template <class T = Scalar>
  LatentCache<T> make_latent_cache(Index capacity) const {
    return LatentCache<T>(cfg_.kv_lora_rank, cfg_.qk_rope_head_dim, capacity);
  }
  /// 8-bit latent cache (FlashMLA's FP8 row: R FP8 codes, ceil(R/128) float scales, P bf16).
  Fp8LatentCache make_fp8_latent_cache(Index capacity) const {
    return Fp8LatentCache(cfg_.kv_lora_rank, cfg_.qk_rope_head_dim, capacity);
  }
  /// 8-bit latent cache in the int8 row format (R int8 codes, one float scale and the code sum
  /// per token, P bf16; kernels/int8_latent_rows.hpp has the error model).
  Int8LatentCache make_int8_latent_cache(Index capacity) const {
    return Int8LatentCache(cfg_.kv_lora_rank, cfg_.qk_rope_head_dim, capacity);
  }
  /// A pool of `num_blocks` blocks of `block_size` latent rows of element type T (float, bf16,
  /// Fp8Latent, Int8Latent), shared by the PagedLatentCaches of many sequences (make_paged_cache).
  template <class T = Scalar>
  LatentBlockPool<T> make_block_pool(Index num_blocks, Index block_size = kDefaultBlockSize) const {
    return LatentBlockPool<T>(cfg_.kv_lora_rank, cfg_.qk_rope_head_dim, num_blocks, block_size);
  }
  /// One sequence's paged cache in `pool` with room for `capacity` tokens (blocks taken now;
  /// BlockPoolExhausted if the pool has too few). Throws std::invalid_argument if the pool's
  /// widths are not the layer's.
  template <class T>
  PagedLatentCache<T> make_paged_cache(LatentBlockPool<T>& pool, Index capacity = 0) const {
    check_latent_widths(pool.kv_lora_rank(), pool.rope_dim(), "LatentBlockPool");
    return PagedLatentCache<T>(pool, capacity);
  }
  /// Decompressed per-head cache (H*(N+P+V) values per token) for the naive-cached path.
  template <class T = Scalar>
  KvCache<T> make_decompressed_cache(Index capacity) const {
    return KvCache<T>(cfg_.num_attention_heads, cfg_.qk_head_dim(), cfg_.v_head_dim, capacity);
  }

  /// Query projection: q [T, H*(N+P)], per head [q_nope | q_pe] with q_pe rotated.
  template <class Q>
  void project_query(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                     Eigen::MatrixBase<Q>& q, Workspace& ws) const {
    if (cfg_.has_q_lora()) {
      MatrixMap<Scalar> qa = ws.matrix<Scalar>(x.rows(), cfg_.q_lora_rank);
      w_.q_a_proj.apply(x, qa, ws.gemm_kernel, ws.thread_pool());
      rmsnorm_inplace(qa, w_.q_a_layernorm, cfg_.latent_norm_eps);
      w_.q_b_proj.apply(qa, q, ws.gemm_kernel, ws.thread_pool());
    } else {
      w_.q_proj.apply(x, q, ws.gemm_kernel, ws.thread_pool());
    }
    const Index qk = cfg_.qk_head_dim();
    for (Index t = 0; t < x.rows(); ++t)
      rope_->rotate_strided(&q(t, cfg_.qk_nope_head_dim), cfg_.num_attention_heads, qk,
                            positions[t]);
  }

  /// Latent projection: c [T, R+P] = [RMSNorm(c_kv) | RoPE(k_pe)], exactly the cache rows.
  template <class C>
  void project_latent(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                      Eigen::MatrixBase<C>& c, Workspace& ws) const {
    w_.kv_a_proj_with_mqa.apply(x, c, ws.gemm_kernel, ws.thread_pool());
    const Index R = cfg_.kv_lora_rank;
    rmsnorm_inplace(c.leftCols(R), w_.kv_a_layernorm, cfg_.latent_norm_eps);
    for (Index t = 0; t < x.rows(); ++t) rope_->rotate(&c(t, R), positions[t]);
  }

  /// The path kAuto picks (see choose_mla_path()).
  MlaPath choose_path(Index num_tokens, Index context) const {
    return choose_mla_path(cfg_, num_tokens, context);
  }

  /// Attention of the T tokens `x` [T, hidden] at `positions` [T] over a latent cache
  /// (LatentCache, Fp8LatentCache, Int8LatentCache or PagedLatentCache; see kIsLatentCache): appends their latent
  /// rows, attends causally over everything cached, writes `out` [T, hidden]. Serves prefill,
  /// chunked prefill, decode and multi-token decode alike. Allocates nothing on the absorbed path
  /// once `ws` has served a call of this size. Every argument (and Options::attention_path) is
  /// checked before the cache changes, room included (a paged cache needs its blocks reserved:
  /// PagedLatentCache::ensure_room); a call that fails leaves the cache as it was.
  template <class Cache, std::enable_if_t<kIsLatentCache<Cache>, int> = 0>
  void forward(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
               Cache& cache, Eigen::Ref<Matrix<Scalar>> out, Workspace& ws,
               MlaPath path = MlaPath::kAuto) const {
    check_call(x, positions, cache);
    check_output(x, out);
    if (x.rows() == 0) return;
    ws.reset();
    MatrixMap<Scalar> heads = ws.matrix<Scalar>(x.rows(), cfg_.num_attention_heads *
                                                              cfg_.v_head_dim);
    auto undo = internal::truncate_on_throw(cache);
    attend_checked(x, positions, cache, heads, ws, path);
    w_.o_proj.apply(heads, out, ws.gemm_kernel, ws.thread_pool());
    undo.dismiss();
  }

  /// Naive path with a decompressed per-head cache: appends k = [W_UK c_kv | k_pe] and
  /// v = W_UV c_kv of the new tokens to `cache` (make_decompressed_cache) and runs ordinary
  /// multi-head attention over it. Checks and failures as for the latent cache.
  template <class T>
  void forward(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
               KvCache<T>& cache, Eigen::Ref<Matrix<Scalar>> out, Workspace& ws) const {
    const Index H = cfg_.num_attention_heads, N = cfg_.qk_nope_head_dim,
                P = cfg_.qk_rope_head_dim, V = cfg_.v_head_dim, R = cfg_.kv_lora_rank;
    check_call(x, positions, cache);
    check_output(x, out);
    const Index n = x.rows();
    if (n == 0) return;
    ws.reset();
    MatrixMap<Scalar> q = ws.matrix<Scalar>(n, H * (N + P));
    MatrixMap<Scalar> c = ws.matrix<Scalar>(n, R + P);
    project_query(x, positions, q, ws);
    project_latent(x, positions, c, ws);
    // Decompress the new tokens once: kv [T, H*(N+V)], then lay out k [T, H, N+P], v [T, H, V].
    MatrixMap<Scalar> kv = ws.matrix<Scalar>(n, H * (N + V));
    internal::matmul(c.leftCols(R), w_.kv_b_proj.weight, kernels::GemmB::kTransposed, kv, false,
                     ws.gemm_kernel, ws.thread_pool());
    MatrixMap<Scalar> k = ws.matrix<Scalar>(n, H * (N + P));
    MatrixMap<Scalar> v = ws.matrix<Scalar>(n, H * V);
    for (Index h = 0; h < H; ++h) {
      k.middleCols(h * (N + P), N) = kv.middleCols(h * (N + V), N);
      k.middleCols(h * (N + P) + N, P) = c.rightCols(P);
      v.middleCols(h * V, V) = kv.middleCols(h * (N + V) + N, V);
    }
    MatrixMap<Scalar> heads = ws.matrix<Scalar>(n, H * V);
    auto undo = internal::truncate_on_throw(cache);
    cache.append(k.data(), H * (N + P), v.data(), H * V, n);
    internal::gqa_attention(q.data(), n, H, cache, cfg_.softmax_scale(), heads.data(), ws,
                            attention_path_);
    w_.o_proj.apply(heads, out, ws.gemm_kernel, ws.thread_pool());
    undo.dismiss();
  }

  /// Convenience overloads that allocate their result and scratch.
  template <class Cache, std::enable_if_t<kIsLatentCache<Cache>, int> = 0>
  Matrix<Scalar> forward(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                         Cache& cache, MlaPath path = MlaPath::kAuto) const {
    return internal::forward_allocating<Scalar>(*this, x, positions, cache, path);
  }
  template <class T>
  Matrix<Scalar> forward(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                         KvCache<T>& cache) const {
    return internal::forward_allocating<Scalar>(*this, x, positions, cache);
  }

  /// Everything before o_proj: appends the latent rows of `x` to `cache` and writes the
  /// per-head attention output `heads` [T, H*V] (transformers' attn_output before o_proj).
  /// Takes its scratch from `ws` without resetting it. Checks and failures as for forward().
  template <class Cache, class Heads, std::enable_if_t<kIsLatentCache<Cache>, int> = 0>
  void attend(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
              Cache& cache, Eigen::MatrixBase<Heads>& heads, Workspace& ws,
              MlaPath path = MlaPath::kAuto) const {
    const Index n = x.rows(), H = cfg_.num_attention_heads;
    check_call(x, positions, cache);
    MLA_CHECK_ARG(heads.rows() == n && heads.cols() == H * cfg_.v_head_dim,
                  "attention heads output: expected [", n, ", ", H * cfg_.v_head_dim, "], got [",
                  heads.rows(), ", ", heads.cols(), "]");
    if (n == 0) return;
    auto undo = internal::truncate_on_throw(cache);
    attend_checked(x, positions, cache, heads, ws, path);
    undo.dismiss();
  }

 private:
  using StridedConstMap = internal::StridedConstMap<Scalar>;
  using StridedMap = internal::StridedMap<Scalar>;

  /// attend() once its arguments are checked: projects, appends, attends.
  template <class Cache, class Heads>
  void attend_checked(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                      Cache& cache, Eigen::MatrixBase<Heads>& heads, Workspace& ws,
                      MlaPath path) const {
    const Index n = x.rows(), H = cfg_.num_attention_heads, N = cfg_.qk_nope_head_dim,
                P = cfg_.qk_rope_head_dim, R = cfg_.kv_lora_rank;
    MatrixMap<Scalar> q = ws.matrix<Scalar>(n, H * (N + P));
    MatrixMap<Scalar> c = ws.matrix<Scalar>(n, R + P);
    project_query(x, positions, q, ws);
    project_latent(x, positions, c, ws);
    cache.append(c.data(), R + P, n);
    if (path == MlaPath::kAuto) path = choose_path(n, cache.size());
    if (path == MlaPath::kAbsorbed)
      attend_absorbed(q, latent_rows(cache), heads, ws);
    else
      attend_naive(q, latent_rows(cache), heads, ws);
  }

  /// Absorbed: q_lat [T, H, R] = q_nope_h W_UK_h and q_pe [T, H, P]; latent attention ->
  /// o_lat [T, H, R]; heads_h = o_lat_h W_UV_h^T. Touches only the latent cache.
  template <class T, class Heads>
  void attend_absorbed(const MatrixMap<Scalar>& q, const LatentRowsView<T>& rows,
                       Eigen::MatrixBase<Heads>& heads, Workspace& ws) const {
    const Index n = q.rows(), H = cfg_.num_attention_heads, N = cfg_.qk_nope_head_dim,
                P = cfg_.qk_rope_head_dim, R = cfg_.kv_lora_rank, V = cfg_.v_head_dim;
    const Index qk = N + P;
    Scalar* q_lat = ws.take<Scalar>(static_cast<std::size_t>(n * H * R));
    Scalar* q_pe = ws.take<Scalar>(static_cast<std::size_t>(n * H * P));
    Scalar* o_lat = ws.take<Scalar>(static_cast<std::size_t>(n * H * R));
    for (Index h = 0; h < H; ++h) {
      StridedConstMap q_nope(q.data() + h * qk, n, N, Eigen::OuterStride<>(H * qk));
      StridedMap ql(q_lat + h * R, n, R, Eigen::OuterStride<>(H * R));
      internal::matmul(q_nope, w_uk_.middleRows(h * N, N), kernels::GemmB::kPlain, ql, false,
                       ws.gemm_kernel, ws.thread_pool());  // [T, N] x [N, R]
      StridedMap(q_pe + h * P, n, P, Eigen::OuterStride<>(H * P)) =
          StridedConstMap(q.data() + h * qk + N, n, P, Eigen::OuterStride<>(H * qk));
    }
    internal::absorbed_attention(q_lat, q_pe, n, H, rows, cfg_.softmax_scale(), o_lat, ws,
                                 attention_path_);
    for (Index h = 0; h < H; ++h) {
      StridedConstMap ol(o_lat + h * R, n, R, Eigen::OuterStride<>(H * R));
      internal::matmul(ol, w_uv_.middleRows(h * V, V), kernels::GemmB::kTransposed,
                       heads.middleCols(h * V, V), false, ws.gemm_kernel, ws.thread_pool());
    }
  }

  /// Naive, recomputing K/V from the latent cache: kv [L, H*(N+V)] = c_kv W_kv_b^T for every
  /// cached token, then per head softmax(scale (q_nope K_nope^T + q_pe K_pe^T)) V.
  template <class T, class Heads>
  void attend_naive(const MatrixMap<Scalar>& q, const LatentRowsView<T>& rows,
                    Eigen::MatrixBase<Heads>& heads, Workspace& ws) const {
    const Index n = q.rows(), L = rows.len, H = cfg_.num_attention_heads,
                N = cfg_.qk_nope_head_dim, P = cfg_.qk_rope_head_dim, R = cfg_.kv_lora_rank,
                V = cfg_.v_head_dim;
    const Index qk = N + P;
    const auto c = internal::latent_rows_as<Scalar>(rows, ws);  // [L, R+P]
    MatrixMap<Scalar> kv = ws.matrix<Scalar>(L, H * (N + V));
    internal::matmul(c.leftCols(R), w_.kv_b_proj.weight, kernels::GemmB::kTransposed, kv, false,
                     ws.gemm_kernel, ws.thread_pool());
    MatrixMap<Scalar> s = ws.matrix<Scalar>(n, L);
    const Index first_visible = L - n + 1;
    const Scalar scale = static_cast<Scalar>(cfg_.softmax_scale());
    // One head's keys [L, N+P] = scale * [k_nope_h | k_pe], so that S = q_h K_h^T is a single
    // product over N+P with the scale folded in: S (T x L, 16 MiB per head at T = L = 2048) is
    // written once instead of being re-read for a second product and for the scaling.
    MatrixMap<Scalar> k_h = ws.matrix<Scalar>(L, qk);
    k_h.rightCols(P) = scale * c.rightCols(P);  // k_pe is shared by all heads
    for (Index h = 0; h < H; ++h) {
      StridedConstMap q_h(q.data() + h * qk, n, qk, Eigen::OuterStride<>(H * qk));
      k_h.leftCols(N) = scale * kv.middleCols(h * (N + V), N);
      const auto v = kv.middleCols(h * (N + V) + N, V);
      internal::causal_scores(q_h, k_h, s, ws);
      softmax_rows_masked(s, [&](Index t) { return first_visible + t; });
      auto out_h = heads.middleCols(h * V, V);
      internal::causal_probs_times_values(s, v, out_h, ws);
    }
  }

  void check_weights() const {
    const Index hidden = cfg_.hidden_size, H = cfg_.num_attention_heads,
                N = cfg_.qk_nope_head_dim, P = cfg_.qk_rope_head_dim, V = cfg_.v_head_dim,
                R = cfg_.kv_lora_rank, QL = cfg_.q_lora_rank;
    if (cfg_.has_q_lora()) {
      w_.q_a_proj.check_shape("q_a_proj", QL, hidden);
      MLA_CHECK_ARG(w_.q_a_layernorm.size() == QL, "weight 'q_a_layernorm': expected shape [",
                    QL, "], got [", w_.q_a_layernorm.size(), "]");
      w_.q_b_proj.check_shape("q_b_proj", H * (N + P), QL);
      MLA_CHECK_ARG(w_.q_proj.weight.size() == 0,
                    "q_lora_rank is set, so q_proj must be empty (the query uses q_a_proj and "
                    "q_b_proj)");
      MLA_CHECK_ARG(w_.q_a_proj.has_bias() == cfg_.attention_bias,
                    "q_a_proj bias: config says attention_bias=", cfg_.attention_bias);
    } else {
      w_.q_proj.check_shape("q_proj", H * (N + P), hidden);
      MLA_CHECK_ARG(w_.q_a_proj.weight.size() == 0 && w_.q_b_proj.weight.size() == 0,
                    "q_lora_rank is null, so q_a_proj and q_b_proj must be empty (the query "
                    "uses q_proj)");
    }
    w_.kv_a_proj_with_mqa.check_shape("kv_a_proj_with_mqa", R + P, hidden);
    MLA_CHECK_ARG(w_.kv_a_layernorm.size() == R, "weight 'kv_a_layernorm': expected shape [", R,
                  "], got [", w_.kv_a_layernorm.size(), "]");
    w_.kv_b_proj.check_shape("kv_b_proj", H * (N + V), R);
    MLA_CHECK_ARG(!w_.kv_b_proj.has_bias(), "kv_b_proj has a bias, which absorption cannot fold");
    w_.o_proj.check_shape("o_proj", hidden, H * V);
    MLA_CHECK_ARG(w_.kv_a_proj_with_mqa.has_bias() == cfg_.attention_bias,
                  "kv_a_proj_with_mqa bias: config says attention_bias=", cfg_.attention_bias);
    MLA_CHECK_ARG(w_.o_proj.has_bias() == cfg_.attention_bias,
                  "o_proj bias: config says attention_bias=", cfg_.attention_bias);
  }

  void check_input(const Eigen::Ref<const Matrix<Scalar>>& x,
                   const PositionsRef& positions) const {
    MLA_CHECK_ARG(x.cols() == cfg_.hidden_size, "input x: expected [T, ", cfg_.hidden_size,
                  "], got [", x.rows(), ", ", x.cols(), "]");
    MLA_CHECK_ARG(positions.size() == x.rows(), "positions: expected ", x.rows(),
                  " entries (one per token), got ", positions.size());
    rope_->check_positions(positions);
  }
  void check_output(const Eigen::Ref<const Matrix<Scalar>>& x,
                    const Eigen::Ref<Matrix<Scalar>>& out) const {
    MLA_CHECK_ARG(out.rows() == x.rows() && out.cols() == cfg_.hidden_size,
                  "output: expected [", x.rows(), ", ", cfg_.hidden_size, "], got [", out.rows(),
                  ", ", out.cols(), "]");
  }
  /// Everything a call that appends x's tokens to `cache` needs, checked before it changes
  /// anything: input and positions, the cache's shape and room, the attention kernel path.
  template <class Cache, std::enable_if_t<kIsLatentCache<Cache>, int> = 0>
  void check_call(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                  const Cache& cache) const {
    check_input(x, positions);
    const char* name = "LatentCache";
    if constexpr (std::is_same_v<Cache, QuantizedLatentCache<typename Cache::Element>>)
      name = internal::kQuantizedCacheName<typename Cache::Element>;
    if constexpr (std::is_same_v<Cache, PagedLatentCache<typename Cache::Element>>)
      name = "PagedLatentCache";
    check_latent_widths(cache.kv_lora_rank(), cache.rope_dim(), name);
    cache.check_room(x.rows());
    internal::check_attention_path<Scalar, typename Cache::Element>(attention_path_);
  }
  /// Throws std::invalid_argument unless a latent cache's (or pool's) widths are the layer's.
  void check_latent_widths(Index kv_lora_rank, Index rope_dim, const char* what) const {
    MLA_CHECK_ARG(kv_lora_rank == cfg_.kv_lora_rank && rope_dim == cfg_.qk_rope_head_dim, what,
                  " [kv_lora_rank ", kv_lora_rank, ", rope ", rope_dim,
                  "] does not match the layer [", cfg_.kv_lora_rank, ", ", cfg_.qk_rope_head_dim,
                  "]");
  }
  template <class T>
  void check_call(const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                  const KvCache<T>& cache) const {
    const Index H = cfg_.num_attention_heads, N = cfg_.qk_nope_head_dim,
                P = cfg_.qk_rope_head_dim, V = cfg_.v_head_dim;
    check_input(x, positions);
    MLA_CHECK_ARG(cache.kv_heads() == H && cache.head_dim() == N + P && cache.v_dim() == V,
                  "decompressed KvCache [kv_heads ", cache.kv_heads(), ", head_dim ",
                  cache.head_dim(), ", v_dim ", cache.v_dim(), "] does not match the layer [",
                  H, ", ", N + P, ", ", V, "]");
    cache.check_room(x.rows());
    internal::check_attention_path<Scalar, T>(attention_path_);
  }

  MlaConfig cfg_;
  Weights w_;
  Matrix<Scalar> w_uk_;  // [H*N, R]: rows h*N.. = W_UK_h
  Matrix<Scalar> w_uv_;  // [H*V, R]: rows h*V.. = W_UV_h
  std::shared_ptr<const RotaryEmbedding<Scalar>> rope_;
  kernels::KernelPath attention_path_ = kernels::KernelPath::kAuto;
};

}  // namespace mla
