#!/usr/bin/env bash
# Progress events (docs/BENCHMARKS.md, "Progress events"): starts a release
# `jobq serve` (memory store by default) on a free loopback port, runs
# examples/progress_bench.rs against it — the latency from a worker's
# progress POST to the event reaching its streaming client at STREAMS
# streams, and the events per second through one job — then stops the
# server by its PID.
#
#   scripts/bench-progress.sh
#   STREAMS=100 INTERVAL_MS=50 SECS=10 STORAGE=embedded scripts/bench-progress.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
STREAMS=${STREAMS:-100}
INTERVAL_MS=${INTERVAL_MS:-50}
SECS=${SECS:-10}
STORAGE=${STORAGE:-memory}
cd "$root"
cargo build --release -q --bin jobq --example progress_bench
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
data=$(mktemp -d)
./target/release/jobq serve --storage "$STORAGE" --data-dir "$data" --listen "127.0.0.1:$port" \
  --grpc-listen off --max-waiting-clients 100000 >"$data/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
echo "== jobq $(git -C "$root" rev-parse --short HEAD), --storage $STORAGE, load $(cut -d' ' -f1-3 /proc/loadavg)"
./target/release/examples/progress_bench "http://127.0.0.1:$port" "$STREAMS" "$INTERVAL_MS" "$SECS"
