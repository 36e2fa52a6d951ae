// Host side of the CUDA decode tests: random decode steps in the GPU's layouts (bf16 query rows,
// a paged bf16 or FP8 latent pool with a shuffled block table) and their answers from the
// library's CPU double reference (mla/reference/attention.hpp). Built by the host compiler
// (cuda_decode_case.cpp), so the CUDA test itself never includes Eigen.
#pragma once

#include <cstdint>
#include <vector>

namespace mla_cuda_test {

/// One decode step's inputs and reference outputs (host memory).
struct DecodeCase {
  int heads = 0;
  bool fp8 = false;
  std::vector<int> q_lens, lens;  ///< per sequence
  int total_q_tokens = 0;
  std::vector<std::uint16_t> q;   ///< bf16 bits [total_q_tokens, heads, 576]
  int row_bytes = 0;              ///< 1152 (bf16) or 656 (FP8)
  int num_blocks = 0;             ///< blocks in the pool
  std::vector<std::uint8_t> pool; ///< [num_blocks, 64, row_bytes]
  int table_stride = 0;
  std::vector<std::int32_t> table;  ///< [batch, table_stride]
  float scale = 0.0f;
  std::vector<float> ref_out;  ///< [total_q_tokens, heads, 512]: reference on the stored rows
  std::vector<float> ref_lse;  ///< [total_q_tokens, heads]
  /// FP8 cases: the reference on the same rows stored as bf16 (what the FP8 cache costs).
  std::vector<float> bf16_out;
};

/// A random step: sequence b has q_lens[b] new tokens of its lens[b] cache rows; query and cache
/// values ~ N(0, 1) (k_pe too); the softmax scale 1 / sqrt(192). Cache rows of FP8 cases are
/// written by the CPU Fp8LatentCache's row quantiser.
DecodeCase make_decode_case(int heads, const std::vector<int>& q_lens, const std::vector<int>& lens,
                            bool fp8, unsigned seed);

}  // namespace mla_cuda_test
