#!/usr/bin/env bash
# Where the server's CPU goes per job, under the bench load (64 clients / 8
# workers / 100 B, long-poll 5 s): user and kernel time per thread group, the
# embedded store's commits and fsyncs per job (from /metrics), and with
# --postgres-url the PostgreSQL server's own CPU. One server, one load; run it
# for two configurations to compare them (docs/BENCHMARKS.md, session 8).
#
#   BENCH=… scripts/bench-breakdown.sh --storage memory
#   BENCH=… scripts/bench-breakdown.sh                       # embedded, --sync full
#   BENCH=… FUSED=1 scripts/bench-breakdown.sh --sync normal
#   BENCH=… JOBQ=/path/to/other/jobq scripts/bench-breakdown.sh --storage memory
#
# BENCH (required): the load generator's Cargo project. JOBQ [./target/release/jobq]
# CLIENTS [64] WORKERS [8] DURATION [8] FUSED [unset]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
: "${BENCH:?set BENCH to the directory of the load generator (see docs/BENCHMARKS.md)}"
target=${CARGO_TARGET_DIR:-/tmp/jobq-bench-target}
CARGO_TARGET_DIR=$target cargo build --release -q --manifest-path "$BENCH/Cargo.toml" --bin syncbench
sb=$target/release/syncbench
jobq=${JOBQ:-$root/target/release/jobq}
port=$("$sb" free-port)
data=$(mktemp -d)
"$jobq" serve --listen "127.0.0.1:$port" --data-dir "$data" "$@" >"$data/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
"$sb" wait-port "127.0.0.1:$port" --timeout 30 >/dev/null
load() {
  "$sb" --url "http://127.0.0.1:$port" --clients "${CLIENTS:-64}" --workers "${WORKERS:-8}" \
    --duration "$1" --warmup 0 --payload-bytes 100 --long-poll 5 ${FUSED:+--fused} 2>/dev/null | tail -1
}
completed() {
  curl -fs "http://127.0.0.1:$port/api/admin/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["completed"])'
}
# Sum and count of the embedded store's fsync histogram, and its commits (0 0 0 elsewhere).
store() {
  (curl -fs "http://127.0.0.1:$port/metrics" || true) | awk '
    /^jobq_store_sync_latency_seconds_count/ {n=$2} /^jobq_store_sync_latency_seconds_sum/ {s=$2}
    /^jobq_store_commit_batch_size_count/ {c=$2} END {print n+0, s+0, c+0}'
}
load 2 >/dev/null # warm-up
before=$(completed)
read -r n0 s0 c0 < <(store)
python3 "$root/scripts/cpu-breakdown.py" snap "$pid" "$data/cpu.json"
result=$(load "${DURATION:-8}")
jobs=$(( $(completed) - before ))
read -r n1 s1 c1 < <(store)
echo "== $(basename "$jobq") serve $*${FUSED:+ (fused)}: $jobs jobs, load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("  %.0f jobs/s, p50 %s ms" % (d["jobs_per_s"], d["p50_ms"]))' "$result"
python3 "$root/scripts/cpu-breakdown.py" diff "$pid" "$data/cpu.json" "$jobs"
python3 - "$n0" "$s0" "$c0" "$n1" "$s1" "$c1" "$jobs" <<'PY'
import sys
n0, s0, c0, n1, s1, c1, jobs = map(float, sys.argv[1:])
if c1 > c0:
    n = n1 - n0
    mean = f", {1e6 * (s1 - s0) / n:.0f} µs each" if n else ""
    print(f"  commits {(c1 - c0) / jobs:.2f}/job, fsyncs {n / jobs:.2f}/job{mean}")
PY
