// A test-only second implementation of paged absorbed-MLA decode, built on the public one-call
// kernel only: every block's rows go through one single-threaded kernels::absorbed_attention()
// call (FP8 blocks dequantised into a float tile first) and the block results are merged by
// log-sum-exp. It shares no scheduling or tiling code with the decode engine's run over a view,
// so the tests use it as an independent check of the paged path, and serving_bench times it as
// the straightforward design the engine's one-pass walk over a block table is measured against.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "mla/core/threading.hpp"
#include "mla/kernels/decode_engine.hpp"

namespace mla {
namespace test_support {

using kernels::AbsorbedAttentionShape;
using kernels::DecodeWorkspace;

/// Scratch of paged_absorbed_attention_blockwise(): per thread a kernel workspace, the block's
/// result, a running merged result and a float tile for dequantised blocks.
class BlockwiseAbsorbedWorkspace {
 public:
  /// Room for M query rows, widths R and P, blocks of `block_rows` rows and `threads` threads.
  void reserve(Index rows, Index kv_lora, Index rope, Index block_rows, int threads) {
    if (Index(kernel_ws_.size()) < threads) kernel_ws_.resize(std::size_t(threads));
    for (int t = 0; t < threads; ++t) kernel_ws_[std::size_t(t)].reserve(rows, kv_lora, rope, 1);
    per_thread_ = layout(nullptr, rows, kv_lora, rope, block_rows);
    buffer_.grow(per_thread_ * threads);
  }
  DecodeWorkspace& kernel_ws(int thread) { return kernel_ws_[std::size_t(thread)]; }
  /// Thread t's regions: block result o_b [M, R], lse_b [M], running o_acc [M, R], lse_acc [M],
  /// float tile [block_rows, R + P].
  struct Regions {
    float *o_b, *lse_b, *o_acc, *lse_acc, *tile;
  };
  Regions regions(int thread, Index rows, Index kv_lora, Index rope, Index block_rows) {
    Regions r{};
    internal::FloatArena a(buffer_.data() + Index(thread) * per_thread_);
    r.o_b = a.take(rows * kv_lora);
    r.lse_b = a.take(rows);
    r.o_acc = a.take(rows * kv_lora);
    r.lse_acc = a.take(rows);
    r.tile = a.take(block_rows * (kv_lora + rope));
    return r;
  }

