// The schedule of one GPU decode step (the CPU engine's DecodePlan, mla/kernels/decode_engine.hpp,
// on the GPU; FlashMLA's get_mla_metadata and FlashInfer's plan do the same job).
//
// The decode kernel runs a grid of num_parts x row_tiles blocks (CTAs). A row tile is 64 query
// rows of one sequence (its q_len * num_heads rows, token-major: row = t * num_heads + h); a
// part is a contiguous stretch of the batch's cache blocks, laid end to end over the sequences:
//
//   sequence 0: blocks 0 .. n_0 - 1 | sequence 1: blocks 0 .. n_1 - 1 | ...
//   part p covers (seq_begin, blk_begin) .. (seq_end, blk_end)
//
// Each part gets an equal share of blocks plus a fixed cost per piece it starts (loading the
// query tile, filling the pipeline, writing the result), so one long sequence is cut over many
// SMs and many short ones share one. A sequence cut into several pieces writes one partial per
// piece (normalised O [rows, 512] float and its LSE) to the workspace, merged by the combine
// kernel (split-KV flash decoding); a sequence in one piece is written out directly.
//
// plan() is the only step that allocates: it grows the workspace (cudaMalloc) when a step needs
// more than any before and copies the schedule to the device on the caller's stream. run_decode
// (mla/cuda/mla_decode.cuh) then reads it for every layer of the step.
#pragma once

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <vector>

#include <cuda_runtime.h>

#include "mla/cuda/cuda_check.cuh"
#include "mla/cuda/paged_latent.cuh"
#include "mla/cuda/wgmma.cuh"

namespace mla {
namespace cuda {

namespace internal {
/// Per sequence, as the kernels read it.
struct SeqInfo {
  int len = 0;         ///< cache rows, new tokens included
  int q_len = 0;       ///< new tokens (query tokens)
  int q_tok = 0;       ///< first query token of the sequence in the packed q / out
  int num_pieces = 0;  ///< pieces the sequence is cut into (1: written out directly)
  int part_row = 0;    ///< first workspace partial row (pieces x q_len x heads rows follow)
  int pad0 = 0, pad1 = 0, pad2 = 0;
};
/// Per part: blocks [blk_begin, ...) of seq_begin through blocks [0, blk_end) of seq_end.
struct PartRange {
  int seq_begin = 0, blk_begin = 0, seq_end = 0, blk_end = 0;
  int piece_begin = 0;  ///< index of this part's first piece among seq_begin's pieces
  int pad0 = 0, pad1 = 0, pad2 = 0;
};
constexpr int kRowTile = 64;  ///< query rows per CTA
}  // namespace internal

/// Which form of the decode kernel runs (mla/cuda/mla_decode_kernel.cuh).
enum class DecodeKernel {
  kAuto,     ///< wgmma where the build and the device have it (sm_90a), else mma.sync
  kMmaSync,  ///< mma.sync m16n8k16 (sm_80 and later)
  kWgmma,    ///< wgmma (sm_90a builds on sm_90 devices); run_decode throws elsewhere
};

/// Scheduling knobs of a GPU decode plan.
struct CudaDecodeOptions {
  /// The kernel form the plan's runs use.
  DecodeKernel kernel = DecodeKernel::kAuto;
  /// Cost of starting a piece, in cache blocks of work (query load, pipeline fill, output).
  int piece_overhead_blocks = 4;
  /// Parts to cut the batch into; 0: the device's SM count / row tiles (one CTA per SM).
  int num_parts = 0;

