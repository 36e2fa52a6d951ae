// Tests of the CUDA absorbed MLA decode (mla/cuda/) against the library's CPU double reference:
// bf16 and FP8 paged caches, 16..128 heads, q_len 1..4 (causal among the new tokens), lengths
// that are not a multiple of the block, mixed batches up to 128 sequences, split-KV with the
// combine (forced and planned), plan reuse across layers and bad plans. Every test skips, with
// the reason, where no CUDA GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_decode_case.hpp"
#include "mla/cuda/cuda.cuh"

namespace {

using mla::cuda::CudaDecodeOptions;
using mla::cuda::DecodeKernel;
using mla::cuda::DecodePlan;
using mla::cuda::DeviceBuffer;
using mla_cuda_test::DecodeCase;
using mla_cuda_test::make_decode_case;

/// Empty when a CUDA device is usable, otherwise why not.
std::string gpu_missing() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
  if (n == 0) return "no CUDA device";
  return {};
}

#define MLA_REQUIRE_GPU()                                                       \
  do {                                                                          \
    static const std::string why = gpu_missing();                               \
    if (!why.empty()) GTEST_SKIP() << "CUDA decode tests need a GPU: " << why;  \
  } while (0)

float bf16_to_float(std::uint16_t b) {
  const std::uint32_t u = std::uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct GpuResult {
  std::vector<float> out, lse;
};

/// Device copies of a case's inputs (pool, table, q) and outputs.
struct GpuCase {
  DeviceBuffer<std::uint16_t> q, out;
  DeviceBuffer<std::uint8_t> pool;
  DeviceBuffer<std::int32_t> table;
  DeviceBuffer<float> lse;
  const DecodeCase* c = nullptr;

  explicit GpuCase(const DecodeCase& dc) : c(&dc) {
    q.reserve(dc.q.size());
    pool.reserve(dc.pool.size());
    table.reserve(dc.table.size());
    out.reserve(std::size_t(dc.total_q_tokens) * dc.heads * 512);
    lse.reserve(std::size_t(dc.total_q_tokens) * dc.heads);
    MLA_CUDA_CHECK(cudaMemcpy(q.data(), dc.q.data(), dc.q.size() * 2, cudaMemcpyHostToDevice));
    MLA_CUDA_CHECK(cudaMemcpy(pool.data(), dc.pool.data(), dc.pool.size(), cudaMemcpyHostToDevice));
    MLA_CUDA_CHECK(
        cudaMemcpy(table.data(), dc.table.data(), dc.table.size() * 4, cudaMemcpyHostToDevice));
  }
  mla::cuda::DecodeTensors tensors(bool with_lse = true) {
    mla::cuda::DecodeTensors t;
    t.q = reinterpret_cast<const __nv_bfloat16*>(q.data());
    t.out = reinterpret_cast<__nv_bfloat16*>(out.data());
    t.lse = with_lse ? lse.data() : nullptr;
    t.cache.format = c->fp8 ? mla::cuda::LatentFormat::kFp8 : mla::cuda::LatentFormat::kBf16;
    t.cache.pool = pool.data();
    t.cache.block_stride = std::int64_t(64) * c->row_bytes;
    t.cache.block_table = table.data();
    t.cache.table_stride = c->table_stride;
    t.softmax_scale = c->scale;
    return t;
  }
  GpuResult fetch() {
    MLA_CUDA_CHECK(cudaDeviceSynchronize());
    GpuResult r;
    std::vector<std::uint16_t> o(std::size_t(c->total_q_tokens) * c->heads * 512);
    MLA_CUDA_CHECK(cudaMemcpy(o.data(), out.data(), o.size() * 2, cudaMemcpyDeviceToHost));
    r.out.resize(o.size());
    for (std::size_t i = 0; i < o.size(); ++i) r.out[i] = bf16_to_float(o[i]);
    r.lse.resize(std::size_t(c->total_q_tokens) * c->heads);
    MLA_CUDA_CHECK(cudaMemcpy(r.lse.data(), lse.data(), r.lse.size() * 4, cudaMemcpyDeviceToHost));
    return r;
  }
};

GpuResult run_gpu(const DecodeCase& c, CudaDecodeOptions options = {}, DecodePlan* plan_in = nullptr) {
  GpuCase g(c);
  DecodePlan local;
  DecodePlan& plan = plan_in ? *plan_in : local;
  plan.plan(c.heads, c.q_lens.data(), c.lens.data(), int(c.lens.size()), nullptr, options);
  MLA_CUDA_CHECK(cudaMemset(g.out.data(), 0xFF, g.out.capacity() * 2));  // NaN: catch rows not written
  mla::cuda::run_decode(plan, g.tensors());
  return g.fetch();
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

/// max_i |a_i - b_i| / (1 + |b_i|): an absolute error for small values, relative for large ones
/// (a bf16 output of magnitude 2..4 is already rounded by up to 2^-7).
double max_scaled_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i])) / (1.0 + std::fabs(double(b[i])));
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

