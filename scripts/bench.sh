#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: Leasehold against Redis (our Lua scripts, AOF
# fsync everysec and always) and a three-member etcd cluster, every server
# started and stopped by leasehold-bench on this machine. Installs what it
# needs (redis-server, etcd, matplotlib for the plots) if missing, builds,
# runs the whole suite (about 25 minutes on two cores), and writes
# bench/results/results.json, the plots in bench/results/ and BENCHMARKS.md.
# Further arguments go to `leasehold-bench suite` (see its --help).
#
#   scripts/bench.sh --smoke   a second or so per target and workload, in a
#                              temp dir; fails unless every target works and
#                              the results parse. Writes nothing here.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
if [ "${1:-}" = "--smoke" ]; then
    smoke=1
    shift
fi
bash scripts/setup.sh
# One target dir for running, testing and benchmarking: RocksDB builds once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leasehold-target}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
if [ "$smoke" -eq 0 ] && ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    need+=(python3-matplotlib)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}"
    # The packaged services must not start on install: the benchmark runs
    # its own servers on ports of its own.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        added_policy=1
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if [ "$added_policy" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
fi

cargo build --release --locked -p leasehold -p leasehold-bench --bins
bench="$CARGO_TARGET_DIR/release/leasehold-bench"

if [ "$smoke" -eq 1 ]; then
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
    "$bench" suite --smoke --out "$out" "$@"
    "$bench" report --results "$out/results.json" --check --out "$out/BENCHMARKS.md"
    echo "bench smoke: every target and workload ran; results parse"
    exit 0
fi

out=bench/results
mkdir -p "$out"
{
    echo "$ lscpu (excerpt)"
    lscpu | grep -E '^(Architecture|CPU\(s\)|Model name|Thread|Core|Socket|CPU max MHz|BogoMIPS|Hypervisor vendor|L2 cache|L3 cache)' || true
    echo
    echo "$ uname -srm"
    uname -srm
    echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "disk: $(df -h --output=source,fstype "$(dirname "$(mktemp -u)")" | tail -1)"
    # What one durable write costs here: every server's floor.
    /usr/bin/python3 - "$(dirname "$(mktemp -u)")" <<'PY'
import os, sys, time
def fdatasync_ms(overwrite, n=300):
    path = os.path.join(sys.argv[1], "leasehold-bench-fsync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        if overwrite:
            os.write(fd, b"\0" * 4096 * n)
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        start = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 512)
            os.fdatasync(fd)
        return (time.perf_counter() - start) / n * 1e3
    finally:
        os.close(fd)
        os.unlink(path)
print("fdatasync of 512 B: %.2f ms appending (the file grows), %.2f ms overwriting"
      % (fdatasync_ms(False), fdatasync_ms(True)))
PY
    echo
    "$CARGO_TARGET_DIR/release/leasehold" --version
    redis-server --version
    etcd --version | head -1
    rustc --version
    echo
    echo "load before the run: $(uptime)"
    echo "busiest processes before the run (%CPU):"
    ps -eo pcpu,comm --sort=-pcpu | sed -n '2,6p'
} >"$out/machine.txt"

status=0
"$bench" suite --out "$out" "$@" || status=$?
echo "load after the run:  $(uptime)" >>"$out/machine.txt"
/usr/bin/python3 bench/plot.py "$out/results.json" "$out"
"$bench" report --results "$out/results.json" --machine "$out/machine.txt" \
    --plots-dir "$out" --analysis bench/analysis.md --out BENCHMARKS.md
echo "bench: wrote BENCHMARKS.md, $out/results.json and the plots in $out"
exit "$status"
