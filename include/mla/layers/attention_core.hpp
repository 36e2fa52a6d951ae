// Attention cores shared by the layers: softmax(scale * Q K^T) V per head over a KvCache, and the
// MLA absorbed core over the latent rows of any latent cache (a LatentRowsView). Float layers go
// through the decode engine (mla/kernels/decode_engine.hpp) for every cache type. Layers of other
// scalar types (double: the float64 instantiation the float paths are tested against) take the
// plain formulation below, *_generic: the whole score row through Eigen GEMMs, an exact softmax,
// no online softmax, no split and no tiling, so there is no second flash-decode to keep in step.
//
// Causality: the T new tokens are the last T rows of the cache, so new token t sees cache rows
// [0, L - T + t], L = cache.size() after the append.
#pragma once

#include <algorithm>
#include <type_traits>
#include <utility>

#include "mla/cache/kv_cache.hpp"
#include "mla/cache/latent_cache.hpp"
#include "mla/cache/paged_latent_cache.hpp"
#include "mla/core/types.hpp"
#include "mla/layers/workspace.hpp"
#include "mla/ops/matmul.hpp"
#include "mla/ops/softmax.hpp"

namespace mla::internal {

template <class Scalar>
using StridedConstMap = Eigen::Map<const Matrix<Scalar>, 0, Eigen::OuterStride<>>;
template <class Scalar>
using StridedMap = Eigen::Map<Matrix<Scalar>, 0, Eigen::OuterStride<>>;

/// Views `rows` x `cols` cache elements as Scalar: a zero-copy map when the element type is
/// Scalar, else a converted copy in workspace memory.
template <class Scalar, class T>
ConstMatrixMap<Scalar> as_scalar(const T* data, Index rows, Index cols, Workspace& ws) {
  if constexpr (std::is_same_v<T, Scalar>) {
    return ConstMatrixMap<Scalar>(data, rows, cols);
  } else {
    Scalar* dst = ws.take<Scalar>(static_cast<std::size_t>(rows * cols));
    for (Index i = 0; i < rows * cols; ++i) dst[i] = static_cast<Scalar>(data[i]);
    return ConstMatrixMap<Scalar>(dst, rows, cols);
  }
}

/// out [T, Dv] = P [T, L] V [L, Dv] for the causally masked probabilities of the T new tokens
/// (the last T of L): row t uses only columns [0, L-T+t]. Rows go in tiles of 256: the columns
/// every row of a tile sees are one GEMM; within the tile, sub-tiles of 64 rows add the columns
/// all their rows see with a second GEMM, and the small triangle on the diagonal is done row by
/// row, so a masked-out (zero) probability never meets a later token's value: 0 * NaN would
/// otherwise leak a NaN input into earlier tokens' outputs (Eigen's triangular product multiplies
/// the zeros too). The bulk GEMM packs V once per 256 rows rather than once per 64: packing
/// (gemm_pack_b, gemm_pack_a) is a large share of this function in a long prefill, and a bigger
/// tile packs the same V rows 4x less often (docs/benchmarks.md).
template <class P, class V, class Out>
void causal_probs_times_values(const P& p, const V& v, Out& out, Workspace& ws) {
  constexpr Index kTile = 256, kSub = 64;
  const Index T = p.rows(), L0 = p.cols() - T;
  for (Index r0 = 0; r0 < T; r0 += kTile) {
    const Index rows = std::min(kTile, T - r0), bulk = L0 + r0;
    auto o = out.middleRows(r0, rows);
    if (bulk > 0)
      matmul(p.block(r0, 0, rows, bulk), v.topRows(bulk), kernels::GemmB::kPlain, o, false,
             ws.gemm_kernel, ws.thread_pool());
    else
      o.setZero();
    for (Index s0 = r0; s0 < r0 + rows; s0 += kSub) {
      const Index sub = std::min(kSub, r0 + rows - s0), full = L0 + s0;
      if (full > bulk) {
        auto os = out.middleRows(s0, sub);
        matmul(p.block(s0, bulk, sub, full - bulk), v.middleRows(bulk, full - bulk),
               kernels::GemmB::kPlain, os, true, ws.gemm_kernel, ws.thread_pool());
      }
      for (Index t = s0; t < s0 + sub; ++t) {
        const Index extra = t - s0 + 1;
        auto ot = out.middleRows(t, 1);
        matmul(p.block(t, full, 1, extra), v.middleRows(full, extra), kernels::GemmB::kPlain, ot,
               true, ws.gemm_kernel, nullptr);  // one short row: no threads
      }
    }
  }
}

/// S [T, L] = Q [T, D] K [L, D]^T where the causal mask lets it matter: row t (the last T of L
/// rows are the new tokens) sees columns [0, L - T + t]. Rows go in tiles of 256 and a tile
/// computes only the columns its last row sees, which halves the work of a prefill (T = L); the
/// columns left unwritten are exactly those softmax_rows_masked zeroes.
template <class Q, class K, class S>
void causal_scores(const Q& q, const K& k, S& s, Workspace& ws) {
  constexpr Index kTile = 256;
  const Index T = q.rows(), L = k.rows();
  for (Index r0 = 0; r0 < T; r0 += kTile) {
    const Index rows = std::min(kTile, T - r0);
    const Index cols = L - T + r0 + rows;
    matmul(q.middleRows(r0, rows), k.topRows(cols), kernels::GemmB::kTransposed,
           s.block(r0, 0, rows, cols), false, ws.gemm_kernel, ws.thread_pool());
  }
}

/// Multi-head attention of T new tokens over a KvCache (which already holds them).
///   q    [T, H, D]   (token rows `q_stride` apart), RoPE applied
///   out  [T, H, Dv]  (token rows `out_stride` apart)
/// Query head h reads KV head h / (H / kv_heads).
template <class Scalar, class T>
void gqa_attention_generic(const Scalar* q, Index q_stride, Index num_tokens, Index num_heads,
                           const KvCache<T>& cache, double scale, Scalar* out,
                           Index out_stride, Workspace& ws) {
  const Index L = cache.size();
  const Index D = cache.head_dim(), Dv = cache.v_dim();
  const Index group = num_heads / cache.kv_heads();
  const Index first_visible = L - num_tokens + 1;  // rows token 0 sees
  MatrixMap<Scalar> s = ws.matrix<Scalar>(num_tokens, L);
  for (Index g = 0; g < cache.kv_heads(); ++g) {
    const auto k = as_scalar<Scalar>(cache.k_head(g), L, D, ws);
    const auto v = as_scalar<Scalar>(cache.v_head(g), L, Dv, ws);
    for (Index h = g * group; h < (g + 1) * group; ++h) {
      StridedConstMap<Scalar> qh(q + h * D, num_tokens, D, Eigen::OuterStride<>(q_stride));
      StridedMap<Scalar> oh(out + h * Dv, num_tokens, Dv, Eigen::OuterStride<>(out_stride));
      causal_scores(qh, k, s, ws);
      for (Index t = 0; t < num_tokens; ++t) s.row(t).head(first_visible + t) *= static_cast<Scalar>(scale);
      softmax_rows_masked(s, [&](Index t) { return first_visible + t; });
      causal_probs_times_values(s, v, oh, ws);
    }
  }
}

/// The `rows.len` latent rows [c_kv | k_pe] of a view as a Scalar matrix [L, R + P]: a
/// zero-copy map of contiguous, densely stored Scalar rows, otherwise a converted (widened,
/// dequantised) copy in workspace memory, gathered run by run for a paged view.
template <class Scalar, class T>
ConstMatrixMap<Scalar> latent_rows_as(const LatentRowsView<T>& rows, Workspace& ws) {
  const Index L = rows.len, R = rows.kv_lora_rank, P = rows.rope_dim, W = R + P;
  if constexpr (std::is_same_v<T, Scalar>) {
    if (!rows.paged() && rows.row_stride == W) return ConstMatrixMap<Scalar>(rows.base, L, W);
  }
  Scalar* dst = ws.take<Scalar>({L, W});
  for (Index j = 0; j < L;) {
    const Index n = rows.run_length(j, L);
    LatentRowCodec<T>::decode(rows.row(j), rows.row_stride, n, R, P, dst + j * W, W);
    j += n;
  }
  return ConstMatrixMap<Scalar>(dst, L, W);
}

/// MLA absorbed attention over latent rows (any cache's view), for T new tokens (the last T rows).
///   q_lat [T, H, R] = W_UK^T q_nope per head,  q_pe [T, H, P] (rotated)
///   o_lat [T, H, R] = sum_j p_j c_kv_j
/// score_j = scale * (q_lat . c_kv_j + q_pe . k_pe_j), for all heads of a token at once.
template <class Scalar, class T>
void absorbed_attention_generic(const Scalar* q_lat, const Scalar* q_pe, Index num_tokens,
                                Index num_heads, const LatentRowsView<T>& rows, double scale,
                                Scalar* o_lat, Workspace& ws) {
  const Index L = rows.len, R = rows.kv_lora_rank, P = rows.rope_dim;
  const auto c = latent_rows_as<Scalar>(rows, ws);
  MatrixMap<Scalar> s = ws.matrix<Scalar>(num_heads, L);
  for (Index t = 0; t < num_tokens; ++t) {
    const Index visible = L - num_tokens + 1 + t;
    ConstMatrixMap<Scalar> ql(q_lat + t * num_heads * R, num_heads, R);
    ConstMatrixMap<Scalar> qp(q_pe + t * num_heads * P, num_heads, P);
    MatrixMap<Scalar> ot(o_lat + t * num_heads * R, num_heads, R);
    auto st = s.leftCols(visible);
    // Through the one strided GEMM per scalar type (ops/matmul.hpp) rather than Eigen product
    // expressions: each distinct expression would compile Eigen's product machinery again.
    eigen_matmul(ql, c.topRows(visible).leftCols(R), kernels::GemmB::kTransposed, st, false);
    eigen_matmul(qp, c.topRows(visible).rightCols(P), kernels::GemmB::kTransposed, st, true);
    st *= static_cast<Scalar>(scale);
    for (Index h = 0; h < num_heads; ++h) softmax_inplace(&st(h, 0), visible);
    eigen_matmul(st, c.topRows(visible).leftCols(R), kernels::GemmB::kPlain, ot, false);
  }
}

/// Whether the fast kernels serve this compute/cache type pair (the GQA kernel: float and bf16
/// caches; the MLA decode engine also the 8-bit latent rows).
template <class Scalar, class T>
inline constexpr bool kHasFastKernel =
    std::is_same_v<Scalar, float> &&
    (std::is_same_v<T, float> || std::is_same_v<T, bfloat16> || std::is_same_v<T, Fp8Latent> ||
     std::is_same_v<T, Int8Latent>);

/// New tokens per GQA fast-kernel call: K/V are streamed once per call for all its tokens
/// (speculative decoding), and the kernel's split buffers, which scale with q_len x heads, stay
/// bounded when a long prefill goes through it. The kernel leaves the rows a token does not see
/// out of its arithmetic, so a NaN/Inf in one new token's K/V never reaches an earlier token.
inline constexpr Index kKernelTokensPerCall = 8;

/// What the fast kernels would throw for `path`, thrown before a layer changes any state:
/// std::invalid_argument for a path this CPU lacks, std::runtime_error when kAmx is asked for
/// and the OS refuses the AMX tile state. Nothing for types the fast kernels do not serve (their
/// generic versions ignore the path).
template <class Scalar, class T>
void check_attention_path(kernels::KernelPath path) {
  if constexpr (kHasFastKernel<Scalar, T>) {
    (void)kernels::resolve_path(path);  // kAmx: also asks the OS for the tile state
  }
}

/// A layer's allocating forward(): a new result [T, hidden_size] and Workspace, then the layer's
/// forward(x, positions, cache, out, ws, extra...) (`extra`: the MLA path, if any).
template <class Scalar, class Layer, class X, class Cache, class... Extra>
Matrix<Scalar> forward_allocating(const Layer& layer, const X& x, const PositionsRef& positions,
                                  Cache& cache, Extra... extra) {
  Matrix<Scalar> out(x.rows(), layer.config().hidden_size);
  Workspace ws;
  layer.forward(x, positions, cache, out, ws, extra...);
  return out;
}

/// Runs `undo` when it goes out of scope during stack unwinding, unless dismiss() was called:
/// a layer call validates every argument before its first write, and this restores the caches
/// when something that no validation can rule out (std::bad_alloc while scratch grows, a thread
/// pool failing) throws after the append, so a failed call still leaves them as they were.
template <class Undo>
class UndoOnThrow {
 public:
  explicit UndoOnThrow(Undo undo) : undo_(std::move(undo)) {}
  UndoOnThrow(const UndoOnThrow&) = delete;
  UndoOnThrow& operator=(const UndoOnThrow&) = delete;
  ~UndoOnThrow() {
    if (armed_) undo_();
  }
  void dismiss() { armed_ = false; }

