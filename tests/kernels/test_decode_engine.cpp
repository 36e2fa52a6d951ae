// The decode engine's two steps used apart, as an engine drives them: one DecodePlan per step,
// run_decode once per layer on that layer's queries and cache views (same shapes, other data),
// allocation-free; results equal the double-precision reference per sequence. Also what run
// refuses: shapes other than the plan's, more threads than planned, bad views; and what plan
// refuses.
#include "mla/kernels/decode_engine.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <deque>
#include <functional>
#include <stdexcept>
#include <random>
#include <string>
#include <vector>

#include "mla/cache/paged_latent_cache.hpp"
#include "mla/core/threading.hpp"
#include "mla/reference/attention.hpp"
#include "support/alloc_counter.hpp"

namespace mla {
namespace {

using kernels::DecodePlan;
using kernels::DecodeSequence;
using kernels::DecodeWorkspace;

constexpr Index kHeads = 6, kR = 24, kP = 8;

/// One layer's data for a batch: per sequence a paged bf16 cache and its queries.
struct Layer {
  LatentBlockPool<bfloat16> pool{kR, kP, 64, 8};
  std::vector<PagedLatentCache<bfloat16>> caches;
  std::vector<std::vector<float>> q_lat, q_pe, out;
  std::vector<DecodeSequence<bfloat16>> seqs;

  Layer(const std::vector<Index>& lens, const std::vector<Index>& q_lens, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const std::size_t B = lens.size();
    caches.reserve(B);
    for (std::size_t b = 0; b < B; ++b) caches.emplace_back(pool);
    // Interleave the sequences' block allocations, so no table is in order.
    for (Index n = 8; n < 128; n += 8)
      for (std::size_t b = 0; b < B; ++b)
        if (n - 8 < lens[b]) caches[b].reserve(n);
    for (std::size_t b = 0; b < B; ++b) {
      std::vector<float> row(std::size_t(kR + kP));
      for (Index t = 0; t < lens[b]; ++t) {
        for (float& x : row) x = u(rng);
        caches[b].append(row.data(), kR + kP, 1);
      }
      const Index m = q_lens[b] * kHeads;
      q_lat.emplace_back(std::size_t(m * kR));
      q_pe.emplace_back(std::size_t(m * kP));
      out.emplace_back(std::size_t(m * kR));
      for (float& x : q_lat.back()) x = u(rng);
      for (float& x : q_pe.back()) x = u(rng);
    }
    for (std::size_t b = 0; b < B; ++b) {
      DecodeSequence<bfloat16> s;
      s.q_len = q_lens[b];
      s.q_lat = q_lat[b].data();
      s.q_pe = q_pe[b].data();
      s.cache = caches[b].rows();
      s.o_lat = out[b].data();
      seqs.push_back(s);
    }
  }

  /// Largest error of sequence b's output against the reference over a contiguous copy.
  double error(std::size_t b, float scale) const {
    const PagedLatentCache<bfloat16>& c = caches[b];
    std::vector<bfloat16> rows(std::size_t(c.size() * (kR + kP)));
    for (Index t = 0; t < c.size(); ++t)
      std::copy(c.row(t), c.row(t) + kR + kP, rows.begin() + t * (kR + kP));
    kernels::AbsorbedAttentionShape shape{seqs[b].q_len, kHeads, kR, kP, c.size(), kR + kP};
    std::vector<float> ref(out[b].size());
    reference::absorbed_attention(shape, q_lat[b].data(), q_pe[b].data(), rows.data(), scale,
                                  ref.data(), nullptr);
    double e = 0.0, m = 0.0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      e = std::max(e, double(std::abs(out[b][i] - ref[i])));
      m = std::max(m, double(std::abs(ref[i])));
    }
    return e / m;
  }
};

TEST(DecodeEngine, OnePlanServesEveryLayerOfAStep) {
  const std::vector<Index> lens{70, 9, 120, 33}, q_lens{1, 2, 1, 3};
  ThreadPool pool2(2);
  for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &pool2}) {
    std::deque<Layer> layers;  // a Layer owns its pool and does not move
    for (unsigned l = 0; l < 3; ++l) layers.emplace_back(lens, q_lens, 100 + l);
    DecodePlan plan;
    kernels::BatchedDecodeOptions options;
    options.min_rows_per_part = 16;  // short contexts are split too
    plan.plan(kHeads, layers[0].seqs.data(), 4, num_threads(pool), options);
    DecodeWorkspace ws;
    ws.reserve(plan);
    g_allocs = 0;
    g_count_allocs = true;
    for (Layer& layer : layers)
      kernels::run_decode(plan, layer.seqs.data(), 4, 0.3f, ws, pool);
    g_count_allocs = false;
    EXPECT_EQ(g_allocs.load(), 0) << "threads " << num_threads(pool);
    if (pool != nullptr) {
      EXPECT_GT(plan.num_split_units(), 0);
    }
    for (std::size_t l = 0; l < layers.size(); ++l)
      for (std::size_t b = 0; b < lens.size(); ++b)
        EXPECT_LE(layers[l].error(b, 0.3f), 1e-5) << "layer " << l << " sequence " << b;
  }
}

