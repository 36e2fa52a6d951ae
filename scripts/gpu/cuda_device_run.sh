#!/bin/bash
# One device call for the CUDA decode: environment, the CUDA tests, compute-sanitizer memcheck on a
# small case, and cuda_decode_bench (JSON). Binaries come prebuilt in build-cuda/ (carried with the
# working tree); everything printed goes to $OUT.
#   bash scripts/gpu/cuda_device_run.sh [BUILD_DIR] [bench args...]
set -o pipefail
B=${1:-build-cuda}; shift || true
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH}
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv; nvcc --version | tail -2; } \
  > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
echo "== tests"
timeout 240 "$B/test_cuda_decode" 2>&1 | tee "$OUT/tests.log" | grep -E "^\[  |FAILED|fp8 cache|Failure|error" | head -60
echo "tests rc=$?"
echo "== memcheck"
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
timeout 200 "$SAN" --tool memcheck --error-exitcode 3 "$B/test_cuda_decode" \
  --gtest_filter='*ForcedSplits*:*OnePart*:*Fp8EveryQLen*' > "$OUT/memcheck.log" 2>&1
echo "memcheck rc=$?"; tail -5 "$OUT/memcheck.log"
echo "== racecheck (shared-memory hazards, one small case)"
timeout 150 "$SAN" --tool racecheck --racecheck-report hazard --error-exitcode 3 "$B/test_cuda_decode" \
  --gtest_filter='*OnePart*' > "$OUT/racecheck.log" 2>&1
echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|hazard|ERROR SUMMARY" "$OUT/racecheck.log" | head -5
echo "== bench"
timeout 240 "$B/cuda_decode_bench" --json "$OUT/cuda_decode_bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
echo "bench rc=$?"