 private:
  Undo undo_;
  bool armed_ = true;
};

/// An UndoOnThrow that truncates `cache` back to its present size: made just before an append.
template <class Cache>
auto truncate_on_throw(Cache& cache) {
  return UndoOnThrow([&cache, size = cache.size()] { cache.truncate(size); });
}

/// Absorbed attention over latent rows, the decode engine for float layers (see
/// absorbed_attention_generic for shapes). One engine call for all T tokens: each token reads
/// exactly the rows it sees, and a causal row's value reaches only the tokens that see it (a
/// NaN in a later token stays there).
template <class Scalar, class T>
void absorbed_attention(const Scalar* q_lat, const Scalar* q_pe, Index num_tokens,
                        Index num_heads, const LatentRowsView<T>& rows, double scale,
                        Scalar* o_lat, Workspace& ws,
                        kernels::KernelPath path = kernels::KernelPath::kAuto) {
  if constexpr (kHasFastKernel<Scalar, T>) {
    kernels::DecodeSequence<T> s;
    s.q_len = num_tokens;
    s.q_lat = q_lat;
    s.q_pe = q_pe;
    s.cache = rows;
    s.o_lat = o_lat;
    kernels::batched_absorbed_attention(num_heads, &s, 1, static_cast<float>(scale),
                                        ws.absorbed_kernel, ws.thread_pool(), {}, path);
  } else {
    absorbed_attention_generic(q_lat, q_pe, num_tokens, num_heads, rows, scale, o_lat, ws);
  }
}

/// GQA attention, fast kernel when available (see gqa_attention_generic for shapes; q and out
/// must be contiguous [T, H, D] / [T, H, Dv] here).
template <class Scalar, class T>
void gqa_attention(const Scalar* q, Index num_tokens, Index num_heads, const KvCache<T>& cache,
                   double scale, Scalar* out, Workspace& ws,
                   kernels::KernelPath path = kernels::KernelPath::kAuto) {
  const Index D = cache.head_dim(), Dv = cache.v_dim();
  if constexpr (kHasFastKernel<Scalar, T>) {
    const Index first_new = cache.size() - num_tokens;
    for (Index t0 = 0; t0 < num_tokens; t0 += kKernelTokensPerCall) {
      const Index n = std::min(kKernelTokensPerCall, num_tokens - t0);
      kernels::GqaAttentionShape shape;
      shape.q_len = n;
      shape.num_heads = num_heads;
      shape.num_kv_heads = cache.kv_heads();
      shape.head_dim = D;
      shape.v_dim = Dv;
      shape.cache_len = first_new + t0 + n;
      shape.k_head_stride = cache.k_head_stride();
      shape.v_head_stride = cache.v_head_stride();
      kernels::gqa_attention(shape, q + t0 * num_heads * D, cache.k_head(0), cache.v_head(0),
                             static_cast<float>(scale), out + t0 * num_heads * Dv, nullptr,
                             ws.gqa_kernel, ws.thread_pool(), path);
    }
  } else {
    gqa_attention_generic(q, num_heads * D, num_tokens, num_heads, cache, scale, out,
                          num_heads * Dv, ws);
  }
}

}  // namespace mla::internal
