#!/usr/bin/env bash
# Runs the test suite under sanitizers; any report fails the script.
#   1. AddressSanitizer + UndefinedBehaviorSanitizer (-O1, -fno-sanitize-recover=all, leak
#      checking on, MLA_DCHECK and Eigen's own bounds asserts on because NDEBUG is not defined):
#      every tests/**/test_*.cpp, through ctest.
#   2. ThreadSanitizer: the tests labelled by name "Concurrency" (tests/reliability/
#      test_concurrency.cpp: one layer shared by several threads, each with its own cache).
#
#   scripts/sanitize.sh [asan-build-dir] [tsan-build-dir]      (defaults build-asan, build-tsan)
#
# Environment:
#   MLA_SANITIZE_CXX         compiler (default clang++: it builds these Eigen-heavy tests faster
#                            than g++ with sanitizers (measured 1.3-1.9x), and its UBSan also checks
#                            float-to-int casts; g++ works too)
#   MLA_JOBS                 build and ctest parallelism (default 2)
#   MLA_SANITIZE_EXCLUDE     ctest -E regex of tests skipped under ASan (default below; "" = none)
#   MLA_SANITIZE_ONLY        asan | tsan: run one half only
#
# Skipped by default under ASan: packaging.* (they configure and build consumer projects: cmake and
# compiler checks, no library code runs). Everything else runs, the DeepSeek-V3-dims tests
# included (MlaPaths.DeepSeekV3Dims*, ~1 min of CPU under ASan); to skip them on a slow machine,
#   MLA_SANITIZE_EXCLUDE='MlaPaths\.DeepSeekV3Dims|^packaging\.'
# is safe: the same three paths (absorbed, naive-recompute, naive-cached), every chunking, q-LoRA
# and yarn past the original context run under ASan in MlaPaths.SmallDims* and
# MlaPaths.DeepSeekV2LiteDims, the real V3 per-head sizes (kv_lora 512, rope 64, nope/v 128,
# q_lora 1536) in the conformance case deepseek_v3_realdims, and 128 heads x 576 in
# tests/kernels and tests/reliability/test_decode_allocations.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh clang libclang-rt-14-dev

asan_dir="${1:-build-asan}"
tsan_dir="${2:-build-tsan}"
jobs="${MLA_JOBS:-2}"
exclude="${MLA_SANITIZE_EXCLUDE-^packaging\.}"
only="${MLA_SANITIZE_ONLY:-}"
cxx="${MLA_SANITIZE_CXX:-clang++}"

common=(-DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Debug -DMLA_BUILD_TESTS=ON
        -DMLA_BUILD_BENCHMARKS=OFF -DMLA_BUILD_EXAMPLES=OFF -DMLA_INSTALL=OFF -DMLA_WERROR=OFF
        -DMLA_CUDA=OFF)

# Every report is fatal and exits non-zero; ctest then marks the test failed.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:detect_invalid_pointer_pairs=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"

if [ "$only" != tsan ]; then
  echo "== ASan + UBSan build ($asan_dir) =="
  # -g1 (line tables): file:line in every report, and far cheaper to compile than -g.
  flags="-O1 -g1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
  cmake -S . -B "$asan_dir" "${common[@]}" -DCMAKE_CXX_FLAGS_DEBUG="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined"
  cmake --build "$asan_dir" -j "$jobs"
  echo "== ASan + UBSan tests (skipped: ${exclude:-none}) =="
  args=(--test-dir "$asan_dir" --output-on-failure -j "$jobs" --timeout 900)
  [ -n "$exclude" ] && args+=(-E "$exclude")
  ctest "${args[@]}"
fi

if [ "$only" != asan ]; then
  echo "== TSan build of the concurrency test ($tsan_dir) =="
  flags="-O1 -g1 -fno-omit-frame-pointer -fsanitize=thread"
  cmake -S . -B "$tsan_dir" "${common[@]}" -DCMAKE_CXX_FLAGS_DEBUG="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread"
  cmake --build "$tsan_dir" -j "$jobs" --target test_concurrency
  echo "== TSan tests =="
  ctest --test-dir "$tsan_dir" --output-on-failure -j 1 --timeout 900 -R '^Concurrency\.'
fi
echo "sanitizers: no reports"
