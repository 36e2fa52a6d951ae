#!/bin/bash
# One device call: builds FlashMLA's sm90 dense decode (from the git-ignored peer folder, as
# ../shared/gpu-peers/run_device.sh does) while our CUDA tests and memcheck run, then our
# benchmark, an Nsight Compute profile of one large shape, and the side-by-side harness
# (FlashMLA, PyTorch and our kernel on the same data, same timing). Everything goes to $OUT.
#   bash scripts/gpu/cuda_peers_run.sh [PEERS_DIR=.gpu-peers] [BUILD_DIR=build-cuda]
set -o pipefail
export PYTHONUNBUFFERED=1
PEERS=$(cd "${1:-.gpu-peers}" && pwd); B=${2:-build-cuda}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH}
T0=$(date +%s); el() { echo "$(( $(date +%s) - T0 )) s"; }
( cd "$PEERS/src/FlashMLA" && export MAX_JOBS=16 NVCC_THREADS=4 && \
  timeout 300 python3 setup_dense.py build_ext --inplace > "$OUT/flashmla_build.log" 2>&1; \
  echo "build rc=$? after $(( $(date +%s) - T0 )) s" >> "$OUT/flashmla_build.log" ) &
BPID=$!
OUT=$OUT bash scripts/gpu/cuda_device_run.sh "$B" --batches 1 --lens 4096 --iters 3 > "$OUT/ours_tests.txt" 2>&1
grep -E "tests rc|memcheck rc|racecheck rc|RACECHECK|FAILED|ERROR SUMMARY|fp8 cache" "$OUT/ours_tests.txt"; echo "tests+memcheck done at $(el)"
wait $BPID; tail -1 "$OUT/flashmla_build.log"
echo "== bench (quiet machine)"
timeout 200 "$B/cuda_decode_bench" --iters 30 --json "$OUT/cuda_decode_bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$? at $(el)"; cat "$OUT/bench.log"
echo "== ncu"
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
timeout 120 "$NCU" --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section Occupancy --section LaunchStats -k regex:mla_decode_kernel -c 1 \
  "$B/cuda_decode_bench" --batches 128 --lens 4096 --iters 1 --kernel wgmma > "$OUT/ncu_b128_l4096.txt" 2>&1
echo "ncu rc=$? at $(el)"; grep -E "Compute \(SM\) Throughput|Memory Throughput|Duration|Registers|Achieved Occupancy|Shared Memory|Stall|Issue Slots|Pipe" "$OUT/ncu_b128_l4096.txt" | head -30
echo "== peers"
timeout 240 python3 scripts/gpu/mla_decode_peers_ours.py --peers "$PEERS" --lib "$B/libmla_cuda_peer.so" \
  --json "$OUT/peers_ours.json" > "$OUT/peers_ours.log" 2>&1
echo "peers rc=$? at $(el)"; grep -v '^{' "$OUT/peers_ours.log" | tail -25