  void validate() const {
    if (piece_overhead_blocks < 0 || num_parts < 0) {
      std::ostringstream os;
      os << "CudaDecodeOptions: piece_overhead_blocks (" << piece_overhead_blocks
         << ") and num_parts (" << num_parts << ") must be >= 0";
      throw std::invalid_argument(os.str());
    }
  }
};

/// The schedule of one decode step and the workspace it needs (see the header comment). Made
/// once per step by plan(); read by run_decode() for every layer of the step.
class DecodePlan {
 public:
  /// `device`: the CUDA device the plan's buffers live on (its SM count sizes the grid).
  /// Also finds out, with one tiny kernel, whether this build has the wgmma form for the device.
  explicit DecodePlan(int device = 0) : device_(device) {
    set_device();
    MLA_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device));
    int major = 0;
    MLA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    if (major == 9) {
      DeviceBuffer<int> flag(1);
      internal::wgmma_probe_kernel<<<1, 1>>>(flag.data());
      MLA_CUDA_CHECK(cudaGetLastError());
      int has = 0;
      MLA_CUDA_CHECK(cudaMemcpy(&has, flag.data(), sizeof has, cudaMemcpyDeviceToHost));
      has_wgmma_ = has == 1;
    }
  }

  /// Plans `batch` sequences: sequence b has q_lens[b] new tokens (1..4) and lens[b] >= q_lens[b]
  /// cache rows (new ones included); `num_heads` query heads (1..128). Host arrays. Copies the
  /// schedule to the device on `stream`. Throws std::invalid_argument for bad sizes.
  void plan(int num_heads, const int* q_lens, const int* lens, int batch,
            cudaStream_t stream = nullptr, CudaDecodeOptions options = {}) {
    options.validate();
    kernel_ = options.kernel;
    check(batch >= 1, "batch", batch, ">= 1");
    check(num_heads >= 1 && num_heads <= 128, "num_heads", num_heads, "in [1, 128]");
    num_heads_ = num_heads;
    batch_ = batch;
    seqs_.assign(batch, internal::SeqInfo{});
    int max_tiles = 1, q_tok = 0;
    long long total_blocks = 0;
    for (int b = 0; b < batch; ++b) {
      check(q_lens[b] >= 1 && q_lens[b] <= 4, "q_lens[b]", q_lens[b], "in [1, 4]", b);
      check(lens[b] >= q_lens[b], "lens[b]", lens[b], ">= q_lens[b]", b);
      seqs_[b].len = lens[b];
      seqs_[b].q_len = q_lens[b];
      seqs_[b].q_tok = q_tok;
      q_tok += q_lens[b];
      max_tiles = std::max(max_tiles, row_tiles(b));
      total_blocks += blocks_of(b);
    }
    total_q_tokens_ = q_tok;
    row_tiles_ = max_tiles;

    int parts = options.num_parts > 0 ? options.num_parts : std::max(1, num_sms_ / max_tiles);
    const long long overhead = options.piece_overhead_blocks;
    const long long per_part = (total_blocks + overhead * batch + parts - 1) / parts + overhead;
    parts_.clear();
    int b = 0, blk = 0;
    for (int p = 0; p < parts && b < batch; ++p) {
      internal::PartRange r;
      r.seq_begin = b;
      r.blk_begin = blk;
      r.piece_begin = seqs_[b].num_pieces;
      const bool last = p == parts - 1;
      long long rem = per_part;
      while (b < batch && (last || rem > overhead)) {
        const int left = blocks_of(b) - blk;
        const int take = last ? left : int(std::min<long long>(left, rem - overhead));
        rem -= take + overhead;
        ++seqs_[b].num_pieces;
        blk += take;
        if (blk == blocks_of(b)) {
          ++b;
          blk = 0;
        }
      }
      r.seq_end = b;
      r.blk_end = blk;
      parts_.push_back(r);
    }
    num_parts_ = int(parts_.size());

    long long part_rows = 0;
    any_split_ = false;
    for (auto& s : seqs_) {
      s.part_row = int(part_rows);
      if (s.num_pieces > 1) {
        part_rows += static_cast<long long>(s.num_pieces) * s.q_len * num_heads;
        any_split_ = true;
      }
    }
    check(part_rows < (1LL << 31), "partial rows", part_rows, "< 2^31");
    partial_rows_ = int(part_rows);

    // Upload: [seqs | parts] as one int array.
    const std::size_t n_seq_ints = seqs_.size() * 8, n_part_ints = parts_.size() * 8;
    host_ints_.resize(n_seq_ints + n_part_ints);
    std::copy_n(reinterpret_cast<const int*>(seqs_.data()), n_seq_ints, host_ints_.data());
    std::copy_n(reinterpret_cast<const int*>(parts_.data()), n_part_ints,
                host_ints_.data() + n_seq_ints);
    set_device();
    sched_.reserve(host_ints_.size());
    part_o_.reserve(std::max<std::size_t>(1, std::size_t(partial_rows_) * MlaDims::kKvLora));
    part_lse_.reserve(std::max<std::size_t>(1, std::size_t(partial_rows_)));
    MLA_CUDA_CHECK(cudaMemcpyAsync(sched_.data(), host_ints_.data(), host_ints_.size() * sizeof(int),
                                   cudaMemcpyHostToDevice, stream));
    seq_offset_ints_ = 0;
    part_offset_ints_ = int(n_seq_ints);
  }

