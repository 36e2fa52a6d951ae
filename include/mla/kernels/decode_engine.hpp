// The absorbed-MLA decode engine: one driver for every way the library runs MLA attention over
// latent rows (FlashMLA's get_mla_metadata + flash_mla_with_kvcache, FlashInfer's plan / run, on
// CPU threads). MLA absorbed is one KV head whose K is the latent row [c_kv | k_pe] and whose V is
// its first kv_lora values, so decode attention is "query rows of that head x a view of cached
// rows": a contiguous cache (one block), a paged one (a block table), float, bf16 or FP8 rows.
//
// Every sequence b brings its queries (q_lat [q_len_b * H, R], q_pe [q_len_b * H, P]) and a
// LatentRowsView of its rows, the q_len_b new tokens' rows last; the result is
//   s_j = scale (q_lat . c_j + q_pe . k_pe_j),  o_lat = sum_j softmax(s)_j c_j  (and lse),
// where token t of the new ones sees rows 0 .. len - q_len + t.
//
// Two steps:
// - DecodePlan::plan (once per step, from the sequence lengths, new-token counts and thread
//   count; the only allocation): the query rows of every sequence are cut into units of at most
//   kMlaRowsPerPass rows; a unit reads the rows its last token sees. The units' rows are laid end
//   to end and cut into threads x parts_per_thread parts of equal row count, handed out
//   dynamically: a part may cover many short sequences or a slice of a long one, so one long
//   sequence never leaves threads idle and a short context is still split when threads would
//   otherwise wait. A unit covered by one part is finished in place; a unit cut into several
//   pieces leaves one partial (unnormalised O, running max, running sum) per piece, merged by a
//   log-sum-exp combine (split-KV flash decoding).
// - run_decode (once per layer, allocation-free once the workspace has served the plan): each
//   piece walks its rows run by run (rows that follow each other in memory: the rest of a block,
//   extended over blocks the table lists physically adjacent; a contiguous view is one run) and
//   each run in tiles of kMlaTileRows rows, read in place (float), widened (bf16) or dequantised
//   (FP8) into a per-thread float tile, through the tile operations of mla_tiles.hpp.
// Results depend only on the plan and the inputs, not on which thread ran which part.
//
// Causal rows: of a unit's tokens, a row in the causal triangle (one of the last q_len - 1 rows)
// is seen by a suffix of the unit's query rows only. Its scores are masked for the others and its
// value row is added only to the rows that see it, so a NaN or Inf in a new token's row reaches
// that token's outputs and later ones, never earlier ones (0 x NaN never happens). The AMX form
// (KernelPath::kAmx, bf16 contiguous rows) multiplies masked zeros on its tiles and keeps this
// property only for q_len = 1.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "mla/core/check.hpp"
#include "mla/core/threading.hpp"
#include "mla/core/types.hpp"
#include "mla/kernels/decode_common.hpp"
#include "mla/kernels/gqa_tiles.hpp"
#include "mla/kernels/int8_tiles.hpp"
#include "mla/kernels/latent_rows.hpp"
#include "mla/kernels/mla_tiles.hpp"

namespace mla {
namespace kernels {

/// One sequence of a decode step (all pointers row-major and contiguous).
template <class T>
struct DecodeSequence {
  Index q_len = 1;               ///< new tokens: the last q_len of the cache.len rows
  const float* q_lat = nullptr;  ///< [q_len * num_heads, kv_lora]  (W_UK^T q_nope per head)
  const float* q_pe = nullptr;   ///< [q_len * num_heads, rope]     (rotated)
  LatentRowsView<T> cache;       ///< the sequence's rows, new tokens included
  float* o_lat = nullptr;        ///< [q_len * num_heads, kv_lora]  output
  float* lse = nullptr;          ///< [q_len * num_heads] natural-log LSE of the scores, or null
};

/// One sequence of an MHA / GQA decode step over a head-major cache (kv head g's K rows at
/// k + g * k_head_stride, its V rows at v + g * v_head_stride; float or bfloat16).
template <class T>
struct GqaDecodeSequence {
  Index q_len = 1;          ///< new tokens: the last q_len of the len rows
  const float* q = nullptr; ///< [q_len, num_heads, head_dim]
  const T* k = nullptr;     ///< [num_kv_heads][>= len rows][head_dim]
  const T* v = nullptr;     ///< [num_kv_heads][>= len rows][v_dim]
  Index k_head_stride = 0;  ///< elements between kv heads' K (>= len * head_dim unless 1 kv head)
  Index v_head_stride = 0;  ///< elements between kv heads' V (>= len * v_dim unless 1 kv head)
  Index len = 0;            ///< valid rows per kv head, new tokens included
  float* out = nullptr;     ///< [q_len, num_heads, v_dim]
  float* lse = nullptr;     ///< [q_len, num_heads] natural-log LSE of the scores, or null
};

/// What a plan schedules: absorbed MLA (one latent KV head, V = the first kv_lora values of K)
/// or MHA / GQA (num_kv_heads heads with their own K and V rows).
enum class DecodeKind { kMlaAbsorbed, kGqa };

/// Scheduling knobs of a decode plan.
struct BatchedDecodeOptions {
  /// Parts of equal work per thread when there is more than one thread (one thread always runs
  /// one part). Parts are handed out dynamically, so several per thread even out cores that are
  /// not equally available; each cut costs one more partial and merge.
  int parts_per_thread = int(internal::kMlaSplitsPerThread);
  /// Parts are not made smaller than this many cache rows: below it the partial (up to
  /// 128 x kv_lora floats to write and merge) costs more than the split saves.
  Index min_rows_per_part = internal::kMlaMinRowsPerSplit;