TEST(DecodeEngine, PlanFromLengthsEqualsPlanFromSequences) {
  const std::vector<Index> lens{70, 9, 120}, q_lens{1, 2, 3};
  Layer layer(lens, q_lens, 7);
  DecodePlan a, b;
  a.plan(kHeads, kR, kP, q_lens.data(), lens.data(), 3, 2);
  b.plan(kHeads, layer.seqs.data(), 3, 2);
  EXPECT_EQ(a.workspace_floats(), b.workspace_floats());
  EXPECT_EQ(a.num_parts(), b.num_parts());
  EXPECT_TRUE(a.matches(kHeads, layer.seqs.data(), 3, 2, {}));
  EXPECT_FALSE(a.matches(kHeads, layer.seqs.data(), 3, 1, {}));
  // A unit reads only the rows its last token sees.
  EXPECT_EQ(a.units()[0].len, 70);
  EXPECT_EQ(a.units()[2].len, 120 - 3 + 1 + (3 * kHeads - 1) / kHeads);
}

TEST(DecodeEngine, ShortContextsAreSplitWhenThreadsWouldIdle) {
  // Default options: one sequence of 256 rows on 2 threads is cut into parts for both threads
  // (parts of at least 32 rows), and so is a batch of two short ones with a long one.
  DecodePlan plan;
  const Index q1[] = {1}, len256[] = {256};
  plan.plan(128, 512, 64, q1, len256, 1, 2);
  EXPECT_EQ(plan.num_parts(), 8);
  EXPECT_EQ(plan.num_split_units(), 1);
  const Index q3[] = {1, 1, 1}, lens[] = {40, 30, 300};
  plan.plan(128, 512, 64, q3, lens, 3, 2);
  EXPECT_EQ(plan.num_parts(), 8);
  // One thread: one part, nothing split, whatever the length.
  plan.plan(128, 512, 64, q1, len256, 1, 1);
  EXPECT_EQ(plan.num_parts(), 1);
  EXPECT_EQ(plan.num_split_units(), 0);
  // Below the minimum part size the work is not cut.
  const Index len40[] = {40};
  plan.plan(128, 512, 64, q1, len40, 1, 2);
  EXPECT_EQ(plan.num_parts(), 1);
}

std::string invalid_argument_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no std::invalid_argument)";
}

TEST(DecodeEngine, RunRefusesAnythingThePlanWasNotMadeFor) {
  const std::vector<Index> lens{70, 9}, q_lens{1, 2};
  Layer layer(lens, q_lens, 8);
  DecodePlan plan;
  plan.plan(kHeads, layer.seqs.data(), 2, 1);
  DecodeWorkspace ws;
  ThreadPool pool2(2);
  auto run = [&](std::vector<DecodeSequence<bfloat16>> s, Index batch, ThreadPool* pool) {
    return invalid_argument_of([&] { kernels::run_decode(plan, s.data(), batch, 0.3f, ws, pool); });
  };
  std::string msg = run(layer.seqs, 1, nullptr);
  EXPECT_NE(msg.find("1 sequences, the plan has 2"), std::string::npos) << msg;
  msg = run(layer.seqs, 2, &pool2);
  EXPECT_NE(msg.find("the pool has 2 threads, the plan was made for 1"), std::string::npos) << msg;
  auto longer = layer.seqs;
  longer[1].cache.len = 8;
  longer[1].q_len = 1;
  msg = run(longer, 2, nullptr);
  EXPECT_NE(msg.find("sequence 1: q_len 1 and cache length 8 differ from the plan's 2 and 9"),
            std::string::npos)
      << msg;
  auto null_q = layer.seqs;
  null_q[0].q_lat = nullptr;
  msg = run(null_q, 2, nullptr);
  EXPECT_NE(msg.find("sequence 0: q_lat, q_pe and o_lat must not be null"), std::string::npos) << msg;
  auto bad_block = layer.seqs;
  const std::int32_t bad = 1000;
  bad_block[0].cache.block_table = &bad;
  msg = run(bad_block, 2, nullptr);
  EXPECT_NE(msg.find("block_table[0] = 1000 is not a block of the pool"), std::string::npos) << msg;
  // Nothing was written by the refused runs.
  for (const std::vector<float>& o : layer.out)
    for (float x : o) EXPECT_EQ(x, 0.0f);
}

