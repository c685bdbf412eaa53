#!/usr/bin/env bash
# The Python SDK's checks: lint (ruff), types (mypy --strict) and its pytest
# suite against the real jobq binary, in a virtualenv at target/py-venv
# (created once, then reused). Exits non-zero on any failure.
#
#   scripts/test-python.sh                   # builds target/release/jobq first
#   JOBQ_BIN=/path/to/jobq scripts/test-python.sh
#   scripts/test-python.sh -k stream         # extra arguments go to pytest
#
# Without python3 (>= 3.9) or its venv module it says so in one line and
# exits 0, unless CI=true: then that is a failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sdk="$root/sdk/python"
venv="$root/target/py-venv"

missing() {
    if [ "${CI:-}" = "true" ]; then
        echo "test-python: $1 (required under CI=true)" >&2
        exit 1
    fi
    echo "test-python: skipped: $1"
    exit 0
}

py=$(command -v python3 || true)
[ -n "$py" ] || missing "python3 not found"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null ||
    missing "$py is older than Python 3.9 (or does not run); the SDK needs 3.9 or newer"
"$py" -c 'import venv, ensurepip' 2>/dev/null || missing "python3 has no venv/ensurepip module (Debian: apt-get install python3-venv)"

if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    mkdir -p "$root/target"
    "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"

echo "== pip install ./sdk/python and its dev tools"
"$vpy" -m pip install --quiet --disable-pip-version-check -r "$sdk/requirements-dev.txt" "$sdk"
# The same version number is not reinstalled by default: take the tree as it is.
"$vpy" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$sdk"

if [ -z "${JOBQ_BIN:-}" ]; then
    echo "== cargo build --release --bin jobq"
    (cd "$root" && cargo build --release --locked --bin jobq)
    export JOBQ_BIN="$root/target/release/jobq"
fi
echo "== using $JOBQ_BIN"

cd "$sdk"
echo "== ruff check"
"$venv/bin/ruff" check .
echo "== ruff format --check"
"$venv/bin/ruff" format --check .
echo "== mypy --strict"
"$venv/bin/mypy" --strict src/jobq tests examples
echo "== pytest"
# -p no:cacheprovider: nothing written into the source tree.
"$vpy" -m pytest -q -rs -p no:cacheprovider "$@"
