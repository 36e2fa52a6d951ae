#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (-fsanitize=fuzzer,address,undefined) and runs each for a
# bounded time; any crash, sanitizer report, leak, timeout or out-of-memory fails the script.
#   scripts/fuzz.sh [build-dir]                                   (default build-fuzz)
#
# Targets (tests/fuzz/fuzz_<name>.cpp):
#   safetensors   io::SafetensorsFile::from_bytes + every read path (must parse or throw)
#   config_json   io::parse_rope / parse_attention_config / parse_mla_config on any bytes
#
# Seeds: the small files in tests/fuzz/corpus/<name>/ (committed), plus valid files taken from the
# reference folder at run time ($MLA_REFERENCE_DIR, else ../shared/reference): every config.json,
# and the io*.safetensors files under 100 KB. New inputs libFuzzer finds are kept in
# <build-dir>/corpus/<name>/, so later runs start from there. A crashing input is written to
# <build-dir>/artifacts/; make it a regression test in tests/reliability/test_fuzz_regressions.cpp.
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_TARGETS   space-separated subset (default: "safetensors config_json")
#   FUZZ_PARALLEL  1 (default) runs the targets at the same time, one core each; 0 one after another
#   FUZZ_CXX       clang++ to use (default clang++)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
build="${1:-build-fuzz}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"
seconds="${FUZZ_SECONDS:-60}"
targets=(${FUZZ_TARGETS:-safetensors config_json})
parallel="${FUZZ_PARALLEL:-1}"
cxx="${FUZZ_CXX:-clang++}"

# clang and its runtime libraries (libFuzzer, ASan, UBSan) besides the usual build dependencies.
bash scripts/install-deps.sh clang libclang-rt-14-dev

eigen_flags="$(pkg-config --cflags eigen3 2>/dev/null || echo -I/usr/include/eigen3)"
ref="${MLA_REFERENCE_DIR:-$root/../shared/reference}"

for t in "${targets[@]}"; do
  src="tests/fuzz/fuzz_$t.cpp"
  [ -f "$src" ] || { echo "fuzz.sh: no target $src" >&2; exit 2; }
  echo "== building fuzz_$t =="
  # shellcheck disable=SC2086
  "$cxx" -std=c++17 -O1 -g -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Werror -I include $eigen_flags "$src" -o "$build/fuzz_$t"

  # Seeds generated from the reference vectors (not committed: they are up to 80 KB each).
  seeds="$build/seeds/$t"
  rm -rf "$seeds"
  mkdir -p "$seeds" "$build/corpus/$t" "$build/artifacts"
  if [ -d "$ref" ]; then
    for d in "$ref"/*/; do
      name="$(basename "$d")"
      case "$t" in
        config_json)
          [ -f "$d/config.json" ] && cp "$d/config.json" "$seeds/$name.json" ;;
        safetensors)
          for f in "$d"/io*.safetensors; do
            [ -f "$f" ] && [ "$(stat -c %s "$f")" -le 102400 ] && cp "$f" "$seeds/${name}_$(basename "$f")"
          done ;;
      esac
    done
  else
    echo "fuzz.sh: no reference folder at $ref; using the committed seeds only"
  fi
done

run_one() {
  local t="$1"
  local dict=()
  [ -f "tests/fuzz/corpus/$t.dict" ] && dict=(-dict="tests/fuzz/corpus/$t.dict")
  # -timeout: one input taking > 10 s is a hang; -rss_limit_mb: an input may not make the reader
  # allocate without bound (a header promising a huge tensor must be rejected, not allocated).
  "$build/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" "${dict[@]}" \
    "$build/corpus/$t" "tests/fuzz/corpus/$t" "$build/seeds/$t" >"$build/fuzz_$t.log" 2>&1
}

declare -A status
if [ "$parallel" = 1 ]; then
  declare -A pids
  for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s (log: $build/fuzz_$t.log) =="
    run_one "$t" & pids[$t]=$!
  done
  for t in "${targets[@]}"; do
    if wait "${pids[$t]}"; then status[$t]=0; else status[$t]=$?; fi
  done
else
  for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s (log: $build/fuzz_$t.log) =="
    if run_one "$t"; then status[$t]=0; else status[$t]=$?; fi
  done
fi

failed=0
printf '%-14s %12s %10s %8s  %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
  log="$build/fuzz_$t.log"
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
  rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
  corpus="$(find "$build/corpus/$t" -type f | wc -l)"
  if [ "${status[$t]}" = 0 ]; then
    result=ok
  else
    result="FAILED (exit ${status[$t]})"
    failed=1
  fi
  printf '%-14s %12s %10s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$result"
done
if [ "$failed" != 0 ]; then
  for t in "${targets[@]}"; do
    if [ "${status[$t]}" != 0 ]; then
      echo "---- fuzz_$t (last 60 lines of $build/fuzz_$t.log) ----"
      tail -n 60 "$build/fuzz_$t.log"
    fi
  done
  echo "crashing inputs: $(ls "$build"/artifacts/ 2>/dev/null | tr '\n' ' ')"
  exit 1
fi
echo "fuzzing: no crashes"
