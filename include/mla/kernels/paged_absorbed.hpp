// Absorbed-MLA decode through block tables, for one sequence or a batch of sequences of different
// lengths (FlashMLA's flash_mla_with_kvcache: block_table + cache_seqlens + tile scheduler).
//
// Every sequence b brings its queries (q_lat [q_len_b * H, R], q_pe [q_len_b * H, P]) and a
// LatentRowsView of its cache (paged or contiguous; float, bf16 or FP8 rows); the result is
// o_lat [q_len_b * H, R] (and lse), exactly what mla::kernels::absorbed_attention computes for
// that sequence alone over the same rows laid out contiguously:
//   s_j = scale (q_lat . c_j + q_pe . k_pe_j),  o_lat = sum_j softmax(s)_j c_j,
// with the causal rule of the new tokens (token t sees rows 0 .. len - q_len + t).
//
// Scheduling (FlashMLA's get_mla_metadata idea, on CPU threads): the work of the batch, the
// cache rows of every (sequence, 128-query-row pass), is laid end to end and cut into
// threads x parts_per_thread parts of equal row count (handed out dynamically). A part may cover many short sequences or
// a slice of a long one, so one long sequence never leaves threads idle. A (sequence, pass)
// covered by one part is finished in place; one cut into several pieces leaves a partial
// (unnormalised O, running max, running sum) per piece, merged by a log-sum-exp combine at the
// end, as split-KV flash decoding does. Results depend only on the batch, not on which thread
// ran which part.
//
// Reading through the block table: each piece walks its rows run by run, a run being the rows
// that follow each other in memory (the rest of a block, extended over blocks the table lists
// physically adjacent), and each run in tiles of kMlaTileRows rows read in place, so no block is
// copied. The tile operations (score GEMM, online softmax, P.C accumulation) and the query packing
// are the fast kernel's own (mla/kernels/absorbed_attention.hpp, namespace internal); this file
// only drives them over runs instead of one contiguous range, packing the query once per piece.
// bf16 tiles are widened and FP8 tiles dequantised into a per-thread float tile first.
//
// Why not one public absorbed_attention() call per block: each call packs the 128 x 576 query
// (a transposing copy), clears and normalises its own accumulator, and the partials then need a
// merge; at 64-row blocks that overhead is a large fraction of a block's work, while this driver
// pays it once per piece (serving_bench's blockwise_overhead_pct measures the difference at
// DeepSeek-V3 shapes). paged_absorbed_attention_blockwise() below is that
// straightforward design, built on the public kernel only; the tests use it as an independent
// check and serving_bench times it beside this one.
//
// Coupling: this file uses the kernel's internal pieces (MlaAvx2Ops / MlaPortableOps scores,
// softmax, accumulate and widen; mla_pack_query; combine_splits; kMlaTileRows, kMlaPanel,
// kMlaRowsPerPass, FloatArena, AlignedFloats). A change of their signatures or layouts in
// absorbed_attention.hpp / decode_common.hpp must be followed here; the tests compare both.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "mla/cache/paged_latent_cache.hpp"
#include "mla/core/check.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/absorbed_attention.hpp"
#include "mla/kernels/decode_common.hpp"

namespace mla {
namespace kernels {

/// One sequence of a batched absorbed decode (all pointers row-major and contiguous).
template <class T>
struct DecodeSequence {
  Index q_len = 1;               ///< new tokens: the last q_len of the cache.len rows
  const float* q_lat = nullptr;  ///< [q_len * num_heads, kv_lora]  (W_UK^T q_nope per head)
  const float* q_pe = nullptr;   ///< [q_len * num_heads, rope]     (rotated)
  LatentRowsView<T> cache;       ///< the sequence's rows, new tokens included
  float* o_lat = nullptr;        ///< [q_len * num_heads, kv_lora]  output
  float* lse = nullptr;          ///< [q_len * num_heads] natural-log LSE of the scores, or null
};

/// Scheduling knobs of batched_absorbed_attention().
struct BatchedDecodeOptions {
  /// Parts of equal work per thread when there is more than one thread (one thread always runs
  /// one part). Parts are handed out dynamically, so several per thread even out cores that are
  /// not equally available, as the contiguous kernel's kMlaSplitsPerThread splits do; each cut
  /// costs one more partial and merge. 1 gives exactly one part per thread.
  int parts_per_thread = int(internal::kMlaSplitsPerThread);
  /// Parts are not made smaller than this many cache rows (splitting then costs more than it
  /// saves: a partial is 128 x 512 floats to write and merge).
  Index min_rows_per_part = 128;

