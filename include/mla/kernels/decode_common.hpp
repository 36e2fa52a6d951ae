// Pieces shared by the fast decode-attention kernels (absorbed_attention.hpp, gqa_attention.hpp)
// and their references (mla/reference/attention.hpp): the shape structs both sides take, the
// code-path switch, and internal helpers (aligned scratch, bf16 widening, a vector exp2, the
// log-sum-exp combine of split-KV partial results).
//
// Both kernels are "flash decoding" (Dao et al., FlashAttention-2 / Flash-Decoding): the cache is
// walked in tiles with an online softmax, and long caches are split across threads, each split
// producing a partial (O, max, sum) that a log-sum-exp combine merges. Scores are kept in the
// base-2 domain (the query is pre-multiplied by scale * log2(e)), so the softmax needs exp2 only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "mla/core/check.hpp"
#include "mla/core/types.hpp"

// Full unrolling of the fixed-trip loops inside micro-kernels. Without it GCC may keep the
// accumulator arrays in memory (stack stores every iteration), which halves the FMA rate.
#if defined(__clang__)
#define MLA_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define MLA_UNROLL _Pragma("GCC unroll 16")
#else
#define MLA_UNROLL
#endif

// Keeps a SIMD value in a register: GCC otherwise re-loads a value used by several FMAs as a
// memory operand of each, which costs load-port slots the micro-kernels need.
#if defined(__GNUC__) || defined(__clang__)
#define MLA_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define MLA_IN_REGISTER(v) (void)(v)
#endif

// Micro-kernels stay out of line: inlined into their callers GCC spills their accumulators or
// pinned operands (measured ~30% slower); a call per block of a few hundred FMAs is free.
#if defined(__GNUC__) || defined(__clang__)
#define MLA_NOINLINE __attribute__((noinline))
#else
#define MLA_NOINLINE
#endif

namespace mla {
namespace kernels {

/// Which implementation a fast kernel runs, named by the widest instruction set it may use
/// (kPortable < kAvx2 < kAvx512). kAuto takes the widest one compiled into the including
/// translation unit: as with Eigen, the including project's -march decides (AVX-512F for kAvx512,
/// AVX2+FMA for kAvx2). A kernel without an implementation at the requested level runs its next
/// lower one (the GEMM and GQA kernels stop at AVX2). Tests loop over compiled_paths() so every
/// compiled level, the portable fallback included, is exercised on a machine that has them all.
/// Asking for a level that is not compiled in throws std::invalid_argument.
///
/// kAmx is not a level of the same kind and kAuto never picks it: absorbed_attention and
/// gqa_attention over a bf16 cache then run on the AMX tile unit (Sapphire Rapids and later;
/// -mamx-tile -mamx-bf16, part of -march=native there), rounding the query and the softmax
/// weights to bf16 before the two products (float accumulation, ~13x the fp32 FMA rate; see
/// amx_attention.hpp for the error this adds). Everything else (float caches, the GEMM, the
/// paged / batched absorbed kernel) runs its kAvx512 code for it. It needs the OS to grant the
/// AMX register state (Linux >= 5.16, arch_prctl); a refusal throws std::runtime_error.
enum class KernelPath { kAuto, kPortable, kAvx2, kAvx512, kAmx };

/// True when this translation unit was compiled with the AVX2+FMA kernels.
#if defined(__AVX2__) && defined(__FMA__)
inline constexpr bool kHaveAvx2Fma = true;
#else
inline constexpr bool kHaveAvx2Fma = false;
#endif

/// True when it was also compiled with the AVX-512 ones (AVX-512F; needs AVX2+FMA too).
#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
inline constexpr bool kHaveAvx512 = true;
#else
inline constexpr bool kHaveAvx512 = false;
#endif

/// True when it was also compiled with AMX-BF16 tiles (and AVX-512 BF16/BW for the conversions).
/// (GCC spells the macros __AMX_TILE__ / __AMX_BF16__, Clang __AMXTILE__ / __AMXBF16__.)
#if (defined(__AMX_TILE__) || defined(__AMXTILE__)) && (defined(__AMX_BF16__) || defined(__AMXBF16__)) && \
    defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512F__) && defined(__AVX2__) && \
    defined(__FMA__)
#define MLA_HAVE_AMX 1
inline constexpr bool kHaveAmx = true;
#else
inline constexpr bool kHaveAmx = false;
#endif

/// The widest path compiled in.
constexpr KernelPath widest_compiled_path() {
  return kHaveAvx512 ? KernelPath::kAvx512 : kHaveAvx2Fma ? KernelPath::kAvx2 : KernelPath::kPortable;
}

/// Its name, for benchmark reports: "amx-bf16", "avx512", "avx2+fma" or "portable".
constexpr const char* path_name(KernelPath p) {
  return p == KernelPath::kAmx      ? "amx-bf16"
         : p == KernelPath::kAvx512 ? "avx512"
         : p == KernelPath::kAvx2 ? "avx2+fma"
         : p == KernelPath::kPortable ? "portable"
                                      : "auto";
}

/// The concrete level `requested` stands for (kAuto -> the widest compiled in; kAmx -> kAvx512,
/// the level every kernel but the absorbed bf16 one runs for it).
inline KernelPath resolve_path(KernelPath requested) {
  if (requested == KernelPath::kAuto) return widest_compiled_path();
  if (requested == KernelPath::kAmx) {
    MLA_CHECK_ARG(kHaveAmx, "kernel path amx-bf16 is not compiled in (widest: ",
                  path_name(widest_compiled_path()),
                  "); build with -mamx-tile -mamx-bf16 -mavx512bf16 (or -march=sapphirerapids)");
    return KernelPath::kAvx512;
  }
  MLA_CHECK_ARG(static_cast<int>(requested) <= static_cast<int>(widest_compiled_path()),
                "kernel path ", path_name(requested), " is not compiled in (widest: ",
                path_name(widest_compiled_path()), "); build with the matching -march");
  return requested;
}

/// Every concrete full-precision path compiled in, portable first (kAmx, which rounds operands to
/// bf16, is left out; its tests hold it to its own error bound).
inline std::vector<KernelPath> compiled_paths() {
  std::vector<KernelPath> paths{KernelPath::kPortable};
  if (kHaveAvx2Fma) paths.push_back(KernelPath::kAvx2);
  if (kHaveAvx512) paths.push_back(KernelPath::kAvx512);
  return paths;
}

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

}  // namespace kernels

