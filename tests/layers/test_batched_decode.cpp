// Batched decode: one call for B sequences of different lengths and q_len equals B separate
// single-sequence decodes, at the attention core (batched_absorbed_attention against the
// contiguous kernel and the double reference, paged and contiguous caches mixed, float / bf16,
// 1 and 2 threads, any number of parts) and at the layer (mla_decode_batch against
// MultiHeadLatentAttention::forward per sequence); the scheduler splits a long sequence across
// threads with equal work per part; bad input leaves the caches untouched; no heap allocation
// per call once warm.
#include "mla/layers/batched_decode.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "mla/kernels/decode_engine.hpp"
#include "mla/reference/attention.hpp"
#include "support/alloc_counter.hpp"
#include "support/random.hpp"

namespace mla {
namespace {

using kernels::BatchedDecodeOptions;
using kernels::DecodeSequence;

std::vector<float> random_values(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

float rel_err(const float* a, const float* b, std::size_t n) {
  float e = 0.0f, m = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    e = std::max(e, std::abs(a[i] - b[i]));
    m = std::max(m, std::abs(b[i]));
  }
  return e / std::max(m, 1e-30f);
}

/// B sequences; odd ones in a shared pool (scattered blocks), even ones contiguous.
template <class T>
struct Batch {
  Batch(Index heads, Index kv_lora, Index rope, const std::vector<Index>& lens,
        const std::vector<Index>& q_lens, Index block, unsigned seed)
      : H(heads), R(kv_lora), P(rope), rng(seed) {
    Index blocks = 0;
    for (Index len : lens) blocks += (len + block - 1) / block;
    pool = std::make_unique<LatentBlockPool<T>>(R, P, blocks + 2, block);
    std::vector<std::int32_t> ids;
    pool->allocate(pool->num_blocks(), ids);
    std::shuffle(ids.begin(), ids.end(), rng);
    for (std::int32_t id : ids) pool->free(id);
    for (std::size_t b = 0; b < lens.size(); ++b) {
      const Index len = lens[b], m = q_lens[b] * H;
      rows.push_back(random_values(std::size_t(len * (R + P)), rng));
      contiguous.emplace_back(R, P, len);
      contiguous.back().append(rows.back().data(), R + P, len);
      paged.emplace_back(*pool, len);
      paged.back().append(rows.back().data(), R + P, len);
      q_lat.push_back(random_values(std::size_t(m * R), rng));
      q_pe.push_back(random_values(std::size_t(m * P), rng));
      out.emplace_back(std::size_t(m * R), NAN);
      lse.emplace_back(std::size_t(m), NAN);
      DecodeSequence<T> s;
      s.q_len = q_lens[b];
      s.q_lat = q_lat.back().data();
      s.q_pe = q_pe.back().data();
      s.cache = b % 2 ? paged.back().rows() : latent_rows(contiguous.back());
      seqs.push_back(s);
    }
    // Pointers into the vectors are taken once they stop growing.
    for (std::size_t b = 0; b < lens.size(); ++b) {
      seqs[b].q_lat = q_lat[b].data();
      seqs[b].q_pe = q_pe[b].data();
      seqs[b].o_lat = out[b].data();
      seqs[b].lse = lse[b].data();
      seqs[b].cache = b % 2 ? paged[b].rows() : latent_rows(contiguous[b]);
    }
  }
  Index H, R, P;
  std::mt19937 rng;
  std::unique_ptr<LatentBlockPool<T>> pool;
  std::vector<std::vector<float>> rows, q_lat, q_pe, out, lse;
  std::vector<LatentCache<T>> contiguous;
  std::vector<PagedLatentCache<T>> paged;
  std::vector<DecodeSequence<T>> seqs;
};

template <class T>
void check_batch(const std::vector<Index>& lens, const std::vector<Index>& q_lens, Index heads,
                 Index R, Index P, Index block, unsigned seed) {
  Batch<T> batch(heads, R, P, lens, q_lens, block, seed);
  const float scale = 0.2f;
  ThreadPool pool2(2);
  kernels::DecodeWorkspace ws;
  kernels::DecodeWorkspace kws;
  for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &pool2})
    for (BatchedDecodeOptions opt : {BatchedDecodeOptions{1, 128}, BatchedDecodeOptions{3, 8}}) {
      kernels::batched_absorbed_attention(heads, batch.seqs.data(), Index(batch.seqs.size()),
                                          scale, ws, pool, opt);
      for (std::size_t b = 0; b < lens.size(); ++b) {
        // The same sequence alone through the contiguous kernel, and the double reference.
        kernels::AbsorbedAttentionShape sh;
        sh.q_len = q_lens[b];
        sh.num_heads = heads;
        sh.kv_lora = R;
        sh.rope = P;
        sh.cache_len = lens[b];
        sh.row_stride = R + P;
        const std::size_t m = std::size_t(q_lens[b] * heads);
        std::vector<float> alone(m * std::size_t(R)), alone_lse(m), ref(alone.size()), ref_lse(m);
        kernels::absorbed_attention(sh, batch.q_lat[b].data(), batch.q_pe[b].data(),
                                    batch.contiguous[b].data(), scale, alone.data(),
                                    alone_lse.data(), kws, pool);
        reference::absorbed_attention(sh, batch.q_lat[b].data(), batch.q_pe[b].data(),
                                      batch.contiguous[b].data(), scale, ref.data(),
                                      ref_lse.data());
        const std::string what = ::testing::PrintToString(std::vector<Index>{
            Index(b), lens[b], q_lens[b], num_threads(pool), opt.parts_per_thread});
        ASSERT_LE(rel_err(batch.out[b].data(), alone.data(), alone.size()), 1e-5f)
            << "sequence, len, q_len, threads, parts/thread = " << what;
        ASSERT_LE(rel_err(batch.out[b].data(), ref.data(), ref.size()), 1e-5f) << what;
        for (std::size_t i = 0; i < m; ++i)
          ASSERT_NEAR(batch.lse[b][i], ref_lse[i], 1e-5f * std::max(1.0f, std::abs(ref_lse[i])))
              << "lse row " << i << " of " << what;
      }
    }
}