  /// Throws std::invalid_argument unless both fields are >= 1.
  void validate() const {
    MLA_CHECK_ARG(parts_per_thread >= 1 && min_rows_per_part >= 1,
                  "batched absorbed attention: parts_per_thread (", parts_per_thread,
                  ") and min_rows_per_part (", min_rows_per_part, ") must be >= 1");
  }
};

}  // namespace kernels

namespace internal {

/// A (sequence, pass) of a batched decode: query rows [m0, m0 + mc) of sequence `seq` over
/// its `len` cache rows, cut into `num_pieces` consecutive pieces.
struct DecodeUnit {
  Index seq = 0, m0 = 0, mc = 0, len = 0;
  Index first_piece = 0, num_pieces = 0;
  float* q_packed = nullptr;  // [ceil(mc / 16)][K][16] when num_pieces > 1 (shared by its pieces)
  float* part_o = nullptr;    // [num_pieces][mc][o_stride] when num_pieces > 1
  float* part_max = nullptr;  // [num_pieces][mc]
  float* part_sum = nullptr;  // [num_pieces][mc]
};
/// Rows [j0, j1) of a unit.
struct DecodePiece {
  Index unit = 0, j0 = 0, j1 = 0;
};

/// The plan and scratch layout of one batched call, rebuilt per call in reused vectors.
struct BatchedPlan {
  std::vector<DecodeUnit> units;
  std::vector<DecodePiece> pieces;
  std::vector<Index> part_begin;  // pieces of part p: [part_begin[p], part_begin[p + 1])
  std::vector<Index> split_units; // units with more than one piece
  float* scratch = nullptr;       // [threads][scratch_stride]
  Index scratch_stride = 0;
  Index o_stride = 0;
};

/// Per-thread scratch of a batched call: the packed query of the piece being run, S^T/P^T tile,
/// widened or dequantised tile, running max/sum/alpha, and an O accumulator for pieces that cover
/// a whole unit. A unit run as one piece packs its query right before it runs, into this
/// scratch: its 128 query rows (288 KiB at V3 sizes) then sit in this thread's L2, where a packed
/// copy of the whole batch (18 MiB at B = 64) would be read back from memory. Units cut into
/// several pieces (at most parts - 1 of them) are packed once, up front, and shared.
struct DecodeScratch {
  float *q_packed = nullptr, *st = nullptr, *wide = nullptr, *run_max = nullptr,
        *run_sum = nullptr, *alpha = nullptr, *o = nullptr;
  /// Lays the scratch out from `base` (null: only measures); returns the floats used.
  Index lay_out(float* base, Index k_dim, Index o_stride) {
    FloatArena a(base);
    q_packed = a.take(kMlaRowsPerPass * k_dim);
    st = a.take(kMlaTileRows * kMlaRowsPerPass);
    wide = a.take(kMlaTileRows * round_up(k_dim, 8));
    run_max = a.take(kMlaRowsPerPass);
    run_sum = a.take(kMlaRowsPerPass);
    alpha = a.take(kMlaRowsPerPass);
    o = a.take(kMlaRowsPerPass * o_stride);
    return a.used();
  }
};

/// Tiles of a run come from here: float rows are read in place, others are widened or
/// dequantised into `wide` (row stride round_up(K, 8)).
template <class Ops, class T>
const float* tile_rows(const typename LatentRowCodec<T>::Unit* src, Index src_stride, Index tn,
                       Index kv_lora, Index rope, float* wide, Index& stride) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bfloat16>) {
    return rows_as_float<Ops>(src, src_stride, tn, kv_lora + rope, wide, round_up(kv_lora + rope, 8),
                              stride);
  } else {
    stride = round_up(kv_lora + rope, 8);
    const Fp8LatentLayout layout{kv_lora, rope};
#if MLA_X86_SIMD
    if constexpr (std::is_base_of_v<MlaAvx2Ops, Ops>) {  // the AVX2, AVX-512 and AMX paths
      fp8_latent_dequantize_rows_avx2(src, src_stride, tn, layout, wide, stride);
      return wide;
    }
#endif
    fp8_latent_dequantize_rows_portable(src, src_stride, tn, layout, wide, stride);
    return wide;
  }
}

