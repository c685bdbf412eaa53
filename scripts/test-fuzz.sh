#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis, from the server's own
# /openapi.json, against the real jobq binary (memory store, an ephemeral
# port): twice, without tokens and with a token for every role. Fails on any
# 5xx, any answer that does not match the document (status, content type,
# headers, body schema), a schema-violating request that is not refused with
# a 4xx, or a server that crashed or stopped answering /health. Bounded: a
# fixed number of examples per operation, a fixed seed, and a time limit per
# run. Schemathesis lives in a virtualenv at target/fuzz-venv (created once,
# then reused), pinned in scripts/fuzz/requirements.txt.
#
#   scripts/test-fuzz.sh                     # builds target/debug/jobq first
#   JOBQ_BIN=/path/to/jobq scripts/test-fuzz.sh
#   FUZZ_EXAMPLES=200 FUZZ_SEED=7 scripts/test-fuzz.sh   # a longer run
#
# Without python3 (>= 3.9) or its venv module it says so in one line and
# exits 0, unless CI=true: then that is a failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/target/fuzz-venv"
examples="${FUZZ_EXAMPLES:-20}"
seed="${FUZZ_SEED:-20261206}"
# Per run (without and with tokens): the whole script stays within ~3 minutes.
run_limit="${FUZZ_RUN_SECONDS:-75}"

missing() {
    if [ "${CI:-}" = "true" ]; then
        echo "test-fuzz: $1 (required under CI=true)" >&2
        exit 1
    fi
    echo "test-fuzz: skipped: $1"
    exit 0
}

py=$(command -v python3 || true)
[ -n "$py" ] || missing "python3 not found"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null ||
    missing "$py is older than Python 3.9 (or does not run); schemathesis needs 3.9 or newer"
"$py" -c 'import venv, ensurepip' 2>/dev/null || missing "python3 has no venv/ensurepip module (Debian: apt-get install python3-venv)"

if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    mkdir -p "$root/target"
    "$py" -m venv "$venv"
fi
echo "== pip install schemathesis (scripts/fuzz/requirements.txt)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/scripts/fuzz/requirements.txt"

if [ -z "${JOBQ_BIN:-}" ]; then
    echo "== cargo build --bin jobq"
    (cd "$root" && cargo build --locked --bin jobq)
    JOBQ_BIN="$root/target/debug/jobq"
fi
echo "== using $JOBQ_BIN"

work=$(mktemp -d)
server_pid=""
stop_server() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        # Bounded: the memory store shuts down at once.
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}
trap 'stop_server; rm -rf "$work"' EXIT

# Starts jobq on an ephemeral port; sets $base. Extra flags as arguments.
starts=0
start_server() {
    starts=$((starts + 1))
    log="$work/server-$starts.log"
    # A short default wait: a sync submit without `timeout` answers 202 soon
    # (the hooks shorten the waits a request asks for).
    "$JOBQ_BIN" serve --storage memory --listen 127.0.0.1:0 --grpc-listen off \
        --wait-timeout 0.05 --shutdown-grace 0 --log-format json "$@" >"$log" 2>&1 &
    server_pid=$!
    base=""
    for _ in $(seq 100); do
        addr=$(grep -o '"listen":"[0-9.:]*"' "$log" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
        if [ -n "$addr" ]; then
            base="http://$addr"
            break
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$base" ]; then
        echo "test-fuzz: jobq did not start:" >&2
        cat "$log" >&2
        exit 1
    fi
}

# The server must have survived the run and still answer /health.
check_alive() {
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "test-fuzz: jobq exited during the run:" >&2
        tail -50 "$log" >&2
        exit 1
    fi
    if ! "$venv/bin/python" - "$base" <<'EOF'; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/health", timeout=5) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
        echo "test-fuzz: jobq no longer answers /health with 200" >&2
        exit 1
    fi
    if grep -q '"level":"ERROR"\|panicked' "$log"; then
        echo "test-fuzz: jobq logged an error or a panic:" >&2
        grep '"level":"ERROR"\|panicked' "$log" | head -20 >&2
        exit 1
    fi
}

# One schemathesis run against $base; extra arguments go to schemathesis.
fuzz() {
    # --exclude-path: the dashboard's event stream never ends by design.
    # Run from $work: schemathesis and Hypothesis keep caches in the current
    # directory, and none belong in the source tree.
    (cd "$work" && PYTHONPATH="$root/scripts/fuzz" SCHEMATHESIS_HOOKS=jobq_hooks \
        timeout --kill-after=10 "$((run_limit + 30))" \
        "$venv/bin/schemathesis" --config-file "$root/scripts/fuzz/schemathesis.toml" \
        run "$base/openapi.json" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance \
        --phases examples,coverage,fuzzing,stateful \
        --max-examples "$examples" --seed "$seed" \
        --max-time "$run_limit" \
        --request-timeout 10 \
        --wait-for-schema 10 \
        --exclude-path /api/admin/events \
        --workers 1 \
        --suppress-health-check all \
        --no-color \
        "$@")
}

echo "== schemathesis, no tokens (examples per operation: $examples, seed: $seed)"
start_server
fuzz
check_alive
stop_server

echo "== schemathesis, a token for every role (requests carry the admin token)"
admin="fuzz-admin-$RANDOM$RANDOM$RANDOM-token"
start_server --client-token "fuzz-client-$RANDOM$RANDOM$RANDOM-token" \
    --worker-token "fuzz-worker-$RANDOM$RANDOM$RANDOM-token" --admin-token "$admin"
fuzz -H "Authorization: Bearer $admin"
check_alive
stop_server
echo "== fuzzing passed"