TEST(BatchedAbsorbedAttention, EqualsSeparateDecodesSmallDims) {
  check_batch<float>({1, 5, 64, 65, 300, 1000, 7}, {1, 1, 2, 1, 3, 1, 2}, 3, 20, 6, 7, 1);
  check_batch<bfloat16>({1, 5, 64, 65, 300, 1000, 7}, {1, 1, 2, 1, 3, 1, 2}, 3, 20, 6, 64, 2);
}

TEST(BatchedAbsorbedAttention, EqualsSeparateDecodesDeepSeekDims) {
  // 128 heads, so q_len 2 makes two 128-row passes per sequence.
  check_batch<float>({40, 300, 9}, {1, 2, 1}, 128, 512, 64, 64, 3);
  check_batch<bfloat16>({200, 3}, {2, 3}, 16, 512, 64, 64, 4);
}

TEST(BatchedAbsorbedAttention, OneLongSequenceIsSplitAcrossThreads) {
  // One 2000-row sequence and three short ones on 2 threads: two parts of equal row count, the
  // long sequence cut between them and merged (FlashMLA's balanced split).
  Batch<float> batch(4, 16, 4, {2000, 10, 20, 30}, {1, 1, 1, 1}, 64, 5);
  ThreadPool pool2(2);
  kernels::DecodeWorkspace ws;
  kernels::batched_absorbed_attention(4, batch.seqs.data(), 4, 0.3f, ws, &pool2, {1, 128});
  const kernels::DecodePlan& plan = ws.plan();
  ASSERT_EQ(plan.num_parts(), 2);
  Index rows[2] = {0, 0};
  for (Index p = 0; p < 2; ++p)
    for (Index i = plan.part_begin()[std::size_t(p)]; i < plan.part_begin()[std::size_t(p) + 1]; ++i)
      rows[p] += plan.pieces()[std::size_t(i)].j1 - plan.pieces()[std::size_t(i)].j0;
  EXPECT_EQ(rows[0], 1030);
  EXPECT_EQ(rows[1], 1030);
  EXPECT_EQ(plan.units()[0].num_pieces, 2);  // the long one, split
  EXPECT_EQ(plan.num_split_units(), 1);
  // More parts per thread cut the work finer: by default as many as the contiguous kernel's
  // splits (4 per thread): parts of 257-258 rows, the long sequence cut into 8 pieces.
  kernels::batched_absorbed_attention(4, batch.seqs.data(), 4, 0.3f, ws, &pool2);
  EXPECT_EQ(ws.plan().num_parts(), 8);
  EXPECT_EQ(ws.plan().units()[0].num_pieces, 8);
  kernels::batched_absorbed_attention(4, batch.seqs.data(), 4, 0.3f, ws, &pool2, {2, 64});
  EXPECT_EQ(ws.plan().num_parts(), 4);
  // One thread: a single part, nothing split.
  kernels::batched_absorbed_attention(4, batch.seqs.data(), 4, 0.3f, ws, nullptr);
  EXPECT_EQ(ws.plan().num_parts(), 1);
  EXPECT_EQ(ws.plan().num_split_units(), 0);
}