namespace internal {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

/// Calls f(std::integral_constant<int, n>) for a runtime n in [1, N]: picks the instantiation of
/// a micro-kernel whose width (or height) is a template parameter.
template <int N, class F>
void dispatch_width(Index n, F&& f) {
  if constexpr (N >= 1) {
    if (n == N) {
      f(std::integral_constant<int, N>{});
      return;
    }
    dispatch_width<N - 1>(n, std::forward<F>(f));
  }
}

/// Rounds n up to a multiple of `to` (a power of two).
constexpr Index round_up(Index n, Index to) { return (n + to - 1) & ~(to - 1); }

/// Owning 64-byte aligned float buffer that only ever grows; no Eigen or std::vector so that
/// growth is the one place a kernel workspace allocates.
class AlignedFloats {
 public:
  AlignedFloats() = default;
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  AlignedFloats(AlignedFloats&& o) noexcept : data_(o.data_), size_(o.size_) {
    o.data_ = nullptr;
    o.size_ = 0;
  }
  AlignedFloats& operator=(AlignedFloats&& o) noexcept {
    if (this != &o) {
      release();
      data_ = o.data_;
      size_ = o.size_;
      o.data_ = nullptr;
      o.size_ = 0;
    }
    return *this;
  }
  ~AlignedFloats() { release(); }

  /// Makes room for at least n floats (contents are not kept when it grows).
  void grow(Index n) {
    if (n <= size_) return;
    release();
    data_ = static_cast<float*>(::operator new(static_cast<std::size_t>(n) * sizeof(float),
                                               std::align_val_t(64)));
    size_ = n;
  }
  float* data() const { return data_; }
  Index size() const { return size_; }

 private:
  void release() {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t(64));
    data_ = nullptr;
    size_ = 0;
  }
  float* data_ = nullptr;
  Index size_ = 0;
};

/// Carves consecutive 64-byte aligned float regions out of one buffer; used twice per call,
/// once to size a workspace and once to lay it out, so the two can not disagree.
class FloatArena {
 public:
  explicit FloatArena(float* base = nullptr) : base_(base) {}
  float* take(Index n) {
    float* p = base_ == nullptr ? nullptr : base_ + used_;
    used_ += round_up(n, 16);
    return p;
  }
  Index used() const { return used_; }