  int num_heads() const { return num_heads_; }
  int batch() const { return batch_; }
  int total_q_tokens() const { return total_q_tokens_; }
  int num_parts() const { return num_parts_; }
  int row_tiles() const { return row_tiles_; }
  bool any_split() const { return any_split_; }
  int partial_rows() const { return partial_rows_; }
  int device() const { return device_; }
  /// Whether this build and device run the wgmma form.
  bool has_wgmma() const { return has_wgmma_; }
  /// The form run_decode launches: kAuto resolved.
  DecodeKernel kernel() const {
    if (kernel_ != DecodeKernel::kAuto) return kernel_;
    return has_wgmma_ ? DecodeKernel::kWgmma : DecodeKernel::kMmaSync;
  }
  /// Largest q_len * num_heads of the step (the combine's grid).
  int max_rows() const {
    int m = 0;
    for (const auto& s : seqs_) m = std::max(m, s.q_len * num_heads_);
    return m;
  }
  const std::vector<internal::SeqInfo>& host_seqs() const { return seqs_; }
  const std::vector<internal::PartRange>& host_parts() const { return parts_; }

  // Device-side views for the kernels.
  const internal::SeqInfo* dev_seqs() const {
    return reinterpret_cast<const internal::SeqInfo*>(sched_.data() + seq_offset_ints_);
  }
  const internal::PartRange* dev_parts() const {
    return reinterpret_cast<const internal::PartRange*>(sched_.data() + part_offset_ints_);
  }
  float* dev_part_o() const { return const_cast<float*>(part_o_.data()); }
  float* dev_part_lse() const { return const_cast<float*>(part_lse_.data()); }

 private:
  int blocks_of(int b) const { return (seqs_[b].len + MlaDims::kBlock - 1) / MlaDims::kBlock; }
  int row_tiles(int b) const {
    return (seqs_[b].q_len * num_heads_ + internal::kRowTile - 1) / internal::kRowTile;
  }
  void set_device() const {
    int cur = 0;
    MLA_CUDA_CHECK(cudaGetDevice(&cur));
    if (cur != device_) MLA_CUDA_CHECK(cudaSetDevice(device_));
  }
  template <class V>
  static void check(bool ok, const char* what, V value, const char* expected, int b = -1) {
    if (ok) return;
    std::ostringstream os;
    os << "cuda::DecodePlan::plan: " << what;
    if (b >= 0) os << " (b = " << b << ")";
    os << " is " << value << ", expected " << expected;
    throw std::invalid_argument(os.str());
  }

  int device_ = 0, num_sms_ = 1;
  int num_heads_ = 0, batch_ = 0, total_q_tokens_ = 0, num_parts_ = 0, row_tiles_ = 0;
  int partial_rows_ = 0, seq_offset_ints_ = 0, part_offset_ints_ = 0;
  bool any_split_ = false, has_wgmma_ = false;
  DecodeKernel kernel_ = DecodeKernel::kAuto;
  std::vector<internal::SeqInfo> seqs_;
  std::vector<internal::PartRange> parts_;
  std::vector<int> host_ints_;
  DeviceBuffer<int> sched_;
  DeviceBuffer<float> part_o_, part_lse_;
};

}  // namespace cuda
}  // namespace mla