  /// Throws std::invalid_argument unless both fields are >= 1.
  void validate() const {
    MLA_CHECK_ARG(parts_per_thread >= 1 && min_rows_per_part >= 1,
                  "decode plan: parts_per_thread (", parts_per_thread, ") and min_rows_per_part (",
                  min_rows_per_part, ") must be >= 1");
  }
};

}  // namespace kernels

namespace internal {

/// Query rows [m0, m0 + mc) of kv head `head` of sequence `seq` over its first `len` cache rows
/// (those its last token sees), cut into `num_pieces` consecutive pieces, never across row
/// `cut` (GQA: the start of the causal triangle; MLA: len). Offsets are floats into the
/// workspace, used when num_pieces > 1: the packed query shared by the pieces (MLA) and their
/// partials.
struct DecodeUnit {
  Index seq = 0, head = 0, m0 = 0, mc = 0, len = 0, cut = 0;
  Index first_piece = 0, num_pieces = 0;
  Index q_packed = 0;  // [ceil(mc / 16)][K][16] (AMX form: amx_pack_query's layout)
  Index part_o = 0;    // [num_pieces][mc][o_stride]
  Index part_max = 0;  // [num_pieces][mc]
  Index part_sum = 0;  // [num_pieces][mc]
};
/// Rows [j0, j1) of a unit.
struct DecodePiece {
  Index unit = 0, j0 = 0, j1 = 0;
};

/// Floats of a packed query of `rows` rows (<= kMlaRowsPerPass) of width K, for the float tiles
/// and, where the CPU could run them, the AMX form or the int8 scores (the int8 query follows
/// the float panels; int8_tiles.hpp).
inline Index decode_query_floats(Index rows, Index k_dim) {
  Index n = round_up(rows, kMlaPanel) * k_dim;
  if (kernels::path_available(kernels::KernelPath::kAmx)) n = std::max(n, amx_query_floats(rows, k_dim));
  if (cpu_features().avx512_vnni) n += Int8Query::floats(rows, round_up(k_dim, 4));
  return n;
}

/// Per-thread scratch of a decode run: the packed query of the piece being run, S^T/P^T tile,
/// widened or dequantised tile, running max/sum/alpha, a row of ones (the weight of a causal
/// row's late additions), an O accumulator for pieces that cover a whole unit and, where the CPU
/// could run it, the AMX form's tiles. A unit run as one piece packs its query right before it
/// runs, into this scratch: its 128 query rows (288 KiB at V3 sizes) then sit in this thread's
/// L2, where a packed copy of the whole batch would be read back from memory.
struct DecodeScratch {
  float *q_packed = nullptr, *st = nullptr, *wide = nullptr, *run_max = nullptr,
        *run_sum = nullptr, *alpha = nullptr, *ones = nullptr, *o = nullptr, *amx = nullptr;
  /// Lays the scratch out from `base` (null: only measures); returns the floats used.
  Index lay_out(float* base, Index k_dim, Index kv_lora, Index o_stride) {
    FloatArena a(base);
    q_packed = a.take(decode_query_floats(kMlaRowsPerPass, k_dim));
    st = a.take(kMlaTileRows * kMlaRowsPerPass);
    wide = a.take(kMlaTileRows * round_up(k_dim, 8));
    run_max = a.take(kMlaRowsPerPass);
    run_sum = a.take(kMlaRowsPerPass);
    alpha = a.take(kMlaRowsPerPass);
    ones = a.take(kMlaRowsPerPass);
    o = a.take(kMlaRowsPerPass * o_stride);
    if (kernels::path_available(kernels::KernelPath::kAmx))
      amx = a.take(amx_scratch_floats(kMlaRowsPerPass, k_dim, kv_lora));
    return a.used();
  }
};

/// Per-thread scratch of a GQA decode run: the forms' own scratch (GqaLayout) and the partial of
/// a piece that covers a whole unit.
struct GqaDecodeScratch {
  float *form = nullptr, *o = nullptr, *run_max = nullptr, *run_sum = nullptr;
  Index lay_out(float* base, Index form_floats, Index g_rows, Index o_stride) {
    FloatArena a(base);
    form = a.take(form_floats);
    o = a.take(g_rows * o_stride);
    run_max = a.take(g_rows);
    run_sum = a.take(g_rows);
    return a.used();
  }
};

}  // namespace internal

namespace kernels {

/// The schedule of one decode step (see the header comment): which query rows of which sequence
/// read which cache rows on which part, and where the partials live in the workspace. Made once
/// per step by plan() from the sequences' shapes, then used by run_decode() for every layer of
/// the step (layers share the shapes). plan() allocates (vectors reused across steps); a plan
/// holds no pointers into the caches or the workspace.
class DecodePlan {
 public:
  /// Plans `batch` sequences: sequence b has q_lens[b] >= 1 new tokens and lens[b] >= q_lens[b]
  /// cache rows (new ones included), `num_heads` query heads, latent rows of kv_lora_rank + rope_dim
  /// values, and runs on `threads` threads. Throws std::invalid_argument for bad sizes.
  void plan(Index num_heads, Index kv_lora_rank, Index rope_dim, const Index* q_lens,
            const Index* lens, Index batch, int threads, BatchedDecodeOptions options = {}) {
    plan_with(DecodeKind::kMlaAbsorbed, num_heads, 1, kv_lora_rank + rope_dim, kv_lora_rank,
              batch, threads, options, [&](Index b) { return q_lens[b]; },
              [&](Index b) { return lens[b]; });
  }
  /// Plans an MHA / GQA step: `num_heads` query heads over `num_kv_heads` kv heads (dividing
  /// it) with K rows of head_dim and V rows of v_dim values; sequence b has q_lens[b] new tokens
  /// and lens[b] rows per kv head. A unit is one kv head of one sequence with all its
  /// group * q_len query rows; its causal triangle (the last q_len - 1 rows) is a piece of its own.
  void plan_gqa(Index num_heads, Index num_kv_heads, Index head_dim, Index v_dim,
                const Index* q_lens, const Index* lens, Index batch, int threads,
                BatchedDecodeOptions options = {}) {
    plan_with(DecodeKind::kGqa, num_heads, num_kv_heads, head_dim, v_dim, batch, threads, options,
              [&](Index b) { return q_lens[b]; }, [&](Index b) { return lens[b]; });
  }
  /// plan_gqa() from the sequences' shapes as they are now.
  template <class T>
  void plan_gqa(Index num_heads, Index num_kv_heads, Index head_dim, Index v_dim,
                const GqaDecodeSequence<T>* seqs, Index batch, int threads,
                BatchedDecodeOptions options = {}) {
    MLA_CHECK_ARG(batch >= 0 && (batch == 0 || seqs != nullptr), "decode plan: no sequences (batch ",
                  batch, ")");
    plan_with(DecodeKind::kGqa, num_heads, num_kv_heads, head_dim, v_dim, batch, threads, options,
              [&](Index b) { return seqs[b].q_len; }, [&](Index b) { return seqs[b].len; });
  }
  /// Whether plan_gqa(..., seqs, batch, threads, options) would make this plan again.
  template <class T>
  bool matches_gqa(Index num_heads, Index num_kv_heads, Index head_dim, Index v_dim,
                   const GqaDecodeSequence<T>* seqs, Index batch, int threads,
                   const BatchedDecodeOptions& options) const {
    if (kind_ != DecodeKind::kGqa || num_kv_heads != num_kv_heads_ || head_dim != head_dim_ ||
        v_dim != v_dim_ || !same_step(num_heads, batch, threads, options))
      return false;
    for (Index b = 0; b < batch; ++b)
      if (seqs[b].q_len != q_len(b) || seqs[b].len != len(b)) return false;
    return true;
  }

  /// Plans the sequences' shapes as they are now (q_len, cache.len, the cache widths).
  template <class T>
  void plan(Index num_heads, const DecodeSequence<T>* seqs, Index batch, int threads,
            BatchedDecodeOptions options = {}) {
    MLA_CHECK_ARG(batch >= 0 && (batch == 0 || seqs != nullptr), "decode plan: no sequences (batch ",
                  batch, ")");
    const Index R = batch > 0 ? seqs[0].cache.kv_lora_rank : 1;
    const Index P = batch > 0 ? seqs[0].cache.rope_dim : 0;
    plan_with(DecodeKind::kMlaAbsorbed, num_heads, 1, R + P, R, batch, threads, options,
              [&](Index b) { return seqs[b].q_len; }, [&](Index b) { return seqs[b].cache.len; });
  }

  /// Whether plan(num_heads, seqs, batch, threads, options) would make this plan again (same
  /// heads, widths, threads, options, new-token counts and lengths): a step's later layers reuse
  /// it.
  template <class T>
  bool matches(Index num_heads, const DecodeSequence<T>* seqs, Index batch, int threads,
               const BatchedDecodeOptions& options) const {
    if (kind_ != DecodeKind::kMlaAbsorbed || !same_step(num_heads, batch, threads, options))
      return false;
    for (Index b = 0; b < batch; ++b)
      if (seqs[b].q_len != q_len(b) || seqs[b].cache.len != len(b) ||
          seqs[b].cache.kv_lora_rank != kv_lora_rank() || seqs[b].cache.rope_dim != rope_dim())
        return false;
    return true;
  }

