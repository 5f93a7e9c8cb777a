"""Plots of a leasehold-bench results file: throughput against callers and
acquire latency by percentile. Usage: plot.py RESULTS_JSON OUT_DIR"""

import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = ["leasehold", "redis-everysec", "redis-always", "etcd"]
WORKLOADS = ["hot", "spread", "multi", "throttle", "wait"]


def nines(percentile):
    """Percentile on a 'number of nines' axis: 90 -> 1, 99 -> 2, 99.9 -> 3."""
    return -math.log10(max(1e-5, 1 - percentile / 100))


def throughput_vs_clients(runs, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target in TARGETS:
        points = sorted(
            (r["clients"], r["throughput_per_s"])
            for r in runs
            if r["group"] == "clients" and r["target"] == target
        )
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=target)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("closed-loop callers")
    ax.set_ylabel("cycles/s")
    ax.set_title("Throughput against callers (spread workload)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/throughput_vs_clients.png", dpi=110)
    plt.close(fig)


def latency(runs, title, path):
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        points = [(p, us) for p, us in r["acquire"]["percentiles"] if p < 100]
        xs = [nines(p) for p, _ in points]
        ys = [max(us, 1) / 1000 for _, us in points]
        ax.plot(xs, ys, marker=".", label=r["target"])
    ticks = [0, 50, 90, 99, 99.9, 99.99]
    ax.set_xticks([nines(p) for p in ticks])
    ax.set_xticklabels([f"p{p:g}" for p in ticks])
    ax.set_yscale("log")
    ax.set_ylabel("acquire latency, ms")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def median_runs(runs, workload):
    """Per target, the matrix round with the median throughput (as in the tables)."""
    chosen = []
    for target in TARGETS:
        rounds = sorted(
            (r for r in runs if r["group"] == "matrix" and r["target"] == target and r["workload"] == workload),
            key=lambda r: r["throughput_per_s"],
        )
        if rounds:
            chosen.append(rounds[(len(rounds) - 1) // 2])
    return chosen


def main():
    results_path, out = sys.argv[1], sys.argv[2]
    with open(results_path) as f:
        runs = json.load(f)["runs"]
    throughput_vs_clients(runs, out)
    for w in WORKLOADS:
        latency(
            median_runs(runs, w),
            f"Acquire latency by percentile, {w} workload, closed loop",
            f"{out}/latency_{w}.png",
        )
    latency(
        [r for r in runs if r["group"] == "open"],
        "Acquire latency by percentile, open loop (spread), from intended start",
        f"{out}/latency_open.png",
    )


if __name__ == "__main__":
    main()
