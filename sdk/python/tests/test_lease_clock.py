"""The worker's lease arithmetic, without a server."""

from __future__ import annotations

import datetime as dt

import pytest

from jobq import worker


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("2026-12-01T20:53:10.123456Z", 123456),
        ("2026-12-01T20:53:10.1Z", 100000),
        ("2026-12-01T20:53:10.123456789Z", 123456),
        ("2026-12-01T20:53:10Z", 0),
    ],
)
def test_rfc3339_fractions(text: str, micros: int) -> None:
    t = worker._parse_time(text)
    assert t == dt.datetime(2026, 12, 1, 20, 53, 10, micros, tzinfo=dt.timezone.utc)


def test_offsets_and_garbage() -> None:
    t = worker._parse_time("2026-12-01T22:53:10+02:00")
    assert t is not None
    assert t.astimezone(dt.timezone.utc).hour == 20
    assert worker._parse_time("yesterday") is None
    assert worker._parse_time(None) is None


def test_lease_left_by_the_servers_clock() -> None:
    # The Date header has whole seconds: half a second is taken off.
    left = worker._lease_left("2026-12-01T20:54:10.000000Z", "Tue, 01 Dec 2026 20:53:10 GMT")
    assert left == pytest.approx(59.5)
    assert worker._lease_left(None, None) is None


def test_heartbeat_every_third_of_the_lease() -> None:
    assert worker._heartbeat_interval(60.0) == pytest.approx(20.0)
    assert worker._heartbeat_interval(0.0) == worker.HEARTBEAT_MIN
    assert worker._heartbeat_interval(None) == worker.HEARTBEAT_FALLBACK