  Index batch() const { return Index(q_lens_.size()); }
  DecodeKind kind() const { return kind_; }
  Index num_heads() const { return num_heads_; }
  Index num_kv_heads() const { return num_kv_heads_; }
  /// Values of a K row and of a V row (MLA: kv_lora + rope and kv_lora).
  Index head_dim() const { return head_dim_; }
  Index v_dim() const { return v_dim_; }
  /// MLA widths: kv_lora_rank = v_dim, rope_dim = head_dim - v_dim.
  Index kv_lora_rank() const { return v_dim_; }
  Index rope_dim() const { return head_dim_ - v_dim_; }
  int threads() const { return threads_; }
  Index q_len(Index b) const { return q_lens_[std::size_t(b)]; }
  Index len(Index b) const { return lens_[std::size_t(b)]; }
  /// Floats of workspace run_decode() needs for this plan.
  Index workspace_floats() const { return total_floats_; }
  /// Parts the rows were cut into, and units cut into several pieces (split-KV).
  Index num_parts() const { return Index(part_begin_.size()) - 1; }
  Index num_split_units() const { return Index(split_units_.size()); }
  /// The schedule itself, as run_decode() reads it: units, pieces, the first piece of every part
  /// (num_parts() + 1 entries), the split units, and the workspace strides.
  const std::vector<internal::DecodeUnit>& units() const { return units_; }
  const std::vector<internal::DecodePiece>& pieces() const { return pieces_; }
  const std::vector<Index>& part_begin() const { return part_begin_; }
  const std::vector<Index>& split_units() const { return split_units_; }
  Index o_stride() const { return o_stride_; }
  Index scratch_stride() const { return scratch_stride_; }

  /// Room in the plan's vectors for `batch` sequences cut into `units` units, `parts` parts and
  /// `pieces` pieces, so that planning such a step allocates nothing.
  void reserve(Index batch, Index units, Index parts, Index pieces) {
    q_lens_.reserve(std::size_t(batch));
    lens_.reserve(std::size_t(batch));
    units_.reserve(std::size_t(units));
    split_units_.reserve(std::size_t(units));
    part_begin_.reserve(std::size_t(parts) + 1);
    pieces_.reserve(std::size_t(pieces));
  }

  /// Upper bound of workspace_floats() over plans of one sequence with `rows` query rows
  /// (q_len * num_heads), widths R and P, on `threads` threads, with the default options.
  static Index max_workspace_floats(Index rows, Index kv_lora_rank, Index rope_dim, int threads) {
    const Index K = kv_lora_rank + rope_dim, o_stride = internal::round_up(kv_lora_rank, 16);
    const Index pass = std::min(rows, internal::kMlaRowsPerPass);
    const Index units = internal::checked_add("decode plan: row passes", {rows, internal::kMlaRowsPerPass - 1}) /
                        internal::kMlaRowsPerPass;
    const Index parts = threads <= 1 ? 1 : Index(threads) * BatchedDecodeOptions{}.parts_per_thread;
    internal::DecodeScratch sizer;
    const Index scratch = sizer.lay_out(nullptr, K, kv_lora_rank, o_stride);
    // At most min(units, parts - 1) units are split, into at most units + parts - 1 pieces.
    const Index split = parts > 1 ? std::min(units, parts - 1) : 0;
    const Index pieces = split > 0 ? units + parts - 1 : 0;
    return internal::checked_add(
        "decode workspace floats",
        {internal::checked_mul("decode workspace: threads * scratch", {Index(threads), scratch}),
         internal::checked_mul("decode workspace: packed queries",
                               {split, internal::decode_query_floats(pass, K)}),
         internal::checked_mul("decode workspace: partials", {pieces, pass, o_stride + 2})});
  }

 private:
  bool same_step(Index num_heads, Index batch, int threads,
                 const BatchedDecodeOptions& options) const {
    return planned_ && num_heads == num_heads_ && batch == this->batch() && threads == threads_ &&
           options.parts_per_thread == options_.parts_per_thread &&
           options.min_rows_per_part == options_.min_rows_per_part;
  }
  template <class QLen, class Len>
  void plan_with(DecodeKind kind, Index num_heads, Index num_kv_heads, Index head_dim,
                 Index v_dim, Index batch, int threads, const BatchedDecodeOptions& options,
                 QLen q_len_of, Len len_of);