TEST(DecodeEngine, PlanRefusesBadShapesAndKeepsTheLastPlan) {
  DecodePlan plan;
  const Index q1[] = {1}, len5[] = {5}, q3[] = {3}, len2[] = {2};
  plan.plan(4, 16, 4, q1, len5, 1, 2);
  const Index floats = plan.workspace_floats();
  EXPECT_NE(invalid_argument_of([&] { plan.plan(4, 16, 4, q3, len2, 1, 2); })
                .find("cache length (2) must be >= q_len (3)"),
            std::string::npos);
  EXPECT_NE(invalid_argument_of([&] { plan.plan(0, 16, 4, q1, len5, 1, 2); }).find("num_heads"),
            std::string::npos);
  EXPECT_NE(invalid_argument_of([&] { plan.plan(4, 16, 4, q1, len5, 1, 0); }).find("threads (0)"),
            std::string::npos);
  kernels::BatchedDecodeOptions bad;
  bad.parts_per_thread = 0;
  EXPECT_NE(invalid_argument_of([&] { plan.plan(4, 16, 4, q1, len5, 1, 2, bad); })
                .find("parts_per_thread (0)"),
            std::string::npos);
  EXPECT_EQ(plan.workspace_floats(), floats);
  EXPECT_EQ(plan.len(0), 5);
}

/// MHA / GQA through the same engine: a batch of sequences with their own head-major caches,
/// lengths and new-token counts (group 4: the packed form; group 1: the row-streaming form), one
/// plan run twice, against the reference per sequence, on 1 and 2 threads, float and bf16.
template <class T>
void check_gqa_batch(Index heads, Index kv_heads, ThreadPool* pool) {
  const Index D = 24, Dv = 16;
  const std::vector<Index> lens{50, 7, 130}, q_lens{1, 3, 2};
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<std::vector<T>> k(3), v(3);
  std::vector<std::vector<float>> q(3), out(3), lse(3);
  std::vector<kernels::GqaDecodeSequence<T>> seqs(3);
  for (std::size_t b = 0; b < 3; ++b) {
    const Index cap = lens[b] + 5;  // head stride beyond len
    k[b].resize(std::size_t(kv_heads * cap * D));
    v[b].resize(std::size_t(kv_heads * cap * Dv));
    q[b].resize(std::size_t(q_lens[b] * heads * D));
    out[b].resize(std::size_t(q_lens[b] * heads * Dv));
    lse[b].resize(std::size_t(q_lens[b] * heads));
    for (T& x : k[b]) x = T(u(rng));
    for (T& x : v[b]) x = T(u(rng));
    for (float& x : q[b]) x = u(rng);
    seqs[b] = {q_lens[b], q[b].data(), k[b].data(), v[b].data(), cap * D, cap * Dv, lens[b],
               out[b].data(), lse[b].data()};
  }
  DecodePlan plan;
  kernels::BatchedDecodeOptions options;
  options.min_rows_per_part = 16;
  plan.plan_gqa(heads, kv_heads, D, Dv, seqs.data(), 3, num_threads(pool), options);
  EXPECT_EQ(plan.kind(), kernels::DecodeKind::kGqa);
  DecodeWorkspace ws;
  for (int round = 0; round < 2; ++round) {
    kernels::run_gqa_decode(plan, seqs.data(), 3, 0.25f, ws, pool);
    for (std::size_t b = 0; b < 3; ++b) {
      kernels::GqaAttentionShape shape{q_lens[b], heads, kv_heads, D, Dv, lens[b],
                                       seqs[b].k_head_stride, seqs[b].v_head_stride};
      std::vector<float> ref(out[b].size()), ref_lse(lse[b].size());
      reference::gqa_attention(shape, q[b].data(), k[b].data(), v[b].data(), 0.25f, ref.data(),
                               ref_lse.data());
      double e = 0.0, m = 0.0, el = 0.0;
      for (std::size_t i = 0; i < ref.size(); ++i) {
        e = std::max(e, double(std::abs(out[b][i] - ref[i])));
        m = std::max(m, double(std::abs(ref[i])));
      }
      for (std::size_t i = 0; i < ref_lse.size(); ++i)
        el = std::max(el, double(std::abs(lse[b][i] - ref_lse[i])));
      EXPECT_LE(e / m, 1e-5) << "heads " << heads << "/" << kv_heads << " sequence " << b;
      EXPECT_LE(el, 1e-4) << "lse, sequence " << b;
    }
  }
  // An MLA plan is not a GQA plan, and the other way round.
  std::vector<DecodeSequence<T>> none;
  EXPECT_NE(invalid_argument_of([&] { kernels::run_decode(plan, none.data(), 0, 0.1f, ws); })
                .find("the plan is for MHA / GQA"),
            std::string::npos);
}

TEST(DecodeEngine, GqaBatchOfSequences) {
  ThreadPool pool2(2);
  for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &pool2}) {
    check_gqa_batch<float>(8, 2, pool);
    check_gqa_batch<bfloat16>(8, 2, pool);
    check_gqa_batch<float>(3, 3, pool);
  }
}

}  // namespace
}  // namespace mla
