#!/usr/bin/env bash
# Memory of ended jobs kept for --result-ttl (docs/BENCHMARKS.md, "Ended jobs
# off the heap"): starts a release `jobq serve` (embedded store, default
# --result-ttl of an hour) on a free loopback port, makes N sync submits
# through examples/fill_ended.rs (64 clients, 8 echo workers with
# complete-and-take-next), then reads the server's VmRSS; stops it (SIGTERM),
# starts it again on the same data dir and reports how long until /health
# answers and the RSS then. Stops every server it started by its PID.
#
#   scripts/bench-ended.sh
#   N=100000 JOBQ=/tmp/jobq-base scripts/bench-ended.sh     # another binary, same loader
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-1000000}
CLIENTS=${CLIENTS:-64}
WORKERS=${WORKERS:-8}
cd "$root"
cargo build --release -q --bin jobq --example fill_ended
JOBQ=${JOBQ:-$root/target/release/jobq}
[[ -x $JOBQ ]] || { echo "bench-ended.sh: $JOBQ is not an executable" >&2; exit 2; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
data=$(mktemp -d)
pid=""
stop() { if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi; }
trap 'stop; rm -rf "$data"' EXIT
serve() {
  "$JOBQ" serve --data-dir "$data/db" --listen "127.0.0.1:$port" --grpc-listen off \
    --max-waiting-clients 100000 >>"$data/server.log" 2>&1 &
  pid=$!
}
up() { # waits for /health 200, prints the seconds it took
  local t0=$EPOCHREALTIME
  for _ in $(seq 6000); do
    kill -0 "$pid" 2>/dev/null || { echo "server exited: $(tail -3 "$data/server.log")" >&2; exit 1; }
    if curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
      python3 -c "print(f'{$EPOCHREALTIME - $t0:.2f}')"
      return
    fi
    sleep 0.01
  done
  echo "server did not come up" >&2
  exit 1
}
rss() { awk '/^VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$pid/status"; }
hwm() { awk '/^VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$pid/status"; }

echo "== $($JOBQ --version 2>/dev/null || echo "$JOBQ"), $N jobs, load $(cut -d' ' -f1-3 /proc/loadavg)"
serve
up >/dev/null
echo "empty: RSS $(rss)"
./target/release/examples/fill_ended "http://127.0.0.1:$port" "$N" "$CLIENTS" "$WORKERS"
sleep 3 # a maintenance pass (also: jobs moved to disk after the last requests)
echo "after $N ended jobs: RSS $(rss) (peak $(hwm))"
curl -fs "http://127.0.0.1:$port/api/admin/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("stats:", {k: s[k] for k in ("total","completed","pending","running")})'
stop
echo "database: $(du -sh "$data/db" | cut -f1)"
serve
secs=$(up)
echo "restart with them: /health 200 after $secs s, RSS $(rss) (peak $(hwm))"
curl -fs "http://127.0.0.1:$port/api/admin/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("stats:", {k: s[k] for k in ("total","completed")})'
stop
