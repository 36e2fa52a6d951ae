// Batched decode through an MLA layer: B sequences, each with its own cache (contiguous
// LatentCache / Fp8LatentCache, or a PagedLatentCache in a shared pool) and its own number of new
// tokens, in one call. An engine that runs its own projections calls the attention core directly
// (mla::kernels::batched_absorbed_attention on per-sequence q_lat / q_pe and cache views); this
// header is the layer-level helper on top of it, built only on the layer's public API:
//
//   q, c   = layer.project_query(x), layer.project_latent(x)   all sequences' tokens in one GEMM
//   cache_b.append(c rows of sequence b)
//   q_lat  = q_nope_h W_UK_h, q_pe                              per head h (layer.w_uk())
//   o_lat  = batched absorbed attention over every cache       (balanced split across threads)
//   heads  = o_lat_h W_UV_h^T                                   per head h (layer.w_uv())
//   out    = o_proj(heads)
//
// which is MultiHeadLatentAttention::forward(x_b, positions_b, cache_b, out_b, ws,
// MlaPath::kAbsorbed) for every sequence b, with the projections batched and the attention
// scheduled across the batch. Works for prefill as well (q_len = prompt length, causal).
#pragma once

#include <new>
#include <type_traits>
#include <vector>

#include "mla/cache/latent_cache.hpp"
#include "mla/cache/paged_latent_cache.hpp"
#include "mla/cache/quantized_latent_cache.hpp"
#include "mla/core/check.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/layers/workspace.hpp"
#include "mla/kernels/paged_absorbed.hpp"
#include "mla/layers/attention_core.hpp"
#include "mla/layers/mla.hpp"

