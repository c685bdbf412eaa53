"""The worker side: a function becomes a jobq worker.

:class:`Worker` long-polls the server, runs the handler on each job with its
lease heartbeated in the background, posts the outcome with the lease, and
stops gracefully on SIGTERM/SIGINT. It speaks the whole worker protocol:
fencing, ``409`` (the job was cancelled or lost: stop), progress events for a
generator's yields, complete-and-take-next and batch poll where the server
offers them, and retries with backoff while the server is away.

Everything runs on one asyncio loop. ``async`` handlers run on that loop;
plain functions and generators run in a thread of their own per job, so a
blocking model call does not stop the heartbeats.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import email.utils
import inspect
import json
import logging
import queue
import re
import signal
import threading
import time
import traceback
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

import httpx

from . import _encoding, _http
from ._errors import ApiError, Fail, JobqError, Unauthorized

log = logging.getLogger("jobq.worker")

#: How long each poll waits for a job unless told otherwise.
LONG_POLL_DEFAULT = 30.0

#: First and longest pause between attempts while the server is away.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0

#: How long a finished job's outcome is retried while the server is away.
POST_RETRY_WINDOW = 30.0

#: Heartbeat interval when the server did not say when the lease expires.
HEARTBEAT_FALLBACK = 10.0

#: Shortest heartbeat interval (a very short lease must not spin).
HEARTBEAT_MIN = 0.05

#: How long one heartbeat, progress, complete or fail call may take.
CALL_TIMEOUT = 30.0

#: Extra time a long-poll request gets beyond its wait.
POLL_SLACK = 30.0

#: Longest error text sent with a fail (the tail of a traceback).
ERROR_TAIL = 2048

#: What a handler may return (or ``await`` to, or yield).
Handler = Callable[["Job"], Any]

T = TypeVar("T")


class Job:
    """A job handed to this worker."""

    __slots__ = (
        "_cancelled",
        "attempt",
        "headers",
        "id",
        "lease_expires_at",
        "lease_id",
        "payload",
        "priority",
        "queue",
    )

    def __init__(
        self,
        id: str,
        payload: bytes,
        *,
        headers: Optional[Mapping[str, str]] = None,
        queue: str = "default",
        attempt: int = 1,
        lease_id: str = "",
        lease_expires_at: Optional[str] = None,
        priority: int = 0,
    ) -> None:
        #: The job's id.
        self.id = id
        #: The payload bytes, exactly as the client submitted them.
        self.payload = payload
        #: The submit request's headers, names lower-cased (credentials removed).
        self.headers: dict[str, str] = dict(headers or {})
        #: The queue it came from.
        self.queue = queue
        #: Which hand-out this is (1 for the first).
        self.attempt = attempt
        #: The fencing token of this hand-out; sent with every call about the job.
        self.lease_id = lease_id
        #: When the lease runs out unless extended (RFC 3339, server's clock).
        self.lease_expires_at = lease_expires_at
        #: The job's priority.
        self.priority = priority
        self._cancelled = threading.Event()

    def text(self) -> str:
        """The payload as UTF-8 text."""
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or its lease lost (its result would be refused).

        A long-running plain or generator handler should check it and return;
        an ``async`` handler is cancelled (``asyncio.CancelledError``) instead.
        """
        return self._cancelled.is_set()

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the job is cancelled or ``timeout`` passes; returns ``cancelled``."""
        return self._cancelled.wait(timeout)

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, queue={self.queue!r}, attempt={self.attempt})"


@dataclass
class _Handout:
    """A job plus what the worker keeps about its lease."""

    job: Job
    #: Seconds of lease left at hand-out, by the server's clock.
    lease_left: Optional[float]


@dataclass
class _Outcome:
    """What a handler made of a job: a result, or a failure."""

    result: Optional[bytes] = None
    error: Optional[str] = None
    retry: bool = True


class _Lost(Exception):
    """The job was cancelled or its lease lost: post nothing."""


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)?$")


def _parse_time(v: Any) -> Optional[dt.datetime]:
    """An RFC 3339 timestamp (any number of fraction digits, as Python 3.9's
    ``fromisoformat`` does not take)."""
    if not isinstance(v, str):
        return None
    m = _RFC3339.match(v.strip())
    if m is None:
        return None
    base, frac, tz = m.groups()
    text = base.replace("t", "T").replace(" ", "T") + "." + ((frac or "") + "000000")[:6]
    if tz and tz not in ("Z", "z"):
        text += tz
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _lease_left(expires: Any, date_header: Optional[str]) -> Optional[float]:
    """Seconds until ``expires`` by the server's clock (its ``Date`` header,
    whole seconds, so half a second is taken off), else by this machine's."""
    exp = _parse_time(expires)
    if exp is None:
        return None
    now: Optional[dt.datetime] = None
    if date_header:
        with contextlib.suppress(TypeError, ValueError):
            now = email.utils.parsedate_to_datetime(date_header)
    if now is not None:
        return max(0.0, (exp - now).total_seconds() - 0.5)
    return max(0.0, (exp - dt.datetime.now(dt.timezone.utc)).total_seconds())


