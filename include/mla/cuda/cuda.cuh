// Umbrella header of the CUDA code (compile with nvcc; sm_80 or later): absorbed MLA decode over
// a paged bf16 or FP8 latent cache, planned once per step and run per layer.
#pragma once

#include "mla/cuda/cuda_check.cuh"
#include "mla/cuda/decode_plan.cuh"
#include "mla/cuda/mla_decode.cuh"
#include "mla/cuda/paged_latent.cuh"