  bool planned_ = false;
  DecodeKind kind_ = DecodeKind::kMlaAbsorbed;
  Index num_heads_ = 0, num_kv_heads_ = 1, head_dim_ = 0, v_dim_ = 0;
  int threads_ = 1;
  BatchedDecodeOptions options_{};
  Index o_stride_ = 0, scratch_stride_ = 0, total_floats_ = 0;
  std::vector<Index> q_lens_, lens_;
  std::vector<internal::DecodeUnit> units_;
  std::vector<internal::DecodePiece> pieces_;
  std::vector<Index> part_begin_;   // pieces of part p: [part_begin_[p], part_begin_[p + 1])
  std::vector<Index> split_units_;  // units with more than one piece
};

template <class QLen, class Len>
void DecodePlan::plan_with(DecodeKind kind, Index num_heads, Index num_kv_heads, Index head_dim,
                           Index v_dim, Index batch, int threads,
                           const BatchedDecodeOptions& options, QLen q_len_of, Len len_of) {
  const bool mla = kind == DecodeKind::kMlaAbsorbed;
  const char* what = "decode plan";
  MLA_CHECK_ARG(num_heads >= 1, what, ": num_heads must be >= 1, got ", num_heads);
  if (mla) {
    MLA_CHECK_ARG(v_dim >= 1 && head_dim >= v_dim, what, ": kv_lora_rank (", v_dim,
                  ") must be >= 1 and rope_dim (", head_dim - v_dim, ") >= 0");
  } else {
    MLA_CHECK_ARG(num_kv_heads >= 1 && num_heads % num_kv_heads == 0, what, ": num_heads (",
                  num_heads, ") is not a positive multiple of num_kv_heads (", num_kv_heads, ")");
    MLA_CHECK_ARG(head_dim >= 1 && v_dim >= 1, what, ": head_dim (", head_dim, ") and v_dim (",
                  v_dim, ") must be >= 1");
  }
  MLA_CHECK_ARG(batch >= 0, what, ": batch (", batch, ") is negative");
  MLA_CHECK_ARG(threads >= 1, what, ": threads (", threads, ") must be >= 1");
  options.validate();
  // Check everything before the first member changes: a failed plan() leaves the plan as it was.
  Index work = 0, max_q_len = 1;
  for (Index b = 0; b < batch; ++b) {
    const Index q_len = q_len_of(b), len = len_of(b);
    MLA_CHECK_ARG(q_len >= 1, what, ", sequence ", b, ": q_len must be >= 1, got ", q_len);
    MLA_CHECK_ARG(len >= q_len, what, ", sequence ", b, ": cache length (", len,
                  ") must be >= q_len (", q_len, "): the new tokens are the last cache rows");
    const Index m_rows = internal::checked_mul("decode plan: query rows q_len * num_heads",
                                               {q_len, num_heads});
    const Index units = mla ? m_rows / internal::kMlaRowsPerPass +
                                  (m_rows % internal::kMlaRowsPerPass != 0)
                            : num_kv_heads;
    work = internal::checked_add("decode plan: work of the sequences so far + this one's",
                                 {work, internal::checked_mul("decode plan: units * cache rows",
                                                              {units, len})});
    max_q_len = std::max(max_q_len, q_len);
  }
  planned_ = true;
  kind_ = kind;
  num_heads_ = num_heads;
  num_kv_heads_ = mla ? 1 : num_kv_heads;
  head_dim_ = head_dim;
  v_dim_ = v_dim;
  threads_ = threads;
  options_ = options;
  q_lens_.resize(std::size_t(batch));
  lens_.resize(std::size_t(batch));
  units_.clear();
  pieces_.clear();
  part_begin_.clear();
  split_units_.clear();
  work = 0;
  for (Index b = 0; b < batch; ++b) {
    const Index q_len = q_len_of(b), len = len_of(b), m_rows = q_len * num_heads;
    q_lens_[std::size_t(b)] = q_len;
    lens_[std::size_t(b)] = len;
    internal::DecodeUnit u;
    u.seq = b;
    if (mla) {
      for (Index m0 = 0; m0 < m_rows; m0 += internal::kMlaRowsPerPass) {
        u.m0 = m0;
        u.mc = std::min(internal::kMlaRowsPerPass, m_rows - m0);
        u.len = len - q_len + 1 + (m0 + u.mc - 1) / num_heads;  // rows its last token sees
        u.cut = u.len;
        units_.push_back(u);
        work += u.len;
      }
    } else {
      for (Index g = 0; g < num_kv_heads; ++g) {
        u.head = g;
        u.mc = m_rows / num_kv_heads;
        u.len = len;
        u.cut = len - q_len + 1;  // the causal triangle after it is a piece of its own
        units_.push_back(u);
        work += u.len;
      }
    }
  }
  const Index want = threads == 1 ? 1 : Index(threads) * options.parts_per_thread;
  const Index parts = std::max<Index>(1, std::min<Index>(want, work / options.min_rows_per_part));
  internal::checked_mul("decode plan: part boundaries work * parts", {work, parts});
  // Cut [0, work) at the part boundaries work * p / parts, the unit boundaries and the units'
  // cut rows.
  Index u = 0, unit_start = 0, pos = 0;
  for (Index p = 0; p < parts; ++p) {
    part_begin_.push_back(Index(pieces_.size()));
    const Index part_end = work * (p + 1) / parts;
    while (pos < part_end) {
      while (unit_start + units_[std::size_t(u)].len <= pos) {
        unit_start += units_[std::size_t(u)].len;
        ++u;
      }
      internal::DecodeUnit& unit = units_[std::size_t(u)];
      Index end = std::min(part_end, unit_start + unit.len);
      if (pos < unit_start + unit.cut) end = std::min(end, unit_start + unit.cut);
      if (unit.num_pieces == 0) unit.first_piece = Index(pieces_.size());
      ++unit.num_pieces;
      pieces_.push_back({u, pos - unit_start, end - unit_start});
      pos = end;
    }
  }
  part_begin_.push_back(Index(pieces_.size()));

  // Workspace layout: per-thread scratch, then the packed query (MLA) and partials of split
  // units.
  internal::FloatArena arena;
  if (mla) {
    o_stride_ = internal::round_up(v_dim, 16);
    scratch_stride_ = internal::DecodeScratch().lay_out(nullptr, head_dim, v_dim, o_stride_);
  } else {
    const internal::GqaLayout lay(max_q_len, num_heads, num_kv_heads, head_dim, v_dim);
    o_stride_ = lay.o_stride;
    scratch_stride_ =
        internal::GqaDecodeScratch().lay_out(nullptr, lay.scratch_stride, lay.g_rows, o_stride_);
  }
  arena.take(Index(threads) * scratch_stride_);
  for (Index i = 0; i < Index(units_.size()); ++i) {
    internal::DecodeUnit& unit = units_[std::size_t(i)];
    if (unit.num_pieces <= 1) continue;
    split_units_.push_back(i);
    unit.q_packed = arena.used();
    if (mla) arena.take(internal::decode_query_floats(unit.mc, head_dim));
    unit.part_o = arena.used();
    arena.take(unit.num_pieces * unit.mc * o_stride_);
    unit.part_max = arena.used();
    arena.take(unit.num_pieces * unit.mc);
    unit.part_sum = arena.used();
    arena.take(unit.num_pieces * unit.mc);
  }
  total_floats_ = arena.used();
}

/// Scratch of the decode engine: one 64-byte aligned float block (per-thread tiles, packed
/// queries and partials of split units) and a plan for the one-call entry points
/// (absorbed_attention, paged_absorbed_attention, batched_absorbed_attention, gqa_attention),
/// which plan again only when the shapes change. Grows to the largest plan it has served; later
/// calls that fit allocate nothing. Not shareable between concurrent calls.
class DecodeWorkspace {
 public:
  DecodeWorkspace() = default;
  /// Room for one sequence of `rows` query rows (q_len * num_heads) on `threads` threads.
  DecodeWorkspace(Index rows, Index kv_lora, Index rope, int threads) {
    reserve(rows, kv_lora, rope, threads);
  }

  /// Ensures room for one sequence of `rows` query rows, the given widths and `threads` threads.
  void reserve(Index rows, Index kv_lora, Index rope, int threads) {
    MLA_CHECK_ARG(rows >= 1 && kv_lora >= 1 && rope >= 0 && threads >= 1,
                  "DecodeWorkspace::reserve: bad sizes rows=", rows, " kv_lora=", kv_lora,
                  " rope=", rope, " threads=", threads);
    buffer_.grow(DecodePlan::max_workspace_floats(rows, kv_lora, rope, threads));
    const Index units = (rows + internal::kMlaRowsPerPass - 1) / internal::kMlaRowsPerPass;
    const Index parts = threads <= 1 ? 1 : Index(threads) * BatchedDecodeOptions{}.parts_per_thread;
    plan_.reserve(1, units, parts, units + parts);
  }
  /// Room for MHA / GQA calls of this shape's q_len, head counts and widths on `threads`
  /// threads (cache_len and strides do not matter).
  DecodeWorkspace(const GqaAttentionShape& shape, int threads) { reserve(shape, threads); }
  void reserve(const GqaAttentionShape& shape, int threads) {
    MLA_CHECK_ARG(threads >= 1, "DecodeWorkspace::reserve: threads must be >= 1, got ", threads);
    MLA_CHECK_ARG(shape.q_len >= 1 && shape.num_kv_heads >= 1 && shape.num_heads >= 1 &&
                      shape.num_heads % shape.num_kv_heads == 0 && shape.head_dim >= 1 &&
                      shape.v_dim >= 1,
                  "DecodeWorkspace::reserve: bad shape q_len=", shape.q_len, " num_heads=",
                  shape.num_heads, " num_kv_heads=", shape.num_kv_heads, " head_dim=",
                  shape.head_dim, " v_dim=", shape.v_dim);
    // Every kv head may be cut by every part boundary and once more at its causal triangle.
    const internal::GqaLayout lay(shape.q_len, shape.num_heads, shape.num_kv_heads, shape.head_dim,
                                  shape.v_dim);
    const Index parts = threads <= 1 ? 1 : Index(threads) * BatchedDecodeOptions{}.parts_per_thread;
    const Index units = shape.num_kv_heads, pieces = 2 * units + parts;
    internal::GqaDecodeScratch sizer;
    const Index scratch = sizer.lay_out(nullptr, lay.scratch_stride, lay.g_rows, lay.o_stride);
    buffer_.grow(internal::checked_add(
        "DecodeWorkspace::reserve: floats",
        {internal::checked_mul("DecodeWorkspace::reserve: scratch", {Index(threads), scratch}),
         internal::checked_mul("DecodeWorkspace::reserve: partials",
                               {pieces, lay.g_rows, lay.o_stride + 2})}));
    plan_.reserve(1, units, parts, pieces);
  }
  /// Ensures room for `plan`.
  void reserve(const DecodePlan& plan) { buffer_.grow(plan.workspace_floats()); }

  /// Bytes currently held by the float block.
  std::size_t bytes() const { return static_cast<std::size_t>(buffer_.size()) * sizeof(float); }
  float* data() const { return buffer_.data(); }
  /// The plan of the last one-call entry (also for tests and benchmarks that inspect the split).
  const DecodePlan& plan() const { return plan_; }
  DecodePlan& plan() { return plan_; }

