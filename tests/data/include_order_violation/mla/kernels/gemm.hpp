// Fixture for the layering.include_order_catches_violations test: a kernel header that includes
// only downward (no violation).
#pragma once
#include "mla/core/types.hpp"
