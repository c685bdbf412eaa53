"""The worker against the real server: every handler kind, results and
failures reaching a waiting client, heartbeats, cancellation, reconnects."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

import jobq

from .conftest import BOUND, RunningWorker, Server, wait_until

StartServer = Callable[..., Server]
RunWorker = Callable[..., RunningWorker]


def test_sync_handler_result_reaches_the_client(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    seen: list[jobq.Job] = []

    def handler(job: jobq.Job) -> str:
        seen.append(job)
        return job.text().upper()

    run_worker(handler, server.url)
    res = client.submit("hello", queue="default", timeout=BOUND)
    assert res.text() == "HELLO"
    assert res.content == b"HELLO"
    job = seen[0]
    assert job.id == res.job_id
    assert job.queue == "default"
    assert job.attempt == 1
    assert job.lease_id
    assert job.headers["content-type"].startswith("text/plain")
    assert "authorization" not in job.headers


def test_async_handler(server: Server, client: jobq.Client, run_worker: RunWorker) -> None:
    async def handler(job: jobq.Job) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"n": job.json()["n"] + 1}

    run_worker(handler, server.url)
    assert client.submit({"n": 41}, timeout=BOUND).json() == {"n": 42}


def test_generator_yields_joined_as_result(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    def handler(job: jobq.Job) -> Iterator[str]:
        for word in job.text().split():
            yield word + " "

    run_worker(handler, server.url)
    assert client.submit("a b c", timeout=BOUND).text() == "a b c "


def test_generator_return_value_is_the_result(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    def handler(job: jobq.Job) -> Any:
        yield "partial"
        return {"done": True}

    run_worker(handler, server.url)
    assert client.submit("x", timeout=BOUND).json() == {"done": True}


def test_async_generator(server: Server, client: jobq.Client, run_worker: RunWorker) -> None:
    async def handler(job: jobq.Job) -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0)
            yield str(i).encode()

    run_worker(handler, server.url)
    assert client.submit(b"go", timeout=BOUND).content == b"012"


def test_generator_of_json_values_gives_a_json_array(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    def handler(job: jobq.Job) -> Iterator[Any]:
        yield {"i": 0}
        yield 1

    run_worker(handler, server.url)
    assert client.submit("x", timeout=BOUND).json() == [{"i": 0}, 1]


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\x00\x10binary",
        b"plain text, not JSON",
        b'{"b": 1,  "a": [2, 3]}',
        b" 42 \n",
        b'"{\\"a\\": 1}"',
        b'"caf\\u00e9"',
        "unicode ünïcødé ✓".encode(),
        b"",
    ],
)
def test_payload_and_result_bytes_round_trip(
    server: Server, client: jobq.Client, run_worker: RunWorker, payload: bytes
) -> None:
    got: list[bytes] = []

    def handler(job: jobq.Job) -> bytes:
        got.append(job.payload)
        return job.payload

    run_worker(handler, server.url)
    res = client.submit(payload, timeout=BOUND)
    assert got == [payload]
    # An empty result is stored as {} by the server.
    assert res.content == (payload or b"{}")


def test_exception_fails_with_traceback_tail_after_retries(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    calls: list[int] = []

    def handler(job: jobq.Job) -> str:
        calls.append(job.attempt)
        raise ValueError("boom")

    run_worker(handler, server.url)
    with pytest.raises(jobq.JobFailed) as ei:
        client.submit("x", timeout=BOUND)
    err = ei.value
    assert "Traceback" in err.error
    assert err.error.rstrip().endswith("ValueError: boom")
    assert "in handler" in err.error
    assert err.attempts == 3
    assert calls == [1, 2, 3]  # the server's --max-attempts default


def test_fail_without_retry_is_not_retried(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    calls: list[int] = []

    def handler(job: jobq.Job) -> str:
        calls.append(job.attempt)
        raise jobq.Fail("bad input", retry=False)

    run_worker(handler, server.url)
    with pytest.raises(jobq.JobFailed) as ei:
        client.submit("x", timeout=BOUND)
    assert ei.value.error == "bad input"
    assert ei.value.attempts == 1
    assert calls == [1]
    assert client.job(ei.value.job_id).status == "failed"


def test_fail_with_retry_goes_to_another_attempt(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    def handler(job: jobq.Job) -> str:
        if job.attempt == 1:
            raise jobq.Fail("flaky", retry=True)
        return f"ok on attempt {job.attempt}"

    run_worker(handler, server.url)
    assert client.submit("x", timeout=BOUND).text() == "ok on attempt 2"


def test_heartbeats_keep_a_job_longer_than_its_lease(
    start_server: StartServer, run_worker: RunWorker
) -> None:
    srv = start_server("--lease", "1")
    calls: list[str] = []

    def handler(job: jobq.Job) -> str:
        calls.append(job.id)
        time.sleep(3.0)  # three leases
        return "slow"

    # Two slots: the idle one keeps polling, and would get the job again
    # if its lease ran out.
    run_worker(handler, srv.url, concurrency=2, long_poll=1.0)
    with jobq.Client(srv.url, token="") as c:
        res = c.submit("x", timeout=BOUND)
        assert res.text() == "slow"
        assert calls == [res.job_id]
        assert c.job(res.job_id).attempts == 1


def _running(client: jobq.Client, job_id: str) -> bool:
    return client.job(job_id).status == "running"


def test_cancellation_is_noticed_by_a_running_plain_handler(
    start_server: StartServer, run_worker: RunWorker
) -> None:
    srv = start_server("--lease", "1")
    noticed = threading.Event()

    def handler(job: jobq.Job) -> str:
        if job.wait_cancelled(BOUND):
            noticed.set()
        return "too late"

    run_worker(handler, srv.url)
    with jobq.Client(srv.url, token="") as c:
        job_id = c.enqueue("x")
        wait_until(lambda: _running(c, job_id), "the job to run")
        assert c.cancel(job_id).status == "cancelled"
        assert noticed.wait(5.0), "the handler did not see the cancellation"
        info = c.job(job_id)
        assert info.status == "cancelled"
        assert info.content is None


def test_cancellation_cancels_an_async_handler(
    start_server: StartServer, run_worker: RunWorker
) -> None:
    srv = start_server("--lease", "1")
    cancelled = threading.Event()

    async def handler(job: jobq.Job) -> str:
        try:
            await asyncio.sleep(BOUND)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    run_worker(handler, srv.url)
    with jobq.Client(srv.url, token="") as c:
        job_id = c.enqueue("x")
        wait_until(lambda: _running(c, job_id), "the job to run")
        c.cancel(job_id)
        assert cancelled.wait(5.0), "the async handler was not cancelled"


def test_cancellation_stops_a_generator_between_yields(
    start_server: StartServer, run_worker: RunWorker
) -> None:
    srv = start_server("--lease", "1")
    stopped = threading.Event()

    def handler(job: jobq.Job) -> Iterator[str]:
        try:
            for _ in range(int(BOUND / 0.05)):
                time.sleep(0.05)
                yield "."
        except GeneratorExit:
            stopped.set()
            raise

    run_worker(handler, srv.url)
    with jobq.Client(srv.url, token="") as c:
        job_id = c.enqueue("x")
        wait_until(lambda: _running(c, job_id), "the job to run")
        c.cancel(job_id)
        assert stopped.wait(5.0), "the generator was not closed"


def test_jobs_run_concurrently(server: Server, client: jobq.Client, run_worker: RunWorker) -> None:
    barrier = threading.Barrier(4, timeout=BOUND)

    def handler(job: jobq.Job) -> str:
        barrier.wait()  # only passes when four handlers run at once
        return job.text()

    run_worker(handler, server.url, concurrency=4)
    ids = [client.enqueue(f"job {i}") for i in range(4)]
    results = sorted(client.wait(i, timeout=BOUND).text() for i in ids)
    assert results == [f"job {i}" for i in range(4)]


def test_queues_first_non_empty_wins(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    def handler(job: jobq.Job) -> str:
        return job.queue

    run_worker(handler, server.url, queues="gpu,cpu")
    assert client.submit("x", queue="cpu", timeout=BOUND).text() == "cpu"
    assert client.submit("x", queue="gpu", timeout=BOUND).text() == "gpu"


def test_reconnects_after_a_server_restart(
    start_server: StartServer, run_worker: RunWorker, tmp_path: Path
) -> None:
    data = str(tmp_path / "data")
    srv = start_server("--data-dir", data)

    def handler(job: jobq.Job) -> str:
        return "v" + job.text()

    run_worker(handler, srv.url, long_poll=1.0, backoff_max=0.5)
    with jobq.Client(srv.url, token="") as c:
        assert c.submit("1", timeout=BOUND).text() == "v1"
    srv.stop()
    with pytest.raises(jobq.Unreachable), jobq.Client(srv.url, token="") as c:
        c.submit("x", timeout=1)
    time.sleep(1.0)  # the worker meets a closed port for a while
    srv2 = start_server("--data-dir", data, port=srv.port)
    with jobq.Client(srv2.url, token="") as c:
        assert c.submit("2", timeout=BOUND).text() == "v2"


def test_worker_stop_lets_the_running_job_finish(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    started = threading.Event()

    def handler(job: jobq.Job) -> str:
        started.set()
        time.sleep(0.5)
        return "finished"

    w = run_worker(handler, server.url)
    job_id = client.enqueue("x")
    assert started.wait(BOUND)
    w.worker.stop()
    second = client.enqueue("y")
    w.thread.join(BOUND)
    assert not w.thread.is_alive()
    assert w.error is None
    assert client.wait(job_id, timeout=BOUND).text() == "finished"
    info = client.job(second)
    assert (info.status, info.attempts) == ("pending", 0)


def test_a_refused_queue_name_stops_the_worker_with_an_error(
    server: Server, run_worker: RunWorker
) -> None:
    w = run_worker(lambda job: "x", server.url, queues=["bad queue!"])
    w.thread.join(BOUND)
    assert not w.thread.is_alive()
    assert isinstance(w.error, jobq.ApiError)
    assert w.error.status == 400


def test_result_over_max_body_fails_the_job(
    start_server: StartServer, run_worker: RunWorker
) -> None:
    srv = start_server("--max-body", "1024")
    run_worker(lambda job: b"x" * 4096, srv.url)
    with jobq.Client(srv.url, token="") as c, pytest.raises(jobq.JobFailed) as ei:
        c.submit("x", timeout=BOUND)
    assert "too large" in ei.value.error or "413" in ei.value.error or "refused" in ei.value.error
    assert ei.value.attempts == 1


def test_plain_calls_still_work_with_the_lease_header(server: Server) -> None:
    # The fencing the worker relies on: a stale lease gets 409.
    with jobq.Client(server.url, token="") as c:
        job_id = c.enqueue("x")
    r = httpx.get(f"{server.url}/api/worker/poll", timeout=BOUND)
    assert r.json()["job_id"] == job_id
    stale = "00000000-0000-4000-8000-000000000000"
    r = httpx.post(
        f"{server.url}/api/worker/complete/{job_id}",
        headers={"x-lease-id": stale},
        content=b"x",
        timeout=BOUND,
    )
    assert r.status_code == 409


def test_forced_stop_fails_running_jobs_for_a_retry(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    started = threading.Event()

    async def handler(job: jobq.Job) -> str:
        started.set()
        await asyncio.sleep(BOUND)
        return "too late"

    w = run_worker(handler, server.url)
    job_id = client.enqueue("x")
    assert started.wait(BOUND)
    w.worker.stop(force=True)
    w.thread.join(BOUND)
    assert not w.thread.is_alive()
    info = client.job(job_id)
    # Failed with retry: back in the queue for another worker.
    assert (info.status, info.attempts) == ("pending", 1)
    assert info.error is not None
    assert "stopped" in info.error


def test_submit_headers_reach_the_job(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    def handler(job: jobq.Job) -> dict[str, Any]:
        return {"trace": job.headers.get("x-trace"), "type": job.headers.get("content-type")}

    run_worker(handler, server.url)
    res = client.submit(
        b"\x00raw",
        content_type="application/octet-stream",
        headers={"X-Trace": "abc-123"},
        timeout=BOUND,
    )
    assert res.json() == {"trace": "abc-123", "type": "application/octet-stream"}


def _server_has_take_next(url: str) -> bool:
    """Asks the server itself: does a complete with ``next=1`` hand out the next job?"""
    with jobq.Client(url, token="") as c:
        c.enqueue("probe 1", queue="probe")
        c.enqueue("probe 2", queue="probe")
    first = httpx.get(f"{url}/api/worker/poll", params={"queue": "probe"}, timeout=BOUND).json()
    r = httpx.post(
        f"{url}/api/worker/complete/{first['job_id']}",
        params={"next": "1", "queue": "probe"},
        headers={"x-lease-id": first["lease_id"]},
        content=b"done",
        timeout=BOUND,
    )
    assert r.status_code == 200
    return "lease_id" in r.json()


def test_complete_and_take_next_is_used_where_the_server_has_it(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    offered = _server_has_take_next(server.url)
    w = run_worker(lambda job: job.text(), server.url, concurrency=2)
    ids = [client.enqueue(f"j{i}") for i in range(6)]
    assert [client.wait(i, timeout=BOUND).text() for i in ids] == [f"j{i}" for i in range(6)]
    # The worker learnt the server's answer shape from its own completes.
    assert w.worker._fused is offered
