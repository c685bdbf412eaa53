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
. scripts/lib/release-server.sh
start_release_server --storage "$STORAGE" --max-waiting-clients 100000
./target/release/examples/progress_bench "http://127.0.0.1:$port" "$STREAMS" "$INTERVAL_MS" "$SECS"