 private:
  static Index layout(float* base, Index rows, Index kv_lora, Index rope, Index block_rows) {
    internal::FloatArena a(base);
    a.take(rows * kv_lora);
    a.take(rows);
    a.take(rows * kv_lora);
    a.take(rows);
    a.take(block_rows * (kv_lora + rope));
    return a.used();
  }
  std::vector<DecodeWorkspace> kernel_ws_;
  internal::AlignedFloats buffer_;
  Index per_thread_ = 0;
};


/// acc <- LSE merge of (acc, lse_acc) and (o, lse) for `rows` rows of width d:
/// lse' = log(e^lse_acc + e^lse), acc' = e^(lse_acc - lse') acc + e^(lse - lse') o.
/// Rows with lse = -inf (saw nothing) leave acc alone; acc rows with lse_acc = -inf are copied.
inline void lse_merge_rows(float* acc, float* lse_acc, const float* o, const float* lse, Index rows,
                           Index d) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (Index m = 0; m < rows; ++m) {
    if (lse[m] == neg_inf) continue;
    float* a = acc + m * d;
    const float* b = o + m * d;
    if (lse_acc[m] == neg_inf) {
      std::copy(b, b + d, a);
      lse_acc[m] = lse[m];
      continue;
    }
    const float mx = std::max(lse_acc[m], lse[m]);
    const float wa = std::exp(lse_acc[m] - mx), wb = std::exp(lse[m] - mx), s = wa + wb;
    const float ca = wa / s, cb = wb / s;
    for (Index k = 0; k < d; ++k) a[k] = ca * a[k] + cb * b[k];
    lse_acc[m] = mx + std::log(s);
  }
}


/// The same result as paged_absorbed_attention(), computed the plain way on the public kernel:
/// every block's rows (dequantised into a float tile first for Fp8Latent) go through one
/// single-threaded absorbed_attention() call, with q_len = 1 and num_heads = tokens * H for the
/// tokens that see the whole block, and one causal call for the tokens that see part of it;
/// the block results are merged by log-sum-exp. With a pool the blocks are dealt to the threads
/// in contiguous ranges, each thread merging its own, and the thread results merged at the end.
/// A contiguous view is cut into `block_rows`-row pieces. Slower than paged_absorbed_attention()
/// (see the header comment); kept as an independent check and a benchmark baseline.
template <class T>
void paged_absorbed_attention_blockwise(Index q_len, Index num_heads, const float* q_lat,
                                        const float* q_pe, const LatentRowsView<T>& cache,
                                        float softmax_scale, float* o_lat, float* lse,
                                        BlockwiseAbsorbedWorkspace& ws, ThreadPool* pool = nullptr,
                                        Index block_rows = kDefaultBlockSize) {
  cache.validate("blockwise absorbed attention");
  MLA_CHECK_ARG(q_len >= 1 && num_heads >= 1 && cache.len >= q_len,
                "blockwise absorbed attention: need q_len >= 1 (", q_len, "), num_heads >= 1 (",
                num_heads, ") and cache length (", cache.len, ") >= q_len");
  MLA_CHECK_ARG(q_lat != nullptr && o_lat != nullptr && (q_pe != nullptr || cache.rope_dim == 0),
                "blockwise absorbed attention: q_lat, q_pe and o_lat must not be null");
  const Index L = cache.len, R = cache.kv_lora_rank, P = cache.rope_dim, H = num_heads;
  const Index bs = cache.paged() ? cache.block_size : std::max<Index>(1, block_rows);
  const Index M = q_len * H, blocks = (L + bs - 1) / bs;
  const int threads = num_threads(pool);
  ws.reserve(M, R, P, bs, threads);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  // Task k owns blocks [blocks k / threads, blocks (k + 1) / threads) and slot k of the scratch
  // (whichever thread runs it), so the result does not depend on the scheduling.
  parallel_for(pool, Index(threads), [&](Index task, int) {
    auto own = ws.regions(int(task), M, R, P, bs);
    DecodeWorkspace& kws = ws.kernel_ws(int(task));
    std::fill(own.lse_acc, own.lse_acc + M, neg_inf);
    const Index b_begin = blocks * task / threads, b_end = blocks * (task + 1) / threads;
    for (Index blk = b_begin; blk < b_end; ++blk) {
      const Index r0 = blk * bs, r1 = std::min(L, r0 + bs), n = r1 - r0;
      constexpr bool kQuantized = std::is_same_v<T, Fp8Latent> || std::is_same_v<T, Int8Latent>;
      if constexpr (kQuantized)
        LatentRowCodec<T>::decode(cache.row(r0), cache.row_stride, n, R, P, own.tile, R + P);
      // Token t sees rows r0 .. min(r1, L - q_len + t + 1) - 1 of this block.
      const Index t_full = std::max<Index>(0, r1 - (L - q_len + 1));  // first to see all n rows
      const Index t_some = std::max<Index>(0, r0 - (L - q_len));       // first to see any
      std::fill(own.lse_b, own.lse_b + M, neg_inf);
      auto call = [&](Index ql, Index heads, Index first_token, Index len) {
        AbsorbedAttentionShape sh;
        sh.q_len = ql;
        sh.num_heads = heads;
        sh.kv_lora = R;
        sh.rope = P;
        sh.cache_len = len;
        const Index m0 = first_token * H;
        if constexpr (kQuantized) {
          sh.row_stride = R + P;
          kernels::absorbed_attention(sh, q_lat + m0 * R, q_pe + m0 * P, static_cast<const float*>(own.tile),
                             softmax_scale, own.o_b + m0 * R, own.lse_b + m0, kws, nullptr);
        } else {
          sh.row_stride = cache.row_stride;
          kernels::absorbed_attention(sh, q_lat + m0 * R, q_pe + m0 * P, cache.row(r0), softmax_scale,
                             own.o_b + m0 * R, own.lse_b + m0, kws, nullptr);
        }
      };
      // Tokens [t_full, q_len) see every row: one call with their rows as heads of one token.
      if (t_full < q_len) call(1, (q_len - t_full) * H, t_full, n);
      // Tokens [t_some, t_full) see a growing prefix: the kernel's own causal rule over the
      // first L - q_len + t_full - r0 rows.
      const Index partial = std::min(t_full, q_len) - t_some;
      if (partial > 0) call(partial, H, t_some, L - q_len + std::min(t_full, q_len) - r0);
      lse_merge_rows(own.o_acc, own.lse_acc, own.o_b, own.lse_b, M, R);
    }
  });
  auto first = ws.regions(0, M, R, P, bs);
  for (int t = 1; t < threads; ++t) {
    auto other = ws.regions(t, M, R, P, bs);
    lse_merge_rows(first.o_acc, first.lse_acc, other.o_acc, other.lse_acc, M, R);
  }
  std::copy(first.o_acc, first.o_acc + M * R, o_lat);
  if (lse != nullptr) std::copy(first.lse_acc, first.lse_acc + M, lse);
}

}  // namespace test_support
}  // namespace mla
