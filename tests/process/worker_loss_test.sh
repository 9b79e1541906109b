#!/usr/bin/env bash
# kill -9 of a worker process mid-run: a parameter server over TCP with
# ECOPT_TOLERATE_LOST_PEERS=1 (backup workers, one backup) finds the lost
# worker at the transport's deadline, finishes its steps with the others, and
# names the lost rank; the surviving workers end normally.
#   worker_loss_test.sh path/to/stragglers_over_tcp [fashion-mnist dir]
# Exits 77 (skipped) when the data is not installed.
set -uo pipefail
bin="$1"
data="${2:-/usr/share/datasets/fashion-mnist}"
if [[ ! -e "$data/train-images-idx3-ubyte.gz" ]]; then
  echo "SKIP: Fashion-MNIST is not installed at $data"
  exit 77
fi
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

export ECOPT_WORLD_SIZE=5 ECOPT_TOLERATE_LOST_PEERS=1 ECOPT_TIMEOUT_MS=3000
export ECOPT_JOB_TOKEN="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
args=(--data "$data" --mode backup --steps 300 --compute-ms 5 --target-loss 0 --eval-every 100)

ECOPT_RANK=0 ECOPT_ADDR=127.0.0.1:0 ECOPT_PORT_FILE="$work/port" \
  "$bin" "${args[@]}" >"$work/out0" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do [[ -s "$work/port" ]] && break; sleep 0.1; done
[[ -s "$work/port" ]] || { echo "FAIL: rank 0 never listened"; cat "$work/out0"; exit 1; }
port="$(cat "$work/port")"
for r in 1 2 3 4; do
  ECOPT_RANK=$r ECOPT_ADDR="127.0.0.1:$port" "$bin" "${args[@]}" >"$work/out$r" 2>&1 &
  pids+=($!)
done

# Let the run get going (models and updates in flight), then kill worker rank 2.
sleep 2
kill -9 "${pids[2]}"
wait "${pids[2]}"
killed=$?

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
for r in 0 1 3 4; do
  wait "${pids[$r]}"
  status=$?
  [[ $status == 0 ]] || { fail "rank $r ended with status $status:"; cat "$work/out$r"; }
done
[[ $killed == 137 ]] || fail "the killed worker ended with status $killed, expected 137"
grep -q "300 steps" "$work/out0" || { fail "the server did not run its 300 steps:"; cat "$work/out0"; }
grep -q "lost ranks 2" "$work/out0" || { fail "the server did not name the lost rank 2:"; cat "$work/out0"; }
if ((failures == 0)); then
  echo "ok: worker rank 2 killed mid-run; the server finished with the others:"
  cat "$work/out0"
fi
((failures == 0))
