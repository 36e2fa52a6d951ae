// Umbrella header: everything public in mla. Include the narrower headers to keep compile times
// down (e.g. mla/layers/mla.hpp for the MLA layer alone).
#pragma once

#include "mla/version.hpp"
#include "mla/config.hpp"
#include "mla/presets.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"
#include "mla/core/workspace.hpp"
#include "mla/ops/linear.hpp"
#include "mla/ops/rmsnorm.hpp"
#include "mla/ops/rope.hpp"
#include "mla/ops/softmax.hpp"
#include "mla/cache/kv_cache.hpp"
#include "mla/cache/latent_cache.hpp"
#include "mla/layers/gqa.hpp"
#include "mla/layers/mla.hpp"
#include "mla/layers/sharding.hpp"
#include "mla/io/safetensors.hpp"
#include "mla/io/checkpoint.hpp"
#include "mla/io/hf_config.hpp"
#include "mla/io/load_layer.hpp"
