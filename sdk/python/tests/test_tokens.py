"""Role tokens: sent as ``Authorization: Bearer``, read from ``JOBQ_TOKEN``,
refusals as Unauthorized. Runs when the binary knows ``--client-token``."""

from __future__ import annotations

from typing import Callable

import pytest

import jobq

from .conftest import BOUND, RunningWorker, Server

pytestmark = pytest.mark.usefixtures("require_tokens")

TOKENS = ["--client-token", "c-secret", "--worker-token", "w-secret", "--admin-token", "a-secret"]


@pytest.fixture
def secured(start_server: Callable[..., Server]) -> Server:
    return start_server(*TOKENS)


def test_client_and_worker_tokens(
    secured: Server, run_worker: Callable[..., RunningWorker]
) -> None:
    seen: list[jobq.Job] = []

    def handler(job: jobq.Job) -> str:
        seen.append(job)
        return "ok"

    run_worker(handler, secured.url, token="w-secret")
    with jobq.Client(secured.url, token="c-secret") as c:
        assert c.submit("x", timeout=BOUND).text() == "ok"
    # A client's token never reaches the worker.
    assert "authorization" not in seen[0].headers


def test_missing_token_is_401(secured: Server) -> None:
    with jobq.Client(secured.url, token="") as c, pytest.raises(jobq.Unauthorized) as ei:
        c.submit("x", timeout=1)
    assert ei.value.status == 401


def test_other_roles_token_is_403(secured: Server) -> None:
    with jobq.Client(secured.url, token="w-secret") as c, pytest.raises(jobq.Unauthorized) as ei:
        c.enqueue("x")
    assert ei.value.status == 403


def test_token_from_the_environment(secured: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQ_TOKEN", "c-secret")
    with jobq.Client(secured.url) as c:
        job_id = c.enqueue("x")
        assert c.job(job_id).status == "pending"


def test_worker_with_a_wrong_token_stops_with_unauthorized(
    secured: Server, run_worker: Callable[..., RunningWorker]
) -> None:
    w = run_worker(lambda job: "x", secured.url, token="wrong")
    w.thread.join(BOUND)
    assert not w.thread.is_alive()
    assert isinstance(w.error, jobq.Unauthorized)
    assert w.error.status == 401
