// Sizes formed from the caller's numbers never overflow int64 (signed-overflow undefined
// behaviour, which in practice wraps into a small or negative size and then reads or writes out
// of bounds): cache capacities times row widths, row widths themselves, room checks with counts
// near INT64_MAX, the sum of q_lens in batched decode, the batched plan's row counts, workspace
// buffers, head shards. Each passes a value that would overflow and expects std::invalid_argument
// naming the values; run under UBSan (scripts/sanitize.sh) any overflow left would be a report.
// (checked_mul / checked_add / checked_elements themselves: tests/core/test_check.cpp.)
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "mla/cache/kv_cache.hpp"
#include "mla/cache/latent_cache.hpp"
#include "mla/cache/paged_latent_cache.hpp"
#include "mla/cache/quantized_latent_cache.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/layers/batched_decode.hpp"
#include "mla/layers/sharding.hpp"
#include "mla/layers/workspace.hpp"
#include "support/error_message.hpp"
#include "support/random.hpp"
#include "support/small_layers.hpp"

namespace mla {
namespace {

constexpr Index kMax = std::numeric_limits<Index>::max();
constexpr Index k2p58 = Index{1} << 58;  // 2^58 * 576 = 9 * 2^64: wraps to exactly 0

using testing::invalid_argument_of;
using testing::small_mla_config;

// ---- Contiguous caches: capacity x row width, the row width, room checks. ----

TEST(SizeOverflow, LatentCacheCapacityTimesRowWidth) {
  std::string msg = invalid_argument_of([] { LatentCache<float>(512, 64, k2p58); });
  EXPECT_HAS(msg, "LatentCache::reserve: capacity * row width = 288230376151711744 * 576");
  // Fits in int64 as elements (2^52 * 576), not as bytes of float.
  msg = invalid_argument_of([] { LatentCache<float>(512, 64, Index{1} << 52); });
  EXPECT_HAS(msg, "the byte count overflows int64");
  EXPECT_HAS(invalid_argument_of([] { LatentCache<bfloat16>(kMax, 1, 0); }),
             "kv_lora_rank + qk_rope_head_dim = 9223372036854775807 + 1");
  LatentCache<float> ok(512, 64, 4);
  EXPECT_HAS(invalid_argument_of([&] { ok.reserve(k2p58); }), "capacity * row width");
  EXPECT_EQ(ok.capacity(), 4);  // unchanged
}

TEST(SizeOverflow, KvCacheCapacityTimesHeadsTimesWidth) {
  std::string msg = invalid_argument_of([] { KvCache<float>(8, 128, 128, k2p58); });
  EXPECT_HAS(msg, "kv_heads * capacity * head_dim = 8 * 288230376151711744 * 128");
  msg = invalid_argument_of([] { KvCache<float>(1, kMax, 1, 0); });
  EXPECT_HAS(msg, "head_dim + v_dim = 9223372036854775807 + 1");
  // kv_heads * (head_dim + v_dim) = 2^52 * 2^13.
  msg = invalid_argument_of([] { KvCache<float>(Index{1} << 52, 4096, 4096, 0); });
  EXPECT_HAS(msg, "kv_heads * (head_dim + v_dim)");
}

TEST(SizeOverflow, Fp8LatentCacheCapacityTimesRowBytes) {
  EXPECT_HAS(invalid_argument_of([] { Fp8LatentCache(512, 64, k2p58); }),
             "capacity * row bytes = 288230376151711744 * 656");
  EXPECT_HAS(invalid_argument_of([] { Fp8LatentCache(512, kMax / 2 + 1, 0); }), "2 * rope_dim");
  EXPECT_HAS(invalid_argument_of([] { Fp8LatentCache(kMax, 0, 0); }), "Fp8LatentLayout: row bytes");
}

template <class Cache>
void expect_room_checks_do_not_overflow(Cache& cache, const char* name) {
  // size_ + n would overflow for n near INT64_MAX; the check must refuse it, naming the values.
  for (Index n : {kMax, kMax - 1, kMax - cache.size() + 1}) {
    const std::string msg = invalid_argument_of([&] { cache.check_room(n); });
    EXPECT_HAS(msg, std::string(name) + " overflow: appending " + std::to_string(n) + " tokens");
  }
}

TEST(SizeOverflow, RoomChecksWithCountsNearInt64Max) {
  const std::vector<float> row(16 + 4, 0.5f);
  LatentCache<float> latent(16, 4, 8);
  latent.append(row.data(), 20, 1);
  expect_room_checks_do_not_overflow(latent, "LatentCache");
  Fp8LatentCache fp8(16, 4, 8);
  fp8.append(row.data(), 20, 1);
  expect_room_checks_do_not_overflow(fp8, "Fp8LatentCache");
  KvCache<float> kv(1, 16, 4, 8);
  kv.append(row.data(), 20, row.data(), 20, 1);
  expect_room_checks_do_not_overflow(kv, "KvCache");
  // dequantize(first, n): first + n would overflow.
  std::vector<float> out(20);
  // Through a volatile: with the constant visible, GCC at -march=x86-64-v2 propagates it into the
  // dequantisation loop behind the check and rejects the build (-Waggressive-loop-optimizations).
  volatile Index rows = kMax;
  EXPECT_HAS(invalid_argument_of([&] { fp8.dequantize(1, rows, out.data(), 20); }),
             "9223372036854775807 rows from row 1 are not inside the 1 stored");
}

// ---- Paged caches: pool sizing, reserve / ensure_room / check_room near INT64_MAX. ----

TEST(SizeOverflow, PagedPoolBlockUnitsAndGrowth) {
  EXPECT_HAS(invalid_argument_of([] { LatentBlockPool<float>(512, 64, 1, kMax / 100); }),
             "block_size * row units = 92233720368547758 * 576");
  // block_size * row units fits (2^40 * 576); times 2^20 blocks it does not.
  LatentBlockPool<float> pool(512, 64, 0, Index{1} << 40);
  EXPECT_HAS(invalid_argument_of([&] { pool.grow(Index{1} << 20); }),
             "num_blocks * block_size * row units = 1048576 * 1099511627776 * 576");
  EXPECT_EQ(pool.num_blocks(), 0);
  EXPECT_HAS(invalid_argument_of([] { LatentBlockPool<Fp8Latent>(kMax, 64, 1, 1); }),
             "Fp8LatentLayout: row bytes");
}

template <class T>
void expect_paged_room_checks(const char* what) {
  SCOPED_TRACE(what);
  LatentBlockPool<T> pool(16, 4, 4, 8);
  PagedLatentCache<T> cache(pool, 1);
  const std::vector<float> row(20, 0.25f);
  cache.append(row.data(), 20, 1);
  // reserve(INT64_MAX): ceil(tokens / block_size) blocks, formed without tokens + block_size - 1.
  try {
    cache.reserve(kMax);
    ADD_FAILURE() << "reserve(INT64_MAX) did not throw";
  } catch (const BlockPoolExhausted& e) {
    EXPECT_HAS(std::string(e.what()), "1152921504606846975 block(s) of 8 tokens needed");
  }
  // ensure_room(n) = reserve(size + n): the sum is checked.
  EXPECT_HAS(invalid_argument_of([&] { cache.ensure_room(kMax); }),
             "PagedLatentCache::ensure_room: size + n = 1 + 9223372036854775807 overflows");
  expect_room_checks_do_not_overflow(cache, "PagedLatentCache");
  EXPECT_EQ(cache.num_blocks(), 1);  // every failure left the cache and the pool as they were
  EXPECT_EQ(pool.num_free(), 3);
}

TEST(SizeOverflow, PagedCacheReserveEnsureRoomCheckRoom) {
  expect_paged_room_checks<float>("float");
  expect_paged_room_checks<bfloat16>("bf16");
  expect_paged_room_checks<Fp8Latent>("fp8");
}

TEST(SizeOverflow, LatentRowsViewBlockStrideProduct) {
  LatentRowsView<float> v;
  const float dummy = 0;
  const std::int32_t table[1] = {0};
  v.base = &dummy;
  v.block_table = table;
  v.block_size = Index{1} << 40;
  v.row_stride = Index{1} << 30;
  v.block_stride = kMax;
  v.num_blocks = 1;
  v.len = 1;
  v.kv_lora_rank = 16;
  v.rope_dim = 4;
  EXPECT_HAS(invalid_argument_of([&] { v.validate("test view"); }),
             "test view: block_size (1099511627776) * row_stride (1073741824) overflows int64");
  v.kv_lora_rank = kMax;
  EXPECT_HAS(invalid_argument_of([&] { v.validate("test view"); }),
             "kv_lora_rank + rope_dim = 9223372036854775807 + 4");
}

// ---- Batched decode: the sum of q_lens, the plan's query rows and work. ----

TEST(SizeOverflow, BatchedDecodeSumOfQLens) {
  testing::Rng rng(71);
  const MultiHeadLatentAttention<float> layer(small_mla_config(),
                                              testing::random_mla_weights<float>(small_mla_config(), rng));
  auto a = layer.make_latent_cache(4), b = layer.make_latent_cache(4);
  const Matrix<float> x = rng.normal<float>(2, 32);
  Matrix<float> y(2, 32);
  Workspace ctx;
  using Caches = std::vector<LatentCache<float>*>;
  const std::string msg = invalid_argument_of([&] {
    mla_decode_batch(layer, x, testing::positions_from(0, 2), {kMax, 1}, Caches{&a, &b}, y, ctx);
  });
  EXPECT_HAS(msg, "mla_decode_batch: sum of q_lens");
  EXPECT_HAS(msg, "9223372036854775807 + 1 overflows int64");
  EXPECT_EQ(a.size(), 0);
  EXPECT_EQ(b.size(), 0);
}

TEST(SizeOverflow, BatchedPlanQueryRowsAndWork) {
  // Sequences that claim huge lengths: validation must refuse them before any product wraps (a
  // wrapped row count or work would send the kernel over rows and parts that do not exist).
  const float row[20] = {};
  float out[16] = {};
  kernels::DecodeSequence<float> s;
  s.q_len = Index{1} << 40;
  s.q_lat = s.q_pe = s.o_lat = out;
  s.cache.base = row;
  s.cache.row_stride = 20;
  s.cache.len = Index{1} << 40;
  s.cache.kv_lora_rank = 16;
  s.cache.rope_dim = 4;
  kernels::DecodeWorkspace ws;
  std::string msg = invalid_argument_of(
      [&] { kernels::batched_absorbed_attention(Index{1} << 30, &s, 1, 1.0f, ws); });
  EXPECT_HAS(msg, "q_len * num_heads = 1099511627776 * 1073741824 overflows");
  // Rows fit (2^40 * 2^10), units (128-row passes) * cache rows (2^43 * 2^40) do not.
  msg = invalid_argument_of([&] { kernels::batched_absorbed_attention(1024, &s, 1, 1.0f, ws); });
  EXPECT_HAS(msg, "units * cache rows = 8796093022208 * 1099511627776 overflows");
  // Two sequences whose work fits alone but not summed.
  kernels::DecodeSequence<float> two[2] = {s, s};
  for (auto& t : two) {
    t.q_len = 1;
    t.cache.len = kMax / 2 + 1;
  }
  msg = invalid_argument_of([&] { kernels::batched_absorbed_attention(1, two, 2, 1.0f, ws); });
  EXPECT_HAS(msg, "work of the sequences so far + this one's");
}

// ---- Workspace buffers and head shards. ----

TEST(SizeOverflow, WorkspaceBufferDims) {
  Workspace ws;
  EXPECT_HAS(invalid_argument_of([&] { ws.matrix<float>(Index{1} << 40, Index{1} << 30); }),
             "Workspace::take: buffer of dims = 1099511627776 * 1073741824 overflows");
  EXPECT_HAS(invalid_argument_of([&] { ws.take<float>({Index{1} << 31, 2, Index{1} << 31}); }),
             "overflows int64");
  const std::size_t too_many = std::numeric_limits<std::size_t>::max() / 4;  // * 8 bytes wraps
  EXPECT_HAS(invalid_argument_of([&] { ws.take<double>(too_many); }), "overflow the address space");
  EXPECT_HAS(invalid_argument_of([&] { ws.matrix<float>(-1, 4); }), "non-negative");
  EXPECT_NE(ws.matrix<float>(3, 4).data(), nullptr);  // still usable
}

TEST(SizeOverflow, HeadShardRangeAndWeights) {
  testing::Rng rng(72);
  const MlaConfig cfg = small_mla_config();
  const auto w = testing::random_mla_weights<float>(cfg, rng);
  // first_head + num_heads would overflow (and pass a wrapped bounds check).
  EXPECT_HAS(invalid_argument_of([&] { make_mla_shard<float>(cfg, w, {kMax, 1}); }),
             "head shard (first_head 9223372036854775807, num_heads 1)");
  EXPECT_HAS(invalid_argument_of([&] { make_mla_shard<float>(cfg, w, {1, kMax}); }),
             "inside the layer's 2 heads");
  // A 4-head config over 2-head weights: the shard of heads [2, 4) would slice past their end.
  MlaConfig four = cfg;
  four.num_attention_heads = 4;
  EXPECT_HAS(invalid_argument_of([&] { make_mla_shard<float>(four, w, {2, 2}); }),
             "weight 'q_b_proj': expected shape [48, 12], got [24, 12]");
  const AttentionConfig g = testing::small_gqa_config();  // 6 heads over 2 KV heads of 8
  const auto gw = testing::random_gqa_weights<float>(g, rng);
  EXPECT_HAS(invalid_argument_of([&] { make_gqa_shard<float>(g, gw, {kMax - 2, 3}); }),
             "head shard (first_head 9223372036854775805, num_heads 3)");
  AttentionConfig g12 = g;
  g12.num_attention_heads = 12;
  EXPECT_HAS(invalid_argument_of([&] { make_gqa_shard<float>(g12, gw, {6, 6}); }),
             "weight 'q_proj': expected shape [96, 48], got [48, 48]");
  // A config that does not validate is refused before any offset is formed from it.
  MlaConfig bad = cfg;
  bad.qk_nope_head_dim = kMax;
  EXPECT_HAS(invalid_argument_of([&] { make_mla_shard<float>(bad, w, {0, 1}); }),
             "qk_nope_head_dim");
}

}  // namespace
}  // namespace mla
