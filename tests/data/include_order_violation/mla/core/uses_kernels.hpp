// Fixture for the layering.include_order_catches_violations test: core must not include kernels.
#pragma once
#include "mla/core/types.hpp"
#include "mla/kernels/gemm.hpp"
