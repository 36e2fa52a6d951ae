// The 8-bit latent caches. FP8 (the E4M3 encoder it writes with: tests/core/test_fp8.cpp):
// FlashMLA's 656-byte row layout, per-tile quantisation bounds. Int8: the 648-byte layout, the
// half-step bound, the code sum, NaN rows. Both: the AVX2 and portable dequantisers agreeing bit
// for bit, decode through contiguous and paged caches against the double reference on the
// dequantised rows, and the error of the whole layer with an 8-bit cache against the float cache
// on the DeepSeek reference cases (and for int8 on a synthetic 16k-token context).
#include "mla/cache/quantized_latent_cache.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "mla/cache/paged_latent_cache.hpp"
#include "mla/conformance/hf_reference.hpp"
#include "mla/io/fp8.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/layers/batched_decode.hpp"
#include "mla/reference/attention.hpp"
#include "support/compare.hpp"
#include "support/blockwise_absorbed.hpp"
#include "support/reference_dir.hpp"

namespace mla {
namespace {

TEST(Fp8LatentLayout, MatchesFlashMlaV3ByteCount) {
  const Fp8LatentLayout v3{512, 64};
  EXPECT_EQ(v3.num_scales(), 4);
  EXPECT_EQ(v3.scales_offset(), 512);
  EXPECT_EQ(v3.rope_offset(), 528);
  EXPECT_EQ(v3.bytes_per_token(), 656);
  EXPECT_EQ(Fp8LatentCache(512, 64, 4).bytes_per_token(), 656u);
  EXPECT_EQ(Fp8LatentCache(512, 64, 4).bytes_allocated(), 4u * 656u);
  EXPECT_EQ((LatentBlockPool<Fp8Latent>(512, 64, 2, 64).bytes_per_token()), 656u);
  EXPECT_EQ((LatentBlockPool<Fp8Latent>(512, 64, 2, 64).bytes_allocated()), 2u * 64u * 656u);
  // Widths that are not a multiple of the 128-value tile get a partial last tile.
  EXPECT_EQ((Fp8LatentLayout{200, 16}.bytes_per_token()), 200 + 2 * 4 + 32);
}

TEST(Fp8LatentCache, QuantisationErrorIsWithinHalfAnUlpPerTile) {
  const Index R = 300, P = 10;  // tiles of 128, 128, 44
  const Fp8LatentLayout layout{R, P};
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> row(std::size_t(R + P));
  for (float& v : row) v = nd(rng);
  for (Index i = 256; i < R; ++i) row[std::size_t(i)] = 0.0f;  // an all-zero tile
  row[5] = 1e-6f;  // far below the tile's range: coded as a subnormal or zero
  Fp8LatentCache cache(R, P, 2);
  cache.append(row.data(), R + P, 1);
  std::vector<float> back(std::size_t(R + P));
  cache.dequantize(0, 1, back.data(), R + P);
  for (Index s = 0; s < 3; ++s) {
    float amax = 0;
    for (Index i = s * 128; i < std::min(R, (s + 1) * 128); ++i)
      amax = std::max(amax, std::fabs(row[std::size_t(i)]));
    const float scale = internal::fp8_row_scale(cache.row(0), layout, s);
    EXPECT_EQ(scale, amax / 448.0f) << "tile " << s;
    for (Index i = s * 128; i < std::min(R, (s + 1) * 128); ++i) {
      const float x = row[std::size_t(i)], q = back[std::size_t(i)];
      // Half an E4M3 ulp: 2^-4 relative for normal codes, 2^-10 * scale for subnormal ones.
      EXPECT_LE(std::fabs(q - x), std::max(std::fabs(x) * 0x1p-4f, scale * 0x1p-10f) * 1.0001f)
          << "element " << i;
      if (std::fabs(x) == amax) {
        EXPECT_NEAR(q, x, 1e-6f * amax) << "the tile's max is exact";
      }
    }
  }
  for (Index i = 256; i < R; ++i) EXPECT_EQ(back[std::size_t(i)], 0.0f);
  for (Index i = 0; i < P; ++i)
    EXPECT_EQ(back[std::size_t(R + i)], float(bfloat16(row[std::size_t(R + i)])));
  // A NaN poisons its tile only.
  row[130] = std::numeric_limits<float>::quiet_NaN();
  cache.append(row.data(), R + P, 1);
  cache.dequantize(1, 1, back.data(), R + P);
  EXPECT_TRUE(std::isnan(back[129]));
  EXPECT_FALSE(std::isnan(back[0]));
  EXPECT_THROW(cache.append(row.data(), R + P, 1), std::invalid_argument);  // capacity 2
  EXPECT_THROW(cache.dequantize(1, 2, back.data(), R + P), std::invalid_argument);
}

TEST(Fp8LatentCache, SimdAndPortableDequantisationAgreeOnEveryCode) {
  // Rows holding all 256 codes (NaN codes included) under scales spanning small to large.
  const Fp8LatentLayout layout{256, 20};
  const Index rows = 4, stride = layout.bytes_per_token() + 3;  // an odd stride: unaligned
  std::vector<std::uint8_t> src(std::size_t(rows * stride));
  const float scales[] = {1.0f, 3e-5f, 117.5f, 0.0f, 2.0f, 1e-3f, 7.0f, 0.25f};
  for (Index r = 0; r < rows; ++r) {
    std::uint8_t* row = src.data() + r * stride;
    for (Index i = 0; i < 256; ++i) row[i] = std::uint8_t(i + r * 37);
    for (Index s = 0; s < 2; ++s)
      std::memcpy(row + layout.scales_offset() + 4 * s, &scales[r * 2 + s], 4);
    for (Index i = 0; i < 20; ++i) {
      const std::uint16_t b = std::uint16_t(0x3F80 + 97 * i + r);
      std::memcpy(row + layout.rope_offset() + 2 * i, &b, 2);
    }
  }
  std::vector<float> a(std::size_t(rows * 276)), b(a.size());
  internal::fp8_latent_dequantize_rows_portable(src.data(), stride, rows, layout, a.data(), 276);
  fp8_latent_dequantize_rows(src.data(), stride, rows, layout, b.data(), 276);
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) {
      EXPECT_TRUE(std::isnan(b[i])) << i;
      continue;
    }
    std::uint32_t ba, bb;
    std::memcpy(&ba, &a[i], 4);
    std::memcpy(&bb, &b[i], 4);
    EXPECT_EQ(ba, bb) << "element " << i << ": " << a[i] << " vs " << b[i];
  }
}