 private:
  float* base_;
  Index used_ = 0;
};

/// Widens bf16 (the top 16 bits of a float) to float.
inline float bf16_to_float(bfloat16 x) {
  const std::uint32_t bits = std::uint32_t(Eigen::numext::bit_cast<std::uint16_t>(x)) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float to_float(float x) { return x; }
inline float to_float(bfloat16 x) { return bf16_to_float(x); }

/// Portable widening of `rows` rows of `cols` elements (source row stride `src_stride`) into a
/// float block with row stride `dst_stride`.
template <class T>
void widen_rows_portable(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                         Index dst_stride) {
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) dst[r * dst_stride + c] = to_float(src[r * src_stride + c]);
}

/// Causal rule on a tile of scores stored column-wise, S^T[t * lds + i] for the tile's cache rows
/// t0 .. t0 + tn - 1 and query rows i < rows: query row i belongs to token (row0 + i) /
/// rows_per_token and cannot see cache rows >= first_masked + that token (set to -inf).
inline void mask_hidden_rows(float* st, Index lds, Index t0, Index tn, Index rows, Index row0,
                             Index rows_per_token, Index first_masked) {
  if (t0 + tn <= first_masked) return;
  for (Index t = std::max<Index>(0, first_masked - t0); t < tn; ++t)
    for (Index i = 0; i < rows; ++i)
      if (t0 + t >= first_masked + (row0 + i) / rows_per_token)
        st[t * lds + i] = -std::numeric_limits<float>::infinity();
}

/// Taylor coefficients of 2^f = exp(f ln 2): kExp2Taylor[i] = ln2^i / i!, for the vector exp2s.
inline constexpr float kExp2Taylor[8] = {1.0f,
                                         6.931471805599453e-01f,
                                         2.402265069591007e-01f,
                                         5.550410866482158e-02f,
                                         9.618129107628477e-03f,
                                         1.3333558146428443e-03f,
                                         1.5403530393381606e-04f,
                                         1.525273380405984e-05f};

#if defined(__AVX2__) && defined(__FMA__)
/// 2^x for x <= 0 (what a softmax needs), with 2^x = 0 below -127 (so exp2(-inf) = 0) and NaN
/// for NaN (a NaN score must reach the output, as std::exp2 lets it).
/// x = n + f with n = round(x), |f| <= 1/2; 2^f by its degree-7 Taylor polynomial in f*ln2
/// (truncation error < 6e-9 relative), 2^n by building the float exponent directly.
inline __m256 exp2_avx2(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x);  // maxps returns its second operand for a NaN
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(kExp2Taylor[7]);
  MLA_UNROLL
  for (int i = 6; i >= 0; --i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Taylor[i]));
  // n in [-127, 0]: n + 127 in [0, 127] is the biased exponent; 0 encodes +0.0.
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/// Online softmax step over a tile of scores stored column-wise, S^T[t * lds + i] for tn cache
/// rows t and m8 (a multiple of 8) query rows i (base-2 scores): updates the running max and sum
/// of every query row, overwrites S^T with 2^(s - new max) and writes the rescale factor
/// alpha[i] = 2^(old max - new max) that the caller applies to its accumulator.
inline void online_softmax_columns_avx2(float* st, Index lds, Index tn, Index m8, float* run_max,
                                        float* run_sum, float* alpha) {
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (Index i = 0; i < m8; i += 8) {
    __m256 tile_max = neg_inf;
    for (Index t = 0; t < tn; ++t) tile_max = _mm256_max_ps(tile_max, _mm256_load_ps(st + t * lds + i));
    const __m256 old_max = _mm256_load_ps(run_max + i);
    const __m256 new_max = _mm256_max_ps(old_max, tile_max);
    // A row that has seen only masked scores keeps max -inf; subtract 0 instead to avoid NaN.
    const __m256 safe = _mm256_blendv_ps(new_max, _mm256_setzero_ps(),
                                         _mm256_cmp_ps(new_max, neg_inf, _CMP_EQ_OQ));
    __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
    Index t = 0;
    for (; t + 2 <= tn; t += 2) {
      const __m256 p0 = exp2_avx2(_mm256_sub_ps(_mm256_load_ps(st + t * lds + i), safe));
      const __m256 p1 = exp2_avx2(_mm256_sub_ps(_mm256_load_ps(st + (t + 1) * lds + i), safe));
      _mm256_store_ps(st + t * lds + i, p0);
      _mm256_store_ps(st + (t + 1) * lds + i, p1);
      sum0 = _mm256_add_ps(sum0, p0);
      sum1 = _mm256_add_ps(sum1, p1);
    }
    if (t < tn) {
      const __m256 p0 = exp2_avx2(_mm256_sub_ps(_mm256_load_ps(st + t * lds + i), safe));
      _mm256_store_ps(st + t * lds + i, p0);
      sum0 = _mm256_add_ps(sum0, p0);
    }
    const __m256 a = exp2_avx2(_mm256_sub_ps(old_max, safe));
    _mm256_store_ps(alpha + i, a);
    _mm256_store_ps(run_sum + i,
                    _mm256_fmadd_ps(_mm256_load_ps(run_sum + i), a, _mm256_add_ps(sum0, sum1)));
    _mm256_store_ps(run_max + i, new_max);
  }
}