 private:
  DecodePlan plan_;
  internal::AlignedFloats buffer_;
};

}  // namespace kernels

namespace internal {

/// Tiles of a run come from here: float rows are read in place (or copied where the tile
/// operations want dense tiles), others are widened or dequantised into `wide` (row stride
/// round_up(K, 8)).
template <class Ops, class T>
const float* tile_rows(const typename LatentRowCodec<T>::Unit* src, Index src_stride, Index tn,
                       Index kv_lora, Index rope, float* wide, Index& stride) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bfloat16>) {
    return rows_as_float<Ops>(src, src_stride, tn, kv_lora + rope, wide,
                              round_up(kv_lora + rope, 8), stride);
  } else {
    stride = round_up(kv_lora + rope, 8);
    bool simd = false;  // the AVX2 dequantisation on the AVX2, AVX-512 and AMX paths
#if MLA_X86_SIMD
    simd = std::is_base_of_v<MlaAvx2Ops, Ops>;
#endif
    LatentRowCodec<T>::decode_float_rows(simd, src, src_stride, tn, kv_lora, rope, wide, stride);
    return wide;
  }
}

/// Packs a unit's query rows [m0, m0 + mc): [q_lat | q_pe] * scale * log2 e, in 16-row panels
/// for the float tiles or in bf16 tiles for the AMX form.
/// Whether a run over rows of type T on the tile operations Ops takes the int8 scores.
template <class Ops, class T>
bool uses_int8_scores(Index kv_lora_rank) {
#if MLA_X86_SIMD
  if constexpr (std::is_same_v<T, Int8Latent> && std::is_base_of_v<MlaAvx512Ops, Ops>)
    return int8_scores_available(kv_lora_rank);
#endif
  (void)kv_lora_rank;
  return false;
}

/// Where a unit's int8 query lives in its packed query (after the float panels).
inline Int8Query int8_query_of(float* packed, Index rows, Index kv_lora, Index rope) {
  return Int8Query::at(packed + round_up(rows, kMlaPanel) * (kv_lora + rope), rows, kv_lora);
}

template <bool kAmxForm, bool kInt8, class T>
void pack_unit_query(const kernels::DecodeSequence<T>& seq, const DecodeUnit& u,
                     float softmax_scale, float* packed) {
  const Index R = seq.cache.kv_lora_rank, P = seq.cache.rope_dim;
  if constexpr (kInt8)
    int8_pack_query(seq.q_lat + u.m0 * R, u.mc, R, softmax_scale * kLog2e,
                    int8_query_of(packed, u.mc, R, P));
  if constexpr (kAmxForm) {
#if MLA_X86_SIMD
    amx_pack_query(seq.q_lat + u.m0 * R, seq.q_pe + u.m0 * P, u.mc, R, P, softmax_scale * kLog2e,
                   reinterpret_cast<std::uint16_t*>(packed));
#endif
  } else {
    mla_pack_query(seq.q_lat + u.m0 * R, seq.q_pe + u.m0 * P, u.mc, R, P, softmax_scale * kLog2e,
                   packed);
  }
}

/// Runs rows [j0, j1) of unit `u` with its packed query `qp`: the online softmax into `o`
/// [mc, o_stride], run_max and run_sum ([round_up(mc, 16)]; unnormalised, a split-KV partial).
template <class Ops, class T>
void run_decode_piece(const kernels::DecodeSequence<T>& seq, Index num_heads, const DecodeUnit& u,
                      Index j0, Index j1, const float* qp, Index o_stride, float* o, float* run_max,
                      float* run_sum, const DecodeScratch& sc) {
  const LatentRowsView<T>& view = seq.cache;
  const Index R = view.kv_lora_rank, K = R + view.rope_dim;
  const Index mc = u.mc, mc16 = round_up(mc, kMlaPanel);
  // Rows >= first_masked are hidden from some of the new tokens: row g is seen by the tokens
  // >= g - first_masked + 1, i.e. by query rows >= (g - first_masked + 1) * H - m0 of the unit.
  const Index first_masked = view.len - seq.q_len + 1;
  if constexpr (uses_amx_form<Ops, T>()) {
#if MLA_X86_SIMD
    // Contiguous bf16 rows (the caller checked): score rows are the whole latent rows, value
    // rows their c_kv part.
    const AmxAttentionRows rows{view.base, view.row_stride, K, view.base, view.row_stride, R,
                                u.m0, num_heads, first_masked};
    amx_attention_task(rows, reinterpret_cast<const std::uint16_t*>(qp), mc, j0, j1, sc.amx, o,
                       o_stride, run_max, run_sum);
#endif
    return;
  }
  const bool int8_scores = uses_int8_scores<Ops, T>(R);
  std::fill(o, o + mc * o_stride, 0.0f);
  std::fill(run_max, run_max + mc16, -std::numeric_limits<float>::infinity());
  std::fill(run_sum, run_sum + mc16, 0.0f);
  for (Index j = j0; j < j1;) {
    const Index n = view.run_length(j, j1);
    const auto* run = view.row(j);
    for (Index t0 = 0; t0 < n; t0 += kMlaTileRows) {
      const Index tn = std::min(kMlaTileRows, n - t0);
      Index stride = 0;
      const float* rows = tile_rows<Ops, T>(run + t0 * view.row_stride, view.row_stride, tn, R,
                                            view.rope_dim, sc.wide, stride);
      if (int8_scores) {
#if MLA_X86_SIMD
        // The c_kv part on the integer codes, the RoPE part in float from the dequantised tile.
        const Int8LatentLayout layout{R, view.rope_dim};
        int8_scores_vnni(int8_query_of(const_cast<float*>(qp), mc, R, view.rope_dim),
                         mc16 / kMlaPanel, reinterpret_cast<const std::uint8_t*>(run) + t0 * view.row_stride,
                         view.row_stride, tn, layout, sc.st, mc16);
        for (Index p = 0; p < mc16 / kMlaPanel; p += MlaAvx512Ops::kMaxPanels)
          MlaAvx512Ops::scores_group<true>(
              std::min<Index>(MlaAvx512Ops::kMaxPanels, mc16 / kMlaPanel - p),
              qp + p * kMlaPanel * K + R * kMlaPanel, kMlaPanel * K, rows + R, stride,
              view.rope_dim, tn, sc.st + p * kMlaPanel, mc16);
#endif
      } else {
        Ops::scores(qp, mc16 / kMlaPanel, K, rows, stride, tn, sc.st, mc16);
      }
      const Index g0 = j + t0;  // the tile's first row, as a row index of the sequence
      mask_hidden_rows(sc.st, mc16, g0, tn, mc, u.m0, num_heads, first_masked);
      Ops::softmax(sc.st, mc16, tn, mc16, run_max, run_sum, sc.alpha);
      // Rows every query row of the unit sees go through one product (which also applies the
      // softmax correction alpha); each causal row after them is added to the rows that see it.
      const Index shared = std::clamp<Index>(first_masked - g0, 0, tn);
      Ops::accumulate(sc.st, mc16, shared, mc, rows, stride, R, o, o_stride, sc.alpha);
      for (Index t = shared; t < tn; ++t) {
        const Index i0 = std::max<Index>(0, (g0 + t - first_masked + 1) * num_heads - u.m0);
        if (i0 < mc)
          Ops::accumulate(sc.st + t * mc16 + i0, mc16, 1, mc - i0, rows + t * stride, stride, R,
                          o + i0 * o_stride, o_stride, sc.ones);
      }
    }
    j += n;
  }
}

/// The float tile operations of a path: the AMX path's are the AVX-512 ones.
template <class Ops>
struct FloatTilesOf {
  using type = Ops;
};
#if MLA_X86_SIMD
template <>
struct FloatTilesOf<MlaAmxOps> {
  using type = MlaAvx512Ops;
};
#endif

