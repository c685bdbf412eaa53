"""SIGTERM to a worker process with a job running: the job completes, the
process exits 0, and no new job is taken."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import httpx

import jobq

from .conftest import BOUND, Server, wait_until

SCRIPT = Path(__file__).with_name("sigterm_worker.py")


def _polling_workers(url: str) -> int:
    return int(httpx.get(f"{url}/api/admin/stats", timeout=BOUND).json()["polling_workers"])


def _lines(stream: IO[bytes], out: queue.Queue[str]) -> None:
    for line in iter(stream.readline, b""):
        out.put(line.decode(errors="replace"))


def _expect(lines: queue.Queue[str], needle: str) -> str:
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=BOUND)
        except queue.Empty:
            raise AssertionError(f"no line with {needle!r}; saw {seen}") from None
        seen.append(line)
        if needle in line:
            return line


def test_sigterm_finishes_the_running_job_and_exits_0(server: Server, client: jobq.Client) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), server.url, "1.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        out: queue.Queue[str] = queue.Queue()
        err: queue.Queue[str] = queue.Queue()
        for stream, q in ((proc.stdout, out), (proc.stderr, err)):
            assert stream is not None
            threading.Thread(target=_lines, args=(stream, q), daemon=True).start()
        first = client.enqueue("a")
        assert first in _expect(out, "started")
        proc.send_signal(signal.SIGTERM)
        _expect(err, "stopping")
        # The idle slot's long poll is dropped; once the server has seen it
        # go, a new job must stay pending.
        wait_until(lambda: _polling_workers(server.url) == 0, "the poll to be dropped")
        second = client.enqueue("b")
        assert proc.wait(timeout=BOUND) == 0
        assert client.wait(first, timeout=BOUND).text() == "finished a"
        info = client.job(second)
        assert (info.status, info.attempts) == ("pending", 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=BOUND)
