#!/usr/bin/env bash
# Builds the compressor microbenchmark with the release preset and runs it,
# ending with the Markdown table of the largest size (d = 2^24 by default) that
# the README shows. All arguments go to the benchmark (relative paths are taken
# from where you call this script); without an --ecopt_table flag of your own,
# --ecopt_table (the table to stdout) is added. Build logs go to stderr.
#   scripts/bench.sh                                   # everything: several minutes
#   scripts/bench.sh --ecopt_min_d=2^24                # only d = 2^24, for the README
#   scripts/bench.sh --benchmark_filter=top_k --benchmark_min_time=0.05
#   scripts/bench.sh --ecopt_table=table.md --ecopt_table_d=2^20,2^24
# Benchmark 1.7.1 (Debian) takes --benchmark_min_time in seconds as a plain number.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

bash "$root/scripts/install-deps.sh" >&2
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
(
  cd "$root"
  cmake --preset release >&2
  cmake --build --preset release --target compressors >&2
)

table=(--ecopt_table)
for arg in "$@"; do
  case "$arg" in
    --ecopt_table | --ecopt_table=*) table=() ;;
  esac
done
exec "$root/build/release/bench/compressors" "${table[@]}" "$@"
