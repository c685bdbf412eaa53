"""The client side: submit jobs and get their results, sync or async.

Both clients speak the same API with the same arguments; :class:`AsyncClient`
is :class:`Client` with ``await`` (and ``async for`` for streams).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any, Optional

import httpx

from . import _http
from ._errors import JobCancelled, JobFailed, ProtocolError, StillRunning, Unreachable
from ._types import Event, JobInfo, Result

#: How long any request may take that does not wait for a job.
HTTP_TIMEOUT_DEFAULT = 30.0

#: Longest single ``GET /api/jobs/{id}?wait=`` that :meth:`Client.wait` sends.
_WAIT_STEP = 60.0

#: Extra time a waiting request gets beyond the wait it asked the server for.
_WAIT_SLACK = 30.0


def _wait_timeout(base: float, wait: Optional[float]) -> httpx.Timeout:
    """The HTTP timeout of a request that asks the server to wait ``wait`` s.

    ``None`` (the server's default wait) or ``0`` (forever): no read timeout,
    the server bounds the wait.
    """
    read = None if not wait else wait + _WAIT_SLACK
    return httpx.Timeout(base, read=read)


def _job_path(job_id: str) -> str:
    return "/api/jobs/" + urllib.parse.quote(job_id, safe="")


def _result_of_view(info: JobInfo) -> Result:
    if info.status == "completed":
        return Result(
            job_id=info.job_id,
            content=info.content if info.content is not None else b"",
            created_at=info.created_at,
            completed_at=info.completed_at,
        )
    if info.status == "failed":
        raise JobFailed(info.job_id, info.error or "job failed", info.attempts)
    if info.status == "cancelled":
        raise JobCancelled(info.job_id)
    raise StillRunning(info.job_id, info.status)


class Client:
    """A blocking client.

    ``url`` defaults to ``$JOBQ_URL`` (else ``http://127.0.0.1:3000``) and
    ``token`` to ``$JOBQ_TOKEN``; a token is sent as ``Authorization: Bearer``.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        token: Optional[str] = None,
        http_timeout: float = HTTP_TIMEOUT_DEFAULT,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.url = _http.resolve_url(url)
        self._timeout = http_timeout
        self._http = httpx.Client(
            base_url=self.url,
            headers=_http.base_headers(_http.resolve_token(token)),
            timeout=http_timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    def _send(self, req: httpx.Request, stream: bool = False) -> httpx.Response:
        try:
            return self._http.send(req, stream=stream)
        except httpx.TransportError as e:
            raise Unreachable(f"{req.method} {req.url}: {e!r}") from e

    def submit(
        self,
        payload: Any,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        content_type: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Result:
        """Submits a job and waits for its result (``POST /api/submit``).

        ``payload``: bytes and str are sent as they are, anything else as JSON.
        ``timeout``: seconds to wait (``0``: forever; default: the server's).

        Raises JobFailed, JobCancelled, StillRunning (the wait ran out; the
        job goes on), QueueFull, Unauthorized, ApiError or Unreachable.
        """
        body, ct = _http.body_of(payload, content_type)
        req = self._http.build_request(
            "POST",
            "/api/submit",
            params=_http.submit_params(queue, priority, timeout),
            headers=_http.submit_headers(ct, idempotency_key, headers),
            content=body,
            timeout=_wait_timeout(self._timeout, timeout),
        )
        r = self._send(req)
        return _http.outcome_of(r.status_code, r.text, r.headers.get("x-job-id"), r.headers)

    def enqueue(
        self,
        payload: Any,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        content_type: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> str:
        """Submits a job without waiting (``POST /api/jobs``); returns its id."""
        body, ct = _http.body_of(payload, content_type)
        req = self._http.build_request(
            "POST",
            "/api/jobs",
            params=_http.submit_params(queue, priority, None),
            headers=_http.submit_headers(ct, idempotency_key, headers),
            content=body,
        )
        r = self._send(req)
        return _http.job_id_from_accepted(r.status_code, r.text, r.headers)

    def job(self, job_id: str, *, wait: Optional[float] = None) -> JobInfo:
        """The job as it stands (``GET /api/jobs/{id}``).

        With ``wait``, the server holds the request until the job ends or
        ``wait`` seconds pass. Raises NotFound for an unknown or forgotten id.
        """
        params = {"wait": _http.fmt_secs(wait)} if wait else {}
        req = self._http.build_request(
            "GET", _job_path(job_id), params=params, timeout=_wait_timeout(self._timeout, wait)
        )
        r = self._send(req)
        if r.status_code != 200:
            raise _http.error_for(r.status_code, r.text, r.headers)
        return JobInfo.from_body(r.text)

    def wait(self, job_id: str, *, timeout: Optional[float] = None) -> Result:
        """Waits for a job to end and returns its result.

        ``timeout``: seconds (default: forever). Raises JobFailed,
        JobCancelled, or StillRunning when the time ran out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_STEP if deadline is None else deadline - time.monotonic()
            info = self.job(job_id, wait=max(0.0, min(left, _WAIT_STEP)) or None)
            if info.ended or (deadline is not None and time.monotonic() >= deadline):
                return _result_of_view(info)

    def cancel(self, job_id: str) -> JobInfo:
        """Cancels a pending or running job (``DELETE /api/jobs/{id}``).

        Its waiting client gets JobCancelled; its worker is told to stop.
        Raises NotFound, or Conflict for a job that has already ended.
        """
        r = self._send(self._http.build_request("DELETE", _job_path(job_id)))
        if r.status_code != 200:
            raise _http.error_for(r.status_code, r.text, r.headers)
        return JobInfo.from_body(r.text)

    def stream(
        self,
        payload: Any,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        content_type: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Iterator[Event]:
        """Submits a job and yields its events as they come.

        ``progress`` events carry what the handler yields; the last event is
        the final one (``result``, ``failed``, ``cancelled``, or ``accepted``
        when the wait ran out). A server without streaming answers the plain
        way: then the stream is that one final event.
        """
        body, ct = _http.body_of(payload, content_type)
        h = _http.submit_headers(ct, idempotency_key, headers)
        h["accept"] = "text/event-stream"
        req = self._http.build_request(
            "POST",
            "/api/submit",
            params=_http.submit_params(queue, priority, timeout),
            headers=h,
            content=body,
            timeout=_wait_timeout(self._timeout, timeout),
        )
        r = self._send(req, stream=True)
        try:
            if not _http.is_event_stream(r.headers.get("content-type")):
                r.read()
                yield _http.plain_event(r.status_code, r.text, r.headers)
                return
            parser = _http.SSEParser()
            try:
                for line in r.iter_lines():
                    ev = parser.feed(line)
                    if ev is not None:
                        yield ev
                        if ev.final:
                            return
            except httpx.TransportError as e:
                raise Unreachable(f"the event stream broke off: {e!r}") from e
            ev = parser.finish()
            if ev is not None:
                yield ev
                if ev.final:
                    return
            raise ProtocolError("the event stream ended without a final event")
        finally:
            r.close()


class AsyncClient:
    """The asyncio twin of :class:`Client`: same arguments, ``await`` each call."""

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        token: Optional[str] = None,
        http_timeout: float = HTTP_TIMEOUT_DEFAULT,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self.url = _http.resolve_url(url)
        self._timeout = http_timeout
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_http.base_headers(_http.resolve_token(token)),
            timeout=http_timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    async def _send(self, req: httpx.Request, stream: bool = False) -> httpx.Response:
        try:
            return await self._http.send(req, stream=stream)
        except httpx.TransportError as e:
            raise Unreachable(f"{req.method} {req.url}: {e!r}") from e

    async def submit(
        self,
        payload: Any,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        content_type: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Result:
        """See :meth:`Client.submit`."""
        body, ct = _http.body_of(payload, content_type)
        req = self._http.build_request(
            "POST",
            "/api/submit",
            params=_http.submit_params(queue, priority, timeout),
            headers=_http.submit_headers(ct, idempotency_key, headers),
            content=body,
            timeout=_wait_timeout(self._timeout, timeout),
        )
        r = await self._send(req)
        return _http.outcome_of(r.status_code, r.text, r.headers.get("x-job-id"), r.headers)

    async def enqueue(
        self,
        payload: Any,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        content_type: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> str:
        """See :meth:`Client.enqueue`."""
        body, ct = _http.body_of(payload, content_type)
        req = self._http.build_request(
            "POST",
            "/api/jobs",
            params=_http.submit_params(queue, priority, None),
            headers=_http.submit_headers(ct, idempotency_key, headers),
            content=body,
        )
        r = await self._send(req)
        return _http.job_id_from_accepted(r.status_code, r.text, r.headers)

    async def job(self, job_id: str, *, wait: Optional[float] = None) -> JobInfo:
        """See :meth:`Client.job`."""
        params = {"wait": _http.fmt_secs(wait)} if wait else {}
        req = self._http.build_request(
            "GET", _job_path(job_id), params=params, timeout=_wait_timeout(self._timeout, wait)
        )
        r = await self._send(req)
        if r.status_code != 200:
            raise _http.error_for(r.status_code, r.text, r.headers)
        return JobInfo.from_body(r.text)

    async def wait(self, job_id: str, *, timeout: Optional[float] = None) -> Result:
        """See :meth:`Client.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_STEP if deadline is None else deadline - time.monotonic()
            info = await self.job(job_id, wait=max(0.0, min(left, _WAIT_STEP)) or None)
            if info.ended or (deadline is not None and time.monotonic() >= deadline):
                return _result_of_view(info)

    async def cancel(self, job_id: str) -> JobInfo:
        """See :meth:`Client.cancel`."""
        r = await self._send(self._http.build_request("DELETE", _job_path(job_id)))
        if r.status_code != 200:
            raise _http.error_for(r.status_code, r.text, r.headers)
        return JobInfo.from_body(r.text)

    async def stream(
        self,
        payload: Any,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        content_type: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> AsyncIterator[Event]:
        """See :meth:`Client.stream` (iterate it with ``async for``)."""
        body, ct = _http.body_of(payload, content_type)
        h = _http.submit_headers(ct, idempotency_key, headers)
        h["accept"] = "text/event-stream"
        req = self._http.build_request(
            "POST",
            "/api/submit",
            params=_http.submit_params(queue, priority, timeout),
            headers=h,
            content=body,
            timeout=_wait_timeout(self._timeout, timeout),
        )
        r = await self._send(req, stream=True)
        try:
            if not _http.is_event_stream(r.headers.get("content-type")):
                await r.aread()
                yield _http.plain_event(r.status_code, r.text, r.headers)
                return
            parser = _http.SSEParser()
            try:
                async for line in r.aiter_lines():
                    ev = parser.feed(line)
                    if ev is not None:
                        yield ev
                        if ev.final:
                            return
            except httpx.TransportError as e:
                raise Unreachable(f"the event stream broke off: {e!r}") from e
            ev = parser.finish()
            if ev is not None:
                yield ev
                if ev.final:
                    return
            raise ProtocolError("the event stream ended without a final event")
        finally:
            await r.aclose()
