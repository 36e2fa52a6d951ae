// The construction options the attention layers share (GroupedQueryAttention::Options and
// MultiHeadLatentAttention::Options are this struct).
#pragma once

#include <cstdint>

#include "mla/core/isa.hpp"
#include "mla/ops/linear.hpp"

namespace mla {

struct AttentionLayerOptions {
  /// Positions accepted, [0, max_positions); 0 means config.max_position_embeddings. At most
  /// kMaxPositions. The cos/sin table is bounded whatever this is (kRopeTableMaxPairs,
  /// ops/rope.hpp); engines serving shorter contexts may lower it to refuse later positions.
  std::int64_t max_positions = 0;
  /// kBf16 (float layers only): keep the input and output projections as bfloat16, halving the
  /// bytes a batch-1 decode step streams. GQA: q/k/v/o_proj. MLA: q_a_proj, q_b_proj / q_proj,
  /// kv_a_proj_with_mqa and o_proj (~170 M of the ~187 M weights of a DeepSeek-V3 layer);
  /// kv_b_proj and its W_UK / W_UV split stay in the layer's type.
  WeightFormat projection_weights = WeightFormat::kAsLoaded;
  /// Instruction-set path of the attention kernels (float layers). kernels::KernelPath::kAmx
  /// runs attention over a bf16 cache on the AMX tiles, rounding the query and the softmax
  /// weights to bf16 (see mla/kernels/amx_attention.hpp); kAuto keeps float accuracy.
  kernels::KernelPath attention_path = kernels::KernelPath::kAuto;

  /// The positions the layer's RoPE table serves: max_positions, or the config's when 0.
  std::int64_t positions_or(std::int64_t config_max_positions) const {
    return max_positions > 0 ? max_positions : config_max_positions;
  }
};

}  // namespace mla