/// Packs a unit's query rows [m0, m0 + mc) as the kernel does: [q_lat | q_pe] * scale * log2 e
/// in 16-row panels.
template <class T>
void pack_unit_query(const kernels::DecodeSequence<T>& seq, const DecodeUnit& u,
                     float softmax_scale, float* packed) {
  const Index R = seq.cache.kv_lora_rank, P = seq.cache.rope_dim;
  mla_pack_query(seq.q_lat + u.m0 * R, seq.q_pe + u.m0 * P, u.mc, R, P, softmax_scale * kLog2e,
                 packed);
}

/// Runs one piece with its packed query `qp`: the online softmax over rows [j0, j1) of its unit,
/// into `o` [mc, o_stride] and sc.run_max / sc.run_sum (unnormalised, as the kernel's split
/// partials).
template <class Ops, class T>
void run_decode_piece(const kernels::DecodeSequence<T>& seq, Index num_heads, const DecodeUnit& u,
                      Index j0, Index j1, const float* qp, Index o_stride, float* o,
                      const DecodeScratch& sc) {
  const LatentRowsView<T>& view = seq.cache;
  const Index R = view.kv_lora_rank, K = R + view.rope_dim;
  const Index mc = u.mc, mc16 = round_up(mc, kMlaPanel);
  std::fill(o, o + mc * o_stride, 0.0f);
  std::fill(sc.run_max, sc.run_max + mc16, -std::numeric_limits<float>::infinity());
  std::fill(sc.run_sum, sc.run_sum + mc16, 0.0f);
  const Index first_masked = view.len - seq.q_len + 1;  // rows >= this are hidden from some tokens
  for (Index j = j0; j < j1;) {
    const Index n = view.run_length(j, j1);
    const auto* run = view.row(j);
    for (Index t0 = 0; t0 < n; t0 += kMlaTileRows) {
      const Index tn = std::min(kMlaTileRows, n - t0);
      Index stride = 0;
      const float* rows = tile_rows<Ops, T>(run + t0 * view.row_stride, view.row_stride, tn, R,
                                            view.rope_dim, sc.wide, stride);
      Ops::scores(qp, mc16 / kMlaPanel, K, rows, stride, tn, sc.st, mc16);
      const Index g0 = j + t0;  // the tile's first row, as a row index of the sequence
      mask_hidden_rows(sc.st, mc16, g0, tn, mc, u.m0, num_heads, first_masked);
      Ops::softmax(sc.st, mc16, tn, mc16, sc.run_max, sc.run_sum, sc.alpha);
      Ops::accumulate(sc.st, mc16, tn, mc, rows, stride, R, o, o_stride, sc.alpha);
    }
    j += n;
  }
}

