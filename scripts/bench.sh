#!/usr/bin/env bash
# Builds the benchmarks in Release and runs the KV-cache report and a short decode sweep.
#   scripts/bench.sh           quick sweep (a few minutes on 2 cores)
#   scripts/bench.sh --full    every design, context length, cache type and thread count
# JSON results go to bench-results/decode.json (plot with benchmarks/plot_decode.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build="${MLA_BENCH_BUILD:-build-release}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DMLA_BUILD_TESTS=OFF -DMLA_BUILD_BENCHMARKS=ON -DMLA_BUILD_EXAMPLES=OFF
cmake --build "$build" -j 2 --target kv_cache_report decode_bench
mkdir -p bench-results
"$build/benchmarks/kv_cache_report"
mode="--quick"
[ "${1:-}" = "--full" ] && mode="--full"
"$build/benchmarks/decode_bench" "$mode" --benchmark_out=bench-results/decode.json \
  --benchmark_out_format=json
