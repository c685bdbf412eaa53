#!/usr/bin/env bash
# Every test of the project, in one command (the README's):
#   1. the Rust suite, `cargo test`: real servers over real HTTP, the real
#      binary killed with kill -9, a real PostgreSQL, property tests, 10,000
#      malformed requests, /openapi.json against the router;
#   2. the Python SDK against the real binary (scripts/test-python.sh);
#   3. schemathesis fuzzing the real binary from its /openapi.json, without
#      and with tokens (scripts/test-fuzz.sh, bounded to about 3 minutes);
#   4. the dashboard in a real headless Chromium (scripts/test-browser.sh).
# A part whose tools are missing here (PostgreSQL, python3, chromium, node)
# is skipped with a one-line reason, except under CI=true, where that fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "== cargo test"
cargo test --locked
# `cargo test` built the binary the other suites start.
export JOBQ_BIN="${JOBQ_BIN:-$root/target/debug/jobq}"

echo "== Python SDK"
bash scripts/test-python.sh

echo "== schemathesis against /openapi.json"
bash scripts/test-fuzz.sh

echo "== dashboard in a browser, without and with an admin token"
bash scripts/test-browser.sh
JOBQ_ADMIN_TOKEN="browser-test-admin-$RANDOM$RANDOM" bash scripts/test-browser.sh
echo "== all tests passed"
