// Batched decode through an MLA layer: B sequences, each with its own latent cache (LatentCache,
// Fp8LatentCache, Int8LatentCache, or a PagedLatentCache in a shared pool) and its own number of
// new tokens, in one call. An engine that runs its own projections calls the decode engine directly
// (mla::kernels::DecodePlan / run_decode on per-sequence q_lat / q_pe and cache views); this
// header is the layer-level helper on top of it, built only on the layer's public API:
//
//   q, c   = layer.project_query(x), layer.project_latent(x)   all sequences' tokens in one GEMM
//   cache_b.append(c rows of sequence b)
//   q_lat  = q_nope_h W_UK_h, q_pe                              per head h (layer.w_uk())
//   o_lat  = absorbed attention over every cache                 (one decode-engine step)
//   heads  = o_lat_h W_UV_h^T                                   per head h (layer.w_uv())
//   out    = o_proj(heads)
//
// which is MultiHeadLatentAttention::forward(x_b, positions_b, cache_b, out_b, ws,
// MlaPath::kAbsorbed) for every sequence b, with the projections batched and the attention
// scheduled across the batch. Works for prefill as well (q_len = prompt length, causal), and for
// double layers (whose attention runs the generic loops sequence by sequence).
#pragma once

#include <initializer_list>
#include <iterator>
#include <new>
#include <type_traits>
#include <vector>

#include "mla/cache/latent_cache.hpp"
#include "mla/cache/paged_latent_cache.hpp"
#include "mla/cache/quantized_latent_cache.hpp"
#include "mla/core/check.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/layers/attention_core.hpp"
#include "mla/layers/mla.hpp"
#include "mla/layers/workspace.hpp"
#include "mla/ops/matmul.hpp"

namespace mla {

/// One MLA layer step for a batch of sequences (see the header comment).
///   x [sum_b q_lens[b], hidden]: sequence b's new tokens are rows offset_b .. offset_b + q_lens[b]
///     - 1, offset_b = q_lens[0] + ... + q_lens[b - 1]; `positions` [same rows] their RoPE positions
///   caches[b]: sequence b's cache (distinct objects; each needs room for q_lens[b] more tokens),
///     `batch` = q_lens.size() pointers
///   out [sum_b q_lens[b], hidden]
/// `ws` is the context of the call: scratch, the thread pool (ws.set_thread_pool) and the decode
/// plan, which the next call reuses when the shapes are the same (the later layers of a step).
/// Appends every sequence's latent rows to its cache, then attends causally over all of them:
/// sequence b's rows of `out` equal layer.forward(x_b, positions_b, *caches[b], out_b, ws,
/// MlaPath::kAbsorbed) up to float rounding; a NaN/Inf in a token reaches that token's outputs
/// and later ones, never earlier ones. Every argument is checked before any cache changes, and
/// a call that fails (also later, e.g. std::bad_alloc) leaves the caches as they were.
namespace internal {
template <class T>
struct NonDeducedHelper {
  using type = T;
};
/// T in a parameter that takes no part in template argument deduction (C++20's type_identity_t).
template <class T>
using NonDeduced = typename NonDeducedHelper<T>::type;

/// mla_decode_batch over `q_lens.size()` cache pointers from `caches`.
template <class Scalar, class Cache>
void mla_decode_batch(const MultiHeadLatentAttention<Scalar>& layer,
                      const Eigen::Ref<const Matrix<Scalar>>& x, const PositionsRef& positions,
                      const std::vector<Index>& q_lens, Cache* const* caches,
                      Eigen::Ref<Matrix<Scalar>> out, Workspace& ws) {
  static_assert(kIsLatentCache<Cache>, "mla_decode_batch: caches must be latent caches");
  using T = typename Cache::Element;
  const MlaConfig& cfg = layer.config();
  const Index H = cfg.num_attention_heads, N = cfg.qk_nope_head_dim, P = cfg.qk_rope_head_dim,
              R = cfg.kv_lora_rank, V = cfg.v_head_dim, qk = N + P;
  const Index batch = static_cast<Index>(q_lens.size());
  MLA_CHECK_ARG(batch == 0 || caches != nullptr, "mla_decode_batch: no caches for ", batch,
                " sequences");
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
    const Cache* c = caches[b];
    MLA_CHECK_ARG(c != nullptr, "mla_decode_batch: caches[", b, "] is null");
    MLA_CHECK_ARG(c->kv_lora_rank() == R && c->rope_dim() == P, "mla_decode_batch: caches[", b,
                  "] [kv_lora_rank ", c->kv_lora_rank(), ", rope ", c->rope_dim(),
                  "] does not match the layer [", R, ", ", P, "]");
    c->check_room(q_lens[std::size_t(b)]);
    // The engine's view of the rows after the append (e.g. block ids inside the pool).
    auto view = latent_rows(*c);
    view.len += q_lens[std::size_t(b)];
    view.validate("mla_decode_batch", b);
    for (Index a = 0; a < b; ++a)
      MLA_CHECK_ARG(caches[a] != c, "mla_decode_batch: caches[", a, "] and caches[", b,
                    "] are the same cache");
  }
  ws.decode_options.validate();
  internal::check_attention_path<Scalar, T>(kernels::KernelPath::kAuto);
  if (batch == 0) return;

  ws.reset();
  MatrixMap<Scalar> q = ws.matrix<Scalar>(n, H * qk);
  MatrixMap<Scalar> c = ws.matrix<Scalar>(n, R + P);
  layer.project_query(x, positions, q, ws);
  layer.project_latent(x, positions, c, ws);

