#!/usr/bin/env bash
# Side-by-side benchmark of jobq against idealq (the protocol's ideal server)
# with the shared load generator, rounds interleaved so that slow phases of a
# noisy machine hit every case alike. Writes results.jsonl and table.md to $OUT.
#
#   scripts/bench.sh                 # idealq, jobq memory, jobq embedded (sync full and normal)
#   CASES='idealq memory' RUNS=5 scripts/bench.sh
#
# Environment (defaults in brackets): RUNS [3] DURATION [10] WARMUP [2]
# PAYLOAD [100] CLIENTS [64] WORKERS [8] LONG_POLL [5]
# BENCH (required): the directory of the load generator's Cargo project, which
# builds the binaries syncbench and idealq; it is not part of this repository.
# OUT [/tmp/jobq-bench/<timestamp>] CASES [idealq memory embedded embedded-normal]
# PREFILL [0]: pending jobs stored (in a queue no worker polls) before each jobq run.
# Case embedded-backlog is the embedded store with BACKLOG [100000] such jobs stored first,
# to compare with case embedded in the same run.
# Cases postgres and postgres-2nodes need PG_URL [postgres://postgres@127.0.0.1:5432/postgres]:
# each run creates a fresh database and drops it. postgres-2nodes runs two nodes on one
# database and two load generators at once, each with half the clients and workers against
# its own node (labels postgres-2nodes-a and -b; the pair's throughput is their sum).
# Cases memory-metrics-off and embedded-metrics-off run with --metrics off; memory-dashboard and
# embedded-dashboard have a dashboard stream (GET /api/admin/events) open during the run,
# read by curl (a headless browser would take a core of this 2-core machine).
# Every case also exists with the suffix -fused (idealq-fused, memory-fused, embedded-fused, ...):
# the same server, with workers that complete and take the next job in one request
# (`syncbench --fused`, `POST /api/worker/complete/{id}?next=1`), two requests per job.
# Cases base-memory, base-embedded, base-embedded-normal and base-postgres run those cases with BASE_JOBQ, another
# jobq binary (say, built from an older commit with
#   git worktree add /tmp/jobq-base <commit> && cargo build --release --manifest-path /tmp/jobq-base/Cargo.toml),
# to compare two versions in one run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PAYLOAD=${PAYLOAD:-100}
CLIENTS=${CLIENTS:-64}
WORKERS=${WORKERS:-8}
LONG_POLL=${LONG_POLL:-5}
PREFILL=${PREFILL:-0}
BENCH=${BENCH:-}
if [[ -z $BENCH || ! -f $BENCH/Cargo.toml ]]; then
  echo "bench.sh: set BENCH to the directory of the syncbench/idealq Cargo project (got '${BENCH}')" >&2
  exit 2
fi
OUT=${OUT:-/tmp/jobq-bench/$(date +%Y%m%d-%H%M%S)}
CASES=${CASES:-idealq memory embedded embedded-normal}
export CARGO_TARGET_DIR=${BENCH_TARGET:-/tmp/jobq-bench-target}

cargo build --release -q --manifest-path "$BENCH/Cargo.toml"
(cd "$root" && CARGO_TARGET_DIR="$root/target" cargo build --release -q)
B=$CARGO_TARGET_DIR/release
JOBQ=$root/target/release/jobq
mkdir -p "$OUT/logs"
: >>"$OUT/results.jsonl"

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PID=""
PID2=""
DIR=""
DB=""
SSE=""
stop() {
  if [[ -n $SSE ]]; then kill "$SSE" 2>/dev/null || true; wait "$SSE" 2>/dev/null || true; SSE=""; fi
  if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi
  if [[ -n $PID2 ]]; then kill "$PID2" 2>/dev/null || true; wait "$PID2" 2>/dev/null || true; PID2=""; fi
  if [[ -n $DIR ]]; then rm -rf "$DIR"; DIR=""; fi
  if [[ -n $DB ]]; then psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS $DB" >/dev/null; DB=""; fi
}
newdb() { # creates a fresh database, prints its URL
  DB="jobq_bench_$$_$RANDOM"
  psql -q "$PG_URL" -c "CREATE DATABASE $DB" >/dev/null
  echo "${PG_URL%/*}/$DB"
}
load() { # URL PID LABEL CLIENTS WORKERS
  $B/syncbench --url "$1" --clients "$4" --workers "$5" "${fused[@]}" \
    --duration "$DURATION" --warmup "$WARMUP" --payload-bytes "$PAYLOAD" \
    --long-poll "$LONG_POLL" --server-pid "$2" --label "$3"
}
trap stop EXIT
trap 'stop; exit 130' INT TERM

