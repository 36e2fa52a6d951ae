// Paged latent cache: block pool allocation / free / exhaustion / growth, the per-sequence block
// table (reserve, append, truncate, release), views and their runs; and absorbed decode through
// the block table against the double reference on the same rows laid out contiguously, against
// the contiguous fast kernel, and against the blockwise (one public-kernel call per block)
// variant: float and bf16 rows, block sizes 1, 7 and 64, q_len 1 and > 1 with the new tokens
// straddling a block boundary, fragmented and in-order block tables, 1 and 2 threads, both code
// paths; plus bad input and a count of heap allocations per decode call.
#include "mla/cache/paged_latent_cache.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "mla/core/threading.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/reference/attention.hpp"

#include "support/compare.hpp"
#include "support/blockwise_absorbed.hpp"
#include "support/alloc_counter.hpp"

namespace mla {
namespace {

using kernels::KernelPath;

std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// ---- pool and cache bookkeeping ----------------------------------------------------------------

TEST(LatentBlockPool, AllocatesInOrderFreesAndReportsExhaustion) {
  LatentBlockPool<float> pool(4, 2, /*num_blocks=*/3, /*block_size=*/5);
  EXPECT_EQ(pool.block_size(), 5);
  EXPECT_EQ(pool.row_units(), 6);
  EXPECT_EQ(pool.bytes_per_token(), 6 * sizeof(float));
  EXPECT_EQ(pool.num_free(), 3);
  // A fresh pool hands out ascending, physically adjacent blocks.
  EXPECT_EQ(pool.allocate(), 0);
  EXPECT_EQ(pool.allocate(), 1);
  EXPECT_EQ(pool.allocate(), 2);
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_FALSE(pool.try_allocate().has_value());
  try {
    pool.allocate();
    FAIL() << "allocate() on an exhausted pool did not throw";
  } catch (const BlockPoolExhausted& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("exhausted"), std::string::npos) << msg;
    EXPECT_NE(msg.find("0 of 3 free"), std::string::npos) << msg;
  }
  // It is also an std::invalid_argument, like every other cache overflow.
  EXPECT_THROW(pool.allocate(), std::invalid_argument);
  pool.free(1);
  EXPECT_FALSE(pool.is_allocated(1));
  EXPECT_TRUE(pool.is_allocated(2));
  EXPECT_EQ(pool.allocate(), 1);
  EXPECT_THROW(pool.free(3), std::invalid_argument);   // outside the pool
  EXPECT_THROW(pool.free(-1), std::invalid_argument);
  pool.free(0);
  EXPECT_THROW(pool.free(0), std::invalid_argument);   // double free
  std::vector<std::int32_t> ids{42};
  EXPECT_THROW(pool.allocate(2, ids), BlockPoolExhausted);  // all or nothing
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_THROW(LatentBlockPool<float>(4, 2, 3, 0), std::invalid_argument);
  EXPECT_THROW(LatentBlockPool<float>(0, 2, 3, 4), std::invalid_argument);
}

TEST(LatentBlockPool, GrowKeepsIdsAndContents) {
  LatentBlockPool<float> pool(3, 1, 2, 2);
  const std::int32_t b = pool.allocate();
  for (Index i = 0; i < pool.block_units(); ++i) pool.block_data(b)[i] = float(i + 1);
  pool.grow(5);
  EXPECT_EQ(pool.num_blocks(), 5);
  EXPECT_EQ(pool.num_free(), 4);
  for (Index i = 0; i < pool.block_units(); ++i) EXPECT_EQ(pool.block_data(b)[i], float(i + 1));
  // The block that was free before growing comes first, then the new ones in ascending order.
  EXPECT_EQ(pool.allocate(), 1);
  EXPECT_EQ(pool.allocate(), 2);
  EXPECT_EQ(pool.allocate(), 3);
  pool.grow(1);  // never shrinks
  EXPECT_EQ(pool.num_blocks(), 5);
}

TEST(PagedLatentCache, ReserveAppendTruncateRelease) {
  LatentBlockPool<float> pool(4, 2, /*num_blocks=*/3, /*block_size=*/7);
  const std::vector<float> src = random_values(10 * 6, 1);
  {
    PagedLatentCache<float> cache(pool);
    EXPECT_EQ(cache.capacity(), 0);
    EXPECT_THROW(cache.append(src.data(), 6, 1), std::invalid_argument);  // no room: explicit
    cache.reserve(10);
    EXPECT_EQ(cache.num_blocks(), 2);
    EXPECT_EQ(cache.capacity(), 14);
    EXPECT_EQ(pool.num_free(), 1);
    cache.append(src.data(), 6, 10);
    EXPECT_EQ(cache.size(), 10);
    for (Index t = 0; t < 10; ++t)
      for (Index i = 0; i < 6; ++i) ASSERT_EQ(cache.row(t)[i], src[std::size_t(t * 6 + i)]);
    // Rows live where the table says: token 8 is row 1 of the second block.
    EXPECT_EQ(cache.row(8), pool.block_data(cache.block_table()[1]) + 1 * 6);
    try {
      cache.check_room(5);
      FAIL() << "check_room past capacity did not throw";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("capacity 14"), std::string::npos) << e.what();
    }
    // Growing past the pool throws and changes nothing.
    EXPECT_THROW(cache.reserve(22), BlockPoolExhausted);
    EXPECT_EQ(cache.num_blocks(), 2);
    EXPECT_EQ(pool.num_free(), 1);
    cache.ensure_room(4);  // fits in the blocks held
    EXPECT_EQ(cache.num_blocks(), 2);
    cache.truncate(3);
    EXPECT_EQ(cache.size(), 3);
    EXPECT_THROW(cache.truncate(4), std::invalid_argument);
    cache.shrink_to_fit();
    EXPECT_EQ(cache.num_blocks(), 1);
    EXPECT_EQ(pool.num_free(), 2);
    PagedLatentCache<float> moved(std::move(cache));
    EXPECT_EQ(moved.size(), 3);
    EXPECT_EQ(cache.num_blocks(), 0);
    EXPECT_EQ(pool.num_free(), 2);
  }  // destructors return the blocks
  EXPECT_EQ(pool.num_free(), 3);
  PagedLatentCache<float> a(pool, 15);
  EXPECT_EQ(a.num_blocks(), 3);
  a.release();
  EXPECT_EQ(a.capacity(), 0);
  EXPECT_EQ(pool.num_free(), 3);
  PagedLatentCache<float> none;
  EXPECT_EQ(none.capacity(), 0);
  EXPECT_THROW(none.reserve(1), std::invalid_argument);
}

