#!/usr/bin/env bash
# End-to-end test of the dashboard in headless Chromium (tests/browser):
# builds jobq, serves it with the memory store on a free loopback port, runs
# the node test against it, and stops the server by its PID.
#
#   scripts/test-browser.sh                        # no tokens
#   JOBQ_ADMIN_TOKEN=secret scripts/test-browser.sh # the page must ask for it
#
# Needs Debian's `chromium` and node with npm (`npm ci` installs
# playwright-core, which drives the system Chromium; no browser download).
# Without them it says why and exits 0, unless CI=true, where it fails.
# JOBQ_BIN [build target/debug/jobq] is the binary to serve.
# Screenshots go to SCREENSHOT_DIR [target/browser]; UPDATE_SCREENSHOT=1
# copies the desktop one to docs/dashboard.png.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
SCREENSHOT_DIR=${SCREENSHOT_DIR:-$root/target/browser}

missing=""
[[ -x $CHROMIUM ]] || missing="chromium ($CHROMIUM)"
command -v node >/dev/null || missing="${missing:+$missing, }node"
command -v npm >/dev/null || missing="${missing:+$missing, }npm"
if [[ -n $missing ]]; then
  if [[ ${CI:-} == true ]]; then
    echo "test-browser: missing $missing" >&2
    exit 1
  fi
  echo "test-browser: skipped, missing $missing (apt-get install -y chromium nodejs npm)"
  exit 0
fi

# JOBQ_BIN: a binary built already (scripts/test.sh passes cargo test's).
jobq=${JOBQ_BIN:-}
if [[ -z $jobq ]]; then
  (cd "$root" && cargo build -q --bin jobq)
  jobq=$root/target/debug/jobq
fi
if [[ ! -d $root/tests/browser/node_modules/playwright-core ]]; then
  (cd "$root/tests/browser" && npm ci --silent --no-audit --no-fund)
fi
mkdir -p "$SCREENSHOT_DIR"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null \
  || node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
log=$SCREENSHOT_DIR/server.log
args=(serve --storage memory --listen "127.0.0.1:$port" --log-format json)
if [[ -n ${JOBQ_ADMIN_TOKEN:-} ]]; then args+=(--admin-token "$JOBQ_ADMIN_TOKEN"); fi
"$jobq" "${args[@]}" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT

up=""
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $up ]]; then
  echo "test-browser: jobq did not start; its log:" >&2
  cat "$log" >&2
  exit 1
fi

status=0
(cd "$root/tests/browser" && JOBQ_URL="http://127.0.0.1:$port" JOBQ_ADMIN_TOKEN="${JOBQ_ADMIN_TOKEN:-}" \
  SCREENSHOT_DIR="$SCREENSHOT_DIR" CHROMIUM="$CHROMIUM" node --test dashboard.test.mjs) || status=$?
if [[ $status -ne 0 ]]; then
  echo "test-browser: failed; server log in $log" >&2
  exit "$status"
fi
if [[ ${UPDATE_SCREENSHOT:-} == 1 ]]; then
  cp "$SCREENSHOT_DIR/dashboard-desktop.png" "$root/docs/dashboard.png"
fi
echo "test-browser: screenshots in $SCREENSHOT_DIR"
