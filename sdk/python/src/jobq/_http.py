"""What the sync and async clients share: configuration, request building,
mapping answers to results and typed errors, and the SSE parser."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Optional

from . import _encoding
from ._errors import (
    ApiError,
    Conflict,
    JobCancelled,
    JobFailed,
    NotFound,
    ProtocolError,
    QueueFull,
    StillRunning,
    Unauthorized,
    Unavailable,
)
from ._types import Event, Result

#: The server when neither ``url=`` nor ``JOBQ_URL`` names one.
URL_DEFAULT = "http://127.0.0.1:3000"

#: What every request's ``User-Agent`` says.
USER_AGENT = "jobq-python/0.1.0"


def resolve_url(url: Optional[str]) -> str:
    """``url``, else ``$JOBQ_URL``, else :data:`URL_DEFAULT`, without a trailing slash."""
    u = url or os.environ.get("JOBQ_URL") or URL_DEFAULT
    return u.rstrip("/")


def resolve_token(token: Optional[str]) -> Optional[str]:
    """``token``, else ``$JOBQ_TOKEN``, else none."""
    if token is not None:
        return token or None
    return os.environ.get("JOBQ_TOKEN") or None


def base_headers(token: Optional[str]) -> dict[str, str]:
    h = {"user-agent": USER_AGENT}
    if token:
        h["authorization"] = f"Bearer {token}"
    return h


def fmt_secs(s: float) -> str:
    """Seconds as the server reads them (no exponent, no trailing zeros)."""
    if s < 0:
        raise ValueError("a number of seconds must not be negative")
    text = f"{s:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def submit_params(
    queue: Optional[str], priority: Optional[int], timeout: Optional[float]
) -> dict[str, str]:
    p: dict[str, str] = {}
    if queue is not None:
        p["queue"] = queue
    if priority is not None:
        p["priority"] = str(int(priority))
    if timeout is not None:
        p["timeout"] = fmt_secs(timeout)
    return p


def submit_headers(
    content_type: Optional[str],
    idempotency_key: Optional[str],
    extra: Optional[Mapping[str, str]],
) -> dict[str, str]:
    h: dict[str, str] = {}
    if content_type:
        h["content-type"] = content_type
    if idempotency_key is not None:
        h["idempotency-key"] = idempotency_key
    if extra:
        h.update({k.lower(): v for k, v in extra.items()})
    return h


def body_of(payload: Any, content_type: Optional[str]) -> tuple[bytes, Optional[str]]:
    data, ct = _encoding.encode_value(payload)
    return data, content_type or ct


def _parse(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    v = headers.get("retry-after")
    if v is None:
        return None
    try:
        return float(v.strip())
    except ValueError:
        return None


def error_for(status: int, text: str, headers: Mapping[str, str]) -> ApiError:
    """The typed error for a refusal."""
    body = _parse(text)
    message = body.get("error") if isinstance(body, dict) else None
    if not isinstance(message, str):
        message = text.strip() or f"HTTP {status}"
    if status in (401, 403):
        return Unauthorized(status, message, body)
    if status == 404:
        return NotFound(status, message, body)
    if status == 409:
        return Conflict(status, message, body)
    if status == 503:
        retry = _retry_after(headers)
        cls = QueueFull if "queue is full" in message else Unavailable
        return cls(status, message, body, retry)
    return ApiError(status, message, body)


def outcome_of(
    status: int, text: str, header_job_id: Optional[str], headers: Mapping[str, str]
) -> Result:
    """A submit's (or a final event's) answer as a Result, or its typed exception."""
    body = _parse(text)
    job_id = header_job_id or ""
    if isinstance(body, dict) and isinstance(body.get("job_id"), str):
        job_id = body["job_id"]
    if status == 200:
        if not isinstance(body, dict):
            raise ProtocolError(f"a 200 answer that is not a JSON object: {text[:200]!r}")
        content = _encoding.payload_of(text)
        return Result(
            job_id=job_id,
            content=content if content is not None else b"",
            created_at=body.get("created_at"),
            completed_at=body.get("completed_at"),
        )
    if status == 202:
        st = body.get("status") if isinstance(body, dict) else None
        raise StillRunning(job_id, st if isinstance(st, str) else None)
    if status == 502 and job_id:
        err = body.get("error") if isinstance(body, dict) else None
        att = body.get("attempts") if isinstance(body, dict) else None
        raise JobFailed(
            job_id,
            err if isinstance(err, str) else "job failed",
            att if isinstance(att, int) else None,
        )
    if status == 410 and job_id:
        raise JobCancelled(job_id)
    raise error_for(status, text, headers)


def job_id_from_accepted(status: int, text: str, headers: Mapping[str, str]) -> str:
    """The job id of a ``202`` from ``POST /api/jobs``."""
    if status != 202:
        raise error_for(status, text, headers)
    body = _parse(text)
    if not isinstance(body, dict) or not isinstance(body.get("job_id"), str):
        raise ProtocolError(f"a 202 answer without job_id: {text[:200]!r}")
    return str(body["job_id"])


#: A plain (non-SSE) submit answer's status -> the final event kind it stands for.
PLAIN_KINDS = {200: "result", 502: "failed", 410: "cancelled", 202: "accepted"}


def plain_event(status: int, text: str, headers: Mapping[str, str]) -> Event:
    """The one final event a server without streaming stands for."""
    kind = PLAIN_KINDS.get(status)
    if kind is None or (status in (502, 410) and not isinstance(_parse(text), dict)):
        raise error_for(status, text, headers)
    return Event(kind=kind, id=None, data=text)


def is_event_stream(content_type: Optional[str]) -> bool:
    return bool(content_type) and str(content_type).split(";")[0].strip().lower() == (
        "text/event-stream"
    )


class SSEParser:
    """Server-sent events, one line at a time (the WHATWG parsing rules)."""

    def __init__(self) -> None:
        self._kind = ""
        self._data: list[str] = []
        self._id: Optional[str] = None
        self._last_id: Optional[str] = None

    def feed(self, line: str) -> Optional[Event]:
        """One line without its line ending; returns an event a blank line completes."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def finish(self) -> Optional[Event]:
        """An event left without its blank line when the stream ended."""
        return self._dispatch()

    def _dispatch(self) -> Optional[Event]:
        if self._id is not None:
            self._last_id = self._id
        if not self._data and not self._kind:
            self._id = None
            return None
        ev = Event(kind=self._kind or "message", id=self._id, data="\n".join(self._data))
        self._kind, self._data, self._id = "", [], None
        return ev
