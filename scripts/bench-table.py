#!/usr/bin/env python3
"""Ratio table of a scripts/bench.sh run, with the targets of the performance
work (docs/BENCHMARKS.md) checked against it.

    scripts/bench-table.py OUT/results.jsonl [--latency OUT2/results.jsonl]

Every ratio is to idealq measured in the same run (`idealq`, and
`idealq-fused` for the two-request protocol): absolute numbers drift with the
machine, ratios of one run do not. Medians over the rounds of each case.
"""

import argparse
import json
import statistics
import sys

# case: (reference, minimum ratio of jobs/s). "Plain" cases are measured
# against idealq; fused ones against plain idealq as the issue states them,
# with the ratio to idealq-fused shown beside.
THROUGHPUT_TARGETS = {
    "memory": ("idealq", 0.9),
    "memory-fused": ("idealq", 1.3),
    "embedded": ("idealq", 0.5),
    "embedded-fused": ("idealq", 0.7),
    "embedded-normal": ("idealq", 0.7),
    "postgres": ("idealq", 0.2),
}
# The durable default's CPU per job, at most this many times memory's.
CPU_TARGET = ("embedded", "memory", 1.3)
# p50 latency added over idealq with one client and one worker, in ms.
LATENCY_TARGETS = {"memory": 0.050}


def load(path):
    groups = {}
    with open(path) as f:
        for line in f:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if isinstance(v, dict) and "jobs_per_s" in v:
                groups.setdefault(v.get("label") or v.get("bench", "?"), []).append(v)
    return groups


def med(runs, key):
    xs = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(xs) if xs else None


def f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def throughput(groups):
    jps = {c: med(r, "jobs_per_s") for c, r in groups.items()}
    cpu = {c: med(r, "server_cpu_us_per_job") for c, r in groups.items()}
    ideal, ideal_f = jps.get("idealq"), jps.get("idealq-fused")
    print("| case | runs | jobs/s | × idealq | × idealq-fused | p50 ms | p99 ms | server CPU µs/job | target | met |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = []
    for case, runs in groups.items():
        r = jps[case] / ideal if ideal and jps[case] is not None else None
        rf = jps[case] / ideal_f if ideal_f and jps[case] is not None else None
        target, met = "", ""
        if case in THROUGHPUT_TARGETS:
            ref, need = THROUGHPUT_TARGETS[case]
            target = f"≥ {need} × {ref}"
            ok = r is not None and r >= need
            met = "yes" if ok else "no"
            if not ok:
                failed.append(case)
        if case == CPU_TARGET[0] and cpu.get(CPU_TARGET[1]) and cpu[case] is not None:
            x = cpu[case] / cpu[CPU_TARGET[1]]
            ok = x <= CPU_TARGET[2]
            target += f"; CPU {x:.2f}× memory (≤ {CPU_TARGET[2]})"
            met += "; " + ("yes" if ok else "no")
        print(
            f"| {case} | {len(runs)} | {f(jps[case], 0)} | {f(r)} | {f(rf)} | "
            f"{f(med(runs, 'p50_ms'), 3)} | {f(med(runs, 'p99_ms'), 3)} | {f(cpu[case], 1)} | {target} | {met} |"
        )
    return failed


def latency(groups):
    p50 = {c: med(r, "p50_ms") for c, r in groups.items()}
    base = p50.get("idealq")
    print("| case (1 client, 1 worker) | runs | p50 ms | p99 ms | p50 added over idealq µs | target | met |")
    print("|---|---|---|---|---|---|---|")
    failed = []
    for case, runs in groups.items():
        added = (p50[case] - base) * 1000 if base is not None and p50[case] is not None else None
        target, met = "", ""
        if case in LATENCY_TARGETS:
            target = f"≤ {LATENCY_TARGETS[case] * 1000:.0f} µs"
            ok = added is not None and added <= LATENCY_TARGETS[case] * 1000
            met = "yes" if ok else "no"
            if not ok:
                failed.append(case + " (latency)")
        print(f"| {case} | {len(runs)} | {f(p50[case], 3)} | {f(med(runs, 'p99_ms'), 3)} | {f(added, 0)} | {target} | {met} |")
    return failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--latency")
    a = ap.parse_args()
    failed = throughput(load(a.results))
    if a.latency:
        print()
        failed += latency(load(a.latency))
    print()
    print("targets not met: " + (", ".join(failed) if failed else "none"))


if __name__ == "__main__":
    sys.exit(main())
