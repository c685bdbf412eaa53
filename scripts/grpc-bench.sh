#!/usr/bin/env bash
# gRPC Work-stream workers vs HTTP long-polling workers, same load, rounds
# interleaved: a fresh `jobq serve --storage memory` per run (HTTP and gRPC
# on ephemeral loopback ports), loaded by `jobq bench` (clients submit over
# HTTP /api/submit in both cases) with the server's CPU per job read from
# /proc/PID/stat. Prints one JSON report per run and a summary.
#
#   scripts/grpc-bench.sh
#   RUNS=5 CREDITS=4 scripts/grpc-bench.sh
#
# Environment [defaults]: RUNS [3] DURATION [10] CLIENTS [64] WORKERS [8]
# PAYLOAD [100] LONG_POLL [5] CREDITS [1] (jobs each stream holds)
# CASES ['http grpc'] OUT [/tmp/jobq-grpc-bench/<timestamp>]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
WORKERS=${WORKERS:-8}
PAYLOAD=${PAYLOAD:-100}
LONG_POLL=${LONG_POLL:-5}
CREDITS=${CREDITS:-1}
CASES=${CASES:-http grpc}
OUT=${OUT:-/tmp/jobq-grpc-bench/$(date +%Y%m%d-%H%M%S)}
(cd "$root" && cargo build --release -q)
JOBQ=$root/target/release/jobq
mkdir -p "$OUT"
PID=""
stop() { if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap stop EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for round in $(seq 1 "$RUNS"); do
  for c in $CASES; do
    http=$(free_port); grpc=$(free_port)
    $JOBQ serve --storage memory --listen "127.0.0.1:$http" --grpc-listen "127.0.0.1:$grpc" \
      >"$OUT/$c.$round.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$http/health" >/dev/null && break
      sleep 0.1
    done
    extra=()
    [[ $c == grpc ]] && extra=(--grpc --grpc-url "http://127.0.0.1:$grpc" --credits "$CREDITS")
    $JOBQ bench --url "http://127.0.0.1:$http" --clients "$CLIENTS" --workers "$WORKERS" \
      --duration "$DURATION" --payload-bytes "$PAYLOAD" --long-poll "$LONG_POLL" \
      --server-pid "$PID" --json "${extra[@]}" | tee -a "$OUT/results.jsonl"
    stop
  done
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys, statistics
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in runs:
    by.setdefault(r["worker_transport"], []).append(r)
print("| workers | runs | jobs/s (median, range) | p50 ms | p99 ms | server CPU µs/job |")
print("|---|---|---|---|---|---|")
med = {}
for t, rs in by.items():
    rate = [r["jobs_per_s"] for r in rs]
    med[t] = statistics.median(rate)
    print(f"| {t} | {len(rs)} | {med[t]:.0f} ({min(rate):.0f}–{max(rate):.0f}) "
          f"| {statistics.median(r['latency_ms']['p50'] for r in rs):.2f} "
          f"| {statistics.median(r['latency_ms']['p99'] for r in rs):.2f} "
          f"| {statistics.median(r['server_cpu_us_per_job'] or 0 for r in rs):.1f} |")
if "http" in med and "grpc-stream" in med:
    print(f"\nstream / HTTP jobs/s: {med['grpc-stream'] / med['http']:.2f}x")
PY
echo "results in $OUT"