/// Checks GPU outputs against the case's reference: out within `tol` (max_scaled_diff), lse
/// within `lse_tol`.
void expect_matches(const DecodeCase& c, const GpuResult& r, double tol, const std::string& what) {
  const double out_err = max_scaled_diff(r.out, c.ref_out);
  const double lse_err = max_abs_diff(r.lse, c.ref_lse);
  const double lse_tol = c.fp8 ? 2e-2 : 2e-3;
  EXPECT_LE(out_err, tol) << what << ": max |out - reference| / (1 + |reference|)";
  EXPECT_LE(lse_err, lse_tol) << what << ": max |lse - reference|";
}

/// The kernel forms this build runs on this GPU: mma.sync always, wgmma on sm_90a builds on sm_90.
std::vector<DecodeKernel> forms() {
  static const bool has_wgmma = DecodePlan().has_wgmma();
  if (has_wgmma) return {DecodeKernel::kMmaSync, DecodeKernel::kWgmma};
  return {DecodeKernel::kMmaSync};
}
std::string form_name(DecodeKernel k) {
  return k == DecodeKernel::kWgmma ? " [wgmma]" : " [mma.sync]";
}
CudaDecodeOptions with_form(CudaDecodeOptions o, DecodeKernel k) {
  o.kernel = k;
  return o;
}
/// expect_matches for every kernel form.
void expect_all_forms(const DecodeCase& c, double tol, const std::string& what,
                      CudaDecodeOptions options = {}) {
  for (DecodeKernel k : forms())
    expect_matches(c, run_gpu(c, with_form(options, k)), tol, what + form_name(k));
}

std::vector<int> uniform(int batch, int v) { return std::vector<int>(batch, v); }

// bf16 output (a value of magnitude 2..4 is rounded by up to 2^-7) and bf16 probabilities.
constexpr double kBf16Tol = 1e-2;
// + the dequantised FP8 values rounded to bf16 before the multiplies (about 2^-9 relative on
// every c value, which also moves the lse by up to ~1e-2).
constexpr double kFp8Tol = 2e-2;

TEST(CudaDecode, Bf16EveryHeadCountAndQLen) {
  MLA_REQUIRE_GPU();
  for (int heads : {16, 32, 64, 128})
    for (int q_len : {1, 2, 3, 4}) {
      const DecodeCase c = make_decode_case(heads, uniform(3, q_len), {q_len, 130, 333}, false,
                                            unsigned(heads * 10 + q_len));
      expect_all_forms(c, kBf16Tol, "heads " + std::to_string(heads) + " q_len " + std::to_string(q_len));
    }
}

TEST(CudaDecode, Bf16MixedBatch) {
  MLA_REQUIRE_GPU();
  std::mt19937 rng(7);
  std::vector<int> q_lens(37), lens(37);
  for (int b = 0; b < 37; ++b) {
    q_lens[b] = 1 + int(rng() % 4);
    lens[b] = q_lens[b] + int(rng() % 900);
  }
  const DecodeCase c = make_decode_case(64, q_lens, lens, false, 8);
  expect_all_forms(c, kBf16Tol, "mixed batch of 37");
}

TEST(CudaDecode, Bf16Batch128) {
  MLA_REQUIRE_GPU();
  std::mt19937 rng(9);
  std::vector<int> lens(128);
  for (auto& l : lens) l = 1 + int(rng() % 300);
  const DecodeCase c = make_decode_case(128, uniform(128, 1), lens, false, 10);
  expect_all_forms(c, kBf16Tol, "batch 128");
}

TEST(CudaDecode, Bf16LongSequencesAreSplit) {
  MLA_REQUIRE_GPU();
  const DecodeCase c = make_decode_case(128, {4, 1}, {5000, 4097}, false, 11);
  for (DecodeKernel k : forms()) {
    DecodePlan plan;
    const GpuResult r = run_gpu(c, with_form({}, k), &plan);
    EXPECT_TRUE(plan.any_split());
    EXPECT_GT(plan.host_seqs()[0].num_pieces, 1);
    expect_matches(c, r, kBf16Tol, "long sequences" + form_name(k));
  }
}

TEST(CudaDecode, ForcedSplitsIncludePiecesSomeTokensDoNotSee) {
  MLA_REQUIRE_GPU();
  // One-block pieces: for len 65 and q_len 4 the last block holds only row 64, which token 0
  // (rows 0..61) does not see, so that piece's partial for token 0 is empty (lse = -inf).
  const DecodeCase c = make_decode_case(32, {4, 4, 3, 4, 2, 4}, {65, 66, 67, 68, 129, 4}, false, 12);
  CudaDecodeOptions o;
  o.num_parts = 300;
  o.piece_overhead_blocks = 0;
  for (DecodeKernel k : forms()) {
    DecodePlan plan;
    const GpuResult r = run_gpu(c, with_form(o, k), &plan);
    EXPECT_EQ(plan.host_seqs()[0].num_pieces, 2);
    expect_matches(c, r, kBf16Tol, "one-block pieces" + form_name(k));
  }
}