/// The log-sum-exp combine of the units `plan` cut into pieces, from their partials in `base`,
/// rows shared out across threads (each row's combine is the same arithmetic whichever thread
/// runs it). dst(unit, r) gives query row r's output (`dim` values) and LSE (or null) pointers.
template <class Dst>
void combine_split_units(const kernels::DecodePlan& plan, const float* base, Index dim,
                         ThreadPool* pool, Dst dst) {
  const Index num_split = plan.num_split_units(), o_stride = plan.o_stride();
  if (num_split == 0) return;
  const Index chunks = std::max<Index>(1, (Index(plan.threads()) * 4 + num_split - 1) / num_split);
  parallel_for(pool, num_split * chunks, [&](Index task, int) {
    const DecodeUnit& u = plan.units()[std::size_t(plan.split_units()[std::size_t(task / chunks)])];
    const Index c = task % chunks, r_end = u.mc * (c + 1) / chunks;
    for (Index r = u.mc * c / chunks; r < r_end; ++r) {
      const auto [out, lse] = dst(u, r);
      const float l = combine_splits(base + u.part_o + r * o_stride, u.mc * o_stride,
                                     base + u.part_max + r, base + u.part_sum + r, u.mc,
                                     u.num_pieces, dim, out);
      if (lse != nullptr) *lse = l;
    }
  });
}

/// A unit run as one piece: its rows' outputs from the piece's unnormalised O [rows, o_stride],
/// running max and sum (a combine of one split). dst(unit, r) as for combine_split_units.
template <class Dst>
void finish_whole_unit(const DecodeUnit& u, const float* o, const float* run_max,
                       const float* run_sum, Index o_stride, Index dim, Dst dst) {
  for (Index r = 0; r < u.mc; ++r) {
    const auto [out, lse] = dst(u, r);
    const float l = combine_splits(o + r * o_stride, 0, run_max + r, run_sum + r, 0, 1, dim, out);
    if (lse != nullptr) *lse = l;
  }
}

/// run_decode() with the tile operations `Ops`, on workspace `base`.
template <class Ops, class T>
void run_decode_with(const kernels::DecodePlan& plan, const kernels::DecodeSequence<T>* seqs,
                     float softmax_scale, float* base, ThreadPool* pool) {
  const Index R = plan.kv_lora_rank(), K = R + plan.rope_dim(), H = plan.num_heads();
  const Index o_stride = plan.o_stride(), scratch_stride = plan.scratch_stride();
  const DecodeUnit* units = plan.units().data();
  const DecodePiece* pieces = plan.pieces().data();
  const Index* part_begin = plan.part_begin().data();
  const Index* split_units = plan.split_units().data();
  const Index num_split = plan.num_split_units();
  // Query row m of a unit is row u.m0 + m of its sequence's outputs.
  auto mla_rows = [&](const DecodeUnit& u, Index m) {
    const kernels::DecodeSequence<T>& s = seqs[u.seq];
    return std::pair(s.o_lat + (u.m0 + m) * R, s.lse == nullptr ? nullptr : s.lse + u.m0 + m);
  };
  auto body = [&](auto amx_form) {
    constexpr bool kAmx = decltype(amx_form)::value;
    using RunOps = std::conditional_t<kAmx, Ops, typename FloatTilesOf<Ops>::type>;
    const bool int8 = uses_int8_scores<RunOps, T>(R);
    // 1. The queries of the units cut into pieces, packed once for all their pieces.
    parallel_for(pool, num_split, [&](Index i, int) {
      const DecodeUnit& u = units[split_units[i]];
      if (int8) {
        pack_unit_query<kAmx, true>(seqs[u.seq], u, softmax_scale, base + u.q_packed);
      } else {
        pack_unit_query<kAmx, false>(seqs[u.seq], u, softmax_scale, base + u.q_packed);
      }
    });
    // 2. The parts; each runs its pieces in order on one thread.
    parallel_for(pool, plan.num_parts(), [&](Index part, int thread) {
      DecodeScratch sc;
      sc.lay_out(base + Index(thread) * scratch_stride, K, R, o_stride);
      std::fill(sc.ones, sc.ones + kMlaRowsPerPass, 1.0f);
      for (Index p = part_begin[part]; p < part_begin[part + 1]; ++p) {
        const DecodePiece& piece = pieces[p];
        const DecodeUnit& u = units[piece.unit];
        const kernels::DecodeSequence<T>& s = seqs[u.seq];
        if (u.num_pieces == 1) {
          if (int8) {
            pack_unit_query<kAmx, true>(s, u, softmax_scale, sc.q_packed);
          } else {
            pack_unit_query<kAmx, false>(s, u, softmax_scale, sc.q_packed);
          }
          run_decode_piece<RunOps>(s, H, u, piece.j0, piece.j1, sc.q_packed, o_stride, sc.o,
                                   sc.run_max, sc.run_sum, sc);
          finish_whole_unit(u, sc.o, sc.run_max, sc.run_sum, o_stride, R, mla_rows);
        } else {
          // The running max and sum span whole 16-row panels in the scratch; the partial keeps
          // the unit's mc rows.
          const Index k = p - u.first_piece;
          run_decode_piece<RunOps>(s, H, u, piece.j0, piece.j1, base + u.q_packed, o_stride,
                                   base + u.part_o + k * u.mc * o_stride, sc.run_max, sc.run_sum,
                                   sc);
          std::copy(sc.run_max, sc.run_max + u.mc, base + u.part_max + k * u.mc);
          std::copy(sc.run_sum, sc.run_sum + u.mc, base + u.part_sum + k * u.mc);
        }
      }
    });
  };
  // The AMX form reads contiguous bf16 rows (every view of the batch); otherwise the float tiles.
  bool amx_done = false;
  if constexpr (uses_amx_form<Ops, T>()) {
    bool contiguous = true;
    for (Index b = 0; b < plan.batch(); ++b) contiguous = contiguous && !seqs[b].cache.paged();
    if (contiguous) {
      body(std::true_type{});
      amx_done = true;
    }
  }
  if (!amx_done) body(std::false_type{});
  // 3. Log-sum-exp combine of the units cut into pieces.
  combine_split_units(plan, base, R, pool, mla_rows);
}

