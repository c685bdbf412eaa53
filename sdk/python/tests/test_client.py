"""The clients against the real server: outcomes as typed exceptions, the
non-waiting calls, the plain-answer fallback of stream(), the async client."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional

import httpx
import pytest

import jobq

from .conftest import BOUND, RunningWorker, Server, free_port, wait_until

StartServer = Callable[..., Server]
RunWorker = Callable[..., RunningWorker]


def _pending_ids(url: str) -> list[str]:
    r = httpx.get(f"{url}/api/admin/jobs", params={"status": "pending"}, timeout=BOUND)
    return [j["job_id"] for j in r.json()["jobs"]]


def test_still_running_carries_the_job_id(client: jobq.Client) -> None:
    with pytest.raises(jobq.StillRunning) as ei:
        client.submit("nobody works", timeout=0.2)
    job_id = ei.value.job_id
    assert ei.value.status == "pending"
    info = client.job(job_id)
    assert (info.job_id, info.status, info.position) == (job_id, "pending", 0)


def test_queue_full_has_retry_after(start_server: StartServer) -> None:
    srv = start_server("--max-queued", "1")
    with jobq.Client(srv.url, token="") as c:
        c.enqueue("first")
        with pytest.raises(jobq.QueueFull) as ei:
            c.submit("second", timeout=1)
        assert ei.value.status == 503
        assert ei.value.retry_after == 1
        with pytest.raises(jobq.QueueFull):
            c.enqueue("third")


def test_cancel_gives_the_waiting_client_job_cancelled(server: Server, client: jobq.Client) -> None:
    outcome: list[BaseException] = []

    def submit() -> None:
        try:
            client.submit("wait for me", timeout=BOUND)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=submit)
    t.start()
    ids = wait_until(lambda: _pending_ids(server.url), "the submit to be queued")
    info = client.cancel(ids[0])
    assert info.status == "cancelled"
    t.join(BOUND)
    assert len(outcome) == 1
    assert isinstance(outcome[0], jobq.JobCancelled)
    assert outcome[0].job_id == ids[0]
    with pytest.raises(jobq.Conflict):
        client.cancel(ids[0])
    with pytest.raises(jobq.JobCancelled):
        client.wait(ids[0], timeout=1)


def test_enqueue_then_wait(server: Server, client: jobq.Client, run_worker: RunWorker) -> None:
    job_id = client.enqueue({"x": 1}, priority=5)
    with pytest.raises(jobq.StillRunning) as ei:
        client.wait(job_id, timeout=0.2)
    assert ei.value.job_id == job_id
    run_worker(lambda job: job.json(), server.url)
    res = client.wait(job_id, timeout=BOUND)
    assert (res.job_id, res.json()) == (job_id, {"x": 1})
    info = client.job(job_id)
    assert (info.status, info.priority, info.content) == ("completed", 5, b'{"x":1}')


def test_wait_on_a_failed_job_raises_job_failed(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    def handler(job: jobq.Job) -> None:
        raise jobq.Fail("nope")

    run_worker(handler, server.url)
    job_id = client.enqueue("x")
    with pytest.raises(jobq.JobFailed) as ei:
        client.wait(job_id, timeout=BOUND)
    assert (ei.value.job_id, ei.value.error, ei.value.attempts) == (job_id, "nope", 1)


def test_unknown_job_is_not_found(client: jobq.Client) -> None:
    with pytest.raises(jobq.NotFound) as ei:
        client.job("2f0c6b9e-8a3e-4f7b-9d7e-6f1c2a3b4c5d")
    assert ei.value.status == 404
    with pytest.raises(jobq.ApiError) as e2:
        client.job("not-a-uuid")
    assert e2.value.status == 400


def test_idempotency_key_attaches_to_the_first_job(
    server: Server, client: jobq.Client, run_worker: RunWorker
) -> None:
    first = client.enqueue("same", idempotency_key="order-42")
    assert client.enqueue("same", idempotency_key="order-42") == first
    with pytest.raises(jobq.ApiError) as ei:
        client.enqueue("other body", idempotency_key="order-42")
    assert ei.value.status == 422
    run_worker(lambda job: "done", server.url)
    res = client.submit("same", idempotency_key="order-42", timeout=BOUND)
    assert (res.job_id, res.text()) == (first, "done")


def test_unreachable_server() -> None:
    with jobq.Client(f"http://127.0.0.1:{free_port()}") as c, pytest.raises(jobq.Unreachable):
        c.submit("x", timeout=1)


def test_url_from_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQ_URL", server.url + "/")
    with jobq.Client() as c:
        assert c.url == server.url
        with pytest.raises(jobq.StillRunning):
            c.submit("x", timeout=0.1)


class _WithoutStreaming(httpx.HTTPTransport):
    """The real server as a server without streaming answers: the request's
    ``Accept: text/event-stream`` never reaches it, so it answers plain JSON."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "accept" in request.headers:
            del request.headers["accept"]
        return super().handle_request(request)