template <class Ops, class T>
void batched_absorbed_run(Index num_heads, const kernels::DecodeSequence<T>* seqs, Index batch,
                          float softmax_scale, const BatchedPlan& plan, ThreadPool* pool) {
  (void)batch;
  const Index R = seqs[0].cache.kv_lora_rank, K = R + seqs[0].cache.rope_dim;
  // 1. The queries of the units cut into pieces, packed once for all their pieces.
  parallel_for(pool, Index(plan.split_units.size()), [&](Index i, int) {
    const DecodeUnit& u = plan.units[std::size_t(plan.split_units[std::size_t(i)])];
    pack_unit_query(seqs[u.seq], u, softmax_scale, u.q_packed);
  });
  // 2. The parts; each runs its pieces in order on one thread.
  const Index parts = Index(plan.part_begin.size()) - 1;
  parallel_for(pool, parts, [&](Index part, int thread) {
    DecodeScratch sc;
    sc.lay_out(plan.scratch + Index(thread) * plan.scratch_stride, K, plan.o_stride);
    for (Index p = plan.part_begin[std::size_t(part)]; p < plan.part_begin[std::size_t(part) + 1];
         ++p) {
      const DecodePiece& piece = plan.pieces[std::size_t(p)];
      const DecodeUnit& u = plan.units[std::size_t(piece.unit)];
      const kernels::DecodeSequence<T>& s = seqs[u.seq];
      if (u.num_pieces == 1) {
        pack_unit_query(s, u, softmax_scale, sc.q_packed);
        run_decode_piece<Ops>(s, num_heads, u, piece.j0, piece.j1, sc.q_packed, plan.o_stride,
                              sc.o, sc);
        for (Index m = 0; m < u.mc; ++m) {
          const float l = combine_splits(sc.o + m * plan.o_stride, 0, sc.run_max + m,
                                         sc.run_sum + m, 0, 1, R, s.o_lat + (u.m0 + m) * R);
          if (s.lse != nullptr) s.lse[u.m0 + m] = l;
        }
      } else {
        const Index k = p - u.first_piece;
        run_decode_piece<Ops>(s, num_heads, u, piece.j0, piece.j1, u.q_packed, plan.o_stride,
                              u.part_o + k * u.mc * plan.o_stride, sc);
        std::copy(sc.run_max, sc.run_max + u.mc, u.part_max + k * u.mc);
        std::copy(sc.run_sum, sc.run_sum + u.mc, u.part_sum + k * u.mc);
      }
    }
  });
  // 3. Log-sum-exp combine of the units that were cut into pieces.
  parallel_for(pool, Index(plan.split_units.size()), [&](Index i, int) {
    const DecodeUnit& u = plan.units[std::size_t(plan.split_units[std::size_t(i)])];
    const kernels::DecodeSequence<T>& s = seqs[u.seq];
    for (Index m = 0; m < u.mc; ++m) {
      const float l = combine_splits(u.part_o + m * plan.o_stride, u.mc * plan.o_stride,
                                     u.part_max + m, u.part_sum + m, u.mc, u.num_pieces, R,
                                     s.o_lat + (u.m0 + m) * R);
      if (s.lse != nullptr) s.lse[u.m0 + m] = l;
    }
  });
}

}  // namespace internal

namespace kernels {

/// Scratch of batched_absorbed_attention(): the plan (reused vectors) and one aligned float block
/// for per-thread scratch (packed query, tiles) and the partials of split units. It grows to the largest batch it has
/// served; calls that fit allocate nothing. Not shareable between concurrent calls.
class BatchedAbsorbedWorkspace {
 public:
  /// Bytes held by the float block.
  std::size_t bytes() const { return static_cast<std::size_t>(buffer_.size()) * sizeof(float); }
  /// Plan of the last call (internal; exposed for tests and benchmarks that inspect the split).
  const internal::BatchedPlan& plan() const { return plan_; }
  internal::BatchedPlan& mutable_plan() { return plan_; }
  internal::AlignedFloats& buffer() { return buffer_; }

