// Helpers for the benchmark programs: a fast seeded generator to fill caches and weights (hundreds
// of millions of values, so std::normal_distribution would dominate setup), random layers in the
// spirit of tests/support/random.hpp (uniform with the variance of N(0, 1/fan_in)), the CPU's
// model name, and the roofline bound that `pct_peak` is measured against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>

#include "machine_probe.hpp"
#include "mla/config.hpp"
#include "mla/core/types.hpp"
#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"

namespace mla_bench {

/// splitmix64: a few ns per value, plenty for timing data that only has to look random.
class FastRng {
 public:
  explicit FastRng(std::uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  std::uint64_t next() {
    std::uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [-1, 1).
  float uniform() { return float(std::int64_t(next() >> 40) - (1 << 23)) * (1.0f / (1 << 23)); }

 private:
  std::uint64_t s_;
};

/// Fills `n` elements with uniform values of standard deviation `stddev`.
template <class T>
void fill_random(T* data, std::size_t n, std::uint64_t seed, float stddev = 1.0f) {
  FastRng rng(seed);
  const float a = stddev * std::sqrt(3.0f);  // U(-a, a) has variance a^2 / 3
  for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<T>(a * rng.uniform());
}

template <class Scalar>
mla::Matrix<Scalar> random_matrix(mla::Index rows, mla::Index cols, std::uint64_t seed,
                                  float stddev = 1.0f) {
  mla::Matrix<Scalar> m(rows, cols);
  fill_random(m.data(), std::size_t(m.size()), seed, stddev);
  return m;
}

template <class Scalar>
mla::Linear<Scalar> random_linear(mla::Index out, mla::Index in, bool bias, std::uint64_t seed) {
  mla::Linear<Scalar> l;
  l.weight = random_matrix<Scalar>(out, in, seed, 1.0f / std::sqrt(float(in)));
  if (bias) l.bias = random_matrix<Scalar>(out, 1, seed + 1, 0.1f).col(0);
  return l;
}

template <class Scalar>
typename mla::MultiHeadLatentAttention<Scalar>::Weights random_mla_weights(
    const mla::MlaConfig& c, std::uint64_t seed) {
  typename mla::MultiHeadLatentAttention<Scalar>::Weights w;
  const mla::Index H = c.num_attention_heads, qk = c.qk_head_dim();
  if (c.has_q_lora()) {
    w.q_a_proj = random_linear<Scalar>(c.q_lora_rank, c.hidden_size, c.attention_bias, seed + 1);
    w.q_a_layernorm = mla::Vector<Scalar>::Ones(c.q_lora_rank);
    w.q_b_proj = random_linear<Scalar>(H * qk, c.q_lora_rank, false, seed + 2);
  } else {
    w.q_proj = random_linear<Scalar>(H * qk, c.hidden_size, false, seed + 3);
  }
  w.kv_a_proj_with_mqa = random_linear<Scalar>(c.kv_lora_rank + c.qk_rope_head_dim,
                                               c.hidden_size, c.attention_bias, seed + 4);
  w.kv_a_layernorm = mla::Vector<Scalar>::Ones(c.kv_lora_rank);
  w.kv_b_proj =
      random_linear<Scalar>(H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, false,
                            seed + 5);
  w.o_proj = random_linear<Scalar>(c.hidden_size, H * c.v_head_dim, c.attention_bias, seed + 6);
  return w;
}

template <class Scalar>
typename mla::GroupedQueryAttention<Scalar>::Weights random_gqa_weights(
    const mla::AttentionConfig& c, std::uint64_t seed) {
  typename mla::GroupedQueryAttention<Scalar>::Weights w;
  const mla::Index H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  w.q_proj = random_linear<Scalar>(H * D, c.hidden_size, c.qkv_bias, seed + 1);
  w.k_proj = random_linear<Scalar>(KV * D, c.hidden_size, c.qkv_bias, seed + 2);
  w.v_proj = random_linear<Scalar>(KV * D, c.hidden_size, c.qkv_bias, seed + 3);
  w.o_proj = random_linear<Scalar>(c.hidden_size, H * D, c.o_bias, seed + 4);
  return w;
}

/// "model name" of the first CPU in /proc/cpuinfo (lscpu's "Model name"), or "unknown".
inline std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string v = line.substr(colon + 1);
        v.erase(0, v.find_first_not_of(" \t"));
        return v;
      }
    }
  }
  return "unknown";
}

/// The limits a step is measured against (from the probe, for a given thread count).
struct Limits {
  double flops_per_s = 0;  ///< compute peak for this cache type
  double bytes_per_s = 0;  ///< read bandwidth
};

/// Peaks for `threads` threads. A bf16 cache is held to the faster of the fp32 FMA peak (kernels
/// that widen bf16 to float) and the bf16 dot-product peak where the CPU has such instructions
/// (scaled to 2 threads like the fp32 peak, which is what the probe measures): widening costs no
/// FLOPs, so the higher of the two is what the machine can do. On Sapphire Rapids vdpbf16ps runs
/// at half the FLOP rate of a 512-bit FMA, so there the fp32 peak is the limit. `amx`: the step
/// runs on the AMX tile unit (KernelPath::kAmx), held to the tile peak of that thread count.
inline Limits limits_for(const MachinePeaks& p, int threads, bool bf16_cache, bool amx = false) {
  Limits l;
  l.bytes_per_s = 1e9 * (threads >= 2 ? p.read_gbps_2t : p.read_gbps_1t);
  if (amx) {
    l.flops_per_s = 1e9 * (threads >= 2 ? p.amx_bf16_gflops_2t : p.amx_bf16_gflops_1t);
    return l;
  }
  const double fma = threads >= 2 ? p.fma_gflops_2t : p.fma_gflops_1t;
  l.flops_per_s = 1e9 * fma;
  if (bf16_cache && p.bf16_dot_gflops_1t > 0)
    l.flops_per_s = std::max(l.flops_per_s,
                             1e9 * p.bf16_dot_gflops_1t *
                                 (threads >= 2 ? p.fma_gflops_2t / p.fma_gflops_1t : 1.0));
  return l;
}

/// Roofline bound of one step: the least time the machine needs for `flops` at its compute peak
/// and for `bytes` at its read bandwidth, whichever is larger. pct_peak = 100 * bound / measured:
/// for compute-bound steps (MLA absorbed, naive recompute) that is the % of the FMA peak, for
/// memory-bound ones (MHA, GQA, naive with a decompressed cache) the % of read bandwidth.
inline double roofline_seconds(double flops, double bytes, const Limits& l) {
  return std::max(flops / l.flops_per_s, bytes / l.bytes_per_s);
}

}  // namespace mla_bench
