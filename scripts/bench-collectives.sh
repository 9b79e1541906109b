#!/usr/bin/env bash
# Builds bench/collectives with the release preset and runs it under mpirun for
# 2 and 4 ranks on this machine, twice each:
#   Open MPI over its TCP btl  beside ecopt's tcp_transport (127.0.0.1)
#   Open MPI over shared memory (vader) beside ecopt's thread_transport
# printing the Markdown tables the README shows. Extra arguments go to the
# benchmark, e.g. --min=20 --max=24 --seconds=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

bash "$root/scripts/install-deps.sh" >&2
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
(
  cd "$root"
  cmake --preset release >&2
  cmake --build --preset release --target collectives >&2
)
bench="$root/build/release/bench/collectives"
run=(mpirun --oversubscribe)
if [[ "$(id -u)" -eq 0 ]]; then run+=(--allow-run-as-root); fi

for ranks in 2 4; do
  echo "### ${ranks} ranks: Open MPI over TCP vs tcp_transport"
  "${run[@]}" -np "$ranks" --mca btl self,tcp "$bench" --transports=mpi,tcp,tcp-unchecked "$@"
  echo
  echo "### ${ranks} ranks: Open MPI over shared memory vs thread_transport"
  "${run[@]}" -np "$ranks" --mca btl self,vader "$bench" --transports=mpi,threads "$@"
  echo
done