def _heartbeat_interval(left: Optional[float]) -> float:
    return HEARTBEAT_FALLBACK if left is None else max(left / 3, HEARTBEAT_MIN)


def _handout_of(body: Any, raw: str, date_header: Optional[str]) -> _Handout:
    """A poll body (``raw`` its JSON text) as a job."""
    payload = _encoding.payload_of(raw)
    headers = body.get("headers")
    job = Job(
        str(body["job_id"]),
        payload if payload is not None else b"",
        headers={str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {},
        queue=str(body.get("queue") or "default"),
        attempt=int(body.get("attempt") or 1),
        lease_id=str(body.get("lease_id") or ""),
        lease_expires_at=body.get("lease_expires_at"),
        priority=int(body.get("priority") or 0),
    )
    return _Handout(job, _lease_left(body.get("lease_expires_at"), date_header))


def _jobs_of(resp: httpx.Response) -> list[_Handout]:
    """A poll (or complete-and-take-next) answer's jobs: a single poll body,
    or a batch ``{"jobs": [...]}``."""
    body = json.loads(resp.text)
    date = resp.headers.get("date")
    if isinstance(body, dict) and isinstance(body.get("jobs"), list):
        # Cut each job's raw text out of the list so payload bytes stay exact.
        raws = _split_array(_encoding.raw_fields(resp.text)["jobs"])
        return [_handout_of(b, r, date) for b, r in zip(body["jobs"], raws)]
    if isinstance(body, dict) and "job_id" in body:
        return [_handout_of(body, resp.text, date)]
    raise JobqError(f"unexpected poll answer: {resp.text[:200]!r}")


def _split_array(raw: str) -> list[str]:
    """The raw text of each element of a JSON array."""
    dec = json.JSONDecoder()
    s = raw.strip()
    out: list[str] = []
    i = 1
    while True:
        while i < len(s) and s[i] in " \t\r\n":
            i += 1
        if i >= len(s) or s[i] == "]":
            return out
        _, end = dec.raw_decode(s, i)
        out.append(s[i:end])
        i = end
        while i < len(s) and s[i] in " \t\r\n,":
            i += 1


def _to_bytes(value: Any) -> bytes:
    return _encoding.encode_value(value)[0]


def _join(chunks: list[Any]) -> bytes:
    """A generator's yields as its result: text and bytes concatenated;
    otherwise a JSON array of the yields."""
    if all(isinstance(c, (bytes, bytearray, memoryview, str)) for c in chunks):
        return b"".join(_to_bytes(c) for c in chunks)
    items = [
        bytes(c).decode("utf-8", "replace") if isinstance(c, (bytes, bytearray, memoryview)) else c
        for c in chunks
    ]
    return _to_bytes(items)


def _error_text(exc: BaseException) -> str:
    """The tail of an exception's traceback: what the waiting client reads."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return text if len(text) <= ERROR_TAIL else "…" + text[-ERROR_TAIL:]


class _Threads:
    """Daemon threads for plain handlers, reused from job to job.

    Daemon threads never hold up the exit of a worker that was forced to
    stop while a handler still ran. There are never more than the jobs in
    hand (the worker waits for a plain handler before it takes another job).
    """

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[Optional[Callable[[], None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0
            if start:
                self._started += 1
            else:
                self._idle -= 1
        self._tasks.put(fn)
        if start:
            threading.Thread(target=self._loop, name="jobq-handler", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn = self._tasks.get()
            if fn is None:
                return
            fn()
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """Ends every thread once it is done with its handler."""
        with self._lock:
            n, self._started, self._idle = self._started, 0, 0
        for _ in range(n):
            self._tasks.put(None)


class _Backoff:
    def __init__(self, first: float, cap: float) -> None:
        self._first, self._cap, self._next = first, cap, first

    def pause(self) -> float:
        d = self._next
        self._next = min(self._next * 2, self._cap)
        return d

    def reset(self) -> None:
        self._next = self._first


class Worker:
    """A worker for one server: ``Worker(url=...).run(handler)``.

    ``url`` defaults to ``$JOBQ_URL`` (else ``http://127.0.0.1:3000``),
    ``token`` to ``$JOBQ_TOKEN``. ``queues``: the queues to take jobs from,
    first non-empty wins (a list, or ``"a,b"``; default ``default``).
    ``concurrency``: jobs handled at once. ``long_poll``: seconds each poll
    waits for a job. ``backoff_max``: longest pause between tries while the
    server is away. ``handle_signals``: stop gracefully on SIGTERM/SIGINT
    (only possible in the main thread; elsewhere call :meth:`stop`).
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        token: Optional[str] = None,
        queues: Union[str, Iterable[str], None] = None,
        concurrency: int = 1,
        long_poll: float = LONG_POLL_DEFAULT,
        backoff_max: float = BACKOFF_MAX,
        handle_signals: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        self.url = _http.resolve_url(url)
        self.queues: list[str] = list(queues or ["default"])
        self.concurrency = concurrency
        self.long_poll = long_poll
        self.backoff_max = max(backoff_max, BACKOFF_FIRST)
        self.handle_signals = handle_signals
        self._token = _http.resolve_token(token)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_requested = 0  # signals or stop() calls before the loop ran
        self._lock = threading.Lock()
        # Capabilities learnt from the server's answers (None: not known yet).
        self._fused: Optional[bool] = None
        self._progress_ok = True

    # ---- public ----------------------------------------------------------

    def run(self, handler: Handler) -> None:
        """Runs until stopped (SIGTERM/SIGINT or :meth:`stop`): blocks.

        Raises Unauthorized when the server refuses this worker's token, and
        ApiError when it refuses to hand out jobs for another reason waiting
        will not fix (a malformed queue name).
        """
        asyncio.run(self.run_async(handler))

    def stop(self, force: bool = False) -> None:
        """Asks the worker to stop; safe from any thread or a signal handler.

        The first call stops taking jobs and lets the running ones finish;
        a second call (or ``force=True``) cancels the running ones too (they
        are failed with retry, so another worker gets them).
        """
        with self._lock:
            loop = self._loop
            if loop is None:
                self._stop_requested += 2 if force else 1
                return
        loop.call_soon_threadsafe(self._request_stop, force)

    async def run_async(self, handler: Handler) -> None:
        """:meth:`run` for a program that already has an asyncio loop."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._fatal: Optional[BaseException] = None
        self._inbox: collections.deque[_Handout] = collections.deque()
        self._wake = asyncio.Event()
        self._polling = False
        self._idle = 0
        self._running: set[asyncio.Task[Any]] = set()
        self._handler = handler
        self._threads = _Threads()
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_http.base_headers(self._token),
            timeout=CALL_TIMEOUT,
            limits=httpx.Limits(
                max_connections=self.concurrency * 3 + 2,
                max_keepalive_connections=self.concurrency * 3 + 2,
            ),
        )
        with self._lock:
            self._loop = loop
            early = self._stop_requested
        if early:
            self._request_stop(early > 1)
        signals = self._install_signals(loop)
        log.info(
            "jobq worker: %s, queues %s, concurrency %d",
            self.url,
            ",".join(self.queues),
            self.concurrency,
        )
        try:
            slots = [asyncio.create_task(self._slot()) for _ in range(self.concurrency)]
            await asyncio.gather(*slots)
        finally:
            for s in signals:
                loop.remove_signal_handler(s)
            await self._http.aclose()
            self._threads.close()
            with self._lock:
                self._loop = None
        if self._fatal is not None:
            raise self._fatal
        log.info("jobq worker stopped")

    # ---- stopping --------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on POSIX
                continue
            installed.append(sig)
        return installed

    def _on_signal(self, sig: int) -> None:
        log.warning("jobq worker: got %s", signal.Signals(sig).name)
        self._request_stop(self._stopping.is_set())

    def _request_stop(self, force: bool) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            self._wake.set()
            log.warning(
                "jobq worker stopping: %d running job(s) finish, no new jobs are taken "
                "(a second signal cancels them)",
                len(self._running),
            )
        if force and not self._forced.is_set():
            self._forced.set()
            log.warning("jobq worker: cancelling %d running job(s)", len(self._running))
            for t in self._running:
                t.cancel()

    async def _unless_stopping(self, aw: Awaitable[T]) -> tuple[bool, Optional[T]]:
        """Awaits ``aw`` unless the worker starts stopping first: ``(done, result)``."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return False, None

    async def _pause(self, secs: float) -> bool:
        """Sleeps ``secs`` unless stopping; False when stopping cut it short."""
        done, _ = await self._unless_stopping(asyncio.sleep(secs))
        return done

    def _set_fatal(self, e: BaseException) -> None:
        if self._fatal is None:
            self._fatal = e
            log.error("jobq worker: %s; stopping", e)
        self._request_stop(False)

    # ---- the loop of one slot -------------------------------------------

    async def _slot(self) -> None:
        h: Optional[_Handout] = None
        while True:
            if h is None:
                h = await self._next_job()
                if h is None:
                    return
            task = asyncio.create_task(self._execute(h))
            self._running.add(task)
            try:
                outcome = await task
            except asyncio.CancelledError:
                if not self._forced.is_set():
                    raise
                outcome = _Outcome(error="the worker was stopped before the job finished")
            finally:
                self._running.discard(task)
            h = await self._report(h, outcome)

    async def _next_job(self) -> Optional[_Handout]:
        """A job from the inbox, or polled for it; None when stopping."""
        self._idle += 1
        try:
            while True:
                if self._inbox:
                    return self._inbox.popleft()
                if self._stopping.is_set():
                    return None
                if self._polling:
                    wake = self._wake
                    await wake.wait()
                    continue
                self._polling = True
                try:
                    self._inbox.extend(await self._poll(self._idle))
                finally:
                    self._polling = False
                    wake, self._wake = self._wake, asyncio.Event()
                    wake.set()
        finally:
            self._idle -= 1

    async def _poll(self, want: int) -> list[_Handout]:
        """Long-polls for up to ``want`` jobs (batch poll where the server has it)."""
        params = {"queue": ",".join(self.queues), "wait": _http.fmt_secs(self.long_poll)}
        if want > 1:
            params["max"] = str(want)
        backoff = _Backoff(BACKOFF_FIRST, self.backoff_max)
        away = False
        while not self._stopping.is_set():
            done, resp = await self._unless_stopping(
                self._call(
                    "GET",
                    "/api/worker/poll",
                    params=params,
                    timeout=httpx.Timeout(CALL_TIMEOUT, read=self.long_poll + POLL_SLACK),
                )
            )
            if not done:
                return []
            problem = None
            if isinstance(resp, Exception):
                problem = f"server unreachable ({resp})"
            elif resp is not None and (resp.status_code == 503 or resp.status_code >= 500):
                problem = f"server answered {resp.status_code}"
            if problem is not None or not isinstance(resp, httpx.Response):
                if not away:
                    log.warning(
                        "jobq worker: %s; retrying with backoff (up to %gs between tries)",
                        problem,
                        self.backoff_max,
                    )
                    away = True
                if not await self._pause(backoff.pause()):
                    return []
                continue
            if away:
                log.warning("jobq worker: server is back")
            if resp.status_code == 204:
                return []
            if resp.status_code == 200:
                try:
                    return _jobs_of(resp)
                except (ValueError, KeyError, JobqError) as e:
                    log.error("jobq worker: malformed poll answer: %s", e)
                    return []
            self._set_fatal(_http.error_for(resp.status_code, resp.text, resp.headers))
            return []
        return []

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, str]] = None,
        headers: Optional[Mapping[str, str]] = None,
        content: Optional[bytes] = None,
        timeout: Union[float, httpx.Timeout] = CALL_TIMEOUT,
    ) -> Union[httpx.Response, Exception]:
        """One request; a transport failure is returned, not raised."""
        try:
            return await self._http.request(
                method, path, params=params, headers=headers, content=content, timeout=timeout
            )
        except httpx.TransportError as e:
            return e

    # ---- one job ---------------------------------------------------------

    async def _execute(self, h: _Handout) -> Optional[_Outcome]:
        """Runs the handler beside its heartbeats; None when the job was lost."""
        job = h.job
        lost = asyncio.Event()
        progress = _Progress(self, job, lost)
        beat = asyncio.create_task(self._heartbeats(h, lost))
        run = asyncio.create_task(self._invoke(job, progress))
        gone = asyncio.create_task(lost.wait())
        try:
            await asyncio.wait({run, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                # Lost: an async handler is cancelled; a thread sees job.cancelled
                # and is waited for, so concurrency stays a bound.
                job._cancelled.set()
                run.cancel()
                with contextlib.suppress(BaseException):
                    await run
                log.warning("jobq worker: job %s was cancelled or its lease lost", job.id)
                return None
            try:
                outcome = run.result()
            except _Lost:
                return None
            if lost.is_set():
                return None
            await progress.drain()
            return None if lost.is_set() else outcome
        finally:
            if not run.done():  # the worker was forced to stop
                job._cancelled.set()
                run.cancel()
            gone.cancel()
            beat.cancel()
            progress.close()
            with contextlib.suppress(BaseException):
                await beat

    async def _invoke(self, job: Job, progress: _Progress) -> _Outcome:
        """Calls the handler, whatever its kind, and turns its end into an outcome."""
        handler = self._handler
        try:
            if inspect.isasyncgenfunction(handler) or inspect.iscoroutinefunction(handler):
                value = handler(job)
            else:
                value = await self._in_thread(lambda: self._call_sync(handler, job, progress))
                if isinstance(value, _Outcome):
                    return value
            if inspect.isawaitable(value):
                value = await value
            if isinstance(value, AsyncGenerator):
                return await self._drive_async_gen(value, job, progress)
            return _Outcome(result=_to_bytes(value))
        except Fail as e:
            return _Outcome(error=e.message, retry=e.retry)
        except _Lost:
            raise
        except Exception as e:
            log.warning("jobq worker: job %s raised %r", job.id, e)
            return _Outcome(error=_error_text(e))

    def _call_sync(self, handler: Handler, job: Job, progress: _Progress) -> Any:
        """In a thread: calls a plain handler; drives a generator it returns."""
        value = handler(job)
        if not isinstance(value, Generator):
            return value
        chunks: list[Any] = []
        while True:
            if job.cancelled:
                value.close()
                raise _Lost
            try:
                chunk = next(value)
            except StopIteration as stop:
                result = stop.value
                break
            chunks.append(chunk)
            progress.put_threadsafe(chunk)
        return _Outcome(result=_to_bytes(result) if result is not None else _join(chunks))

    async def _drive_async_gen(
        self, gen: AsyncGenerator[Any, None], job: Job, progress: _Progress
    ) -> _Outcome:
        chunks: list[Any] = []
        try:
            async for chunk in gen:
                chunks.append(chunk)
                progress.put(chunk)
                if job.cancelled:
                    raise _Lost
        finally:
            await gen.aclose()
        # An async generator cannot return a value: its yields are the result.
        return _Outcome(result=_join(chunks))

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` in one of the worker's handler threads."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, v: Any) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(v)
            else:
                fut.set_exception(v)

        def body() -> None:
            try:
                v = fn()
            except BaseException as e:
                with contextlib.suppress(RuntimeError):  # the loop is gone
                    loop.call_soon_threadsafe(settle, False, e)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, True, v)

        self._threads.submit(body)
        return await fut

    async def _heartbeats(self, h: _Handout, lost: asyncio.Event) -> None:
        """Extends the lease every third of what is left of it, until cancelled;
        a ``409``/``404`` marks the job lost."""
        interval = _heartbeat_interval(h.lease_left)
        job = h.job
        while True:
            await asyncio.sleep(interval)
            resp = await self._call(
                "POST",
                f"/api/worker/heartbeat/{_q(job.id)}",
                headers={"x-lease-id": job.lease_id},
                timeout=min(CALL_TIMEOUT, max(interval, 1.0)),
            )
            if isinstance(resp, Exception):
                log.debug("jobq worker: heartbeat of %s failed: %s", job.id, resp)
                interval = min(interval, 1.0)
                continue
            if resp.status_code == 200:
                with contextlib.suppress(ValueError):
                    left = _lease_left(
                        json.loads(resp.text).get("lease_expires_at"), resp.headers.get("date")
                    )
                    interval = _heartbeat_interval(left)
            elif resp.status_code in (404, 409):
                job._cancelled.set()
                lost.set()
                return
            else:
                log.debug("jobq worker: heartbeat of %s answered %d", job.id, resp.status_code)

    async def _report(self, h: _Handout, outcome: Optional[_Outcome]) -> Optional[_Handout]:
        """Posts the outcome (with the lease); returns the next job when the
        server hands one out with its answer (complete-and-take-next)."""
        if outcome is None:
            return None
        job = h.job
        if outcome.result is not None:
            path, body = f"/api/worker/complete/{_q(job.id)}", outcome.result
        else:
            path = f"/api/worker/fail/{_q(job.id)}"
            body = json.dumps({"error": outcome.error, "retry": outcome.retry}).encode()
        headers = {"x-lease-id": job.lease_id}
        if outcome.result is None:
            headers["content-type"] = "application/json"
        deadline = time.monotonic() + POST_RETRY_WINDOW
        backoff = _Backoff(BACKOFF_FIRST, self.backoff_max)
        while True:
            take_next = self._fused is not False and not self._stopping.is_set()
            params = {}
            if take_next:
                params = {
                    "next": "1",
                    "queue": ",".join(self.queues),
                    "wait": _http.fmt_secs(self.long_poll),
                }
            call = self._call(
                "POST",
                path,
                params=params,
                headers=headers,
                content=body,
                timeout=httpx.Timeout(
                    CALL_TIMEOUT, read=CALL_TIMEOUT + (self.long_poll if take_next else 0)
                ),
            )
            if take_next:
                done, resp = await self._unless_stopping(call)
                if not done:
                    # Stopping while the server waited for a next job: post the
                    # outcome again without asking for one (a complete with the
                    # same lease is idempotent).
                    continue
            else:
                resp = await call
            if isinstance(resp, Exception) or (resp is not None and resp.status_code >= 500):
                if time.monotonic() >= deadline or self._forced.is_set():
                    log.error("jobq worker: could not post the outcome of %s: %s", job.id, resp)
                    return None
                await asyncio.sleep(backoff.pause())
                continue
            assert resp is not None
            if resp.status_code == 413 and outcome.result is not None:
                msg = _http.error_for(resp.status_code, resp.text, resp.headers).message
                log.error("jobq worker: result of %s refused as too large: %s", job.id, msg)
                too_large = _Outcome(error=f"result refused by the server: {msg}", retry=False)
                return await self._report(h, too_large)
            return self._after_report(h, resp, take_next)

    def _after_report(
        self, h: _Handout, resp: httpx.Response, asked_next: bool
    ) -> Optional[_Handout]:
        job = h.job
        status = resp.status_code
        if status == 204:
            self._fused = True
            return None
        if status == 200:
            if not asked_next:
                return None
            try:
                body = json.loads(resp.text)
            except ValueError:
                return None
            if isinstance(body, dict) and ("lease_id" in body or "jobs" in body):
                self._fused = True
                try:
                    jobs = _jobs_of(resp)
                except (ValueError, KeyError, JobqError):
                    return None
                if not jobs:
                    return None
                self._inbox.extend(jobs[1:])
                return jobs[0]
            # A server without complete-and-take-next ignores ?next=1.
            self._fused = False
            return None
        err = _http.error_for(status, resp.text, resp.headers)
        if isinstance(err, Unauthorized):
            self._set_fatal(err)
        elif status in (404, 409):
            log.warning("jobq worker: outcome of %s not taken: %s", job.id, err.message)
        else:
            log.error("jobq worker: outcome of %s refused: %s", job.id, err)
        return None


def _q(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


class _Progress:
    """Posts a job's yields as progress events, in order, beside the handler.

    When the server lacks the progress route (``404 no such route``), the
    worker stops sending them: the yields only make up the result.
    """

    def __init__(self, worker: Worker, job: Job, lost: asyncio.Event) -> None:
        self._w = worker
        self._job = job
        self._lost = lost
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Optional[bytes]] = asyncio.Queue()
        self._task: Optional[asyncio.Task[None]] = None

    def put(self, chunk: Any) -> None:
        if not self._w._progress_ok:
            return
        if self._task is None:
            self._task = asyncio.create_task(self._send())
        self._queue.put_nowait(_to_bytes(chunk))

    def put_threadsafe(self, chunk: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.put, chunk)

    async def drain(self) -> None:
        """Waits until every chunk was posted (so they precede the result)."""
        # Chunks sent from a thread may still be in the loop's queue: let them in.
        await asyncio.sleep(0)
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._task

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _send(self) -> None:
        job = self._job
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            if not self._w._progress_ok or self._lost.is_set():
                continue
            resp = await self._w._call(
                "POST",
                f"/api/worker/progress/{_q(job.id)}",
                headers={"x-lease-id": job.lease_id},
                content=chunk,
            )
            if isinstance(resp, Exception):
                log.debug("jobq worker: progress of %s not sent: %s", job.id, resp)
                continue
            if resp.status_code == 200:
                continue
            err = _http.error_for(resp.status_code, resp.text, resp.headers)
            if resp.status_code == 404 and err.message == "no such route":
                log.info("jobq worker: the server has no progress events; yields only join")
                self._w._progress_ok = False
            elif resp.status_code in (404, 409):
                job._cancelled.set()
                self._lost.set()
            elif isinstance(err, ApiError):
                log.debug("jobq worker: progress of %s refused: %s", job.id, err)


def run(
    handler: Handler,
    url: Optional[str] = None,
    *,
    token: Optional[str] = None,
    queues: Union[str, Iterable[str], None] = None,
    concurrency: int = 1,
    **options: Any,
) -> None:
    """Runs ``handler`` as a worker until SIGTERM/SIGINT: ``Worker(...).run(handler)``."""
    Worker(url, token=token, queues=queues, concurrency=concurrency, **options).run(handler)
