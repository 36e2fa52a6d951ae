#!/usr/bin/env bash
# Builds everything (Release, warnings as errors) and runs the whole test suite through ctest:
# unit tests, Hugging Face reference conformance (shared/reference beside the repository, or
# $MLA_REFERENCE_DIR), hf_layer_check, and the packaging (find_package / add_subdirectory) checks.
#   scripts/test.sh [build-dir [extra cmake arguments...]]
# e.g. scripts/test.sh build-v2 -DMLA_NATIVE=OFF -DCMAKE_CXX_FLAGS=-march=x86-64-v2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build="${1:-build-test}"
if [ $# -gt 0 ]; then shift; fi
jobs="${MLA_JOBS:-2}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMLA_WERROR=ON \
  -DMLA_BUILD_TESTS=ON -DMLA_BUILD_BENCHMARKS=ON -DMLA_BUILD_EXAMPLES=ON "$@"
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