namespace mla {

/// Reusable resources of mla_decode_batch(): scratch (grows to the largest batch seen, then
/// calls allocate nothing), the thread pool the attention runs on (null: the calling thread) and
/// the scheduling options. One context per concurrent caller.
struct BatchedDecodeContext {
  Workspace ws;
  kernels::BatchedAbsorbedWorkspace attention_ws;
  ThreadPool* pool = nullptr;
  kernels::BatchedDecodeOptions options{};
};

namespace internal {
template <class Cache>
struct CacheElement {
  using type = typename Cache::Element;
};
}  // namespace internal

/// One MLA layer step for a batch of sequences (see the header comment).
///   x [sum_b q_lens[b], hidden]: sequence b's new tokens are rows offset_b .. offset_b + q_lens[b]
///     - 1, offset_b = q_lens[0] + ... + q_lens[b - 1]; `positions` [same rows] their RoPE positions
///   caches[b]: sequence b's cache (distinct objects; each needs room for q_lens[b] more tokens)
///   out [sum_b q_lens[b], hidden]
/// Appends every sequence's latent rows to its cache, then attends causally over all of them:
/// sequence b's rows of `out` equal layer.forward(x_b, positions_b, *caches[b], out_b, ws,
/// MlaPath::kAbsorbed) up to float rounding; a NaN/Inf in a token reaches that token's outputs
/// and later ones, never earlier ones. Every argument is checked before any cache changes, and
/// a call that fails (also later, e.g. std::bad_alloc) leaves the caches as they were. Cache types: LatentCache<float | bfloat16>,
/// Fp8LatentCache, PagedLatentCache<float | bfloat16 | Fp8Latent>.
template <class Cache>
void mla_decode_batch(const MultiHeadLatentAttention<float>& layer,
                      const Eigen::Ref<const Matrix<float>>& x, const PositionsRef& positions,
                      const std::vector<Index>& q_lens, const std::vector<Cache*>& caches,
                      Eigen::Ref<Matrix<float>> out, BatchedDecodeContext& ctx) {
  using T = typename internal::CacheElement<Cache>::type;
  const MlaConfig& cfg = layer.config();
  const Index H = cfg.num_attention_heads, N = cfg.qk_nope_head_dim, P = cfg.qk_rope_head_dim,
              R = cfg.kv_lora_rank, V = cfg.v_head_dim, qk = N + P;
  const Index batch = static_cast<Index>(q_lens.size());
  MLA_CHECK_ARG(caches.size() == q_lens.size(), "mla_decode_batch: ", q_lens.size(),
                " q_lens but ", caches.size(), " caches");
  Index n = 0;
  for (Index b = 0; b < batch; ++b) {
    MLA_CHECK_ARG(q_lens[std::size_t(b)] >= 1, "mla_decode_batch: q_lens[", b,
                  "] must be >= 1, got ", q_lens[std::size_t(b)]);
    n = internal::checked_add("mla_decode_batch: sum of q_lens (so far + q_lens[b])",
                              {n, q_lens[std::size_t(b)]});
  }
  MLA_CHECK_ARG(x.cols() == cfg.hidden_size && x.rows() == n, "mla_decode_batch: x must be [",
                n, " (sum of q_lens), ", cfg.hidden_size, "], got [", x.rows(), ", ", x.cols(),
                "]");
  MLA_CHECK_ARG(positions.size() == n, "mla_decode_batch: positions: expected ", n,
                " entries (one per token), got ", positions.size());
  MLA_CHECK_ARG(out.rows() == n && out.cols() == cfg.hidden_size, "mla_decode_batch: out must be [",
                n, ", ", cfg.hidden_size, "], got [", out.rows(), ", ", out.cols(), "]");
  layer.rope().check_positions(positions);
  for (Index b = 0; b < batch; ++b) {
    const Cache* c = caches[std::size_t(b)];
    MLA_CHECK_ARG(c != nullptr, "mla_decode_batch: caches[", b, "] is null");
    MLA_CHECK_ARG(c->kv_lora_rank() == R && c->rope_dim() == P, "mla_decode_batch: caches[", b,
                  "] [kv_lora_rank ", c->kv_lora_rank(), ", rope ", c->rope_dim(),
                  "] does not match the layer [", R, ", ", P, "]");
    c->check_room(q_lens[std::size_t(b)]);
    // The kernel's view of the rows after the append (e.g. block ids inside the pool).
    auto view = latent_rows(*c);
    view.len += q_lens[std::size_t(b)];
    view.validate("mla_decode_batch", b);
    for (Index a = 0; a < b; ++a)
      MLA_CHECK_ARG(caches[std::size_t(a)] != c, "mla_decode_batch: caches[", a, "] and caches[",
                    b, "] are the same cache");
  }
  ctx.options.validate();
  if (batch == 0) return;

  Workspace& ws = ctx.ws;
  ws.reset();
  MatrixMap<float> q = ws.matrix<float>(n, H * qk);
  MatrixMap<float> c = ws.matrix<float>(n, R + P);
  layer.project_query(x, positions, q, ws);
  layer.project_latent(x, positions, c, ws);

  // Query rows in token-major, head-minor order: row t * H + h.
  using Strided = internal::StridedMap<float>;
  using StridedConst = internal::StridedConstMap<float>;
  float* q_lat = ws.take<float>({n, H, R});
  float* q_pe = ws.take<float>({n, H, P});
  float* o_lat = ws.take<float>({n, H, R});
  for (Index h = 0; h < H; ++h) {
    Strided(q_lat + h * R, n, R, Eigen::OuterStride<>(H * R)).noalias() =
        StridedConst(q.data() + h * qk, n, N, Eigen::OuterStride<>(H * qk)) *
        layer.w_uk().middleRows(h * N, N);
    Strided(q_pe + h * P, n, P, Eigen::OuterStride<>(H * P)) =
        StridedConst(q.data() + h * qk + N, n, P, Eigen::OuterStride<>(H * qk));
  }

  // One kernel sequence per new token, over exactly the cache rows it sees (as the layer's
  // absorbed path calls the kernel per token): a NaN in a later token's row never meets an
  // earlier token's zero weight. A token is a whole pass of H query rows either way.
  auto* seqs = ws.take<kernels::DecodeSequence<T>>(static_cast<std::size_t>(n));
  Index appended = 0;  // caches [0, appended) hold this call's rows
  internal::UndoOnThrow undo([&] {
    for (Index b = 0; b < appended; ++b)
      caches[std::size_t(b)]->truncate(caches[std::size_t(b)]->size() - q_lens[std::size_t(b)]);
  });
  Index offset = 0;
  for (Index b = 0; b < batch; ++b) {
    const Index t = q_lens[std::size_t(b)];
    Cache& cache = *caches[std::size_t(b)];
    cache.append(c.data() + offset * (R + P), R + P, t);
    ++appended;
    for (Index i = 0; i < t; ++i) {
      const Index row = offset + i;
      kernels::DecodeSequence<T>* s = new (seqs + row) kernels::DecodeSequence<T>();
      s->q_len = 1;
      s->q_lat = q_lat + row * H * R;
      s->q_pe = q_pe + row * H * P;
      s->cache = latent_rows(cache);
      s->cache.len -= t - 1 - i;  // token i sees the rows before the call's and tokens 0..i
      s->o_lat = o_lat + row * H * R;
    }
    offset += t;
  }
  static_assert(std::is_trivially_destructible_v<kernels::DecodeSequence<T>>,
                "DecodeSequence lives in workspace memory and is never destroyed");
  kernels::batched_absorbed_attention(H, seqs, n, static_cast<float>(cfg.softmax_scale()),
                                      ctx.attention_ws, ctx.pool, ctx.options);

  MatrixMap<float> heads = ws.matrix<float>(n, H * V);
  for (Index h = 0; h < H; ++h)
    heads.middleCols(h * V, V).noalias() =
        StridedConst(o_lat + h * R, n, R, Eigen::OuterStride<>(H * R)) *
        layer.w_uv().middleRows(h * V, V).transpose();
  layer.weights().o_proj.apply(heads, out, ws.gemm_kernel, ws.thread_pool());
  undo.dismiss();
}

}  // namespace mla
