// Runtime instruction-set dispatch (core/isa.hpp):
// - Two translation units compiled with different -march (this file with -march=native,
//   dispatch_unit_v2.cpp with -march=x86-64-v2, tests/CMakeLists.txt) link into one binary; each
//   runs the absorbed-MLA, GQA and GEMM kernels on every path this CPU has, and both agree with
//   the double-precision references. The unit built for plain x86-64-v2 reaches the AVX2 and
//   AVX-512 kernels where the CPU has them: which kernels exist no longer depends on -march.
// - MLA_KERNEL_PATH caps what KernelPath::kAuto runs: the rule itself (auto_path_for), and the
//   variable read by a fresh process (this binary re-run with the variable set).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__)
#include <unistd.h>
#endif

#include "dispatch_unit.hpp"
#include "mla/core/isa.hpp"
#include "mla/reference/attention.hpp"
#include "mla/reference/gemm.hpp"

#define DISPATCH_UNIT unit_native
#include "dispatch_unit.inc"

namespace {

using dispatch_test::Outputs;
using dispatch_test::Problems;
using mla::Index;
using mla::kernels::KernelPath;

// Largest |a - b| relative to max|b| (b is the reference).
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double e = 0.0, m = 1e-30;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    e = std::max(e, std::abs(double(a[i]) - double(b[i])));
    m = std::max(m, std::abs(double(b[i])));
  }
  return e / m;
}

// The references' outputs for the same problems (run_kernels' arguments).
Outputs reference_outputs(const Problems& p) {
  using mla::kernels::GemmB;
  Outputs r;
  const std::size_t mla_n = std::size_t(p.mla.rows() * p.mla.kv_lora);
  r.mla_f.resize(mla_n);
  r.mla_b.resize(mla_n);
  mla::reference::absorbed_attention(p.mla, p.q_lat.data(), p.q_pe.data(), p.mla_f.data(), 0.3f,
                                     r.mla_f.data());
  mla::reference::absorbed_attention(p.mla, p.q_lat.data(), p.q_pe.data(), p.mla_b.data(), 0.3f,
                                     r.mla_b.data());
  auto gqa = [&](const mla::kernels::GqaAttentionShape& s, const std::vector<float>& q,
                 std::vector<float>& of, std::vector<float>& ob) {
    const std::size_t n = std::size_t(s.q_len * s.num_heads * s.v_dim);
    of.resize(n);
    ob.resize(n);
    mla::reference::gqa_attention(s, q.data(), p.k_f.data(), p.v_f.data(), 0.125f, of.data());
    mla::reference::gqa_attention(s, q.data(), p.k_b.data(), p.v_b.data(), 0.125f, ob.data());
  };
  gqa(p.gqa_rows, p.q_rows, r.gqa_rows_f, r.gqa_rows_b);
  gqa(p.gqa_packed, p.q_packed, r.gqa_packed_f, r.gqa_packed_b);
  const Index M = p.gemm_m, N = p.gemm_n, K = p.gemm_k;
  r.gemm_f.resize(std::size_t(M * N));
  r.gemm_b.resize(std::size_t(M * N));
  mla::reference::gemm(M, N, K, p.a.data(), K, p.b_f.data(), K, GemmB::kTransposed,
                       r.gemm_f.data(), N, false);
  mla::reference::gemm(M, N, K, p.a.data(), K, p.b_b.data(), K, GemmB::kTransposed,
                       r.gemm_b.data(), N, false);
  r.small_bt.resize(std::size_t(p.small_m * N));
  mla::reference::gemm(p.small_m, N, K, p.a.data(), K, p.b_b.data(), K, GemmB::kTransposed,
                       r.small_bt.data(), N, false);
  r.small_b.resize(std::size_t(p.small_m * N));
  mla::reference::gemm(p.small_m, N, K, p.a.data(), K, p.b_f.data(), N, GemmB::kPlain,
                       r.small_b.data(), N, false);
  return r;
}