/// run_gqa_decode() with the GQA tile operations `Ops`, on workspace `base`.
template <class Ops, class T>
void run_gqa_decode_with(const kernels::DecodePlan& plan, const kernels::GqaDecodeSequence<T>* seqs,
                         float softmax_scale, float* base, ThreadPool* pool) {
  const Index H = plan.num_heads(), G = plan.num_kv_heads(), group = H / G;
  const Index v_dim = plan.v_dim(), o_stride = plan.o_stride();
  const DecodeUnit* units = plan.units().data();
  const DecodePiece* pieces = plan.pieces().data();
  const Index* part_begin = plan.part_begin().data();
  const float qscale = softmax_scale * kLog2e;
  // Query row r of a unit (kv head g of sequence b) is token r / group, head g * group + r % group.
  auto gqa_rows = [&](const DecodeUnit& u, Index r) {
    const kernels::GqaDecodeSequence<T>& s = seqs[u.seq];
    const Index row = (r / group) * H + u.head * group + r % group;
    return std::pair(s.out + row * v_dim, s.lse == nullptr ? nullptr : s.lse + row);
  };
  auto shape_of = [&](const kernels::GqaDecodeSequence<T>& s) {
    kernels::GqaAttentionShape shape;
    shape.q_len = s.q_len;
    shape.num_heads = H;
    shape.num_kv_heads = G;
    shape.head_dim = plan.head_dim();
    shape.v_dim = v_dim;
    shape.cache_len = s.len;
    shape.k_head_stride = s.k_head_stride;
    shape.v_head_stride = s.v_head_stride;
    return shape;
  };
  parallel_for(pool, plan.num_parts(), [&](Index part, int thread) {
    for (Index p = part_begin[part]; p < part_begin[part + 1]; ++p) {
      const DecodePiece& piece = pieces[p];
      const DecodeUnit& u = units[piece.unit];
      const kernels::GqaDecodeSequence<T>& s = seqs[u.seq];
      const kernels::GqaAttentionShape shape = shape_of(s);
      const GqaLayout lay(s.q_len, H, G, shape.head_dim, v_dim);
      // The thread's scratch: the forms' part first, then a whole unit's partial.
      GqaDecodeScratch own;
      own.lay_out(base + Index(thread) * plan.scratch_stride(), lay.scratch_stride, u.mc, o_stride);
      const T* kh = s.k + u.head * s.k_head_stride;
      const T* vh = s.v + u.head * s.v_head_stride;
      if (u.num_pieces == 1) {
        gqa_range_task<Ops>(shape, lay, s.q, kh, vh, qscale, u.head, piece.j0, piece.j1, own.form,
                            own.o, own.run_max, own.run_sum);
        finish_whole_unit(u, own.o, own.run_max, own.run_sum, o_stride, v_dim, gqa_rows);
      } else {
        const Index k = p - u.first_piece;
        gqa_range_task<Ops>(shape, lay, s.q, kh, vh, qscale, u.head, piece.j0, piece.j1, own.form,
                            base + u.part_o + k * u.mc * o_stride, base + u.part_max + k * u.mc,
                            base + u.part_sum + k * u.mc);
      }
    }
  });
  combine_split_units(plan, base, v_dim, pool, gqa_rows);
}

/// The frame run_decode and run_gqa_decode share: checks the plan's kind, batch size and
/// threads, then each sequence (`check_sequence(b)`), and the path, all before anything is
/// written; then sizes the workspace and calls `run(ops, base)` with the tile operations of the
/// path (from the set `OpsSet`, see with_path_ops) and the workspace memory.
template <class OpsSet, class CheckSequence, class Run>
void run_planned(const kernels::DecodePlan& plan, kernels::DecodeKind kind, Index batch,
                 const void* seqs, kernels::DecodeWorkspace& ws, ThreadPool* pool,
                 kernels::KernelPath path, const char* what, CheckSequence check_sequence,
                 Run run) {
  MLA_CHECK_ARG(plan.kind() == kind, what, kind == kernels::DecodeKind::kGqa
                                               ? ": the plan is for absorbed MLA (plan); use run_decode"
                                               : ": the plan is for MHA / GQA (plan_gqa); use run_gqa_decode");
  MLA_CHECK_ARG(batch == plan.batch(), what, ": ", batch, " sequences, the plan has ",
                plan.batch());
  MLA_CHECK_ARG(batch == 0 || seqs != nullptr, what, ": no sequences (batch ", batch, ")");
  MLA_CHECK_ARG(num_threads(pool) <= plan.threads(), what, ": the pool has ", num_threads(pool),
                " threads, the plan was made for ", plan.threads());
  for (Index b = 0; b < batch; ++b) check_sequence(b);
  (void)kernels::resolve_path(path);
  if (batch == 0) return;
  ws.reserve(plan);
  with_path_ops<OpsSet>(path, [&](auto ops) { run(ops, ws.data()); });
}

}  // namespace internal