TEST(BatchedAbsorbedAttention, NoHeapAllocationAfterWarmUp) {
  Batch<bfloat16> batch(16, 64, 16, {500, 33, 1200, 7}, {1, 2, 1, 1}, 64, 6);
  ThreadPool pool2(2);
  kernels::DecodeWorkspace ws;
  for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &pool2}) {
    kernels::batched_absorbed_attention(16, batch.seqs.data(), 4, 0.3f, ws, pool);
    g_allocs = 0;
    g_count_allocs = true;
    for (int i = 0; i < 3; ++i)
      kernels::batched_absorbed_attention(16, batch.seqs.data(), 4, 0.3f, ws, pool);
    g_count_allocs = false;
    EXPECT_EQ(g_allocs.load(), 0) << "threads " << num_threads(pool);
  }
}

// ---- the layer-level helper ------------------------------------------------------------------

MlaConfig small_config() {
  MlaConfig c;
  c.hidden_size = 48;
  c.num_attention_heads = 4;
  c.q_lora_rank = 24;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 6;
  c.max_position_embeddings = 512;
  return c;
}

/// Prompts of different lengths prefilled per sequence with layer.forward, then two batched steps
/// (q_lens {1, 3, 1, 2} and then all 1) through mla_decode_batch, against the same steps done
/// with layer.forward(..., kAbsorbed) sequence by sequence on separate caches.
template <class Cache, class MakeCache>
void check_layer_batch(MakeCache make_cache, double tol) {
  const MlaConfig cfg = small_config();
  testing::Rng rng(21);
  const MultiHeadLatentAttention<float> layer(cfg, testing::random_mla_weights<float>(cfg, rng));
  const std::vector<Index> prompt{5, 70, 1, 33};
  const std::vector<std::vector<Index>> steps{{1, 3, 1, 2}, {1, 1, 1, 1}};
  const Index B = Index(prompt.size());
  std::vector<std::unique_ptr<Cache>> caches;
  std::vector<LatentCache<typename Cache::Element>> ref_caches;
  std::vector<Index> pos(static_cast<std::size_t>(B));
  Workspace ws;
  for (Index b = 0; b < B; ++b) {
    caches.push_back(make_cache(b));
    ref_caches.push_back(layer.make_latent_cache<typename Cache::Element>(100));
    const Matrix<float> x = rng.normal<float>(prompt[std::size_t(b)], cfg.hidden_size);
    Matrix<float> y(x.rows(), cfg.hidden_size);
    // The batched helper prefills too (q_len = prompt length, causal).
    Workspace prefill_ctx;
    mla_decode_batch(layer, x, testing::positions_from(0, x.rows()), {x.rows()},
                     std::vector<Cache*>{caches.back().get()}, y, prefill_ctx);
    const Matrix<float> y_ref =
        layer.forward(x, testing::positions_from(0, x.rows()), ref_caches.back(), MlaPath::kAbsorbed);
    EXPECT_LE(testing::rel_max_err(y, y_ref), tol) << "prefill of sequence " << b;
    pos[std::size_t(b)] = x.rows();
  }
  ThreadPool pool2(2);
  Workspace ctx;
  ctx.set_thread_pool(&pool2);
  ctx.decode_options.min_rows_per_part = 16;  // small enough that the 70-token sequence gets split
  for (const std::vector<Index>& q_lens : steps) {
    Index n = 0;
    for (Index t : q_lens) n += t;
    const Matrix<float> x = rng.normal<float>(n, cfg.hidden_size);
    Positions positions(n);
    Index row = 0;
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < q_lens[std::size_t(b)]; ++t) positions[row++] = pos[std::size_t(b)] + t;
    std::vector<Cache*> ptrs;
    for (auto& c : caches) ptrs.push_back(c.get());
    Matrix<float> y(n, cfg.hidden_size);
    mla_decode_batch(layer, x, positions, q_lens, ptrs, y, ctx);
    row = 0;
    for (Index b = 0; b < B; ++b) {
      const Index t = q_lens[std::size_t(b)];
      const Matrix<float> y_ref = layer.forward(x.middleRows(row, t), positions.segment(row, t),
                                                ref_caches[std::size_t(b)], MlaPath::kAbsorbed);
      EXPECT_LE(testing::rel_max_err(y.middleRows(row, t), y_ref), tol)
          << "sequence " << b << " q_len " << t;
      EXPECT_EQ(caches[std::size_t(b)]->size(), ref_caches[std::size_t(b)].size());
      pos[std::size_t(b)] += t;
      row += t;
    }
  }
}

