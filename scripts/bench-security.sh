#!/usr/bin/env bash
# The cost of role tokens and of TLS: idealq (for the ratio), jobq with the
# memory store plain, with tokens, and with TLS, rounds interleaved so that
# slow phases of a noisy machine hit every case alike. The load comes from
# `jobq bench` (the shared syncbench sends no Authorization header and speaks
# no TLS). Writes results.jsonl (one `jobq bench --json` line per run, with
# the case and the server's CPU seconds added) and table.md to $OUT.
#
#   scripts/bench-security.sh
#   RUNS=5 DURATION=20 CASES='plain tokens' scripts/bench-security.sh
#
# Environment [defaults]: RUNS [3] DURATION [10] PAYLOAD [100] CLIENTS [64]
# WORKERS [8] LONG_POLL [5] CASES [idealq plain tokens tls]
# BENCH (required for case idealq): the directory of the load generator's Cargo project
# (syncbench and idealq; not part of this repository). OUT [/tmp/jobq-bench/security-<timestamp>]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
PAYLOAD=${PAYLOAD:-100}
CLIENTS=${CLIENTS:-64}
WORKERS=${WORKERS:-8}
LONG_POLL=${LONG_POLL:-5}
CASES=${CASES:-idealq plain tokens tls}
BENCH=${BENCH:-}
if [[ $CASES == *idealq* && ( -z $BENCH || ! -f $BENCH/Cargo.toml ) ]]; then
  echo "bench-security.sh: set BENCH to the directory of the syncbench/idealq Cargo project (got '${BENCH}')" >&2
  exit 2
fi
OUT=${OUT:-/tmp/jobq-bench/security-$(date +%Y%m%d-%H%M%S)}
export CARGO_TARGET_DIR=${BENCH_TARGET:-/tmp/jobq-bench-target}

if [[ $CASES == *idealq* ]]; then
  cargo build --release -q --manifest-path "$BENCH/Cargo.toml"
fi
(cd "$root" && CARGO_TARGET_DIR="$root/target" cargo build --release -q)
IDEALQ=$CARGO_TARGET_DIR/release/idealq
JOBQ=$root/target/release/jobq
mkdir -p "$OUT/logs" "$OUT/tls"
: >>"$OUT/results.jsonl"

# A private CA and a server certificate for 127.0.0.1.
if [[ $CASES == *tls* ]]; then
  (
    cd "$OUT/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
      -out ca.pem -days 2 -subj "/CN=bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
      -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile san.ext -out server.pem 2>/dev/null
  )
fi
CLIENT_TOKEN=bench-client-$RANDOM$RANDOM$RANDOM
WORKER_TOKEN=bench-worker-$RANDOM$RANDOM$RANDOM
ADMIN_TOKEN=bench-admin-$RANDOM$RANDOM$RANDOM

PID=""
stop() {
  if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi
}
trap stop EXIT
trap 'stop; exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_s() { # PID: user+system CPU seconds so far
  awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"
}
wait_up() { # URL [CA]
  for _ in $(seq 200); do
    if curl -sS -o /dev/null ${2:+--cacert "$2"} "$1/health" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "server at $1 did not come up" >&2
  return 1
}

for round in $(seq "$RUNS"); do
  for c in $CASES; do
    PORT=$(free_port)
    log="$OUT/logs/$c-$round.log"
    url="http://127.0.0.1:$PORT"
    ca=""
    token=""
    case $c in
      idealq) "$IDEALQ" --addr "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      plain) "$JOBQ" serve --storage memory --listen "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
      # Client and worker endpoints need their tokens; the bench's clients and
      # workers all send the admin token, which every endpoint accepts (the
      # check compares it with every configured token either way).
      tokens)
        "$JOBQ" serve --storage memory --listen "127.0.0.1:$PORT" \
          --client-token "$CLIENT_TOKEN" --worker-token "$WORKER_TOKEN" \
          --admin-token "$ADMIN_TOKEN" >"$log" 2>&1 &
        token=$ADMIN_TOKEN ;;
      tls)
        "$JOBQ" serve --storage memory --listen "127.0.0.1:$PORT" \
          --tls-cert "$OUT/tls/server.pem" --tls-key "$OUT/tls/server.key" >"$log" 2>&1 &
        url="https://127.0.0.1:$PORT"
        ca=$OUT/tls/ca.pem ;;
      *) echo "unknown case $c" >&2; exit 2 ;;
    esac
    PID=$!
    wait_up "$url" "$ca"
    before=$(cpu_s "$PID")
    line=$(JOBQ_TOKEN=$token "$JOBQ" bench --url "$url" ${ca:+--ca-cert "$ca"} \
      --clients "$CLIENTS" --workers "$WORKERS" --duration "$DURATION" \
      --payload-bytes "$PAYLOAD" --long-poll "$LONG_POLL" --json)
    after=$(cpu_s "$PID")
    stop
    echo "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r["case"], r["round"], r["server_cpu_s"] = sys.argv[1], int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3])
print(json.dumps(r))' "$c" "$round" "$before" "$after" | tee -a "$OUT/results.jsonl"
  done
done

python3 - "$OUT/results.jsonl" >"$OUT/table.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cases = list(dict.fromkeys(r["case"] for r in rows))
med = lambda xs: statistics.median(xs)
rate = {c: med([r["jobs_per_s"] for r in rows if r["case"] == c]) for c in cases}
print("| case | jobs/s median (min–max) | × idealq | × plain | p50 ms | p99 ms | server CPU µs/job | errors |")
print("|---|---|---|---|---|---|---|---|")
for c in cases:
    rs = [r for r in rows if r["case"] == c]
    js = [r["jobs_per_s"] for r in rs]
    cpu = med([r["server_cpu_s"] * 1e6 / max(r["jobs"], 1) for r in rs])
    ideal = f'{rate[c] / rate["idealq"]:.3f}' if "idealq" in rate else "–"
    plain = f'{rate[c] / rate["plain"]:.3f}' if "plain" in rate else "–"
    errs = sum(r["errors"] + r["mismatches"] for r in rs)
    print(f'| {c} | {rate[c]:.0f} ({min(js):.0f}–{max(js):.0f}) | {ideal} | {plain} | '
          f'{med([r["latency_ms"]["p50"] for r in rs]):.2f} | {med([r["latency_ms"]["p99"] for r in rs]):.2f} | '
          f'{cpu:.1f} | {errs} |')
PY
cat "$OUT/table.md"
