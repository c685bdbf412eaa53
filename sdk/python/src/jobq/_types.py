"""Values the client hands back: results, job views, stream events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from . import _encoding

#: Final event kinds of a stream, after which nothing follows.
FINAL_KINDS = frozenset({"result", "failed", "cancelled", "accepted"})


@dataclass(frozen=True)
class Result:
    """A completed job's result."""

    #: The job.
    job_id: str
    #: The result bytes, as the worker returned them.
    content: bytes
    #: When the job was created and completed (RFC 3339, UTC), as the server said.
    created_at: Optional[str] = None
    completed_at: Optional[str] = None

    def text(self) -> str:
        """The result as UTF-8 text."""
        return self.content.decode("utf-8")

    def json(self) -> Any:
        """The result parsed as JSON."""
        return json.loads(self.content)


@dataclass(frozen=True)
class JobInfo:
    """A job as ``GET /api/jobs/{id}`` shows it."""

    #: The job.
    job_id: str
    #: ``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``.
    status: str
    #: Its queue.
    queue: str
    #: How many times it was handed out to a worker.
    attempts: int
    #: Its priority.
    priority: int
    #: Timestamps (RFC 3339, UTC); ``None`` until set.
    created_at: Optional[str]
    started_at: Optional[str]
    completed_at: Optional[str]
    #: The result bytes once completed.
    content: Optional[bytes]
    #: The error of a failed job (or of the last attempt while a retry is pending).
    error: Optional[str]
    #: Jobs ahead of it in its queue while pending.
    position: Optional[int]
    #: The whole answer, parsed.
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def ended(self) -> bool:
        """Whether the job has ended (completed, failed or cancelled)."""
        return self.status in ("completed", "failed", "cancelled")

    @classmethod
    def from_body(cls, text: str) -> JobInfo:
        d = json.loads(text)
        return cls(
            job_id=str(d.get("job_id", "")),
            status=str(d.get("status", "")),
            queue=str(d.get("queue", "")),
            attempts=int(d.get("attempts") or 0),
            priority=int(d.get("priority") or 0),
            created_at=d.get("created_at"),
            started_at=d.get("started_at"),
            completed_at=d.get("completed_at"),
            content=_encoding.payload_of(text) if "payload" in d else None,
            error=d.get("error"),
            position=d.get("position"),
            raw=d,
        )


@dataclass(frozen=True)
class Event:
    """One event of a streamed submit.

    ``kind`` is ``progress`` (a chunk the handler yielded), ``gap`` (events
    were dropped from a full buffer), or one of the final kinds, which ends
    the stream: ``result``, ``failed``, ``cancelled`` or ``accepted`` (the
    wait ran out; the job goes on).
    """

    #: ``progress``, ``gap``, ``result``, ``failed``, ``cancelled`` or ``accepted``.
    kind: str
    #: The event's id (a progress event's sequence number), if it had one.
    id: Optional[str]
    #: The event's data: JSON text (a progress chunk by the payload encoding;
    #: for a final event the body the plain request would have had).
    data: str

    @property
    def final(self) -> bool:
        """Whether this is the final event of the stream."""
        return self.kind in FINAL_KINDS

    def json(self) -> Any:
        """``data`` parsed as JSON."""
        return json.loads(self.data)

    @property
    def content(self) -> bytes:
        """The bytes this event carries.

        For ``progress``, the chunk as the handler yielded it; for ``result``,
        the job's result; for other kinds, ``data`` as bytes.
        """
        if self.kind == "progress":
            return _encoding.chunk_of(self.data)
        if self.kind == "result":
            return _encoding.payload_of(self.data) or b""
        return self.data.encode("utf-8")

    def text(self) -> str:
        """``content`` as UTF-8 text."""
        return self.content.decode("utf-8")

    @property
    def job_id(self) -> Optional[str]:
        """The job a final event is about."""
        if not self.final:
            return None
        try:
            v = json.loads(self.data).get("job_id")
        except (ValueError, AttributeError):
            return None
        return v if isinstance(v, str) else None

    def result(self) -> Result:
        """The outcome of a final event as a Result, or its typed exception.

        Raises JobFailed, JobCancelled or StillRunning for those kinds, and
        ValueError for a non-final event.
        """
        from ._http import outcome_of  # noqa: PLC0415 - avoids an import cycle

        status = {"result": 200, "failed": 502, "cancelled": 410, "accepted": 202}.get(self.kind)
        if status is None:
            raise ValueError(f"a {self.kind} event has no outcome")
        return outcome_of(status, self.data, None, {})
