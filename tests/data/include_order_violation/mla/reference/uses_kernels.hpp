// Fixture for the layering.include_order_catches_violations test: references include core only.
#pragma once
#include "mla/kernels/gemm.hpp"
