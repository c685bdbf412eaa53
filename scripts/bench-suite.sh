#!/usr/bin/env bash
# The whole benchmark table of docs/BENCHMARKS.md in one command:
#   BENCH=<directory of the syncbench/idealq Cargo project> scripts/bench-suite.sh
# 1. throughput, 64 clients / 8 workers / 100 B: idealq and every store, plain
#    (three requests per job) and fused (two: complete-and-take-next), against
#    idealq in the same run, rounds interleaved (scripts/bench.sh);
# 2. latency, 1 client / 1 worker: idealq, memory, embedded;
# 3. the broker core's micro-benchmarks (cargo bench, criterion).
# Then the ratio table with the targets checked (scripts/bench-table.py).
# About 25 minutes with the defaults (RUNS=3, DURATION=10). SKIP_MICRO=1 skips 3;
# CASES and LATENCY_CASES replace the case lists. PostgreSQL cases need PG_URL
# (see scripts/bench.sh); they are left out when no server answers there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/jobq-bench/suite-$(date +%Y%m%d-%H%M%S)}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
pg=""
if command -v psql >/dev/null && psql -q "$PG_URL" -c 'select 1' >/dev/null 2>&1; then
  pg="postgres postgres-fused"
else
  echo "bench-suite: no PostgreSQL at $PG_URL; its cases are left out" >&2
fi
CASES=${CASES:-idealq idealq-fused memory memory-fused embedded embedded-fused embedded-normal embedded-normal-fused $pg}
LATENCY_CASES=${LATENCY_CASES:-idealq memory embedded}

OUT=$OUT/throughput CASES=$CASES "$root/scripts/bench.sh"
OUT=$OUT/latency CASES=$LATENCY_CASES CLIENTS=1 WORKERS=1 "$root/scripts/bench.sh"
if [[ -z ${SKIP_MICRO:-} ]]; then
  (cd "$root" && cargo bench --bench broker -- --noplot) | tee "$OUT/micro.txt"
fi
python3 "$root/scripts/bench-table.py" "$OUT/throughput/results.jsonl" \
  --latency "$OUT/latency/results.jsonl" | tee "$OUT/table.md"
echo "suite results in $OUT"