TEST(PagedLatentCache, Bf16RowsRoundToNearest) {
  LatentBlockPool<bfloat16> pool(5, 3, 2, 4);
  PagedLatentCache<bfloat16> cache(pool, 6);
  const std::vector<float> src = random_values(6 * 8, 2);
  cache.append(src.data(), 8, 6);
  EXPECT_EQ(pool.bytes_per_token(), 16u);
  for (Index t = 0; t < 6; ++t)
    for (Index i = 0; i < 8; ++i)
      ASSERT_EQ(float(cache.row(t)[i]), float(bfloat16(src[std::size_t(t * 8 + i)])));
}

TEST(LatentRowsView, RunsFollowPhysicallyAdjacentBlocks) {
  LatentBlockPool<float> pool(2, 0, 10, 4);
  const std::vector<std::int32_t> table{3, 4, 9, 2, 3};
  LatentRowsView<float> v;
  v.base = pool.data();
  v.block_table = table.data();
  v.block_size = 4;
  v.block_stride = pool.block_units();
  v.num_blocks = pool.num_blocks();
  v.row_stride = 2;
  v.len = 19;
  v.kv_lora_rank = 2;
  EXPECT_NO_THROW(v.validate("test"));
  EXPECT_EQ(v.run_length(0, 19), 8);   // blocks 3, 4
  EXPECT_EQ(v.run_length(5, 19), 3);   // rest of block 4
  EXPECT_EQ(v.run_length(8, 19), 4);   // block 9 alone
  EXPECT_EQ(v.run_length(12, 19), 7);  // blocks 2, 3 (the last one partly)
  EXPECT_EQ(v.run_length(13, 15), 2);  // capped at the end asked for
  EXPECT_EQ(v.row(13), pool.data() + 2 * 8 + 1 * 2);
  const std::vector<std::int32_t> bad{3, 4, 10, 2, 3};
  v.block_table = bad.data();
  EXPECT_THROW(v.validate("test"), std::invalid_argument);
  LatentRowsView<float> c;  // contiguous: one run
  c.base = pool.data();
  c.row_stride = 2;
  c.len = 30;
  c.kv_lora_rank = 2;
  EXPECT_EQ(c.run_length(3, 30), 27);
}

