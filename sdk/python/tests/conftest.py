"""Fixtures: the real ``jobq`` binary on an ephemeral loopback port, and a
worker running in a thread beside the test.

The binary: ``$JOBQ_BIN``, else ``<repo>/target/release/jobq``, else
``<repo>/target/debug/jobq``. Without one the tests are skipped (under
``CI=true`` they fail instead).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import pytest

import jobq

REPO = Path(__file__).resolve().parents[3]

#: Upper bound of every wait in these tests.
BOUND = 15.0


def _find_binary() -> Optional[Path]:
    env = os.environ.get("JOBQ_BIN")
    if env:
        return Path(env)
    for p in (REPO / "target" / "release" / "jobq", REPO / "target" / "debug" / "jobq"):
        if p.is_file():
            return p
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], what: str, timeout: float = BOUND) -> Any:
    """Polls ``cond`` every 20 ms until it is truthy; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Server:
    """One ``jobq serve`` process, stopped by its PID."""

    def __init__(self, binary: Path, args: list[str], port: Optional[int] = None) -> None:
        self.binary = binary
        self.args = args
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> Server:
        cmd = [str(self.binary), "serve", "--listen", f"127.0.0.1:{self.port}", *self.args]
        if "--grpc-listen" not in self.args and _has_flag(self.binary, "--grpc-listen"):
            cmd += ["--grpc-listen", "off"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + BOUND
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                pytest.fail(f"jobq serve exited with {self.proc.returncode}: {err}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail("jobq serve did not answer /health in time")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the bound."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=BOUND)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()


_help_cache: dict[str, str] = {}


def _serve_help(binary: Path) -> str:
    key = str(binary)
    if key not in _help_cache:
        out = subprocess.run(
            [key, "serve", "--help"], capture_output=True, timeout=BOUND, check=False
        )
        _help_cache[key] = out.stdout.decode(errors="replace")
    return _help_cache[key]


def _has_flag(binary: Path, flag: str) -> bool:
    return flag in _serve_help(binary)


@pytest.fixture(scope="session")
def jobq_bin() -> Path:
    b = _find_binary()
    if b is None or not b.is_file():
        msg = (
            "no jobq binary: set JOBQ_BIN or run `cargo build --release` "
            f"(looked in {REPO / 'target'})"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return b


@pytest.fixture
def start_server(jobq_bin: Path) -> Iterator[Callable[..., Server]]:
    """A factory: ``start_server("--lease", "1")`` starts one more server."""
    started: list[Server] = []

    def start(*args: str, port: Optional[int] = None) -> Server:
        flags = list(args)
        if "--storage" not in flags and "--data-dir" not in flags:
            flags = ["--storage", "memory", *flags]
        s = Server(jobq_bin, flags, port).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    """A memory-store server with default flags."""
    return start_server()


@pytest.fixture
def client(server: Server) -> Iterator[jobq.Client]:
    with jobq.Client(server.url, token="") as c:
        yield c


@pytest.fixture(scope="session")
def supports_tokens(jobq_bin: Path) -> bool:
    return _has_flag(jobq_bin, "--client-token")


@pytest.fixture
def require_tokens(supports_tokens: bool) -> None:
    if not supports_tokens:
        pytest.skip(
            "this jobq binary has no role tokens (`jobq serve --help` lists no --client-token)"
        )


@pytest.fixture(scope="session")
def supports_sse(jobq_bin: Path) -> bool:
    """Whether a submit with ``Accept: text/event-stream`` is answered as a stream."""
    s = Server(jobq_bin, ["--storage", "memory"]).start()
    try:
        r = httpx.post(
            f"{s.url}/api/submit",
            params={"timeout": "0.1"},
            headers={"accept": "text/event-stream"},
            content=b"probe",
            timeout=BOUND,
        )
        return str(r.headers.get("content-type", "")).startswith("text/event-stream")
    finally:
        s.kill()


@pytest.fixture
def require_sse(supports_sse: bool) -> None:
    if not supports_sse:
        pytest.skip(
            "this jobq binary does not stream: a submit with Accept: text/event-stream "
            "is answered with plain JSON"
        )


class RunningWorker:
    """A :class:`jobq.Worker` running in a thread."""

    def __init__(self, worker: jobq.Worker, handler: Any) -> None:
        self.worker = worker
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(handler,), daemon=True)
        self.thread.start()

    def _run(self, handler: Any) -> None:
        try:
            self.worker.run(handler)
        except BaseException as e:
            self.error = e

    def stop(self, timeout: float = BOUND) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop in time"


@pytest.fixture
def run_worker() -> Iterator[Callable[..., RunningWorker]]:
    """A factory: ``run_worker(handler, url, concurrency=2)``; stopped at teardown."""
    running: list[RunningWorker] = []

    def start(handler: Any, url: str, **options: Any) -> RunningWorker:
        options.setdefault("handle_signals", False)
        options.setdefault("long_poll", 5.0)
        options.setdefault("token", "")
        w = RunningWorker(jobq.Worker(url, **options), handler)
        running.append(w)
        return w

    yield start
    for w in running:
        w.stop()
