// Shared by the two translation units of test_dispatch (test_dispatch.cpp and
// dispatch_unit_v2.cpp, compiled with different -march): the fixed problems both run, and the
// declarations of what each unit exports. Each unit defines its functions by including
// dispatch_unit.inc with its own DISPATCH_UNIT namespace, so each calls the library's kernels
// from its own code, compiled with its own flags, as two parts of an application would.
#pragma once

#include <random>
#include <vector>

#include "mla/core/isa.hpp"
#include "mla/core/shapes.hpp"
#include "mla/core/types.hpp"

namespace dispatch_test {

using mla::Index;
using mla::bfloat16;
using mla::kernels::KernelPath;

/// The inputs of every kernel run, made from fixed seeds (identical in both units).
struct Problems {
  // Absorbed MLA: 2 tokens x 8 heads, kv_lora 72 (not a multiple of 16: masked edges), rope 8,
  // 150 cache rows (several tiles and splits), padded rows.
  mla::kernels::AbsorbedAttentionShape mla{2, 8, 72, 8, 150, 84};
  std::vector<float> q_lat, q_pe, mla_f;
  std::vector<bfloat16> mla_b;
  // GQA: 8 query heads over 2 kv heads (group 4, row-streaming form) with one new token, and
  // over 1 kv head (8 query rows per token, packed form) with two.
  mla::kernels::GqaAttentionShape gqa_rows{1, 8, 2, 64, 48, 130, 130 * 64, 130 * 48};
  mla::kernels::GqaAttentionShape gqa_packed{2, 8, 1, 64, 48, 130, 130 * 64, 130 * 48};
  std::vector<float> q_rows, q_packed, k_f, v_f;
  std::vector<bfloat16> k_b, v_b;
  // GEMM: packed (M = 13, N = 37, K = 300: edge tiles, two K blocks) and few-row (M = 2) shapes.
  Index gemm_m = 13, gemm_n = 37, gemm_k = 300, small_m = 2;
  std::vector<float> a, b_f;
  std::vector<bfloat16> b_b;

  Problems() {
    std::mt19937 rng(17);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    auto fill = [&](std::vector<float>& v, std::size_t n) {
      v.resize(n);
      for (float& x : v) x = u(rng);
    };
    auto fill_b = [&](std::vector<bfloat16>& v, std::size_t n) {
      v.resize(n);
      for (bfloat16& x : v) x = bfloat16(u(rng));
    };
    fill(q_lat, std::size_t(mla.rows() * mla.kv_lora));
    fill(q_pe, std::size_t(mla.rows() * mla.rope));
    fill(mla_f, std::size_t(mla.cache_len * mla.row_stride));
    fill_b(mla_b, std::size_t(mla.cache_len * mla.row_stride));
    fill(q_rows, std::size_t(gqa_rows.q_len * gqa_rows.num_heads * gqa_rows.head_dim));
    fill(q_packed, std::size_t(gqa_packed.q_len * gqa_packed.num_heads * gqa_packed.head_dim));
    fill(k_f, std::size_t(2 * gqa_rows.k_head_stride));
    fill(v_f, std::size_t(2 * gqa_rows.v_head_stride));
    fill_b(k_b, k_f.size());
    fill_b(v_b, v_f.size());
    fill(a, std::size_t(gemm_m * gemm_k));
    fill(b_f, std::size_t(gemm_n * gemm_k));
    fill_b(b_b, b_f.size());
  }
};

/// Every kernel's output on one path (row-major, as the kernels write them).
struct Outputs {
  std::vector<float> mla_f, mla_b;                         // [rows, kv_lora]
  std::vector<float> gqa_rows_f, gqa_rows_b;               // [q_len * heads, v_dim]
  std::vector<float> gqa_packed_f, gqa_packed_b;
  std::vector<float> gemm_f, gemm_b;                       // A B^T [M, N]
  std::vector<float> small_bt, small_b;                    // 2 rows: A B^T and A B (B as [K, N])
};

}  // namespace dispatch_test

// What each unit exports (dispatch_unit.inc defines them).
#define DISPATCH_UNIT_DECLARE(ns)                                                              \
  namespace ns {                                                                               \
  /* The kernels' outputs on `path`, on `threads` threads (1 or 2). */                         \
  dispatch_test::Outputs run_kernels(const dispatch_test::Problems& p,                         \
                                     mla::kernels::KernelPath path, int threads);              \
  /* available_paths() and path_name(auto_path()) as this unit sees them. */                   \
  std::vector<mla::kernels::KernelPath> available_paths();                                     \
  /* Whether this unit's own -march includes AVX2 / AVX-512F (its code outside the kernels). */ \
  bool built_with_avx2();                                                                      \
  bool built_with_avx512();                                                                    \
  }

DISPATCH_UNIT_DECLARE(unit_native)
DISPATCH_UNIT_DECLARE(unit_v2)