// ---- decode through the block table ------------------------------------------------------------

struct Case {
  Index q_len, heads, kv_lora, rope, len, block;
};

/// A pool whose free list is shuffled, so a cache's table lists scattered blocks; or, when
/// `in_order`, a fresh pool (one run of adjacent blocks).
template <class T>
struct PagedFixture {
  PagedFixture(const Case& c, bool in_order, unsigned seed)
      : pool(c.kv_lora, c.rope, (c.len + c.block - 1) / c.block + 3, c.block) {
    if (!in_order) {
      std::vector<std::int32_t> ids;
      pool.allocate(pool.num_blocks(), ids);
      std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
      for (std::int32_t id : ids) pool.free(id);
    }
    cache = PagedLatentCache<T>(pool, c.len);
    rows = random_values(std::size_t(c.len * (c.kv_lora + c.rope)), seed + 1);
    cache.append(rows.data(), c.kv_lora + c.rope, c.len);
    contiguous = LatentCache<T>(c.kv_lora, c.rope, c.len);
    contiguous.append(rows.data(), c.kv_lora + c.rope, c.len);
    const Index m = c.q_len * c.heads;
    q_lat = random_values(std::size_t(m * c.kv_lora), seed + 2);
    q_pe = random_values(std::size_t(m * c.rope), seed + 3);
  }
  LatentBlockPool<T> pool;
  PagedLatentCache<T> cache;
  LatentCache<T> contiguous;
  std::vector<float> rows, q_lat, q_pe;
};

using testing::rel_err;