 private:
  internal::BatchedPlan plan_;
  internal::AlignedFloats buffer_;
};

/// Absorbed MLA decode of `batch` sequences in one call (see the header comment): for every
/// sequence b and query row m (token m / num_heads) over the visible rows j of its cache,
///   s_j = softmax_scale (q_lat[m] . c_j + q_pe[m] . k_pe_j),
///   o_lat[m] = sum_j softmax(s)_j c_j,   lse[m] = log sum_j exp(s_j).
/// All sequences share num_heads and the cache widths (kv_lora_rank, rope_dim of the views) and
/// element type T (float, bfloat16, Fp8Latent); q_len and cache length differ per sequence.
/// Shapes per sequence: q_lat [q_len * num_heads, R], q_pe [q_len * num_heads, P],
/// o_lat [q_len * num_heads, R], lse [q_len * num_heads]. `pool` may be null (one thread).
/// Throws std::invalid_argument for inconsistent shapes, null pointers or a bad block table.
template <class T>
void batched_absorbed_attention(Index num_heads, const DecodeSequence<T>* seqs, Index batch,
                                float softmax_scale, BatchedAbsorbedWorkspace& ws,
                                ThreadPool* pool = nullptr, BatchedDecodeOptions options = {},
                                KernelPath path = KernelPath::kAuto) {
  MLA_CHECK_ARG(num_heads >= 1, "batched absorbed attention: num_heads must be >= 1, got ",
                num_heads);
  MLA_CHECK_ARG(batch >= 0 && (batch == 0 || seqs != nullptr),
                "batched absorbed attention: no sequences (batch ", batch, ")");
  options.validate();
  if (batch == 0) return;
  const Index R = seqs[0].cache.kv_lora_rank, P = seqs[0].cache.rope_dim, K = R + P;
  const char* what = "batched absorbed attention";
  Index total_work = 0;  // sum over sequences of row passes * cache rows: the plan's `work`
  for (Index b = 0; b < batch; ++b) {
    const DecodeSequence<T>& s = seqs[b];
    s.cache.validate(what, b);
    MLA_CHECK_ARG(s.cache.kv_lora_rank == R && s.cache.rope_dim == P, what, ", sequence ", b,
                  ": cache widths [", s.cache.kv_lora_rank, ", ", s.cache.rope_dim,
                  "] differ from sequence 0's [", R, ", ", P, "]");
    MLA_CHECK_ARG(s.q_len >= 1, what, ", sequence ", b, ": q_len must be >= 1, got ", s.q_len);
    MLA_CHECK_ARG(s.cache.len >= s.q_len, what, ", sequence ", b, ": cache length (", s.cache.len,
                  ") must be >= q_len (", s.q_len, "): the new tokens are the last cache rows");
    MLA_CHECK_ARG(s.q_lat != nullptr && s.o_lat != nullptr && (s.q_pe != nullptr || P == 0), what,
                  ", sequence ", b, ": q_lat, q_pe and o_lat must not be null");
    const Index m_rows = internal::checked_mul(
        "batched absorbed attention: query rows q_len * num_heads", {s.q_len, num_heads});
    const Index pass = internal::kMlaRowsPerPass, passes = m_rows / pass + (m_rows % pass != 0);
    total_work = internal::checked_add(
        "batched absorbed attention: work of the sequences so far + this one's",
        {total_work, internal::checked_mul(
                         "batched absorbed attention: row passes * cache rows",
                         {passes, s.cache.len})});
  }

  // ---- plan: units, parts, pieces -------------------------------------------------------
  internal::BatchedPlan& plan = ws.mutable_plan();
  const int threads = num_threads(pool);
  plan.units.clear();
  plan.pieces.clear();
  plan.part_begin.clear();
  plan.split_units.clear();
  Index work = 0;
  for (Index b = 0; b < batch; ++b) {
    const Index m_rows = seqs[b].q_len * num_heads;
    for (Index m0 = 0; m0 < m_rows; m0 += internal::kMlaRowsPerPass) {
      internal::DecodeUnit u;
      u.seq = b;
      u.m0 = m0;
      u.mc = std::min(internal::kMlaRowsPerPass, m_rows - m0);
      u.len = seqs[b].cache.len;
      plan.units.push_back(u);
      work += u.len;
    }
  }
  const Index want = threads == 1 ? 1 : Index(threads) * options.parts_per_thread;
  const Index parts = std::max<Index>(1, std::min<Index>(want, work / options.min_rows_per_part));
  internal::checked_mul("batched absorbed attention: part boundaries work * parts", {work, parts});
  // Cut [0, work) at the part boundaries work * p / parts and at the unit boundaries.
  {
    Index u = 0, unit_start = 0, pos = 0;
    for (Index p = 0; p < parts; ++p) {
      plan.part_begin.push_back(Index(plan.pieces.size()));
      const Index part_end = work * (p + 1) / parts;
      while (pos < part_end) {
        while (unit_start + plan.units[std::size_t(u)].len <= pos) {
          unit_start += plan.units[std::size_t(u)].len;
          ++u;
        }
        internal::DecodeUnit& unit = plan.units[std::size_t(u)];
        const Index end = std::min(part_end, unit_start + unit.len);
        if (unit.num_pieces == 0) unit.first_piece = Index(plan.pieces.size());
        ++unit.num_pieces;
        plan.pieces.push_back({u, pos - unit_start, end - unit_start});
        pos = end;
      }
    }
    plan.part_begin.push_back(Index(plan.pieces.size()));
  }

  // ---- scratch layout: per-thread scratch, partials of split units --------------------------
  plan.o_stride = internal::round_up(R, 16);
  plan.scratch_stride = internal::DecodeScratch().lay_out(nullptr, K, plan.o_stride);
  auto lay_out = [&](float* base) {
    internal::FloatArena arena(base);
    plan.scratch = arena.take(Index(threads) * plan.scratch_stride);
    for (internal::DecodeUnit& u : plan.units) {
      if (u.num_pieces <= 1) continue;
      u.q_packed = arena.take(internal::round_up(u.mc, internal::kMlaPanel) * K);
      u.part_o = arena.take(u.num_pieces * u.mc * plan.o_stride);
      u.part_max = arena.take(u.num_pieces * u.mc);
      u.part_sum = arena.take(u.num_pieces * u.mc);
    }
    return arena.used();
  };
  ws.buffer().grow(lay_out(nullptr));
  lay_out(ws.buffer().data());
  for (Index i = 0; i < Index(plan.units.size()); ++i)
    if (plan.units[std::size_t(i)].num_pieces > 1) plan.split_units.push_back(i);

  internal::with_mla_ops(path, [&](auto ops) {
    internal::batched_absorbed_run<decltype(ops)>(num_heads, seqs, batch, softmax_scale, plan, pool);
  });
}

/// Absorbed MLA decode of one sequence through its block table (a batch of one): q_len new
/// tokens, `num_heads` heads, the cache rows of `cache` (the new tokens' rows included).
/// Same math and shapes as absorbed_attention(); threads split the rows into equal parts, as
/// many per thread as the contiguous kernel uses (kMlaSplitsPerThread).
template <class T>
void paged_absorbed_attention(Index q_len, Index num_heads, const float* q_lat, const float* q_pe,
                              const LatentRowsView<T>& cache, float softmax_scale, float* o_lat,
                              float* lse, BatchedAbsorbedWorkspace& ws, ThreadPool* pool = nullptr,
                              KernelPath path = KernelPath::kAuto) {
  DecodeSequence<T> s;
  s.q_len = q_len;
  s.q_lat = q_lat;
  s.q_pe = q_pe;
  s.cache = cache;
  s.o_lat = o_lat;
  s.lse = lse;
  BatchedDecodeOptions opt;
  opt.min_rows_per_part = internal::kMlaMinRowsPerSplit;  // as absorbed_attention splits
  batched_absorbed_attention(num_heads, &s, 1, softmax_scale, ws, pool, opt, path);
}

// ---- the straightforward design: one public-kernel call per block ----------------------------

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
  AbsorbedAttentionWorkspace& kernel_ws(int thread) { return kernel_ws_[std::size_t(thread)]; }
  /// Thread t's regions: block result o_b [M, R], lse_b [M], running o_acc [M, R], lse_acc [M],
  /// float tile [block_rows, R + P].
  struct Regions {
    float *o_b, *lse_b, *o_acc, *lse_acc, *tile;
  };
  Regions regions(int thread, Index rows, Index kv_lora, Index rope, Index block_rows) {
    Regions r{};
    FloatArena a(buffer_.data() + Index(thread) * per_thread_);
    r.o_b = a.take(rows * kv_lora);
    r.lse_b = a.take(rows);
    r.o_acc = a.take(rows * kv_lora);
    r.lse_acc = a.take(rows);
    r.tile = a.take(block_rows * (kv_lora + rope));
    return r;
  }

