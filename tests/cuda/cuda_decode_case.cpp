// Host side of the CUDA decode tests (see cuda_decode_case.hpp).
#include "cuda_decode_case.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include "mla/core/bf16.hpp"
#include "mla/core/fp8.hpp"
#include "mla/core/shapes.hpp"
#include "mla/kernels/fp8_latent_rows.hpp"
#include "mla/reference/attention.hpp"

namespace mla_cuda_test {
namespace {

constexpr int kR = 512, kP = 64, kD = kR + kP, kBlock = 64;

std::uint16_t to_bf16_bits(float x) {
  return Eigen::numext::bit_cast<std::uint16_t>(static_cast<mla::bfloat16>(x));
}
float from_bf16_bits(std::uint16_t b) { return mla::bfloat16_bits_to_float(b); }

/// Runs f(b) for every sequence on a few threads.
template <class F>
void for_each_sequence(int batch, F f) {
  const int threads = std::max(1, std::min<int>(batch, int(std::thread::hardware_concurrency())));
  std::vector<std::thread> pool;
  for (int w = 0; w < threads; ++w)
    pool.emplace_back([&, w] {
      for (int b = w; b < batch; b += threads) f(b);
    });
  for (auto& t : pool) t.join();
}

}  // namespace

DecodeCase make_decode_case(int heads, const std::vector<int>& q_lens, const std::vector<int>& lens,
                            bool fp8, unsigned seed) {
  DecodeCase c;
  c.heads = heads;
  c.fp8 = fp8;
  c.q_lens = q_lens;
  c.lens = lens;
  c.scale = 1.0f / std::sqrt(192.0f);
  c.row_bytes = fp8 ? int(mla::Fp8LatentLayout{}.bytes_per_token()) : 2 * kD;
  const int batch = int(lens.size());
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);

  // Query rows.
  c.total_q_tokens = std::accumulate(q_lens.begin(), q_lens.end(), 0);
  c.q.resize(std::size_t(c.total_q_tokens) * heads * kD);
  for (auto& v : c.q) v = to_bf16_bits(normal(rng));

  // Cache rows: float values, then the pool in shuffled blocks.
  std::vector<int> blocks(batch);
  int total_blocks = 0;
  c.table_stride = 1;
  for (int b = 0; b < batch; ++b) {
    blocks[b] = (lens[b] + kBlock - 1) / kBlock;
    total_blocks += blocks[b];
    c.table_stride = std::max(c.table_stride, blocks[b] + 1);  // + 1: an unused entry
  }
  c.num_blocks = total_blocks + 3;  // a few blocks nobody uses
  std::vector<int> ids(c.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  c.table.assign(std::size_t(batch) * c.table_stride, -1);
  c.pool.assign(std::size_t(c.num_blocks) * kBlock * c.row_bytes, 0xFF);  // NaN-ish filler
  std::vector<std::vector<float>> rows(batch);     // [len, 576] the float values
  std::vector<std::vector<float>> stored(batch);   // [len, 576] what the cache holds, decoded
  std::vector<std::vector<float>> as_bf16(batch);  // [len, 576] the same rows as bf16
  int next = 0;
  const mla::Fp8LatentLayout layout{};
  for (int b = 0; b < batch; ++b) {
    for (int k = 0; k < blocks[b]; ++k) c.table[std::size_t(b) * c.table_stride + k] = ids[next++];
    rows[b].resize(std::size_t(lens[b]) * kD);
    for (auto& v : rows[b]) v = normal(rng);
    stored[b].resize(rows[b].size());
    as_bf16[b].resize(rows[b].size());
    for (int j = 0; j < lens[b]; ++j) {
      const float* src = rows[b].data() + std::size_t(j) * kD;
      std::uint8_t* dst = c.pool.data() +
                          (std::size_t(c.table[std::size_t(b) * c.table_stride + j / kBlock]) * kBlock +
                           j % kBlock) * c.row_bytes;
      for (int i = 0; i < kD; ++i)
        as_bf16[b][std::size_t(j) * kD + i] = from_bf16_bits(to_bf16_bits(src[i]));
      if (fp8) {
        mla::fp8_latent_quantize_row(src, layout, dst);
        mla::fp8_latent_dequantize_rows(dst, c.row_bytes, 1, layout,
                                        stored[b].data() + std::size_t(j) * kD, kD);
      } else {
        for (int i = 0; i < kD; ++i) {
          const std::uint16_t bits = to_bf16_bits(src[i]);
          std::memcpy(dst + 2 * i, &bits, 2);
        }
        std::copy_n(as_bf16[b].data() + std::size_t(j) * kD, kD,
                    stored[b].data() + std::size_t(j) * kD);
      }
    }
  }

  // Reference answers, one sequence at a time (q rows split into q_lat and q_pe floats).
  c.ref_out.assign(std::size_t(c.total_q_tokens) * heads * kR, 0.0f);
  c.ref_lse.assign(std::size_t(c.total_q_tokens) * heads, 0.0f);
  if (fp8) c.bf16_out.assign(c.ref_out.size(), 0.0f);
  std::vector<int> q_tok(batch, 0);
  for (int b = 1; b < batch; ++b) q_tok[b] = q_tok[b - 1] + q_lens[b - 1];
  for_each_sequence(batch, [&](int b) {
    const int m = q_lens[b] * heads;
    std::vector<float> q_lat(std::size_t(m) * kR), q_pe(std::size_t(m) * kP);
    for (int r = 0; r < m; ++r)
      for (int i = 0; i < kD; ++i) {
        const float v = from_bf16_bits(c.q[(std::size_t(q_tok[b]) * heads + r) * kD + i]);
        if (i < kR) q_lat[std::size_t(r) * kR + i] = v;
        else q_pe[std::size_t(r) * kP + i - kR] = v;
      }
    mla::kernels::AbsorbedAttentionShape shape;
    shape.q_len = q_lens[b];
    shape.num_heads = heads;
    shape.cache_len = lens[b];
    const std::size_t o = std::size_t(q_tok[b]) * heads;
    mla::reference::absorbed_attention(shape, q_lat.data(), q_pe.data(), stored[b].data(), c.scale,
                                       c.ref_out.data() + o * kR, c.ref_lse.data() + o);
    if (fp8)
      mla::reference::absorbed_attention(shape, q_lat.data(), q_pe.data(), as_bf16[b].data(),
                                         c.scale, c.bf16_out.data() + o * kR);
  });
  return c;
}

}  // namespace mla_cuda_test