def test_stream_against_a_plain_answer_is_one_final_event(
    server: Server, run_worker: RunWorker
) -> None:
    client = jobq.Client(server.url, token="", transport=_WithoutStreaming())
    events = list(client.stream("x", timeout=0.2))
    assert [e.kind for e in events] == ["accepted"]
    assert events[0].final
    assert events[0].job_id
    with pytest.raises(jobq.StillRunning):
        events[0].result()

    run_worker(lambda job: job.text() + "!", server.url)
    events = list(client.stream("hi", timeout=BOUND))
    assert [(e.kind, e.text()) for e in events] == [("result", "hi!")]
    assert events[0].result().text() == "hi!"
    client.close()


def test_stream_raises_typed_errors_for_refusals(start_server: StartServer) -> None:
    srv = start_server("--max-queued", "1")
    with jobq.Client(srv.url, token="") as c:
        c.enqueue("first")
        with pytest.raises(jobq.QueueFull):
            list(c.stream("second", timeout=1))


def _async_run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_async_client(server: Server, run_worker: RunWorker) -> None:
    def handler(job: jobq.Job) -> Any:
        if job.text() == "fail":
            raise jobq.Fail("asked to fail")
        return {"echo": job.text()}

    async def main() -> None:
        async with jobq.AsyncClient(server.url, token="") as c:
            with pytest.raises(jobq.StillRunning) as ei:
                await c.submit("early", timeout=0.1)
            early = ei.value.job_id
            run_worker(handler, server.url)
            results = await asyncio.gather(*(c.submit(f"m{i}", timeout=BOUND) for i in range(5)))
            assert [r.json() for r in results] == [{"echo": f"m{i}"} for i in range(5)]
            assert (await c.wait(early, timeout=BOUND)).json() == {"echo": "early"}
            with pytest.raises(jobq.JobFailed) as ef:
                await c.submit("fail", timeout=BOUND)
            assert ef.value.error == "asked to fail"
            job_id = await c.enqueue("later")
            info: Optional[jobq.JobInfo] = None
            for _ in range(50):
                info = await c.job(job_id, wait=1)
                if info.ended:
                    break
            assert info is not None
            assert info.status == "completed"
            events = [e async for e in c.stream("s", timeout=BOUND)]
            assert events[-1].kind == "result"
            assert events[-1].result().json() == {"echo": "s"}
            with pytest.raises(jobq.NotFound):
                await c.cancel("2f0c6b9e-8a3e-4f7b-9d7e-6f1c2a3b4c5d")

    _async_run(main())


def test_async_client_cancel(server: Server) -> None:
    async def main() -> None:
        async with jobq.AsyncClient(server.url, token="") as c:
            waiting = asyncio.ensure_future(c.submit("x", timeout=BOUND))
            ids: list[str] = []
            for _ in range(200):
                ids = await asyncio.to_thread(_pending_ids, server.url)
                if ids:
                    break
                await asyncio.sleep(0.02)
            assert ids
            assert (await c.cancel(ids[0])).status == "cancelled"
            with pytest.raises(jobq.JobCancelled):
                await asyncio.wait_for(waiting, BOUND)

    _async_run(main())
