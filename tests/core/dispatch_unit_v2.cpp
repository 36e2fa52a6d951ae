// The second translation unit of test_dispatch, compiled with -march=x86-64-v2 (no AVX) where the
// compiler allows it (tests/CMakeLists.txt); test_dispatch.cpp is compiled with -march=native.
#include "dispatch_unit.hpp"

#define DISPATCH_UNIT unit_v2
#include "dispatch_unit.inc"
