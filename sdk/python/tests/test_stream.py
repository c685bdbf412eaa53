"""Streaming end to end: a generator's yields reach a streaming client as
progress events, then the final event. Runs when the server streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Callable

import pytest

import jobq

from .conftest import BOUND, RunningWorker, Server

pytestmark = pytest.mark.usefixtures("require_sse")

WORDS = ["one ", "two ", "three"]


def words(job: jobq.Job) -> Iterator[str]:
    for w in WORDS:
        time.sleep(0.05)
        yield w


def test_stream_progress_then_result(
    server: Server, client: jobq.Client, run_worker: Callable[..., RunningWorker]
) -> None:
    run_worker(words, server.url)
    events = list(client.stream("go", timeout=BOUND))
    progress = [e for e in events if e.kind == "progress"]
    assert [e.text() for e in progress] == WORDS
    assert [int(e.id or 0) for e in progress] == sorted(int(e.id or 0) for e in progress)
    assert events[-1].kind == "result"
    assert events[-1].result().text() == "".join(WORDS)
    assert all(e.kind in ("progress", "gap") for e in events[:-1])


def test_stream_of_a_failing_job_ends_failed(
    server: Server, client: jobq.Client, run_worker: Callable[..., RunningWorker]
) -> None:
    def handler(job: jobq.Job) -> Iterator[str]:
        yield "partial"
        raise jobq.Fail("broken", retry=False)

    run_worker(handler, server.url)
    events = list(client.stream("go", timeout=BOUND))
    assert events[0].kind == "progress"
    assert events[0].text() == "partial"
    assert events[-1].kind == "failed"
    with pytest.raises(jobq.JobFailed):
        events[-1].result()


def test_stream_that_times_out_ends_accepted(client: jobq.Client) -> None:
    events = list(client.stream("nobody works", timeout=0.2))
    assert [e.kind for e in events] == ["accepted"]
    with pytest.raises(jobq.StillRunning):
        events[-1].result()


def test_async_stream(server: Server, run_worker: Callable[..., RunningWorker]) -> None:
    run_worker(words, server.url)

    async def main() -> list[jobq.Event]:
        async with jobq.AsyncClient(server.url, token="") as c:
            return [e async for e in c.stream("go", timeout=BOUND)]

    events = asyncio.run(main())
    assert [e.text() for e in events if e.kind == "progress"] == WORDS
    assert events[-1].kind == "result"
