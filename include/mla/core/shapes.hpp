// Shapes of the fast kernels' calls (kernels::AbsorbedAttentionShape, kernels::GqaAttentionShape,
// kernels::GemmB): plain aggregates with validate(), taken both by the kernels (mla/kernels/) and
// by the double-precision references they are tested against (mla/reference/), which depend on
// core alone.
#pragma once

#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

namespace mla {
namespace kernels {

/// Shapes of one absorbed-MLA decode call (DeepSeek-V2/V3 with W_UK / W_UV absorbed into the query
/// and output, so attention runs in the latent space). The cache holds rows
/// [c_kv (kv_lora) | k_pe (rope, already rotated)] at `row_stride` elements apart.
struct AbsorbedAttentionShape {
  Index q_len = 1;         // new tokens; they are the last q_len of the cache_len rows
  Index num_heads = 1;     // query heads per token; query row m = token m / num_heads
  Index kv_lora = 512;     // kv_lora_rank: width of c_kv, of q_lat and of o_lat
  Index rope = 64;         // qk_rope_head_dim: width of k_pe and q_pe
  Index cache_len = 0;     // L: valid cache rows (>= q_len)
  Index row_stride = 576;  // elements from one cache row to the next (>= kv_lora + rope)

  /// M = q_len * num_heads: rows of q_lat, q_pe and o_lat.
  Index rows() const { return q_len * num_heads; }
  /// Elements of one cache row that are read: kv_lora + rope.
  Index row_dim() const { return kv_lora + rope; }

  /// Throws std::invalid_argument naming the first field that is out of range.
  void validate() const {
    MLA_CHECK_ARG(q_len >= 1, "absorbed attention: q_len must be >= 1, got ", q_len);
    MLA_CHECK_ARG(num_heads >= 1, "absorbed attention: num_heads must be >= 1, got ", num_heads);
    MLA_CHECK_ARG(kv_lora >= 1, "absorbed attention: kv_lora must be >= 1, got ", kv_lora);
    MLA_CHECK_ARG(rope >= 0, "absorbed attention: rope must be >= 0, got ", rope);
    MLA_CHECK_ARG(cache_len >= q_len, "absorbed attention: cache_len (", cache_len,
                  ") must be >= q_len (", q_len, "): the new tokens are the last cache rows");
    MLA_CHECK_ARG(row_stride >= row_dim(), "absorbed attention: row_stride (", row_stride,
                  ") must be >= kv_lora + rope (", row_dim(), ")");
  }
};

/// Shapes of one MHA / GQA decode call over a head-major cache: K [num_kv_heads, capacity,
/// head_dim] and V [num_kv_heads, capacity, v_dim]; query head h reads kv head h / group_size().
struct GqaAttentionShape {
  Index q_len = 1;          // new tokens; they are the last q_len of the cache_len rows
  Index num_heads = 1;      // num_attention_heads (query heads)
  Index num_kv_heads = 1;   // num_key_value_heads; divides num_heads (== num_heads for MHA)
  Index head_dim = 128;     // width of q and of a K row
  Index v_dim = 128;        // width of a V row and of the output (v_head_dim)
  Index cache_len = 0;      // L: valid rows per kv head (>= q_len)
  Index k_head_stride = 0;  // elements from one kv head's K to the next (capacity * head_dim)
  Index v_head_stride = 0;  // elements from one kv head's V to the next (capacity * v_dim)

  /// Query heads per kv head (FlashMLA's q_head_per_hk).
  Index group_size() const { return num_heads / num_kv_heads; }

  /// Throws std::invalid_argument naming the first field that is out of range.
  void validate() const {
    MLA_CHECK_ARG(q_len >= 1, "gqa attention: q_len must be >= 1, got ", q_len);
    MLA_CHECK_ARG(num_kv_heads >= 1, "gqa attention: num_kv_heads must be >= 1, got ", num_kv_heads);
    MLA_CHECK_ARG(num_heads >= 1 && num_heads % num_kv_heads == 0, "gqa attention: num_heads (",
                  num_heads, ") is not a positive multiple of num_kv_heads (", num_kv_heads, ")");
    MLA_CHECK_ARG(head_dim >= 1, "gqa attention: head_dim must be >= 1, got ", head_dim);
    MLA_CHECK_ARG(v_dim >= 1, "gqa attention: v_dim must be >= 1, got ", v_dim);
    MLA_CHECK_ARG(cache_len >= q_len, "gqa attention: cache_len (", cache_len,
                  ") must be >= q_len (", q_len, "): the new tokens are the last cache rows");
    MLA_CHECK_ARG(num_kv_heads == 1 || k_head_stride >= cache_len * head_dim,
                  "gqa attention: k_head_stride (", k_head_stride, ") must be >= cache_len * head_dim (",
                  cache_len * head_dim, ")");
    MLA_CHECK_ARG(num_kv_heads == 1 || v_head_stride >= cache_len * v_dim,
                  "gqa attention: v_head_stride (", v_head_stride, ") must be >= cache_len * v_dim (",
                  cache_len * v_dim, ")");
  }
};

/// How a GEMM's B is stored: kTransposed = [N, K] rows (C = A B^T), kPlain = [K, N] rows (C = A B).
enum class GemmB { kTransposed, kPlain };

}  // namespace kernels
}  // namespace mla
