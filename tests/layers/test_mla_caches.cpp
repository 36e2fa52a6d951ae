// One API over every latent cache: MultiHeadLatentAttention::forward over a PagedLatentCache (with
// scattered blocks) and the 8-bit caches, FP8 and int8 (contiguous and paged), for prefill, decode, multi-token
// decode and chunked prefill, on both paths and for float and double layers, against the same
// calls over a LatentCache; mla_decode_batch in double against forward per sequence; the cache
// factories on the layer; the ways to pass the caches of a batch.
#include <gtest/gtest.h>

#include <array>
#include <limits>
#include <string>
#include <vector>

#include "mla/layers/batched_decode.hpp"
#include "mla/presets.hpp"
#include "support/random.hpp"
#include "support/small_layers.hpp"

namespace mla {
namespace {

using testing::positions_from;
using testing::rel_max_err;
using testing::Rng;

/// The shared small MLA shape (2 heads, q LoRA, kv_lora 16, rope 4).
MlaConfig small_config() { return testing::small_mla_config(); }

/// V3 attention dims (128 heads: one 128-row unit per token in the decode engine).
MlaConfig v3_dims() {
  MlaConfig c = presets::deepseek_v3();
  c.hidden_size = 128;
  c.max_position_embeddings = 1024;
  return c;
}

// Prefill, single-token decode, multi-token decode, a chunk of prefill, decode.
const std::vector<Index> kChunks{7, 1, 3, 1, 9, 1};
constexpr Index kTokens = 22;

/// Feeds `x` in kChunks through `cache` on `path`; returns all outputs.
template <class Scalar, class Cache>
Matrix<Scalar> run(const MultiHeadLatentAttention<Scalar>& layer, const Matrix<Scalar>& x,
                   Cache& cache, MlaPath path) {
  Matrix<Scalar> out(x.rows(), x.cols());
  Workspace ws;
  Index done = 0;
  for (Index n : kChunks) {
    if constexpr (std::is_same_v<Cache, PagedLatentCache<typename Cache::Element>>)
      cache.ensure_room(n);
    Matrix<Scalar> y(n, x.cols());
    layer.forward(x.middleRows(done, n), positions_from(done, n), cache, y, ws, path);
    out.middleRows(done, n) = y;
    done += n;
  }
  EXPECT_EQ(cache.size(), kTokens);
  return out;
}

/// A paged cache whose blocks are not adjacent: another sequence takes every other block.
template <class T, class Scalar>
struct ScatteredPagedCache {
  LatentBlockPool<T> pool;
  PagedLatentCache<T> cache, other;
  ScatteredPagedCache(const MultiHeadLatentAttention<Scalar>& layer, Index block)
      : pool(layer.template make_block_pool<T>(2 * (kTokens / block + 2), block)),
        cache(layer.make_paged_cache(pool)),
        other(layer.make_paged_cache(pool)) {
    for (Index b = 0; b < kTokens / block + 1; ++b) {
      cache.reserve((b + 1) * block);
      other.reserve((b + 1) * block);
    }
  }
};

template <class Scalar>
MultiHeadLatentAttention<Scalar> make_layer(const MlaConfig& cfg, unsigned seed) {
  Rng rng(seed);
  return MultiHeadLatentAttention<Scalar>(cfg, testing::random_mla_weights<Scalar>(cfg, rng));
}

/// Float layer: paged float / bf16 / FP8 caches against the contiguous cache of the same element
/// type, both paths. The naive path reads the same values in the same order (bit for bit); the
/// absorbed path's tiles break at the block edges, which only reorders float sums.
void check_float_layer(const MlaConfig& cfg, Index block, unsigned seed) {
  const auto layer = make_layer<float>(cfg, seed);
  Rng rng(seed + 1);
  const Matrix<float> x = rng.normal<float>(kTokens, cfg.hidden_size);
  for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
    const std::string what = std::string(to_string(path)) + ", block " + std::to_string(block);
    auto check = [&](const Matrix<float>& got, const Matrix<float>& want, const std::string& cache) {
      if (path == MlaPath::kNaive)
        EXPECT_TRUE(got == want) << cache << ", " << what << ": " << rel_max_err(got, want);
      else
        EXPECT_LE(rel_max_err(got, want), 2e-6) << cache << ", " << what;
    };
    {
      auto contiguous = layer.make_latent_cache(kTokens);
      ScatteredPagedCache<float, float> paged(layer, block);
      check(run(layer, x, paged.cache, path), run(layer, x, contiguous, path), "float paged");
    }
    {
      auto contiguous = layer.make_latent_cache<bfloat16>(kTokens);
      ScatteredPagedCache<bfloat16, float> paged(layer, block);
      check(run(layer, x, paged.cache, path), run(layer, x, contiguous, path), "bf16 paged");
    }
    // The 8-bit caches: paged equals contiguous, and both are the float rows to within their
    // rounding (E4M3: 3 mantissa bits; int8: half a step of amax / 127 per row).
    auto check_8bit = [&](auto tag, Matrix<float> contiguous_out, double vs_float,
                          const std::string& name) {
      using T = decltype(tag);
      ScatteredPagedCache<T, float> paged(layer, block);
      check(run(layer, x, paged.cache, path), contiguous_out, name + " paged");
      auto f32 = layer.make_latent_cache(kTokens);
      EXPECT_LE(rel_max_err(contiguous_out, run(layer, x, f32, path)), vs_float)
          << name << " vs float, " << what;
      EXPECT_TRUE(contiguous_out.allFinite()) << what;
    };
    {
      auto contiguous = layer.make_fp8_latent_cache(kTokens);
      check_8bit(Fp8Latent{}, run(layer, x, contiguous, path), 0.1, "fp8");
    }
    {
      // The absorbed path's c_kv scores on AVX512-VNNI also round the query to int8 per row
      // (kernels/int8_tiles.hpp): an error of the same size as the rows' rounding, so about
      // sqrt(2) times the float-score bound.
      const bool int8_scores = path == MlaPath::kAbsorbed &&
                               internal::int8_scores_available(cfg.kv_lora_rank) &&
                               kernels::auto_path() == kernels::KernelPath::kAvx512;
      auto contiguous = layer.make_int8_latent_cache(kTokens);
      check_8bit(Int8Latent{}, run(layer, x, contiguous, path), int8_scores ? 1.5e-2 : 1e-2,
                 "int8");
    }
  }
}

TEST(MlaCaches, FloatLayerPaged8BitEqualContiguousSmallDims) { check_float_layer(small_config(), 4, 3); }
TEST(MlaCaches, FloatLayerPaged8BitEqualContiguousV3Dims) { check_float_layer(v3_dims(), 5, 4); }

/// Double layer: paged double caches equal LatentCache<double> bit for bit on both paths; an FP8
/// cache gives the double layer the same dequantised rows the float layer attends over.
TEST(MlaCaches, DoubleLayerOverPagedAnd8BitCaches) {
  const MlaConfig cfg = small_config();
  const auto ld = make_layer<double>(cfg, 5);
  Rng rng(6);
  const Matrix<double> x = rng.normal<double>(kTokens, cfg.hidden_size);
  for (MlaPath path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
    auto contiguous = ld.make_latent_cache(kTokens);
    ScatteredPagedCache<double, double> paged(ld, 3);
    const Matrix<double> want = run(ld, x, contiguous, path);
    EXPECT_TRUE(run(ld, x, paged.cache, path) == want) << to_string(path);
    // FP8 in double: same function as LatentCache<double>, up to the quantisation of the rows.
    auto fp8 = ld.make_fp8_latent_cache(kTokens);
    EXPECT_LE(rel_max_err(run(ld, x, fp8, path), want), 0.1) << to_string(path);
    auto int8 = ld.make_int8_latent_cache(kTokens);
    EXPECT_LE(rel_max_err(run(ld, x, int8, path), want), 1e-2) << to_string(path);
  }
  // Both paths over an 8-bit cache agree in double (the same dequantised rows).
  auto a = ld.make_fp8_latent_cache(kTokens), b = ld.make_fp8_latent_cache(kTokens);
  EXPECT_LE(rel_max_err(run(ld, x, a, MlaPath::kAbsorbed), run(ld, x, b, MlaPath::kNaive)), 1e-12);
  auto c = ld.make_int8_latent_cache(kTokens), d = ld.make_int8_latent_cache(kTokens);
  EXPECT_LE(rel_max_err(run(ld, x, c, MlaPath::kAbsorbed), run(ld, x, d, MlaPath::kNaive)), 1e-12);
}

/// mla_decode_batch in double: sequences with different histories and new-token counts equal
/// forward() per sequence (the same double arithmetic, so to ~1e-13).
TEST(MlaCaches, BatchedDecodeInDouble) {
  const MlaConfig cfg = small_config();
  const auto ld = make_layer<double>(cfg, 7);
  Rng rng(8);
  const std::vector<Index> history{4, 9, 1};
  std::vector<LatentCache<double>> batched, single;
  for (Index h : history) {
    batched.push_back(ld.make_latent_cache(h + 8));
    single.push_back(ld.make_latent_cache(h + 8));
    const Matrix<double> xh = rng.normal<double>(h, cfg.hidden_size);
    ld.forward(xh, positions_from(0, h), batched.back());
    ld.forward(xh, positions_from(0, h), single.back());
  }
  Workspace ws;
  for (const std::vector<Index>& q_lens : {std::vector<Index>{2, 1, 3}, std::vector<Index>{1, 1, 1}}) {
    Index n = 0;
    for (Index q : q_lens) n += q;
    const Matrix<double> x = rng.normal<double>(n, cfg.hidden_size);
    Positions pos(n);
    for (Index b = 0, row = 0; b < 3; ++b)
      for (Index i = 0; i < q_lens[std::size_t(b)]; ++i, ++row) pos[row] = batched[std::size_t(b)].size() + i;
    Matrix<double> y(n, cfg.hidden_size);
    mla_decode_batch(ld, x, pos, q_lens, {&batched[0], &batched[1], &batched[2]}, y, ws);
    for (Index b = 0, row = 0; b < 3; ++b) {
      const Index q = q_lens[std::size_t(b)];
      const Matrix<double> want = ld.forward(x.middleRows(row, q), pos.segment(row, q),
                                             single[std::size_t(b)], MlaPath::kAbsorbed);
      EXPECT_LE(rel_max_err(y.middleRows(row, q), want), 1e-12) << "sequence " << b;
      row += q;
    }
  }
}

/// The caches of a batch come as a braced list, a std::vector or a std::array of pointers; the
/// same step gives the same result each way, and a count that differs from q_lens is refused.
TEST(MlaCaches, BatchTakesAnyRangeOfCachePointers) {
  const MlaConfig cfg = small_config();
  const auto layer = make_layer<float>(cfg, 9);
  Rng rng(10);
  const Matrix<float> x = rng.normal<float>(2, cfg.hidden_size);
  const Positions pos = positions_from(0, 2);
  std::array<Matrix<float>, 3> y;
  for (int way = 0; way < 3; ++way) {
    auto pool = layer.make_block_pool<Fp8Latent>(4, 8);
    auto a = layer.make_paged_cache(pool, 1), b = layer.make_paged_cache(pool, 1);
    y[std::size_t(way)].resize(2, cfg.hidden_size);
    Workspace ws;
    if (way == 0) mla_decode_batch(layer, x, pos, {1, 1}, {&a, &b}, y[0], ws);
    if (way == 1)
      mla_decode_batch(layer, x, pos, {1, 1}, std::vector<PagedLatentCache<Fp8Latent>*>{&a, &b},
                       y[1], ws);
    if (way == 2)
      mla_decode_batch(layer, x, pos, {1, 1}, std::array<PagedLatentCache<Fp8Latent>*, 2>{&a, &b},
                       y[2], ws);
    EXPECT_EQ(a.size(), 1);
    EXPECT_EQ(b.size(), 1);
  }
  EXPECT_TRUE(y[0] == y[1]);
  EXPECT_TRUE(y[0] == y[2]);
  auto c = layer.make_latent_cache(4);
  Workspace ws;
  Matrix<float> out(2, cfg.hidden_size);
  EXPECT_THROW(mla_decode_batch(layer, x, pos, {1, 1}, {&c}, out, ws), std::invalid_argument);
  EXPECT_EQ(c.size(), 0);
}

/// The factories make caches of the layer's widths; a pool of other widths is refused by name.
TEST(MlaCaches, FactoriesMatchTheLayer) {
  const MlaConfig cfg = small_config();
  const auto layer = make_layer<float>(cfg, 11);
  EXPECT_EQ(layer.make_fp8_latent_cache(3).kv_lora_rank(), cfg.kv_lora_rank);
  EXPECT_EQ(layer.make_fp8_latent_cache(3).bytes_per_token(),
            std::size_t(cfg.kv_lora_rank + 4 + 2 * cfg.qk_rope_head_dim));
  auto pool = layer.make_block_pool<bfloat16>(2, 16);
  EXPECT_EQ(pool.block_size(), 16);
  EXPECT_EQ(pool.rope_dim(), cfg.qk_rope_head_dim);
  auto cache = layer.make_paged_cache(pool, 20);
  EXPECT_EQ(cache.capacity(), 32);
  LatentBlockPool<bfloat16> other(cfg.kv_lora_rank + 1, cfg.qk_rope_head_dim, 2);
  try {
    (void)layer.make_paged_cache(other);
    ADD_FAILURE() << "a pool of other widths was accepted";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("LatentBlockPool [kv_lora_rank " + std::to_string(cfg.kv_lora_rank + 1)),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("does not match the layer [" + std::to_string(cfg.kv_lora_rank) + ", " +
                       std::to_string(cfg.qk_rope_head_dim) + "]"),
              std::string::npos)
        << msg;
  }
  // forward() names the cache type and refuses a paged cache without reserved room.
  auto full = layer.make_paged_cache(pool);
  Workspace ws;
  Matrix<float> out(1, cfg.hidden_size);
  EXPECT_THROW(layer.forward(Matrix<float>::Zero(1, cfg.hidden_size), positions_from(0, 1), full,
                             out, ws),
               std::invalid_argument);
  EXPECT_EQ(full.size(), 0);
}

}  // namespace
}  // namespace mla
