#!/usr/bin/env bash
# Many clients waiting at once (docs/BENCHMARKS.md, "10,000 clients waiting
# at once"): starts a release `jobq serve` (embedded store by default, the
# default caps) on a free loopback port, runs examples/waiting_clients.rs
# against it — CLIENTS sync submits held open with no worker, the server's
# RSS once all are counted as waiting, then every one served by workers —
# and stops the server by its PID. The load generator needs CLIENTS + 100
# open files (ulimit -n), and so does the server (it raises its own soft
# limit to the hard one).
#
#   scripts/bench-waiting.sh
#   CLIENTS=10000 WORKERS=4 STORAGE=memory scripts/bench-waiting.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
CLIENTS=${CLIENTS:-10000}
WORKERS=${WORKERS:-4}
STORAGE=${STORAGE:-embedded}
cd "$root"
ulimit -n "$(ulimit -Hn)"
cargo build --release -q --bin jobq --example waiting_clients
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
data=$(mktemp -d)
./target/release/jobq serve --storage "$STORAGE" --data-dir "$data" --listen "127.0.0.1:$port" \
  --grpc-listen off >"$data/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
echo "== jobq $(git -C "$root" rev-parse --short HEAD), --storage $STORAGE, load $(cut -d' ' -f1-3 /proc/loadavg)"
./target/release/examples/waiting_clients "http://127.0.0.1:$port" "$pid" "$CLIENTS" "$WORKERS"