// Every output within float accuracy of the reference: attention over <= 150 rows is held to
// 1e-5 of max|out| (as tests/kernels do), a GEMM element to K * 2^-22-ish of its K products
// (|a|, |b| <= 1; tests/kernels/test_gemm.cpp's bound) relative to max|C|, which is >= 1 here.
void expect_matches_reference(const Outputs& got, const Outputs& want, const std::string& what) {
  const double attn = 1e-5, gemm = 1e-6 * 300 + 1e-6;
  EXPECT_LE(rel_err(got.mla_f, want.mla_f), attn) << what << ": absorbed, float cache";
  EXPECT_LE(rel_err(got.mla_b, want.mla_b), attn) << what << ": absorbed, bf16 cache";
  EXPECT_LE(rel_err(got.gqa_rows_f, want.gqa_rows_f), attn) << what << ": gqa rows form, float";
  EXPECT_LE(rel_err(got.gqa_rows_b, want.gqa_rows_b), attn) << what << ": gqa rows form, bf16";
  EXPECT_LE(rel_err(got.gqa_packed_f, want.gqa_packed_f), attn) << what << ": gqa packed, float";
  EXPECT_LE(rel_err(got.gqa_packed_b, want.gqa_packed_b), attn) << what << ": gqa packed, bf16";
  EXPECT_LE(rel_err(got.gemm_f, want.gemm_f), gemm) << what << ": gemm, float B";
  EXPECT_LE(rel_err(got.gemm_b, want.gemm_b), gemm) << what << ": gemm, bf16 B";
  EXPECT_LE(rel_err(got.small_bt, want.small_bt), gemm) << what << ": few-row gemm, B^T";
  EXPECT_LE(rel_err(got.small_b, want.small_b), gemm) << what << ": few-row gemm, B";
}

TEST(Dispatch, BothUnitsSeeEveryPathOfTheCpu) {
  const std::vector<KernelPath> paths = mla::kernels::available_paths();
  EXPECT_EQ(unit_native::available_paths(), paths);
  EXPECT_EQ(unit_v2::available_paths(), paths);
  EXPECT_EQ(paths.front(), KernelPath::kPortable);
  EXPECT_EQ(paths.back(), mla::kernels::widest_available_path());
  // Both units must really differ, or the test shows nothing: the v2 unit is built without AVX2
  // where the build system can say so (GCC and Clang on x86-64).
#if defined(MLA_DISPATCH_TWO_MARCH)
  EXPECT_FALSE(unit_v2::built_with_avx2());
  EXPECT_EQ(unit_native::built_with_avx512(), mla::kernels::path_available(KernelPath::kAvx512));
#endif
}

TEST(Dispatch, EveryPathOfBothUnitsMatchesTheReference) {
  const Problems p;
  const Outputs want = reference_outputs(p);
  for (KernelPath path : mla::kernels::available_paths())
    for (int threads : {1, 2}) {
      const std::string what = std::string(mla::kernels::path_name(path)) + ", " +
                               std::to_string(threads) + " thread(s), ";
      expect_matches_reference(unit_native::run_kernels(p, path, threads), want,
                               what + "native unit");
      expect_matches_reference(unit_v2::run_kernels(p, path, threads), want,
                               what + "x86-64-v2 unit");
    }
}

TEST(Dispatch, AutoRunsTheWidestPathUnlessCapped) {
  const char* env = std::getenv("MLA_KERNEL_PATH");
  const KernelPath expected =
      mla::internal::auto_path_for(mla::kernels::widest_available_path(), env);
  EXPECT_EQ(mla::kernels::resolve_path(KernelPath::kAuto), expected);
  if (env == nullptr) {
    EXPECT_EQ(expected, mla::kernels::widest_available_path());
  }
}

