"""The README's examples run: the streaming pair and the load-once worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import jobq

from .conftest import BOUND, Server

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@contextmanager
def _worker(name: str, url: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "JOBQ_URL": url, "JOBQ_TOKEN": ""}
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=BOUND) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=BOUND)


def _run(name: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBQ_URL": url, "JOBQ_TOKEN": ""}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=BOUND * 2,
        check=False,
    )


def test_stream_client_prints_the_words_worker_output(server: Server) -> None:
    with _worker("stream_words_worker.py", server.url):
        out = _run("stream_client.py", server.url, "a", "story")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("-- result: you said: a story \n")


def test_loaded_once_worker_ranks_words(server: Server, client: jobq.Client) -> None:
    with _worker("loaded_once_worker.py", server.url):
        first = client.submit("the zebra", timeout=BOUND).json()
        with pytest.raises(jobq.JobFailed) as ei:
            client.submit("123 !!", timeout=BOUND)
    assert [w for w, _ in first["words"]][-1] == "the"
    assert ei.value.error == "the payload has no words"
