#!/usr/bin/env bash
# Where a PostgreSQL job's cost goes: one run of the shared load generator
# against one jobq node on a fresh database, with the database's side measured
# over the same window (the CPU of every postgres process, commits and WAL
# syncs from pg_stat_database / pg_stat_wal). Prints one JSON object per job:
# jobs/s, CPU µs per job of jobq, of the load generator and of PostgreSQL,
# commits, WAL syncs and records per job, and the mean rows per statement.
#
#   scripts/bench-pg-profile.sh JOBQ LABEL [syncbench options, e.g. --fused]
#
# Environment: BENCH_TARGET [/tmp/jobq-bench-target] (where syncbench was
# built, see scripts/bench.sh), PG_URL [postgres://postgres@127.0.0.1:5432/postgres]
# (must be able to create databases; postgres processes must be local and run
# as user postgres), CLIENTS [64], WORKERS [8], OUT [/tmp/jobq-pg-profile].
set -euo pipefail
JOBQ=$1; LABEL=$2; shift 2
B=${BENCH_TARGET:-/tmp/jobq-bench-target}/release
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
O=${OUT:-/tmp/jobq-pg-profile}/$LABEL
mkdir -p "$O"
DB=jobq_profile_$$_$RANDOM
URL=${PG_URL%/*}/$DB
psql -q "$PG_URL" -c "create database $DB"
PORT=$($B/syncbench free-port)
"$JOBQ" serve --grpc-listen off --postgres-url "$URL" --listen "127.0.0.1:$PORT" >"$O/jobq.log" 2>&1 &
JP=$!
trap 'kill $JP 2>/dev/null || true; psql -q "$PG_URL" -c "drop database if exists $DB with (force)" >/dev/null' EXIT
$B/syncbench wait-port "127.0.0.1:$PORT" --timeout 30
# 2 s warm-up, then 10 s measured; the database is sampled over 9.5 s of them.
$B/syncbench --url "http://127.0.0.1:$PORT" --clients "${CLIENTS:-64}" --workers "${WORKERS:-8}" \
  --duration 10 --warmup 2 --payload-bytes 100 --long-poll 5 --server-pid $JP --label "$LABEL" "$@" \
  >"$O/result.json" 2>"$O/syncbench.err" &
LP=$!
sleep 2.2
pg_ticks() { local t=0 a b; for p in $(pgrep -u postgres); do read -r a b < <(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null || echo 0 0); t=$((t + a + b)); done; echo $t; }
pg_stats() { psql -Atq "$URL" -c "select xact_commit, w.wal_sync, w.wal_records from pg_stat_database, pg_stat_wal w where datname = current_database()"; }
busy() { head -1 /proc/stat | awk '{print $2+$3+$4+$7+$8}'; }
S0=$(pg_stats); T0=$(pg_ticks); C0=$(busy)
sleep 9.5
S1=$(pg_stats); T1=$(pg_ticks); C1=$(busy)
wait $LP
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^jobq_store_commit_batch_size_(sum|count)' >"$O/batch.txt" || true
python3 - "$O" "$S0" "$S1" "$T0" "$T1" "$C0" "$C1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
o, s0, s1, t0, t1, c0, c1, hz = sys.argv[1:]
hz, secs = int(hz), 9.5
s0 = [int(x) for x in s0.split('|')]; s1 = [int(x) for x in s1.split('|')]
r = json.load(open(o + '/result.json'))
jobs = r['jobs_per_s'] * secs
d = [b - a for a, b in zip(s0, s1)]
m = {}
for line in open(o + '/batch.txt'):
    m[line.split('{')[0].rsplit('_', 1)[-1]] = float(line.split()[-1])
out = {
    'label': r['label'], 'jobs_per_s': r['jobs_per_s'], 'p50_ms': r['p50_ms'], 'p99_ms': r['p99_ms'],
    'jobq_cpu_us_per_job': round(r['server_cpu_us_per_job'], 1),
    'loadgen_cpu_us_per_job': round(r['loadgen_cpu_s'] * 1e6 / (r['jobs_per_s'] * 10), 1),
    'postgres_cpu_us_per_job': round((int(t1) - int(t0)) / hz * 1e6 / jobs, 1),
    'machine_busy_cores': round((int(c1) - int(c0)) / hz / secs, 2),
    'commits_per_job': round(d[0] / jobs, 2), 'wal_syncs_per_job': round(d[1] / jobs, 2),
    'wal_records_per_job': round(d[2] / jobs, 1),
    'rows_per_statement': round(m['sum'] / m['count'], 2) if m.get('count') else None,
}
print(json.dumps(out))
PY
