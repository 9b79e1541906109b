#!/usr/bin/env bash
# Time to accuracy on a slow link: two network namespaces joined by a veth pair
# shaped to 100 Mbit/s (tc tbf) each way, one TCP process per namespace, the
# MLP 784-256-10 on Fashion-MNIST (examples/mlp_over_tcp). First dense
# synchronous SGD runs 900 steps; its test accuracy is the target every other
# schedule then runs to. Prints one line per schedule: steps, wall time of the
# optimization, and a step's split into the gradient's compute and the rest.
#
#   sudo scripts/bench-slow-link.sh [build dir, default build/release]
#   RATE=1gbit scripts/bench-slow-link.sh        (another link rate)
#
# Needs root (ip netns, tc) and the dataset-fashion-mnist package; skips with a
# message otherwise. The namespaces are removed on exit.
set -euo pipefail

build="${1:-build/release}"
binary="$build/examples/mlp_over_tcp"
rate="${RATE:-100mbit}"
ns_a=ecopt_slow_a
ns_b=ecopt_slow_b
addr_a=10.77.0.1
addr_b=10.77.0.2
port=29517

skip() {
  echo "bench-slow-link: skipped: $*" >&2
  exit 0
}
[[ -x "$binary" ]] || { echo "bench-slow-link: build $binary first (ninja -C $build mlp_over_tcp)" >&2; exit 2; }
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] ||
  skip "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)"
[[ $EUID -eq 0 ]] || skip "needs root for ip netns and tc"
command -v ip > /dev/null && command -v tc > /dev/null || skip "needs ip and tc (iproute2)"

cleanup() {
  ip netns del "$ns_a" 2> /dev/null || true
  ip netns del "$ns_b" 2> /dev/null || true
}
cleanup
trap cleanup EXIT
ip netns add "$ns_a" 2> /dev/null || skip "cannot create network namespaces here"
ip netns add "$ns_b"
ip link add veth_ecopt_a netns "$ns_a" type veth peer name veth_ecopt_b netns "$ns_b"
ip -n "$ns_a" addr add "$addr_a/24" dev veth_ecopt_a
ip -n "$ns_b" addr add "$addr_b/24" dev veth_ecopt_b
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set veth_ecopt_a up
ip -n "$ns_b" link set veth_ecopt_b up
tc -n "$ns_a" qdisc add dev veth_ecopt_a root tbf rate "$rate" burst 64kb latency 400ms
tc -n "$ns_b" qdisc add dev veth_ecopt_b root tbf rate "$rate" burst 64kb latency 400ms

# run CONFIG ARGS...: rank 1 in namespace b, rank 0 (which prints) in namespace a.
run() {
  local token
  token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  local common=(ECOPT_WORLD_SIZE=2 "ECOPT_ADDR=$addr_a:$port" "ECOPT_JOB_TOKEN=$token"
                ECOPT_TIMEOUT_MS=120000)
  ip netns exec "$ns_b" env "${common[@]}" ECOPT_RANK=1 "ECOPT_LISTEN_HOST=$addr_b" \
    "$binary" "$@" > /dev/null &
  local other=$!
  ip netns exec "$ns_a" env "${common[@]}" ECOPT_RANK=0 "ECOPT_LISTEN_HOST=$addr_a" \
    "$binary" "$@"
  wait "$other"
}

echo "link: $rate each way (tc tbf), 2 processes, MLP 784-256-10, batch 64 per process"
dense="$(run --config dense --steps 900)"
echo "$dense"
target="$(sed -n 's/.*accuracy \([0-9.]*\)%.*/\1/p' <<< "$dense")"
target="$(awk -v a="$target" 'BEGIN { printf "%.4f", a / 100 }')"
echo "target: dense's 900-step test accuracy, $target"
for config in topk local8 local8_topk slowmo overlap; do
  run --config "$config" --steps 3600 --target "$target"
done