TEST(MlaDecodeBatch, EqualsPerSequenceForwardWithContiguousCaches) {
  check_layer_batch<LatentCache<float>>(
      [](Index) { return std::make_unique<LatentCache<float>>(32, 4, 100); }, 1e-5);
}

TEST(MlaDecodeBatch, EqualsPerSequenceForwardWithPagedCaches) {
  // Sequences reach 75 tokens: 80 each is 12 blocks of 7, 20 of 4.
  LatentBlockPool<float> pool(32, 4, 48, 7);
  check_layer_batch<PagedLatentCache<float>>(
      [&](Index) { return std::make_unique<PagedLatentCache<float>>(pool, 80); }, 1e-5);
  EXPECT_EQ(pool.num_free(), 48);  // every cache gave its blocks back
  LatentBlockPool<bfloat16> pool_b(32, 4, 80, 4);
  check_layer_batch<PagedLatentCache<bfloat16>>(
      [&](Index) { return std::make_unique<PagedLatentCache<bfloat16>>(pool_b, 80); }, 1e-5);
}

TEST(MlaDecodeBatch, BadInputLeavesTheCachesUntouched) {
  const MlaConfig cfg = small_config();
  testing::Rng rng(22);
  const MultiHeadLatentAttention<float> layer(cfg, testing::random_mla_weights<float>(cfg, rng));
  LatentBlockPool<float> pool(32, 4, 4, 4);
  PagedLatentCache<float> a(pool, 4), b(pool, 4);
  Workspace ctx;
  const Matrix<float> x = rng.normal<float>(3, cfg.hidden_size);
  Matrix<float> y(3, cfg.hidden_size);
  const Positions pos = testing::positions_from(0, 3);
  using Caches = std::vector<PagedLatentCache<float>*>;
  // Sum of q_lens differs from x's rows.
  EXPECT_THROW(mla_decode_batch(layer, x, pos, {1, 1}, Caches{&a, &b}, y, ctx),
               std::invalid_argument);
  // The same cache twice.
  EXPECT_THROW(mla_decode_batch(layer, x, pos, {1, 2}, Caches{&a, &a}, y, ctx),
               std::invalid_argument);
  // No room in the second cache (capacity 4 after the first call): the first cache must not
  // have been appended to either.
  mla_decode_batch(layer, x, pos, {1, 2}, Caches{&a, &b}, y, ctx);
  EXPECT_EQ(a.size(), 1);
  EXPECT_EQ(b.size(), 2);
  const Matrix<float> x4 = rng.normal<float>(4, cfg.hidden_size);
  Matrix<float> y4(4, cfg.hidden_size);
  try {
    mla_decode_batch(layer, x4, testing::positions_from(3, 4), {1, 3}, Caches{&a, &b}, y4, ctx);
    FAIL() << "an overflowing cache was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("overflow"), std::string::npos) << e.what();
  }
  EXPECT_EQ(a.size(), 1);
  EXPECT_EQ(b.size(), 2);
  // Positions beyond the RoPE table.
  EXPECT_THROW(mla_decode_batch(layer, x, testing::positions_from(600, 3), {1, 2}, Caches{&a, &b},
                                y, ctx),
               std::invalid_argument);
  // A cache of other widths.
  LatentBlockPool<float> other(16, 4, 2, 4);
  PagedLatentCache<float> c(other, 4);
  EXPECT_THROW(mla_decode_batch(layer, x, pos, {1, 2}, Caches{&a, &c}, y, ctx),
               std::invalid_argument);
  EXPECT_EQ(a.size(), 1);
}

}  // namespace
}  // namespace mla