 private:
  using FloatArena = internal::FloatArena;
  static Index layout(float* base, Index rows, Index kv_lora, Index rope, Index block_rows) {
    FloatArena a(base);
    a.take(rows * kv_lora);
    a.take(rows);
    a.take(rows * kv_lora);
    a.take(rows);
    a.take(block_rows * (kv_lora + rope));
    return a.used();
  }
  std::vector<AbsorbedAttentionWorkspace> kernel_ws_;
  internal::AlignedFloats buffer_;
  Index per_thread_ = 0;
};

}  // namespace kernels

namespace internal {

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

}  // namespace internal

namespace kernels {

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
    AbsorbedAttentionWorkspace& kws = ws.kernel_ws(int(task));
    std::fill(own.lse_acc, own.lse_acc + M, neg_inf);
    const Index b_begin = blocks * task / threads, b_end = blocks * (task + 1) / threads;
    for (Index blk = b_begin; blk < b_end; ++blk) {
      const Index r0 = blk * bs, r1 = std::min(L, r0 + bs), n = r1 - r0;
      if constexpr (std::is_same_v<T, Fp8Latent>)
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
        if constexpr (std::is_same_v<T, Fp8Latent>) {
          sh.row_stride = R + P;
          absorbed_attention(sh, q_lat + m0 * R, q_pe + m0 * P, static_cast<const float*>(own.tile),
                             softmax_scale, own.o_b + m0 * R, own.lse_b + m0, kws, nullptr);
        } else {
          sh.row_stride = cache.row_stride;
          absorbed_attention(sh, q_lat + m0 * R, q_pe + m0 * P, cache.row(r0), softmax_scale,
                             own.o_b + m0 * R, own.lse_b + m0, kws, nullptr);
        }
      };
      // Tokens [t_full, q_len) see every row: one call with their rows as heads of one token.
      if (t_full < q_len) call(1, (q_len - t_full) * H, t_full, n);
      // Tokens [t_some, t_full) see a growing prefix: the kernel's own causal rule over the
      // first L - q_len + t_full - r0 rows.
      const Index partial = std::min(t_full, q_len) - t_some;
      if (partial > 0) call(partial, H, t_some, L - q_len + std::min(t_full, q_len) - r0);
      internal::lse_merge_rows(own.o_acc, own.lse_acc, own.o_b, own.lse_b, M, R);
    }
  });
  auto first = ws.regions(0, M, R, P, bs);
  for (int t = 1; t < threads; ++t) {
    auto other = ws.regions(t, M, R, P, bs);
    internal::lse_merge_rows(first.o_acc, first.lse_acc, other.o_acc, other.lse_acc, M, R);
  }
  std::copy(first.o_acc, first.o_acc + M * R, o_lat);
  if (lse != nullptr) std::copy(first.lse_acc, first.lse_acc + M, lse);
}

}  // namespace kernels
}  // namespace mla
