#!/usr/bin/env bash
# CPU seconds (user + sys) of compiling the two translation units docs/benchmarks.md tracks under
# "Compile time": examples/consumer/main.cpp (a double MLA layer on both paths) and
# tests/compile/compile_all_paths.cpp (every layer path). One compiler process per file, no ccache,
# object discarded. Usage: scripts/compile_time.sh [compiler] [extra flags...]
#   (defaults: g++, -O2 -march=native; EIGEN_INCLUDE overrides /usr/include/eigen3)
set -euo pipefail
cd "$(dirname "$0")/.."
cxx="${1:-g++}"
shift || true
flags=(-std=c++17 -O2 -march=native "$@")
eigen="${EIGEN_INCLUDE:-/usr/include/eigen3}"
echo "# $(date -u +%Y-%m-%d) $("$cxx" --version | head -1) | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') | ${flags[*]}"
for src in examples/consumer/main.cpp tests/compile/compile_all_paths.cpp; do
  /usr/bin/time -f "$src: %U user + %S sys s CPU, %e s wall" \
    "$cxx" "${flags[@]}" -I include -I "$eigen" -c "$src" -o /dev/null 2>&1 |
    grep -E "^$src: " || { echo "$src: compile failed" >&2; exit 1; }
done