namespace kernels {

/// Runs a planned decode step (see the header comment): for every sequence b and query row m
/// (token m / num_heads) over the rows j its token sees,
///   s_j = softmax_scale (q_lat[m] . c_j + q_pe[m] . k_pe_j),
///   o_lat[m] = sum_j softmax(s)_j c_j,   lse[m] = log sum_j exp(s_j)  (if lse is not null).
/// `seqs` must have the shapes `plan` was made for (q_len, cache.len, widths); `pool` at most the
/// plan's threads (null: the calling thread). Element type T: float, bfloat16, Fp8Latent or
/// Int8Latent.
/// Allocates nothing once `ws` holds plan.workspace_floats() (it grows otherwise).
/// `path` = KernelPath::kAmx runs contiguous bf16 rows on the AMX tiles, rounding the query and
/// the softmax weights to bf16 (see amx_attention.hpp); other rows run the AVX-512 tiles then.
/// Throws std::invalid_argument for shapes that differ from the plan, null pointers, a bad view
/// or a path this CPU lacks (std::runtime_error when the OS refuses the AMX tile state); nothing
/// is written then.
template <class T>
void run_decode(const DecodePlan& plan, const DecodeSequence<T>* seqs, Index batch,
                float softmax_scale, DecodeWorkspace& ws, ThreadPool* pool = nullptr,
                KernelPath path = KernelPath::kAuto) {
  const char* what = "run_decode";
  const Index R = plan.kv_lora_rank(), P = plan.rope_dim();
  auto check_sequence = [&](Index b) {
    const DecodeSequence<T>& s = seqs[b];
    s.cache.validate(what, b);
    MLA_CHECK_ARG(s.cache.kv_lora_rank == R && s.cache.rope_dim == P, what, ", sequence ", b,
                  ": cache widths [", s.cache.kv_lora_rank, ", ", s.cache.rope_dim,
                  "] differ from the plan's [", R, ", ", P, "]");
    MLA_CHECK_ARG(s.q_len == plan.q_len(b) && s.cache.len == plan.len(b), what, ", sequence ", b,
                  ": q_len ", s.q_len, " and cache length ", s.cache.len, " differ from the plan's ",
                  plan.q_len(b), " and ", plan.len(b));
    MLA_CHECK_ARG(s.q_lat != nullptr && s.o_lat != nullptr && (s.q_pe != nullptr || P == 0), what,
                  ", sequence ", b, ": q_lat, q_pe and o_lat must not be null");
  };
  internal::run_planned<internal::MlaPathOps>(
      plan, DecodeKind::kMlaAbsorbed, batch, seqs, ws, pool, path, what, check_sequence,
      [&](auto ops, float* base) {
        internal::run_decode_with<decltype(ops)>(plan, seqs, softmax_scale, base, pool);
      });
}

/// Plans and runs one step in one call (the plan lives in `ws`, and is reused while the shapes
/// stay the same, e.g. by the later layers of a step): run_decode's math and shapes. All
/// sequences share num_heads and the cache widths; q_len and cache length differ per sequence.
template <class T>
void batched_absorbed_attention(Index num_heads, const DecodeSequence<T>* seqs, Index batch,
                                float softmax_scale, DecodeWorkspace& ws,
                                ThreadPool* pool = nullptr, BatchedDecodeOptions options = {},
                                KernelPath path = KernelPath::kAuto) {
  // The plan takes sequence 0's widths; run_decode checks every view against it (and validates
  // it) before anything is written.
  if (!ws.plan().matches(num_heads, seqs, batch, num_threads(pool), options))
    ws.plan().plan(num_heads, seqs, batch, num_threads(pool), options);
  run_decode(ws.plan(), seqs, batch, softmax_scale, ws, pool, path);
}

/// Absorbed MLA decode of one sequence through its rows view (a batch of one): q_len new
/// tokens, `num_heads` heads, the rows of `cache` (the new tokens' rows included).
template <class T>
void paged_absorbed_attention(Index q_len, Index num_heads, const float* q_lat, const float* q_pe,
                              const LatentRowsView<T>& cache, float softmax_scale, float* o_lat,
                              float* lse, DecodeWorkspace& ws, ThreadPool* pool = nullptr,
                              KernelPath path = KernelPath::kAuto) {
  DecodeSequence<T> s;
  s.q_len = q_len;
  s.q_lat = q_lat;
  s.q_pe = q_pe;
  s.cache = cache;
  s.o_lat = o_lat;
  s.lse = lse;
  batched_absorbed_attention(num_heads, &s, 1, softmax_scale, ws, pool, {}, path);
}

/// Absorbed MLA decode attention over contiguous rows (FlashMLA's decode kernel on a CPU):
/// for query row m (token m / num_heads, head m % num_heads) and the visible cache rows j
/// (j <= cache_len - q_len + token),
///   s_j = softmax_scale * (q_lat[m] . c_j + q_pe[m] . p_j)
///   o_lat[m] = sum_j softmax(s)_j c_j,        lse[m] = log sum_j exp(s_j)   (if lse != nullptr)
/// with cache row j = [c_j (kv_lora) | p_j (rope)]. Scores are rounded to float before the
/// softmax; accumulation is in float.
/// Shapes: q_lat [M, kv_lora], q_pe [M, rope], cache [>= cache_len rows, row_stride] (float or
/// bfloat16), o_lat [M, kv_lora], lse [M]; M = q_len * num_heads, all row-major and contiguous.
/// `pool` may be null (single thread); `ws` grows if it is smaller than the call needs.
/// Throws std::invalid_argument for inconsistent shapes, null pointers or a path this CPU lacks,
/// std::runtime_error when the OS refuses the AMX tile state.
template <class CacheScalar>
void absorbed_attention(const AbsorbedAttentionShape& shape, const float* q_lat, const float* q_pe,
                        const CacheScalar* cache, float softmax_scale, float* o_lat, float* lse,
                        DecodeWorkspace& ws, ThreadPool* pool = nullptr,
                        KernelPath path = KernelPath::kAuto) {
  static_assert(std::is_same_v<CacheScalar, float> || std::is_same_v<CacheScalar, bfloat16>,
                "absorbed_attention: the cache holds float or mla::bfloat16");
  shape.validate();
  MLA_CHECK_ARG(q_lat != nullptr && cache != nullptr && o_lat != nullptr &&
                    (q_pe != nullptr || shape.rope == 0),
                "absorbed attention: q_lat, q_pe, cache and o_lat must not be null");
  LatentRowsView<CacheScalar> rows;
  rows.base = cache;
  rows.row_stride = shape.row_stride;
  rows.len = shape.cache_len;
  rows.kv_lora_rank = shape.kv_lora;
  rows.rope_dim = shape.rope;
  paged_absorbed_attention(shape.q_len, shape.num_heads, q_lat, q_pe, rows, softmax_scale, o_lat,
                           lse, ws, pool, path);
}

/// Runs a planned MHA / GQA step (plan_gqa): for every sequence, token t, query head h and the
/// rows j its token sees (j <= len - q_len + t),
///   s_j = softmax_scale q[t, h] . K[h / group, j],
///   out[t, h] = sum_j softmax(s)_j V[h / group, j],   lse[t, h] = log sum_j exp(s_j) (if lse).
/// Each kv head's rows are streamed once for all the query rows that read them; a row of the
/// causal triangle enters only the arithmetic of the tokens that see it (a NaN or Inf there
/// reaches those tokens only). `seqs` must have the shapes the plan was made for; `pool` at most
/// its threads. Allocates nothing once `ws` holds plan.workspace_floats().
/// Throws std::invalid_argument for shapes other than the plan's, null pointers, head strides
/// below a head's rows or a path this CPU lacks (std::runtime_error when the OS refuses the AMX
/// tile state); nothing is written then.
template <class T>
void run_gqa_decode(const DecodePlan& plan, const GqaDecodeSequence<T>* seqs, Index batch,
                    float softmax_scale, DecodeWorkspace& ws, ThreadPool* pool = nullptr,
                    KernelPath path = KernelPath::kAuto) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bfloat16>,
                "run_gqa_decode: the cache holds float or mla::bfloat16");
  const char* what = "run_gqa_decode";
  auto check_sequence = [&](Index b) {
    const GqaDecodeSequence<T>& s = seqs[b];
    MLA_CHECK_ARG(s.q_len == plan.q_len(b) && s.len == plan.len(b), what, ", sequence ", b,
                  ": q_len ", s.q_len, " and length ", s.len, " differ from the plan's ",
                  plan.q_len(b), " and ", plan.len(b));
    MLA_CHECK_ARG(s.q != nullptr && s.k != nullptr && s.v != nullptr && s.out != nullptr, what,
                  ", sequence ", b, ": q, k, v and out must not be null");
    MLA_CHECK_ARG(plan.num_kv_heads() == 1 || (s.k_head_stride >= s.len * plan.head_dim() &&
                                               s.v_head_stride >= s.len * plan.v_dim()),
                  what, ", sequence ", b, ": head strides (", s.k_head_stride, ", ",
                  s.v_head_stride, ") must hold len * head_dim (", s.len * plan.head_dim(),
                  ") and len * v_dim (", s.len * plan.v_dim(), ")");
  };
  internal::run_planned<internal::GqaPathOps>(
      plan, DecodeKind::kGqa, batch, seqs, ws, pool, path, what, check_sequence,
      [&](auto ops, float* base) {
        internal::run_gqa_decode_with<decltype(ops)>(plan, seqs, softmax_scale, base, pool);
      });
}

/// MHA / GQA decode attention of one sequence (flash decoding, each kv head streamed once per
/// call), planned and run in one call (the plan lives in `ws` and is reused while the shape stays
/// the same). Math as run_gqa_decode; shapes: q [q_len, num_heads, head_dim], k [num_kv_heads,
/// capacity, head_dim] (head stride k_head_stride), v [num_kv_heads, capacity, v_dim] (head
/// stride v_head_stride), out [q_len, num_heads, v_dim], lse [q_len, num_heads]; float math,
/// float or bfloat16 cache. `pool` may be null (single thread); `ws` grows if it is smaller than
/// the call needs. `path` picks the code path (kAmx runs a bf16 cache on the AMX tile unit).
/// Throws std::invalid_argument for inconsistent shapes, null pointers or a path this CPU lacks,
/// std::runtime_error when the OS refuses the AMX tile state.
template <class CacheScalar>
void gqa_attention(const GqaAttentionShape& shape, const float* q, const CacheScalar* k,
                   const CacheScalar* v, float softmax_scale, float* out, float* lse,
                   DecodeWorkspace& ws, ThreadPool* pool = nullptr,
                   KernelPath path = KernelPath::kAuto) {
  static_assert(std::is_same_v<CacheScalar, float> || std::is_same_v<CacheScalar, bfloat16>,
                "gqa_attention: the cache holds float or mla::bfloat16");
  shape.validate();
  MLA_CHECK_ARG(q != nullptr && k != nullptr && v != nullptr && out != nullptr,
                "gqa attention: q, k, v and out must not be null");
  GqaDecodeSequence<CacheScalar> s;
  s.q_len = shape.q_len;
  s.q = q;
  s.k = k;
  s.v = v;
  s.k_head_stride = shape.k_head_stride;
  s.v_head_stride = shape.v_head_stride;
  s.len = shape.cache_len;
  s.out = out;
  s.lse = lse;
  const int threads = num_threads(pool);
  DecodePlan& plan = ws.plan();
  if (!plan.matches_gqa(shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.v_dim, &s, 1,
                        threads, {}))
    plan.plan_gqa(shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.v_dim, &s, 1,
                  threads);
  run_gqa_decode(plan, &s, 1, softmax_scale, ws, pool, path);
}

}  // namespace kernels
}  // namespace mla
