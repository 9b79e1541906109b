#!/usr/bin/env bash
# Builds the Fashion-MNIST example with the release preset and runs it; all
# arguments go to the example (relative paths are taken from where you call
# this script). Build logs go to stderr, the example's output to stdout.
#   scripts/demo.sh [example options...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

bash "$root/scripts/install-deps.sh" >&2
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
(
  cd "$root"
  cmake --preset release >&2
  cmake --build --preset release --target fashion_mnist >&2
)
exec "$root/build/release/examples/fashion_mnist" "$@"
