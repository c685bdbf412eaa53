#!/usr/bin/env bash
# Instructions per job, counted by valgrind's callgrind: repeatable for the
# same binary and load whatever else the machine is doing (the wall-clock
# benchmarks of bench.sh are not). Runs a jobq binary under callgrind, zeroes
# the counters once it answers, runs the shared load generator (8 clients /
# 2 workers, 5 s, 100 B), dumps the profile and prints instructions (and, with
# CACHE=1, simulated L1 misses) per completed job. Compare two binaries, then
# their profiles function by function with scripts/callgrind-diff.py.
#
#   BENCH=… scripts/bench-callgrind.sh NAME [BINARY] [SERVE FLAGS...]
#   BENCH=… scripts/bench-callgrind.sh main ./target/release/jobq --storage memory
#   BENCH=… FUSED=1 CACHE=1 scripts/bench-callgrind.sh base /path/to/old/jobq --storage memory
#
# BENCH (required): the load generator's Cargo project (builds syncbench).
# OUT [/tmp/jobq-callgrind]: where NAME.callgrind (the profile of the load) and NAME.log go.
# CLIENTS [8] WORKERS [2] DURATION [5] FUSED [unset]: the load.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
: "${BENCH:?set BENCH to the directory of the load generator (see docs/BENCHMARKS.md)}"
name=${1:?NAME}; shift
bin=${1:-$root/target/release/jobq}; shift || true
OUT=${OUT:-/tmp/jobq-callgrind}
mkdir -p "$OUT"
target=${CARGO_TARGET_DIR:-/tmp/jobq-bench-target}
CARGO_TARGET_DIR=$target cargo build --release -q --manifest-path "$BENCH/Cargo.toml" --bin syncbench
sb=$target/release/syncbench
port=$("$sb" free-port)
data=$(mktemp -d)
cache=()
[ -n "${CACHE:-}" ] && cache=(--cache-sim=yes)
rm -f "$OUT/$name".out*
valgrind --tool=callgrind --dump-instr=no "${cache[@]}" --callgrind-out-file="$OUT/$name.out" \
  "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" "$@" >"$OUT/$name.log" 2>&1 &
vg=$!
trap 'kill "$vg" 2>/dev/null || true; wait "$vg" 2>/dev/null || true; rm -rf "$data"' EXIT
"$sb" wait-port "127.0.0.1:$port" --timeout 120 >/dev/null
completed() {
  curl -fs "http://127.0.0.1:$port/api/admin/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["completed"])'
}
before=$(completed)
callgrind_control -z "$vg" >/dev/null
"$sb" --url "http://127.0.0.1:$port" --clients "${CLIENTS:-8}" --workers "${WORKERS:-2}" \
  --duration "${DURATION:-5}" --warmup 0 --payload-bytes 100 --long-poll 5 ${FUSED:+--fused} >/dev/null 2>&1
callgrind_control -d "$vg" >/dev/null
jobs=$(( $(completed) - before ))
profile=$(ls -t "$OUT/$name".out.* | head -1)
# (Not NAME.out: valgrind writes its own last dump there when the server stops.)
mv "$profile" "$OUT/$name.callgrind"
python3 - "$OUT/$name.callgrind" "$jobs" "$name" <<'PY'
import sys
path, jobs, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
events = totals = None
for line in open(path, errors="replace"):
    if line.startswith("events:"):
        events = line.split()[1:]
    elif line.startswith("summary:"):
        totals = [int(x) for x in line.split()[1:]]
per = {e: t / max(jobs, 1) for e, t in zip(events, totals)}
extra = "".join(f"  {e} {per[e]:.0f}" for e in ("I1mr", "D1mr", "D1mw") if e in per)
print(f"{name}: {jobs} jobs, {per['Ir']:.0f} instructions per job{extra}  ({path})")
PY