prefill() { # PORT N: N pending jobs in queue "backlog" (1 KiB each), 64 at a time
  local port=$1 n=$2
  [[ $n -gt 0 ]] || return 0
  python3 - "$port" "$n" <<'PY'
import sys, http.client, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
body = b'{"pad":"' + b'x' * 1000 + b'"}'
def run(k):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(k):
        c.request("POST", "/api/jobs?queue=backlog", body)
        r = c.getresponse(); r.read()
        assert r.status == 202, r.status
threads = [threading.Thread(target=run, args=(n // 64 + (1 if i < n % 64 else 0),)) for i in range(64)]
[t.start() for t in threads]; [t.join() for t in threads]
PY
}

for round in $(seq 1 "$RUNS"); do
  for c in $CASES; do
    PORT=$($B/syncbench free-port)
    DIR=$(mktemp -d /tmp/jobq-bench-data.XXXXXX)
    log="$OUT/logs/$c.$round.log"
    fused=()
    server=$c
    if [[ $c == *-fused ]]; then fused=(--fused); server=${c%-fused}; fi
    case $server in
      idealq) $B/idealq --addr "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      memory) $JOBQ serve --grpc-listen off --storage memory --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      embedded) $JOBQ serve --grpc-listen off --data-dir "$DIR" --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      embedded-normal) $JOBQ serve --grpc-listen off --data-dir "$DIR" --sync normal --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      embedded-backlog) $JOBQ serve --grpc-listen off --data-dir "$DIR" --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      memory-metrics-off) $JOBQ serve --grpc-listen off --storage memory --metrics off --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      embedded-metrics-off) $JOBQ serve --grpc-listen off --data-dir "$DIR" --metrics off --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      memory-dashboard) $JOBQ serve --grpc-listen off --storage memory --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      embedded-dashboard) $JOBQ serve --grpc-listen off --data-dir "$DIR" --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      base-memory) ${BASE_JOBQ:?set BASE_JOBQ} serve --storage memory --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      base-embedded) ${BASE_JOBQ:?set BASE_JOBQ} serve --data-dir "$DIR" --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      base-embedded-normal) ${BASE_JOBQ:?set BASE_JOBQ} serve --data-dir "$DIR" --sync normal --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      base-postgres) url=$(newdb); ${BASE_JOBQ:?set BASE_JOBQ} serve --postgres-url "$url" --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      postgres) url=$(newdb); $JOBQ serve --grpc-listen off --postgres-url "$url" --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      postgres-2nodes)
        url=$(newdb)
        $JOBQ serve --grpc-listen off --postgres-url "$url" --listen "127.0.0.1:$PORT" >"$log" 2>&1 &
        PID2=$!
        $B/syncbench wait-port "127.0.0.1:$PORT" --timeout 30
        PORT2=$($B/syncbench free-port)
        $JOBQ serve --grpc-listen off --postgres-url "$url" --listen "127.0.0.1:$PORT2" >"$log.b" 2>&1 &
        ;;
      *) echo "unknown case $c" >&2; exit 2 ;;
    esac
    PID=$!
    $B/syncbench wait-port "127.0.0.1:$PORT" --timeout 30
    label=$c
    if [[ $server == *-dashboard ]]; then
      curl -sN "http://127.0.0.1:$PORT/api/admin/events" >"$OUT/logs/$c.$round.events" 2>&1 &
      SSE=$!
    fi
    if [[ $server == embedded-backlog ]]; then
      prefill "$PORT" "${BACKLOG:-100000}"
    elif [[ $server != idealq && $PREFILL -gt 0 ]]; then
      prefill "$PORT" "$PREFILL"
      label="$c-prefill$PREFILL"
    fi
    if [[ $server == postgres-2nodes ]]; then
      $B/syncbench wait-port "127.0.0.1:$PORT2" --timeout 30
      load "http://127.0.0.1:$PORT" "$PID2" "$label-a" $((CLIENTS / 2)) $((WORKERS / 2)) >>"$OUT/results.jsonl" 2>>"$log" &
      LA=$!
      load "http://127.0.0.1:$PORT2" "$PID" "$label-b" $((CLIENTS / 2)) $((WORKERS / 2)) >>"$OUT/results.jsonl" 2>>"$log.b"
      wait $LA
    else
      load "http://127.0.0.1:$PORT" "$PID" "$label" "$CLIENTS" "$WORKERS" >>"$OUT/results.jsonl" 2>>"$log"
    fi
    stop
  done
done
$B/syncbench summarize "$OUT/results.jsonl" | tee "$OUT/table.md"
echo "results in $OUT"
