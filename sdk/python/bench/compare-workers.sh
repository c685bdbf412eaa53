#!/usr/bin/env bash
# Worker benchmark: the Python SDK's echo worker (concurrency 1 and 8) against
# `jobq worker --exec cat` and the Rust client's echo worker
# (examples/echo_worker.rs), on one jobq server (memory store), with the load
# of syncbench's synchronous clients (--no-workers: the worker under test is
# the only one). syncbench's own echo workers are the reference: a worker
# that does nothing but the HTTP calls; bench/bare_httpx_worker.py, a bare
# httpx poll/complete loop (async and blocking), is the floor for Python.
# The worker process's CPU time is reported as syncbench's "aux" CPU.
#
#   sdk/python/bench/compare-workers.sh            # from the repository root
#   DURATION=10 ROUNDS=3 sdk/python/bench/compare-workers.sh
#
# Needs: target/release/jobq, target/release/examples/echo_worker
# (cargo build --release --bin jobq --example echo_worker), syncbench
# ($SYNCBENCH, default /tmp/jobq-bench-target/release/syncbench; see the load
# generator's own README), a python with the SDK installed ($PYTHON, default
# target/py-venv/bin/python). Writes JSON lines to $OUT/results.jsonl.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-1}
PAYLOAD=${PAYLOAD:-100}
SYNCBENCH=${SYNCBENCH:-/tmp/jobq-bench-target/release/syncbench}
PYTHON=${PYTHON:-$root/target/py-venv/bin/python}
OUT=${OUT:-/tmp/jobq-worker-bench/$(date +%Y%m%d-%H%M%S)}
J=$root/target/release/jobq
RUST_WORKER=$root/target/release/examples/echo_worker
mkdir -p "$OUT"

port=$("$SYNCBENCH" free-port)
url=http://127.0.0.1:$port
"$J" serve --storage memory --listen "127.0.0.1:$port" 2>"$OUT/server.log" &
server=$!
worker=""
cleanup() {
    [ -n "$worker" ] && kill "$worker" 2>/dev/null || true
    kill "$server" 2>/dev/null || true
}
trap cleanup EXIT
"$SYNCBENCH" wait-port "127.0.0.1:$port" --timeout 10

# case LABEL CONCURRENCY COMMAND...: start the worker, load it, stop it.
case_() {
    local label=$1 conc=$2
    shift 2
    if [ "$1" != "-" ]; then
        JOBQ_URL=$url "$@" >"$OUT/$label.log" 2>&1 &
        worker=$!
        sleep 1 # the worker is up and polling
        workers=(--no-workers --aux-pid "$worker")
    else
        workers=(--workers "$conc" --long-poll 5)
    fi
    timeout $((DURATION + WARMUP + 30)) "$SYNCBENCH" --url "$url" --clients "$conc" "${workers[@]}" \
        --duration "$DURATION" --warmup "$WARMUP" --payload-bytes "$PAYLOAD" \
        --server-pid "$server" --label "$label" >>"$OUT/results.jsonl" 2>>"$OUT/syncbench.log"
    if [ -n "$worker" ]; then
        kill -TERM "$worker"
        wait "$worker" || true
        worker=""
    fi
}

bare="$root/sdk/python/bench/bare_httpx_worker.py"
for _ in $(seq "$ROUNDS"); do
    case_ bare-httpx-async-c1 1 "$PYTHON" "$bare" async "$url" $((DURATION + WARMUP + 10))
    case_ bare-httpx-sync-c1 1 "$PYTHON" "$bare" sync "$url" $((DURATION + WARMUP + 10))
    for c in 1 8; do
        case_ "syncbench-workers-c$c" "$c" -
        case_ "python-c$c" "$c" "$PYTHON" "$root/sdk/python/examples/echo_worker.py" "$c"
        case_ "exec-cat-c$c" "$c" "$J" worker --exec cat --concurrency "$c" --long-poll 5
        case_ "rust-client-c$c" "$c" "$RUST_WORKER" "$c"
    done
done
"$SYNCBENCH" summarize "$OUT/results.jsonl" | tee "$OUT/table.md"
echo "results in $OUT"