TEST(Int8LatentLayout, V3RowIs648Bytes) {
  const Int8LatentLayout v3{512, 64};
  EXPECT_EQ(v3.scale_offset(), 512);
  EXPECT_EQ(v3.sum_offset(), 516);
  EXPECT_EQ(v3.rope_offset(), 520);
  EXPECT_EQ(v3.bytes_per_token(), 648);
  EXPECT_EQ(Int8LatentCache(512, 64, 4).bytes_per_token(), 648u);
  EXPECT_EQ((LatentBlockPool<Int8Latent>(512, 64, 2, 64).bytes_per_token()), 648u);
  EXPECT_THROW((Int8LatentLayout{std::int64_t(1) << 30, 64}.validate()), std::invalid_argument);
  EXPECT_THROW((Int8LatentLayout{0, 64}.validate()), std::invalid_argument);
}

TEST(Int8LatentCache, QuantisationErrorIsWithinHalfAStep) {
  const Index R = 300, P = 10;
  const Int8LatentLayout layout{R, P};
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Int8LatentCache cache(R, P, 4);
  std::vector<float> row(std::size_t(R + P)), back(std::size_t(R + P));
  for (int trial = 0; trial < 2; ++trial) {
    for (float& v : row) v = nd(rng) * (trial == 0 ? 1.0f : 1e-20f);  // tiny values too
    cache.append(row.data(), R + P, 1);
    cache.dequantize(trial, 1, back.data(), R + P);
    float amax = 0;
    for (Index i = 0; i < R; ++i) amax = std::max(amax, std::fabs(row[std::size_t(i)]));
    const std::uint8_t* stored = cache.row(trial);
    const float scale = internal::int8_row_scale(stored, layout);
    EXPECT_EQ(scale, amax / 127.0f);
    std::int32_t sum = 0, largest = 0;
    for (Index i = 0; i < R; ++i) {
      const auto code = static_cast<std::int8_t>(stored[i]);
      sum += code;
      largest = std::max<std::int32_t>(largest, std::abs(code));
      EXPECT_LE(std::fabs(back[std::size_t(i)] - row[std::size_t(i)]), 0.5f * scale * 1.0001f)
          << "element " << i;
    }
    EXPECT_EQ(largest, 127) << "the row's largest magnitude takes the full range";
    EXPECT_EQ(internal::int8_row_code_sum(stored, layout), sum);
    for (Index i = 0; i < P; ++i)
      EXPECT_EQ(back[std::size_t(R + i)], float(bfloat16(row[std::size_t(R + i)])));
  }
  // An all-zero row: scale 0, zeros back. A row holding inf or NaN decodes to NaN.
  std::fill(row.begin(), row.end(), 0.0f);
  cache.append(row.data(), R + P, 1);
  cache.dequantize(2, 1, back.data(), R + P);
  for (Index i = 0; i < R; ++i) EXPECT_EQ(back[std::size_t(i)], 0.0f);
  row[17] = std::numeric_limits<float>::infinity();
  cache.append(row.data(), R + P, 1);
  cache.dequantize(3, 1, back.data(), R + P);
  for (Index i = 0; i < R; ++i) EXPECT_TRUE(std::isnan(back[std::size_t(i)])) << i;
  EXPECT_THROW(cache.append(row.data(), R + P, 1), std::invalid_argument);  // capacity 4
}