template <class T>
void check_paged(const Case& c, float scale, ThreadPool* pool2, unsigned seed) {
  const Index m = c.q_len * c.heads;
  kernels::AbsorbedAttentionShape shape;
  shape.q_len = c.q_len;
  shape.num_heads = c.heads;
  shape.kv_lora = c.kv_lora;
  shape.rope = c.rope;
  shape.cache_len = c.len;
  shape.row_stride = c.kv_lora + c.rope;
  for (bool in_order : {false, true}) {
    PagedFixture<T> f(c, in_order, seed);
    // Reference: double loops over the same (rounded) rows, contiguous.
    std::vector<float> ref(std::size_t(m * c.kv_lora)), ref_lse(static_cast<std::size_t>(m));
    reference::absorbed_attention(shape, f.q_lat.data(), f.q_pe.data(), f.contiguous.data(), scale,
                                  ref.data(), ref_lse.data());
    const std::string what = ::testing::PrintToString(
        std::vector<Index>{c.q_len, c.heads, c.kv_lora, c.rope, c.len, c.block, in_order});
    ThreadPool* pools[] = {nullptr, pool2};
    kernels::DecodeWorkspace ws;
    for (KernelPath path : mla::kernels::available_paths())
      for (ThreadPool* pool : pools) {
        std::vector<float> out(ref.size(), NAN), lse(std::size_t(m), NAN);
        kernels::paged_absorbed_attention(c.q_len, c.heads, f.q_lat.data(), f.q_pe.data(),
                                          f.cache.rows(), scale, out.data(), lse.data(), ws, pool,
                                          path);
        ASSERT_LE(rel_err(out, ref), 1e-5f)
            << "q_len, heads, R, P, L, block, in_order = " << what
            << " threads " << num_threads(pool) << " path " << mla::kernels::path_name(path);
        for (Index i = 0; i < m; ++i)
          ASSERT_NEAR(lse[std::size_t(i)], ref_lse[std::size_t(i)],
                      1e-5f * std::max(1.0f, std::abs(ref_lse[std::size_t(i)])))
              << "lse row " << i << " of " << what;
      }
    // The contiguous fast kernel over the same rows: the same math, so the same numbers to
    // float rounding.
    std::vector<float> fast(ref.size());
    kernels::DecodeWorkspace kws;
    kernels::absorbed_attention(shape, f.q_lat.data(), f.q_pe.data(), f.contiguous.data(), scale,
                                fast.data(), nullptr, kws, pool2);
    std::vector<float> paged(ref.size());
    kernels::paged_absorbed_attention(c.q_len, c.heads, f.q_lat.data(), f.q_pe.data(),
                                      f.cache.rows(), scale, paged.data(), nullptr, ws, pool2);
    ASSERT_LE(rel_err(paged, fast), 1e-5f) << what;
    // The blockwise variant (public kernel per block, LSE-merged), 1 and 2 threads.
    test_support::BlockwiseAbsorbedWorkspace bws;
    for (ThreadPool* pool : pools) {
      std::vector<float> out(ref.size(), NAN), lse(std::size_t(m), NAN);
      test_support::paged_absorbed_attention_blockwise(c.q_len, c.heads, f.q_lat.data(), f.q_pe.data(),
                                                  f.cache.rows(), scale, out.data(), lse.data(),
                                                  bws, pool);
      ASSERT_LE(rel_err(out, ref), 1e-5f) << "blockwise " << what << " threads "
                                          << num_threads(pool);
      for (Index i = 0; i < m; ++i)
        ASSERT_NEAR(lse[std::size_t(i)], ref_lse[std::size_t(i)],
                    1e-5f * std::max(1.0f, std::abs(ref_lse[std::size_t(i)])))
            << "blockwise lse row " << i << " of " << what;
    }
  }
}

TEST(PagedAbsorbedAttention, MatchesReferenceSmallDims) {
  ThreadPool pool2(2);
  unsigned seed = 10;
  for (Index block : {1, 7, 64})
    for (Index q_len : {1, 2, 3})
      for (Index len : {q_len, Index(8), Index(15), Index(64), Index(65), Index(129), Index(200)}) {
        // len 15 with block 7 puts the last new tokens across the 14 | 15 block boundary.
        if (len < q_len) continue;
        const Case c{q_len, 3, 20, 6, len, block};
        check_paged<float>(c, 0.3f, &pool2, seed++);
        check_paged<bfloat16>(c, 0.3f, &pool2, seed++);
      }
}

TEST(PagedAbsorbedAttention, MatchesReferenceDeepSeekDims) {
  ThreadPool pool2(2);
  const float scale = 1.0f / std::sqrt(192.0f);
  unsigned seed = 100;
  // 128 heads (one pass) and 2 tokens x 128 heads (two passes), blocks of 64 and 7 with the new
  // tokens straddling a boundary (len 65: rows 63 | 64; len 71 with block 7: rows 69 | 70).
  const Case cases[] = {{1, 128, 512, 64, 130, 64}, {2, 128, 512, 64, 65, 64},
                        {2, 16, 512, 64, 71, 7},    {4, 16, 512, 64, 66, 64}};
  for (const Case& c : cases) {
    check_paged<float>(c, scale, &pool2, seed++);
    check_paged<bfloat16>(c, scale, &pool2, seed++);
  }
}