TEST(CudaDecode, OnePartRunsTheWholeBatchUnsplit) {
  MLA_REQUIRE_GPU();
  const DecodeCase c = make_decode_case(16, {1, 2, 3}, {700, 64, 3}, false, 13);
  CudaDecodeOptions o;
  o.num_parts = 1;
  for (DecodeKernel k : forms()) {
    DecodePlan plan;
    const GpuResult r = run_gpu(c, with_form(o, k), &plan);
    EXPECT_FALSE(plan.any_split());
    expect_matches(c, r, kBf16Tol, "one part" + form_name(k));
  }
}

TEST(CudaDecode, PlanServesEveryLayerOfAStep) {
  MLA_REQUIRE_GPU();
  const std::vector<int> q_lens{2, 1, 3}, lens{1000, 17, 300};
  const DecodeCase a = make_decode_case(64, q_lens, lens, false, 14);
  const DecodeCase b = make_decode_case(64, q_lens, lens, false, 15);
  for (DecodeKernel k : forms()) {
    DecodePlan plan;
    plan.plan(64, q_lens.data(), lens.data(), 3, nullptr, with_form({}, k));
    GpuCase ga(a), gb(b);
    mla::cuda::run_decode(plan, ga.tensors());
    mla::cuda::run_decode(plan, gb.tensors(/*with_lse=*/false));
    expect_matches(a, ga.fetch(), kBf16Tol, "layer 0" + form_name(k));
    const GpuResult rb = gb.fetch();
    EXPECT_LE(max_scaled_diff(rb.out, b.ref_out), kBf16Tol) << "layer 1 (no lse)" << form_name(k);
  }
}

TEST(CudaDecode, Fp8EveryQLenAndHeads) {
  MLA_REQUIRE_GPU();
  for (int heads : {16, 128})
    for (int q_len : {1, 4}) {
      const DecodeCase c = make_decode_case(heads, uniform(3, q_len), {q_len, 130, 333}, true,
                                            unsigned(100 + heads + q_len));
      expect_all_forms(c, kFp8Tol,
                       "fp8 heads " + std::to_string(heads) + " q_len " + std::to_string(q_len));
    }
}

TEST(CudaDecode, Fp8MixedBatchAndSplits) {
  MLA_REQUIRE_GPU();
  std::mt19937 rng(21);
  std::vector<int> q_lens(24), lens(24);
  for (int b = 0; b < 24; ++b) {
    q_lens[b] = 1 + int(rng() % 4);
    lens[b] = q_lens[b] + int(rng() % 3000);
  }
  const DecodeCase c = make_decode_case(128, q_lens, lens, true, 22);
  expect_all_forms(c, kFp8Tol, "fp8 mixed batch");
  const GpuResult r = run_gpu(c);
  // What the FP8 cache costs against a bf16 cache of the same rows: E4M3 keeps 3 mantissa bits
  // (2^-4 relative), so outputs move by up to ~0.15 on values of magnitude ~1 (reported, loosely
  // bounded; the RMS is the number to quote).
  const double vs_bf16 = max_abs_diff(r.out, c.bf16_out);
  double se = 0.0, ref2 = 0.0;
  for (std::size_t i = 0; i < r.out.size(); ++i) {
    se += (double(r.out[i]) - c.bf16_out[i]) * (double(r.out[i]) - c.bf16_out[i]);
    ref2 += double(c.bf16_out[i]) * c.bf16_out[i];
  }
  std::printf("fp8 cache vs bf16-cache reference: max |diff| = %.4g, RMS diff / RMS out = %.4g; "
              "vs fp8 reference: max |diff| = %.4g\n",
              vs_bf16, std::sqrt(se / ref2), max_abs_diff(r.out, c.ref_out));
  EXPECT_LE(vs_bf16, 0.3);
  EXPECT_LE(std::sqrt(se / ref2), 0.05);
}

TEST(CudaDecode, BadPlansThrowNamingTheValue) {
  MLA_REQUIRE_GPU();
  DecodePlan plan;
  const int q5[] = {5}, len5[] = {10};
  try {
    plan.plan(16, q5, len5, 1);
    FAIL() << "q_len 5 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q_lens[b] (b = 0) is 5, expected in [1, 4]"),
              std::string::npos)
        << e.what();
  }
  const int q2[] = {2}, len1[] = {1};
  EXPECT_THROW(plan.plan(16, q2, len1, 1), std::invalid_argument);
  const int q1[] = {1};
  EXPECT_THROW(plan.plan(129, q1, len5, 1), std::invalid_argument);
  EXPECT_THROW(plan.plan(0, q1, len5, 1), std::invalid_argument);
  // A run before any plan.
  DecodePlan empty;
  mla::cuda::DecodeTensors t;
  EXPECT_THROW(mla::cuda::run_decode(empty, t), std::invalid_argument);
}

}  // namespace
