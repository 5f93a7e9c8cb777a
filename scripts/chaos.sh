#!/usr/bin/env bash
# The short chaos suite: leasehold-jepsen runs against a real three-node
# cluster (Docker containers, or network namespaces where Docker is
# missing), every nemesis at least once, each run checked. Fails on any
# violation. A run's history, report and latency plot stay under
# $CHAOS_OUT (default $CARGO_TARGET_DIR/chaos).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leasehold-target}"
out="${CHAOS_OUT:-$CARGO_TARGET_DIR/chaos}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# The faults need iptables (partitions, loss) and nsenter (to reach a
# container's network namespace).
if ! command -v iptables >/dev/null 2>&1 || ! command -v nsenter >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables util-linux iproute2
fi

backend=""
if docker info >/dev/null 2>&1; then
    backend=docker
elif as_root ip netns add lhj-probe >/dev/null 2>&1; then
    as_root ip netns del lhj-probe
    backend=netns
fi
if [ -z "$backend" ] || [ "$(id -u)" -ne 0 ]; then
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! CHAOS SUITE SKIPPED: it needs root and Docker or network namespaces," >&2
    echo "!!! and this machine has neither usable (backend='${backend}', uid $(id -u))." >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    exit 0
fi

cargo build --release --locked -p leasehold -p leasehold-jepsen --bins
jepsen="$CARGO_TARGET_DIR/release/leasehold-jepsen"

# name, then flags. Storage faults (a failed fsync, a full disk: the node
# must exit 74, and is restarted on its data) get a run with kills.
# Clock faults get a run of their own: it is judged with
# the server's clock bound (2 x max_clock_offset_ms) added to every
# checker's time bounds, which would blunt the others. Runs get one data
# group per node, as `serve` does by default, except `linear`: six groups
# on three nodes, so that faults also hit nodes leading several groups.
# `leases` runs secured as in production (TLS on the client port, mutual
# TLS between nodes, a token on every call); the others run --insecure on
# their private network.
runs=(
    "leases --workload leases --nemesis partition,kill,pause,loss --time-limit 60 --seed 1 --tls"
    "linear --workload linear --nemesis partition,kill,pause --time-limit 40 --seed 2 --groups 6"
    "throttle --workload throttle --nemesis partition,pause,loss --time-limit 30 --seed 3"
    "rate-limit --workload rate-limit --nemesis partition,kill,pause,loss --time-limit 30 --seed 5"
    "fenced --workload fenced --nemesis partition,kill,pause,loss --time-limit 30 --seed 6"
    "clock --workload leases --nemesis clock --time-limit 40 --seed 4"
    "storage --workload leases --nemesis storage,kill --time-limit 40 --seed 14"
)
passed=0
failed=0
for run in "${runs[@]}"; do
    read -r name flags <<<"$run"
    echo "=== chaos run '$name': leasehold-jepsen --nodes 3 --backend $backend $flags"
    # shellcheck disable=SC2086 # flags are words on purpose
    if "$jepsen" --nodes 3 --backend "$backend" --out "$out/$name" $flags; then
        passed=$((passed + 1))
    else
        echo "=== chaos run '$name' FAILED: see $out/$name/report.txt" >&2
        failed=$((failed + 1))
    fi
done
echo "chaos: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
