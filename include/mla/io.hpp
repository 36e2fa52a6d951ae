// Umbrella header for the loaders: safetensors files, sharded checkpoint folders with FP8 block
// scales, Hugging Face config.json, and building layers from them (mla::io). They need
// nlohmann_json besides Eigen; in CMake link mla::io, which brings it. The library itself is in
// mla/mla.hpp.
#pragma once

#include "mla/io/fp8.hpp"
#include "mla/io/safetensors.hpp"
#include "mla/io/checkpoint.hpp"
#include "mla/io/hf_config.hpp"
#include "mla/io/load_layer.hpp"