TEST(Int8LatentCache, SimdAndPortableDequantisationAgreeOnEveryCode) {
  const Int8LatentLayout layout{256, 20};
  const Index rows = 4, stride = layout.bytes_per_token() + 3;  // an odd stride: unaligned
  std::vector<std::uint8_t> src(std::size_t(rows * stride));
  const float scales[] = {1.0f, 3e-5f, 117.5f, 0.0f};
  for (Index r = 0; r < rows; ++r) {
    std::uint8_t* row = src.data() + r * stride;
    for (Index i = 0; i < 256; ++i) row[i] = std::uint8_t(i + r * 37);
    std::memcpy(row + layout.scale_offset(), &scales[r], 4);
    for (Index i = 0; i < 20; ++i) {
      const std::uint16_t b = std::uint16_t(0x3F80 + 97 * i + r);
      std::memcpy(row + layout.rope_offset() + 2 * i, &b, 2);
    }
  }
  std::vector<float> a(std::size_t(rows * 276)), b(a.size());
  using Codec = LatentRowCodec<Int8Latent>;
  Codec::decode_float_rows(false, src.data(), stride, rows, 256, 20, a.data(), 276);
  if (!kernels::path_available(kernels::KernelPath::kAvx2)) GTEST_SKIP() << "no AVX2 here";
  Codec::decode_float_rows(true, src.data(), stride, rows, 256, 20, b.data(), 276);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

// ---- decode through 8-bit caches ------------------------------------------------------------

using testing::rel_err;

template <class T>
void check_decode_matches_reference_on_dequantised_rows() {
  ThreadPool pool2(2);
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Case {
    Index q_len, heads, R, P, len, block;
  };
  const Case cases[] = {{1, 4, 40, 8, 30, 7}, {3, 4, 40, 8, 15, 7},  {2, 3, 130, 6, 65, 1},
                        {1, 128, 512, 64, 200, 64}, {2, 16, 512, 64, 129, 64}};
  for (const Case& c : cases) {
    const Index W = c.R + c.P, m = c.q_len * c.heads;
    std::vector<float> rows(std::size_t(c.len * W)), q_lat(std::size_t(m * c.R)),
        q_pe(std::size_t(m * c.P));
    for (float& v : rows) v = nd(rng);
    for (float& v : q_lat) v = nd(rng);
    for (float& v : q_pe) v = nd(rng);
    QuantizedLatentCache<T> contiguous(c.R, c.P, c.len);
    contiguous.append(rows.data(), W, c.len);
    LatentBlockPool<T> pool(c.R, c.P, (c.len + c.block - 1) / c.block + 2, c.block);
    {  // scatter the blocks
      std::vector<std::int32_t> ids;
      pool.allocate(pool.num_blocks(), ids);
      std::shuffle(ids.begin(), ids.end(), rng);
      for (std::int32_t id : ids) pool.free(id);
    }
    PagedLatentCache<T> paged(pool, c.len);
    paged.append(rows.data(), W, c.len);
    // Both hold the same bytes; the reference reads the dequantised rows.
    for (Index t = 0; t < c.len; ++t)
      ASSERT_EQ(std::memcmp(paged.row(t), contiguous.row(t), std::size_t(contiguous.row_stride())), 0);
    std::vector<float> deq(std::size_t(c.len * W));
    contiguous.dequantize(0, c.len, deq.data(), W);
    kernels::AbsorbedAttentionShape sh;
    sh.q_len = c.q_len;
    sh.num_heads = c.heads;
    sh.kv_lora = c.R;
    sh.rope = c.P;
    sh.cache_len = c.len;
    sh.row_stride = W;
    const float scale = 0.15f;
    std::vector<float> ref(std::size_t(m * c.R)), ref_lse(static_cast<std::size_t>(m));
    reference::absorbed_attention(sh, q_lat.data(), q_pe.data(), deq.data(), scale, ref.data(),
                                  ref_lse.data());
    // Int8 rows on the AVX-512 path of a CPU with AVX512-VNNI take the integer c_kv scores
    // (kernels/int8_tiles.hpp), which round each query row, scaled by scale * log2 e, to int8
    // codes of step max|row| / 127. Their reference takes the query so rounded (written out here
    // from that definition), so the rest is compared to float rounding as on the other paths.
    const bool vnni = std::is_same_v<T, Int8Latent> && internal::cpu_features().avx512_vnni &&
                      c.R % 4 == 0;
    std::vector<float> ref_q8(ref.size()), ref_q8_lse(ref_lse.size());
    if (vnni) {
      std::vector<float> q8(q_lat.size());
      const double qscale = double(scale) * 1.4426950408889634;
      for (Index r = 0; r < m; ++r) {
        double amax = 0;
        for (Index k = 0; k < c.R; ++k)
          amax = std::max(amax, std::fabs(double(float(q_lat[std::size_t(r * c.R + k)] * float(qscale)))));
        const double step = double(float(amax) / 127.0f);
        for (Index k = 0; k < c.R; ++k) {
          const double v = double(float(q_lat[std::size_t(r * c.R + k)] * float(qscale)));
          q8[std::size_t(r * c.R + k)] = step == 0 ? 0.0f : float(std::nearbyint(v / step) * step / qscale);
        }
      }
      reference::absorbed_attention(sh, q8.data(), q_pe.data(), deq.data(), scale, ref_q8.data(),
                                    ref_q8_lse.data());
    }
    kernels::DecodeWorkspace ws;
    test_support::BlockwiseAbsorbedWorkspace bws;
    for (ThreadPool* pool_ptr : {static_cast<ThreadPool*>(nullptr), &pool2})
      for (kernels::KernelPath path : kernels::available_paths())
        for (const LatentRowsView<T>& view : {latent_rows(contiguous), paged.rows()}) {
          std::vector<float> out(ref.size(), NAN), lse(ref_lse.size(), NAN);
          kernels::paged_absorbed_attention(c.q_len, c.heads, q_lat.data(), q_pe.data(), view,
                                            scale, out.data(), lse.data(), ws, pool_ptr, path);
          const bool int8_scores = vnni && (path == kernels::KernelPath::kAvx512 ||
                                             path == kernels::KernelPath::kAmx);
          const std::vector<float>& want = int8_scores ? ref_q8 : ref;
          const std::vector<float>& want_lse = int8_scores ? ref_q8_lse : ref_lse;
          ASSERT_LE(rel_err(out, want), 1e-5f) << "len " << c.len << " R " << c.R << " paged "
                                                << view.paged() << " int8 scores " << int8_scores;
          for (std::size_t i = 0; i < lse.size(); ++i)
            ASSERT_NEAR(lse[i], want_lse[i], 1e-5f * std::max(1.0f, std::abs(want_lse[i])));
          std::vector<float> bw(ref.size(), NAN);
          test_support::paged_absorbed_attention_blockwise(c.q_len, c.heads, q_lat.data(), q_pe.data(),
                                                      view, scale, bw.data(), nullptr, bws,
                                                      pool_ptr);
          ASSERT_LE(rel_err(bw, ref), 1e-5f) << "blockwise, len " << c.len;
        }
  }
}

TEST(Fp8LatentCache, DecodeMatchesReferenceOnDequantisedRows) {
  check_decode_matches_reference_on_dequantised_rows<Fp8Latent>();
}
TEST(Int8LatentCache, DecodeMatchesReferenceOnDequantisedRows) {
  check_decode_matches_reference_on_dequantised_rows<Int8Latent>();
}

// ---- the layer with an FP8 cache, on the Hugging Face reference cases ------------------------

struct CacheErrors {
  double fp8 = 0, int8 = 0, bf16 = 0;  // max |y_cache - y_float| / max |y_float|
  double fp8_vs_reference = 0;
  double fp8_contiguous_vs_paged = 0, int8_contiguous_vs_paged = 0;  // same bytes, both views
};

/// Runs every io file of a reference case through the layer (prefill of the first half, then
/// token by token) with a float LatentCache (layer.forward, absorbed) and through
/// mla_decode_batch with paged and contiguous FP8 and int8 caches and a bf16 LatentCache.
CacheErrors measure_case(const std::filesystem::path& folder) {
  const io::Checkpoint ckpt(folder);
  const MlaConfig cfg = io::parse_mla_config(ckpt.config());
  const auto layer = io::load_mla_layer<float>(ckpt, cfg, 0);
  CacheErrors e;
  for (const auto& io_path : conformance::detail::io_files(folder)) {
    const io::SafetensorsFile f(io_path);
    const Matrix<float> x = conformance::detail::read_2d<float>(f, "hidden_states");
    const Positions pos = conformance::detail::read_positions(f);
    const Matrix<float> ref = conformance::detail::read_2d<float>(f, "output");
    const Index T = x.rows(), first = T / 2;
    auto cf = layer.make_latent_cache<float>(T);
    auto cb = layer.make_latent_cache<bfloat16>(T);
    LatentBlockPool<Fp8Latent> pool(cfg.kv_lora_rank, cfg.qk_rope_head_dim, (T + 3) / 4, 4);
    PagedLatentCache<Fp8Latent> c8(pool, T);
    Fp8LatentCache c8c(cfg.kv_lora_rank, cfg.qk_rope_head_dim, T);
    LatentBlockPool<Int8Latent> ipool(cfg.kv_lora_rank, cfg.qk_rope_head_dim, (T + 3) / 4, 4);
    PagedLatentCache<Int8Latent> ci(ipool, T);
    Int8LatentCache cic = layer.make_int8_latent_cache(T);
    Matrix<float> yf(T, cfg.hidden_size), yb(T, cfg.hidden_size), y8(T, cfg.hidden_size),
        y8c(T, cfg.hidden_size), yi(T, cfg.hidden_size), yic(T, cfg.hidden_size);
    Workspace ws;
    Workspace ctx;
    for (Index t0 = 0; t0 < T;) {
      const Index n = t0 == 0 ? first : 1;
      const Matrix<float> xs = x.middleRows(t0, n);
      const Positions ps = pos.segment(t0, n);
      Matrix<float> out(n, cfg.hidden_size);
      layer.forward(xs, ps, cf, out, ws, MlaPath::kAbsorbed);
      yf.middleRows(t0, n) = out;
      mla_decode_batch(layer, xs, ps, {n}, std::vector<LatentCache<bfloat16>*>{&cb}, out, ctx);
      yb.middleRows(t0, n) = out;
      mla_decode_batch(layer, xs, ps, {n}, std::vector<PagedLatentCache<Fp8Latent>*>{&c8}, out,
                       ctx);
      y8.middleRows(t0, n) = out;
      mla_decode_batch(layer, xs, ps, {n}, std::vector<Fp8LatentCache*>{&c8c}, out, ctx);
      y8c.middleRows(t0, n) = out;
      mla_decode_batch(layer, xs, ps, {n}, {&ci}, out, ctx);
      yi.middleRows(t0, n) = out;
      layer.forward(xs, ps, cic, out, ws, MlaPath::kAbsorbed);
      yic.middleRows(t0, n) = out;
      t0 += n;
    }
    const double scale = yf.cwiseAbs().maxCoeff();
    e.fp8_contiguous_vs_paged =
        std::max(e.fp8_contiguous_vs_paged, double((y8c - y8).cwiseAbs().maxCoeff()) / scale);
    e.fp8 = std::max(e.fp8, double((y8 - yf).cwiseAbs().maxCoeff()) / scale);
    e.int8_contiguous_vs_paged =
        std::max(e.int8_contiguous_vs_paged, double((yic - yi).cwiseAbs().maxCoeff()) / scale);
    e.int8 = std::max(e.int8, double((yi - yf).cwiseAbs().maxCoeff()) / scale);
    e.bf16 = std::max(e.bf16, double((yb - yf).cwiseAbs().maxCoeff()) / scale);
    e.fp8_vs_reference = std::max(
        e.fp8_vs_reference, double((y8 - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff()));
  }
  return e;
}

TEST(QuantizedLatentCache, LayerErrorAgainstTheFloatCacheOnReferenceCases) {
  for (const char* name : {"deepseek_v3_tiny", "deepseek_v2_lite_tiny", "deepseek_v3_realdims"}) {
    const auto folder = testing::reference_dir() / name;
    ASSERT_TRUE(std::filesystem::is_directory(folder))
        << folder << " missing: set MLA_REFERENCE_DIR to the reference folder";
    const CacheErrors e = measure_case(folder);
    ::testing::Test::RecordProperty(std::string(name) + "_fp8_rel_err", std::to_string(e.fp8));
    ::testing::Test::RecordProperty(std::string(name) + "_bf16_rel_err", std::to_string(e.bf16));
    ::testing::Test::RecordProperty(std::string(name) + "_int8_rel_err", std::to_string(e.int8));
    std::printf("%-24s output error vs float cache: fp8 %.3e  int8 %.3e  bf16 %.3e  "
                "(fp8 vs HF reference %.3e)\n",
                name, e.fp8, e.int8, e.bf16, e.fp8_vs_reference);
    // The cache really is quantised (an FP8 path that silently kept floats would give ~1e-7) ...
    EXPECT_GT(e.fp8, 1e-4) << name;
    // ... bf16 (8 significant bits) is more accurate than E4M3 (4 bits) ...
    EXPECT_LT(e.bf16, e.fp8) << name;
    // ... and the layer output stays within one E4M3 rounding step (2^-4 relative): rounding
    // errors of thousands of latent values average out in the scores and the P.C sum.
    EXPECT_LT(e.fp8, 0x1p-4) << name;
    // A contiguous Fp8LatentCache holds the same bytes as the paged one: same result.
    EXPECT_LE(e.fp8_contiguous_vs_paged, 1e-5) << name;
    // Int8 (one scale per token, half a step = amax / 254 per value): quantised, within the
    // 1e-2 target, more accurate than E4M3; contiguous and paged hold the same bytes.
    EXPECT_GT(e.int8, 1e-5) << name;
    EXPECT_LE(e.int8, 1e-2) << name;
    EXPECT_LT(e.int8, e.fp8) << name;
    EXPECT_LE(e.int8_contiguous_vs_paged, 1e-5) << name;
  }
}

/// The 8-bit caches on a long synthetic context (16k rows, V3 widths and softmax scale, 16 heads,
/// one new token; latent rows and queries standard normal): the decode engine over the int8 and
/// FP8 rows against the engine over the float rows. Flat attention over random rows is the hard
/// case for 8 bits: the scores' rounding error, scale * sqrt(R) * (amax / 127) / sqrt(12) ~ 0.02
/// in logits per row, moves every softmax weight by ~2% and does not cancel in the average of
/// nearly equal weights, so the output error is ~1.5e-2 of its largest value (the rounding of
/// the values alone gives ~5e-3; docs/benchmarks.md has the breakdown). The integer scores
/// (AVX512-VNNI) round the query the same way, which adds an error of the same size (variances
/// add: ~2.2e-2, ~2.7e-2 with the max statistic). Int8 must beat FP8 and stay within that model.
TEST(QuantizedLatentCache, LongContextErrorAgainstTheFloatCache) {
  const Index R = 512, P = 64, W = R + P, L = 16384, heads = 16;
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> rows(std::size_t(L * W)), q_lat(std::size_t(heads * R)),
      q_pe(std::size_t(heads * P));
  for (float& v : rows) v = nd(rng);
  for (float& v : q_lat) v = nd(rng);
  for (float& v : q_pe) v = nd(rng);
  LatentRowsView<float> f32;
  f32.base = rows.data();
  f32.row_stride = W;
  f32.len = L;
  f32.kv_lora_rank = R;
  f32.rope_dim = P;
  const float scale = 0.1147f;  // DeepSeek-V3's 1/sqrt(192) x mscale^2 at factor 40
  kernels::DecodeWorkspace ws;
  std::vector<float> want(std::size_t(heads * R)), got(want.size());
  kernels::paged_absorbed_attention(1, heads, q_lat.data(), q_pe.data(), f32, scale, want.data(),
                                    nullptr, ws);
  auto error_of = [&](const auto& cache) {
    kernels::paged_absorbed_attention(1, heads, q_lat.data(), q_pe.data(), latent_rows(cache),
                                      scale, got.data(), nullptr, ws);
    return rel_err(got, want);
  };
  Int8LatentCache c8(R, P, L);
  c8.append(rows.data(), W, L);
  Fp8LatentCache f8(R, P, L);
  f8.append(rows.data(), W, L);
  const float e_int8 = error_of(c8), e_fp8 = error_of(f8);
  ::testing::Test::RecordProperty("int8_long_context_rel_err", std::to_string(e_int8));
  ::testing::Test::RecordProperty("fp8_long_context_rel_err", std::to_string(e_fp8));
  std::printf("16k synthetic rows: output error vs float cache: int8 %.3e  fp8 %.3e\n",
              double(e_int8), double(e_fp8));
  const bool int8_scores = internal::int8_scores_available(R) &&
                           kernels::auto_path() == kernels::KernelPath::kAvx512;
  EXPECT_GT(e_int8, 1e-5f);
  EXPECT_LT(e_int8, e_fp8);
  EXPECT_LE(e_int8, int8_scores ? 3e-2f : 2e-2f) << "int8 scores " << int8_scores;
}

}  // namespace
}  // namespace mla
