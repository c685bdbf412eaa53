"""Schemathesis hooks for scripts/test-fuzz.sh.

jobq holds a request open on purpose: a sync submit waits for a worker
(`timeout`, `Prefer: wait`; 0 means forever) and a poll or read may
long-poll (`wait`), up to an hour. A fuzzer sending such values would spend
its time budget waiting, so every *valid* wait it generates is shortened
to WAIT seconds before the request is sent. Invalid query values (negative,
not a number) are left alone: they must still get a 400. A `Prefer: wait`
always becomes a valid one (see `before_call`).
"""

from __future__ import annotations

import math
import re
from typing import Any

import schemathesis
from hypothesis.internal import lambda_sources

# CPython 3.11.7 (this machine's python3) can fail in ast.parse with
# "SystemError: AST constructor recursion depth mismatch" (a CPython bug,
# fixed in later releases) when Hypothesis describes a lambda for a repr,
# which aborts the operation being fuzzed. The description is cosmetic.
_describe = lambda_sources._lambda_description


def _describe_safely(f: Any) -> str:
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources._lambda_description = _describe_safely

WAIT = "0.05"
WAIT_PARAMS = ("wait", "timeout")


# What Rust's f64 parser takes (Python's float() also takes `1_0`, other
# scripts' digits, ...: such values must reach the server unchanged).
_F64 = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _is_valid_seconds(value: Any) -> bool:
    """Whether jobq would accept `value` as a number of seconds."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value) and value >= 0
    if not isinstance(value, str):
        return False
    # jobq trims JSON's whitespace only.
    text = value.strip(" \t\r\n")
    if not _F64.fullmatch(text):
        return False
    f = float(text)
    return math.isfinite(f) and f >= 0


def _shorten(value: Any) -> Any:
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    return WAIT if _is_valid_seconds(value) else value


def _prefer_wait(value: str) -> str | None:
    """The `wait=` value jobq reads from a Prefer header (the first one)."""
    for pref in re.split("[,;]", value):
        key, eq, rest = pref.partition("=")
        if key.strip(" \t").lower() == "wait":
            return rest.strip(" \t").strip('"') if eq else ""
    return None


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    query = case.query
    if isinstance(query, dict):
        for name in WAIT_PARAMS:
            if name in query:
                query[name] = _shorten(query[name])
        # Without `timeout` a sync submit waits --wait-timeout, which the
        # server under test sets short; nothing to add here.
    # A job's event stream lasts until the job ends (an hour at most)
    # unless `wait` bounds it.
    path = getattr(getattr(case, "operation", None), "path", "")
    if path.endswith("/events"):
        if query is None:
            case.query = {"wait": WAIT}
        elif isinstance(query, dict) and "wait" not in query:
            query["wait"] = WAIT
    headers = case.headers
    if isinstance(headers, dict):
        for name in list(headers):
            value = headers[name]
            if name.lower() == "prefer" and isinstance(value, str):
                wait = _prefer_wait(value)
                # Other preferences are ignored by jobq: only the wait matters.
                # A malformed one (`wait`, `wait=soon`) is refused with 400
                # (docs/api.md, "Seconds"), yet the document can only call
                # Prefer a string: RFC 7240's list, with that one rule on one
                # member, is no pattern a generator could use both ways. So
                # every wait becomes a short valid one here; malformed waits
                # are tested in tests/api_client.rs (400) and sent by
                # tests/malformed.rs.
                if wait is not None:
                    headers[name] = f"wait={WAIT}"