/// [sum(a0), sum(a1), sum(a2), sum(a3)]: the horizontal sums of four vectors.
inline __m128 reduce4_avx2(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
inline float hsum_avx2(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}
inline float hmax_avx2(__m256 a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/// 8 bf16 values widened to float (no bf16 instructions on AVX2: zero-extend and shift).
inline __m256 load8_widen(const bfloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8_widen(const float* p) { return _mm256_loadu_ps(p); }

/// Lane mask with the first n (0..8) lanes set, for maskload / maskstore.
inline __m256i first_lanes_mask(Index n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
}

/// First n (< 8) elements of p widened to float, zeros after; never reads past p[n - 1].
inline __m256 load8_partial(const float* p, Index n) {
  return _mm256_maskload_ps(p, first_lanes_mask(n));
}
inline __m256 load8_partial(const bfloat16* p, Index n) {
  alignas(32) float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (Index i = 0; i < n; ++i) tmp[i] = bf16_to_float(p[i]);
  return _mm256_load_ps(tmp);
}

#if defined(__AVX512F__)
/// 16 bf16 values (the words of h) as floats: bf16 -> float is a 16-bit shift, exact.
inline __m512 widen16_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
/// 16 floats at p: loaded, or widened from bfloat16.
inline __m512 load16_widen(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16_widen(const bfloat16* p) {
  return widen16_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif

/// AVX2 widening of a block of rows (as widen_rows_portable), 16 values at a time on AVX-512
/// builds.
template <class T>
void widen_rows_avx2(const T* src, Index src_stride, Index rows, Index cols, float* dst,
                     Index dst_stride) {
  const Index cols8 = cols & ~Index(7);
  for (Index r = 0; r < rows; ++r) {
    const T* s = src + r * src_stride;
    float* d = dst + r * dst_stride;
    Index c = 0;
#if defined(__AVX512F__)
    // 16 at a time where the build allows: the GQA packed form spent ~30% of its bf16 time here.
    for (; c + 16 <= cols8; c += 16) _mm512_storeu_ps(d + c, load16_widen(s + c));
#endif
    for (; c < cols8; c += 8) _mm256_storeu_ps(d + c, load8_widen(s + c));
    for (; c < cols; ++c) d[c] = to_float(s[c]);
  }
}
#endif

#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
/// In-register transpose of 16 x 16 32-bit elements: r[i] lane j <- r[j] lane i.
inline void transpose16_epi32(__m512i* r) {
  // Masked forms with all lanes on: GCC 12 warns that the plain forms' undefined pass-through
  // operand is used uninitialized (-Werror).
  constexpr __mmask16 kAll16 = 0xFFFF;
  constexpr __mmask8 kAll8 = 0xFF;
  __m512i t[16], u[16];
  MLA_UNROLL
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_epi32(kAll16, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_epi32(kAll16, r[2 * i], r[2 * i + 1]);
  }
  // u[4i + j], 128-bit lane L: column 4L + j of rows 4i .. 4i + 3.
  MLA_UNROLL
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_maskz_unpacklo_epi64(kAll8, t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_maskz_unpackhi_epi64(kAll8, t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_maskz_unpacklo_epi64(kAll8, t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_maskz_unpackhi_epi64(kAll8, t[4 * i + 1], t[4 * i + 3]);
  }
  MLA_UNROLL
  for (int j = 0; j < 4; ++j) {
    // 0x88 takes 128-bit lanes 0 and 2 of both operands, 0xdd lanes 1 and 3.
    const __m512i v_even = _mm512_maskz_shuffle_i32x4(kAll16, u[j], u[4 + j], 0x88);
    const __m512i v_odd = _mm512_maskz_shuffle_i32x4(kAll16, u[j], u[4 + j], 0xdd);
    const __m512i w_even = _mm512_maskz_shuffle_i32x4(kAll16, u[8 + j], u[12 + j], 0x88);
    const __m512i w_odd = _mm512_maskz_shuffle_i32x4(kAll16, u[8 + j], u[12 + j], 0xdd);
    r[j] = _mm512_maskz_shuffle_i32x4(kAll16, v_even, w_even, 0x88);
    r[8 + j] = _mm512_maskz_shuffle_i32x4(kAll16, v_even, w_even, 0xdd);
    r[4 + j] = _mm512_maskz_shuffle_i32x4(kAll16, v_odd, w_odd, 0x88);
    r[12 + j] = _mm512_maskz_shuffle_i32x4(kAll16, v_odd, w_odd, 0xdd);
  }
}
#endif

/// Asks for `rows` segments of `bytes` bytes (starting `row_bytes` apart at `p`) in L1: for reads
/// of many short row segments, which the hardware prefetcher does not follow.
inline void prefetch_row_segments(const void* p, Index rows, Index row_bytes, Index bytes) {
#if defined(__AVX2__) && defined(__FMA__)
  const char* base = static_cast<const char*>(p);
  for (Index r = 0; r < rows; ++r)
    for (Index b = 0; b < bytes; b += 64) _mm_prefetch(base + r * row_bytes + b, _MM_HINT_T0);
#else
  (void)p, (void)rows, (void)row_bytes, (void)bytes;
#endif
}

/// Rows [0, tn) of a cache tile (`cols` values used per row, rows `stride` apart) as float rows for
/// the micro-kernels: widened by `Ops::widen` into `wide` (rows `wide_stride` apart) for bf16;
/// for a float cache read in place, or copied into `wide` where `Ops::kDenseFloatTiles` (the copy
/// reads the tile once, row after row, which the hardware prefetcher follows; the micro-kernels
/// then read it from L1/L2 in any order). Returns the rows and sets `row_stride` to their stride.
template <class Ops, class T>
const float* rows_as_float(const T* rows, Index stride, Index tn, Index cols, float* wide,
                           Index wide_stride, Index& row_stride) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (Ops::kDenseFloatTiles) {
      for (Index r = 0; r < tn; ++r) std::memcpy(wide + r * wide_stride, rows + r * stride, sizeof(float) * std::size_t(cols));
      row_stride = wide_stride;
      return wide;
    }
    row_stride = stride;
    return rows;
  } else {
    Ops::widen(rows, stride, tn, cols, wide, wide_stride);
    row_stride = wide_stride;
    return wide;
  }
}

/// Log-sum-exp merge of split-KV partial results for one output row. Split s holds an
/// unnormalised accumulator o[s] (row `ld` floats apart), its running max `mx[s]` (base-2 scores)
/// and its sum `l[s]` of 2^(score - max). Writes out[d] = sum_s w_s o_s[d] / sum_s w_s l_s with
/// w_s = 2^(mx_s - max_s mx_s), and returns the natural-log LSE of all scores.
inline float combine_splits(const float* o, Index split_stride, const float* mx, const float* l,
                            Index mstride, Index splits, Index dim, float* out) {
  float gmax = -std::numeric_limits<float>::infinity();
  for (Index s = 0; s < splits; ++s) gmax = std::fmax(gmax, mx[s * mstride]);
  float den = 0.0f;
  for (Index s = 0; s < splits; ++s) den += std::exp2(mx[s * mstride] - gmax) * l[s * mstride];
  const float inv = 1.0f / den;
  for (Index d = 0; d < dim; ++d) out[d] = 0.0f;
  for (Index s = 0; s < splits; ++s) {
    // A split in which this query row saw no cache row (sum of weights 0) adds nothing; any
    // other split is added even at weight 0, so that a NaN in its scores or values still
    // reaches the output.
    if (l[s * mstride] == 0.0f) continue;
    const float w = std::exp2(mx[s * mstride] - gmax) * inv;
    const float* os = o + s * split_stride;
    for (Index d = 0; d < dim; ++d) out[d] += w * os[d];
  }
  return (gmax + std::log2(den)) * kLn2;
}

}  // namespace internal
}  // namespace mla