TEST(PagedAbsorbedAttention, RejectsBadInput) {
  LatentBlockPool<float> pool(8, 2, 4, 4);
  PagedLatentCache<float> cache(pool, 6);
  const std::vector<float> rows = random_values(6 * 10, 3);
  cache.append(rows.data(), 10, 6);
  std::vector<float> q(4 * 8, 0.5f), qp(4 * 2, 0.5f), out(4 * 8);
  kernels::DecodeWorkspace ws;
  // More new tokens than cache rows.
  EXPECT_THROW(kernels::paged_absorbed_attention(7, 1, q.data(), qp.data(), cache.rows(), 1.0f,
                                                 out.data(), nullptr, ws),
               std::invalid_argument);
  // A corrupted table.
  LatentRowsView<float> v = cache.rows();
  const std::vector<std::int32_t> bad{0, 4};
  v.block_table = bad.data();
  try {
    kernels::paged_absorbed_attention(1, 4, q.data(), qp.data(), v, 1.0f, out.data(), nullptr, ws);
    FAIL() << "a block id outside the pool was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("block_table[1] = 4"), std::string::npos) << e.what();
  }
  // Null output.
  EXPECT_THROW(kernels::paged_absorbed_attention(1, 4, q.data(), qp.data(), cache.rows(), 1.0f,
                                                 nullptr, nullptr, ws),
               std::invalid_argument);
  // Sequences of one batch must share the latent widths.
  LatentBlockPool<float> other(6, 2, 2, 4);
  PagedLatentCache<float> c2(other, 2);
  const std::vector<float> r2 = random_values(2 * 8, 4);
  c2.append(r2.data(), 8, 2);
  kernels::DecodeSequence<float> seqs[2];
  seqs[0] = {1, q.data(), qp.data(), cache.rows(), out.data(), nullptr};
  seqs[1] = {1, q.data(), qp.data(), c2.rows(), out.data(), nullptr};
  EXPECT_THROW(kernels::batched_absorbed_attention(4, seqs, 2, 1.0f, ws), std::invalid_argument);
}

TEST(PagedAbsorbedAttention, NoHeapAllocationAfterWarmUp) {
  const Case c{1, 128, 512, 64, 300, 64};
  PagedFixture<float> f(c, false, 5);
  ThreadPool pool2(2);
  kernels::DecodeWorkspace ws;
  std::vector<float> out(std::size_t(128 * 512)), lse(128);
  for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &pool2}) {
    kernels::paged_absorbed_attention(1, 128, f.q_lat.data(), f.q_pe.data(), f.cache.rows(), 0.1f,
                                      out.data(), lse.data(), ws, pool);  // warm-up
    g_allocs = 0;
    g_count_allocs = true;
    for (int i = 0; i < 3; ++i)
      kernels::paged_absorbed_attention(1, 128, f.q_lat.data(), f.q_pe.data(), f.cache.rows(),
                                        0.1f, out.data(), lse.data(), ws, pool);
    g_count_allocs = false;
    EXPECT_EQ(g_allocs.load(), 0) << "threads " << num_threads(pool);
  }
  // The blockwise variant too.
  test_support::BlockwiseAbsorbedWorkspace bws;
  test_support::paged_absorbed_attention_blockwise(1, 128, f.q_lat.data(), f.q_pe.data(),
                                              f.cache.rows(), 0.1f, out.data(), lse.data(), bws,
                                              &pool2);
  g_allocs = 0;
  g_count_allocs = true;
  test_support::paged_absorbed_attention_blockwise(1, 128, f.q_lat.data(), f.q_pe.data(),
                                              f.cache.rows(), 0.1f, out.data(), lse.data(), bws,
                                              &pool2);
  g_count_allocs = false;
  EXPECT_EQ(g_allocs.load(), 0);
}

}  // namespace
}  // namespace mla
