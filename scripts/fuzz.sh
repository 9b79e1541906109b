#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz (the fuzz preset: clang,
# AddressSanitizer + UBSan) and runs each for a bounded time from its seed
# corpus, one after the other.
#
#   scripts/fuzz.sh [SECONDS_PER_HARNESS] [HARNESS...]     (default: 10 s, all six)
#
# Harnesses: decode_add (every compressor of the registry), tcp_frame,
# tcp_handshake, checkpoint, idx, libsvm. The inputs a run finds are kept in
# <build>/corpus/<harness> and seed the next run (the repository's seeds in
# tests/fuzz/corpus are only read); an input that crashes is saved in
# <build>/artifacts/ and the script exits 1 naming it. Reproduce one with
#   <build>/tests/fuzz/ecopt_fuzz_<harness> <build>/artifacts/<file>
# Environment: ECOPT_FUZZ_BUILD_DIR (default build/fuzz); ECOPT_FUZZ_KEEP_GOING=1
# goes on after a crash (libFuzzer's fork mode), so a long run collects every
# finding instead of stopping at the first.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(decode_add tcp_frame tcp_handshake checkpoint idx libsvm)
seconds="${1:-10}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] ||
  { echo "fuzz.sh: SECONDS_PER_HARNESS must be a positive integer, got '$seconds'" >&2; exit 2; }
shift || true
harnesses=("$@")
((${#harnesses[@]} > 0)) || harnesses=("${all[@]}")
for h in "${harnesses[@]}"; do
  [[ " ${all[*]} " == *" $h "* ]] ||
    { echo "fuzz.sh: unknown harness '$h' (one of: ${all[*]})" >&2; exit 2; }
done
command -v clang++ >/dev/null ||
  { echo "fuzz.sh: needs clang++ and libFuzzer (scripts/install-deps.sh installs them)" >&2; exit 2; }

build="${ECOPT_FUZZ_BUILD_DIR:-build/fuzz}"
start=$SECONDS
cmake --preset fuzz -B "$build" >/dev/null
cmake --build "$build" -j 2 --target "${harnesses[@]/#/ecopt_fuzz_}"
echo "fuzz.sh: built in $((SECONDS - start)) s"

options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256
         -print_final_stats=1)
[[ "${ECOPT_FUZZ_KEEP_GOING:-0}" == 1 ]] &&
  options+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
mkdir -p "$build/artifacts" "$build/logs"
passed=0
failed=0
for h in "${harnesses[@]}"; do
  mkdir -p "$build/corpus/$h"
  log="$build/logs/$h.log"
  before=$(find "$build/artifacts" -name "$h-*" | wc -l)
  status=0
  "$build/tests/fuzz/ecopt_fuzz_$h" "${options[@]}" -artifact_prefix="$build/artifacts/$h-" \
    "$build/corpus/$h" "tests/fuzz/corpus/$h" >"$log" 2>&1 || status=$?
  # Executions: the final stats, or (fork mode) the last progress line.
  runs=$(grep -oE '^stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
  [[ -n "$runs" ]] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
  artifacts=$(find "$build/artifacts" -name "$h-*" | wc -l)
  if ((status != 0 || artifacts > before)); then
    failed=$((failed + 1))
    echo "fuzz.sh: $h FAILED after ${runs:-?} executions (status $status); log $log"
    grep -E 'ecopt fuzz finding|ERROR|SUMMARY|Test unit written' "$log" | head -n 20 || true
  else
    passed=$((passed + 1))
    echo "fuzz.sh: $h: ${runs:-?} executions in $seconds s, corpus $(find "$build/corpus/$h" -type f | wc -l) inputs"
  fi
done
echo "fuzz.sh: $((SECONDS - start)) s in all"
echo "fuzz: $passed passed, $failed failed"
((failed == 0))