TEST(Dispatch, EnvironmentVariableCapsTheAutoPath) {
  using mla::internal::auto_path_for;
  const KernelPath widest[] = {KernelPath::kPortable, KernelPath::kAvx2, KernelPath::kAvx512};
  for (KernelPath w : widest) {
    EXPECT_EQ(auto_path_for(w, nullptr), w);
    EXPECT_EQ(auto_path_for(w, ""), w);
    EXPECT_EQ(auto_path_for(w, "portable"), KernelPath::kPortable);
    // A cap at or above what the CPU has leaves the widest path.
    EXPECT_EQ(auto_path_for(w, "avx2"), w == KernelPath::kPortable ? w : KernelPath::kAvx2);
    EXPECT_EQ(auto_path_for(w, "avx512"), w);
  }
  for (const char* bad : {"AVX2", "avx2+fma", "amx", "auto", "sse4"}) {
    try {
      auto_path_for(KernelPath::kAvx512, bad);
      ADD_FAILURE() << "accepted MLA_KERNEL_PATH=" << bad;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("\"") + bad + "\""), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("portable, avx2 or avx512"), std::string::npos)
          << e.what();
    }
  }
}

TEST(Dispatch, ExplicitPathsAreCheckedAgainstTheCpu) {
  for (KernelPath path : {KernelPath::kPortable, KernelPath::kAvx2, KernelPath::kAvx512}) {
    if (mla::kernels::path_available(path)) {
      EXPECT_EQ(mla::kernels::resolve_path(path), path);
    } else {
      EXPECT_THROW(mla::kernels::resolve_path(path), std::invalid_argument);
    }
  }
  if (mla::kernels::path_available(KernelPath::kAmx)) {
    // The AMX path implies the AVX-512 one (it runs the AVX-512 code for everything but bf16
    // attention).
    EXPECT_TRUE(mla::kernels::path_available(KernelPath::kAvx512));
  } else {
    EXPECT_THROW(mla::kernels::resolve_path(KernelPath::kAmx), std::invalid_argument);
  }
}

// Run by Dispatch.EnvironmentVariableReachesTheKernels in a child process with MLA_KERNEL_PATH
// and MLA_TEST_EXPECTED_AUTO_PATH set; skipped otherwise.
TEST(DispatchChild, AutoPathFollowsTheEnvironment) {
  const char* expected = std::getenv("MLA_TEST_EXPECTED_AUTO_PATH");
  if (expected == nullptr) GTEST_SKIP() << "run by Dispatch.EnvironmentVariableReachesTheKernels";
  const Problems p;
  if (std::string(expected) == "error") {
    EXPECT_THROW(mla::kernels::resolve_path(KernelPath::kAuto), std::invalid_argument);
    EXPECT_THROW(unit_v2::run_kernels(p, KernelPath::kAuto, 1), std::invalid_argument);
    return;
  }
  EXPECT_STREQ(mla::kernels::path_name(mla::kernels::resolve_path(KernelPath::kAuto)), expected);
  const Outputs want = reference_outputs(p);
  expect_matches_reference(unit_native::run_kernels(p, KernelPath::kAuto, 2), want, "native unit");
  expect_matches_reference(unit_v2::run_kernels(p, KernelPath::kAuto, 2), want, "v2 unit");
}

TEST(Dispatch, EnvironmentVariableReachesTheKernels) {
#if defined(__linux__)
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  self[n] = '\0';
  struct Case {
    const char* value;
    std::string expected;
  };
  std::vector<Case> cases{{"portable", "portable"}, {"avx3", "error"}};
  if (mla::kernels::path_available(KernelPath::kAvx2))
    cases.push_back({"avx2", mla::kernels::path_name(KernelPath::kAvx2)});
  cases.push_back({"avx512", mla::kernels::path_name(mla::kernels::widest_available_path())});
  for (const Case& c : cases) {
    const std::string cmd = std::string("MLA_KERNEL_PATH=") + c.value +
                            " MLA_TEST_EXPECTED_AUTO_PATH='" + c.expected + "' '" + self +
                            "' --gtest_filter=DispatchChild.AutoPathFollowsTheEnvironment";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
#else
  GTEST_SKIP() << "needs /proc/self/exe";
#endif
}

}  // namespace
