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
. scripts/lib/release-server.sh
start_release_server --storage "$STORAGE"
./target/release/examples/waiting_clients "http://127.0.0.1:$port" "$pid" "$CLIENTS" "$WORKERS"
