#!/usr/bin/env bash
# The embedded store holding N [1,000,000] pending 1 KiB jobs (docs/BENCHMARKS.md,
# "1,000,000 pending jobs"): fills a data dir with them in queue `backlog`, which no
# worker polls (scripts/gen-pending.py), starts a release jobq on it (with a cold
# page cache when this user may drop it) and reports the time until /health answers
# and the RSS holding them; then runs the load generator (64 clients / 8 workers /
# 100 B on queue `default`) against it and against an empty store, rounds
# interleaved, and prints jobs/s and server CPU per job of each. Both servers run
# with --max-queued N + 100,000 (the default cap, 1,000,000 pending jobs in all
# queues together, would refuse every submit of the load).
#
#   BENCH=… scripts/bench-pending.sh            # N, RUNS [3], DURATION [8]
#
# BENCH (required): the load generator's Cargo project (builds syncbench).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
: "${BENCH:?set BENCH to the directory of the load generator (see docs/BENCHMARKS.md)}"
N=${N:-1000000}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
cd "$root"
cargo build --release -q --bin jobq
target=${CARGO_TARGET_DIR:-/tmp/jobq-bench-target}
CARGO_TARGET_DIR=$target cargo build --release -q --manifest-path "$BENCH/Cargo.toml" --bin syncbench
sb=$target/release/syncbench
jobq=$root/target/release/jobq
full=$(mktemp -d)
empty=$(mktemp -d)
pids=()
# (|| true: under set -e a failed kill, of a server already stopped, would end the trap.)
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$full" "$empty"' EXIT

start() { # DIR PORT: starts jobq, sets $started
  # --max-queued counts every queue: the backlog must leave room for the load.
  "$jobq" serve --data-dir "$1" --listen "127.0.0.1:$2" --grpc-listen off \
    --max-queued $((N + 100000)) >>"$1/server.log" 2>&1 &
  started=$!
  pids+=("$started")
  "$sb" wait-port "127.0.0.1:$2" --timeout 120 >/dev/null
  until curl -fs "http://127.0.0.1:$2/health" >/dev/null; do sleep 0.01; done
}
rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

port=$("$sb" free-port)
start "$full" "$port"             # makes the schema
kill "$started"; wait "$started" 2>/dev/null || true
echo "== filling $N pending jobs"
python3 scripts/gen-pending.py "$full" "$N" backlog
sync
cold=warm
if echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then cold=cold; fi
t0=$(date +%s.%N)
start "$full" "$port"
full_pid=$started
t1=$(date +%s.%N)
echo "== restart with $N pending ($cold page cache): ready in $(python3 -c "print(round($t1 - $t0, 2))") s, RSS $(rss_mib "$full_pid") MiB"
eport=$("$sb" free-port)
start "$empty" "$eport"
empty_pid=$started

for r in $(seq "$RUNS"); do
  for c in empty full; do
    if [ $c = full ]; then p=$port; pid=$full_pid; else p=$eport; pid=$empty_pid; fi
    "$sb" --url "http://127.0.0.1:$p" --clients 64 --workers 8 --duration "$DURATION" --warmup 2 \
      --payload-bytes 100 --long-poll 5 --server-pid "$pid" --label "$c" 2>/dev/null |
      python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print("round %s %-6s %8.0f jobs/s  server CPU %6.1f us/job  errors %d"
      % (sys.argv[1], d["label"], d["jobs_per_s"], d["server_cpu_us_per_job"], d["errors"]))' "$r"
  done
done
echo "== RSS after the runs: full $(rss_mib "$full_pid") MiB, empty $(rss_mib "$empty_pid") MiB"
curl -fs "http://127.0.0.1:$port/api/admin/stats" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("== full store still holds", d["queues"].get("backlog"), "in queue backlog")'
