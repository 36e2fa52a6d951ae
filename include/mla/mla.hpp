// Umbrella header: the library (configs, ops, caches, kernels, layers), which needs Eigen only.
// The checkpoint and config.json loaders are in mla/io.hpp (they add nlohmann_json; CMake target
// mla::io). Include the narrower headers to keep compile times down (e.g. mla/layers/mla.hpp for
// the MLA layer alone).
#pragma once

#include "mla/version.hpp"
#include "mla/config.hpp"
#include "mla/presets.hpp"
#include "mla/core/check.hpp"
#include "mla/core/fp8.hpp"
#include "mla/core/types.hpp"
#include "mla/core/isa.hpp"
#include "mla/core/threading.hpp"
#include "mla/kernels/decode_engine.hpp"
#include "mla/ops/linear.hpp"
#include "mla/ops/rmsnorm.hpp"
#include "mla/ops/rope.hpp"
#include "mla/ops/softmax.hpp"
#include "mla/cache/kv_cache.hpp"
#include "mla/cache/latent_cache.hpp"
#include "mla/cache/paged_latent_cache.hpp"
#include "mla/cache/quantized_latent_cache.hpp"
#include "mla/layers/workspace.hpp"
#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"
#include "mla/layers/sharding.hpp"
#include "mla/layers/batched_decode.hpp"