  // Query rows in token-major, head-minor order: row t * H + h.
  using Strided = internal::StridedMap<Scalar>;
  using StridedConst = internal::StridedConstMap<Scalar>;
  Scalar* q_lat = ws.take<Scalar>({n, H, R});
  Scalar* q_pe = ws.take<Scalar>({n, H, P});
  Scalar* o_lat = ws.take<Scalar>({n, H, R});
  for (Index h = 0; h < H; ++h) {
    Strided ql(q_lat + h * R, n, R, Eigen::OuterStride<>(H * R));
    internal::matmul(StridedConst(q.data() + h * qk, n, N, Eigen::OuterStride<>(H * qk)),
                     layer.w_uk().middleRows(h * N, N), kernels::GemmB::kPlain, ql, false,
                     ws.gemm_kernel, ws.thread_pool());  // [T, N] x [N, R]
    Strided(q_pe + h * P, n, P, Eigen::OuterStride<>(H * P)) =
        StridedConst(q.data() + h * qk + N, n, P, Eigen::OuterStride<>(H * qk));
  }

  Index appended = 0;  // caches [0, appended) hold this call's rows
  internal::UndoOnThrow undo([&] {
    for (Index b = 0; b < appended; ++b) caches[b]->truncate(caches[b]->size() - q_lens[std::size_t(b)]);
  });
  Index offset = 0;
  for (Index b = 0; b < batch; ++b) {
    caches[b]->append(c.data() + offset * (R + P), R + P, q_lens[std::size_t(b)]);
    ++appended;
    offset += q_lens[std::size_t(b)];
  }
  if constexpr (internal::kHasFastKernel<Scalar, T>) {
    // One engine sequence per cache; the engine keeps each new token to the rows it sees.
    static_assert(std::is_trivially_destructible_v<kernels::DecodeSequence<T>>,
                  "DecodeSequence lives in workspace memory and is never destroyed");
    auto* seqs = ws.take<kernels::DecodeSequence<T>>(static_cast<std::size_t>(batch));
    offset = 0;
    for (Index b = 0; b < batch; ++b) {
      kernels::DecodeSequence<T>* s = new (seqs + b) kernels::DecodeSequence<T>();
      s->q_len = q_lens[std::size_t(b)];
      s->q_lat = q_lat + offset * H * R;
      s->q_pe = q_pe + offset * H * P;
      s->cache = latent_rows(*caches[b]);
      s->o_lat = o_lat + offset * H * R;
      offset += s->q_len;
    }
    kernels::batched_absorbed_attention(H, seqs, batch, static_cast<float>(cfg.softmax_scale()),
                                        ws.absorbed_kernel, ws.thread_pool(), ws.decode_options);
  } else {
    offset = 0;
    for (Index b = 0; b < batch; ++b) {
      const Index t = q_lens[std::size_t(b)];
      internal::absorbed_attention_generic(q_lat + offset * H * R, q_pe + offset * H * P, t, H,
                                           latent_rows(*caches[b]), cfg.softmax_scale(),
                                           o_lat + offset * H * R, ws);
      offset += t;
    }
  }

  MatrixMap<Scalar> heads = ws.matrix<Scalar>(n, H * V);
  for (Index h = 0; h < H; ++h)
    internal::matmul(StridedConst(o_lat + h * R, n, R, Eigen::OuterStride<>(H * R)),
                     layer.w_uv().middleRows(h * V, V), kernels::GemmB::kTransposed,
                     heads.middleCols(h * V, V), false, ws.gemm_kernel, ws.thread_pool());
  layer.weights().o_proj.apply(heads, out, ws.gemm_kernel, ws.thread_pool());
  undo.dismiss();
}

}  // namespace internal

/// mla_decode_batch over any contiguous range of cache pointers: a std::vector<Cache*>, a
/// std::array<Cache*, B>, or a braced list ({&cache_a, &cache_b}, the overload below).
template <class Scalar, class Range>
auto mla_decode_batch(const MultiHeadLatentAttention<Scalar>& layer,
                      const internal::NonDeduced<Eigen::Ref<const Matrix<Scalar>>>& x,
                      const PositionsRef& positions, const std::vector<Index>& q_lens,
                      const Range& caches, internal::NonDeduced<Eigen::Ref<Matrix<Scalar>>> out,
                      Workspace& ws)
    -> std::enable_if_t<kIsLatentCache<std::remove_pointer_t<
                            std::remove_cv_t<std::remove_reference_t<decltype(*std::data(caches))>>>>> {
  MLA_CHECK_ARG(std::size(caches) == q_lens.size(), "mla_decode_batch: ", q_lens.size(),
                " q_lens but ", std::size(caches), " caches");
  internal::mla_decode_batch(layer, x, positions, q_lens, std::data(caches), out, ws);
}
template <class Scalar, class Cache>
void mla_decode_batch(const MultiHeadLatentAttention<Scalar>& layer,
                      const internal::NonDeduced<Eigen::Ref<const Matrix<Scalar>>>& x,
                      const PositionsRef& positions, const std::vector<Index>& q_lens,
                      std::initializer_list<Cache*> caches,
                      internal::NonDeduced<Eigen::Ref<Matrix<Scalar>>> out, Workspace& ws) {
  MLA_CHECK_ARG(caches.size() == q_lens.size(), "mla_decode_batch: ", q_lens.size(),
                " q_lens but ", caches.size(), " caches");
  internal::mla_decode_batch(layer, x, positions, q_lens, caches.begin(), out, ws);
}

}  // namespace mla
