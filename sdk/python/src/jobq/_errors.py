"""The exceptions of the SDK: one per outcome a caller may want to handle."""

from __future__ import annotations

from typing import Any


class JobqError(Exception):
    """The base of every error this package raises."""


class Unreachable(JobqError):
    """The server could not be reached (connection refused, reset, timed out)."""


class ProtocolError(JobqError):
    """The server answered something this SDK does not understand."""


class JobFailed(JobqError):
    """The job failed (``502``): a worker gave up on it, or it ran out of attempts."""

    def __init__(self, job_id: str, error: str, attempts: int | None = None) -> None:
        super().__init__(f"job {job_id} failed: {error}")
        #: The job.
        self.job_id = job_id
        #: The worker's error text.
        self.error = error
        #: How many times the job was handed out.
        self.attempts = attempts


class JobCancelled(JobqError):
    """The job was cancelled, or its queue cleared (``410``)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was cancelled")
        #: The job.
        self.job_id = job_id


class StillRunning(JobqError):
    """The wait ran out before the job ended (``202``); the job goes on.

    Fetch its outcome later with ``Client.wait(e.job_id)``.
    """

    def __init__(self, job_id: str, status: str | None = None) -> None:
        super().__init__(f"job {job_id} has not ended yet (status {status or 'unknown'})")
        #: The job, to wait for later.
        self.job_id = job_id
        #: Its status when the wait ran out (``pending`` or ``running``).
        self.status = status


class ApiError(JobqError):
    """The server refused the request (any other ``4xx`` or ``5xx``)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        #: The HTTP status code.
        self.status = status
        #: The server's ``error`` sentence.
        self.message = message
        #: The parsed JSON body, when there was one.
        self.body = body

    @property
    def job_id(self) -> str | None:
        """The job the refusal is about, when the server named one."""
        if isinstance(self.body, dict):
            v = self.body.get("job_id")
            return v if isinstance(v, str) else None
        return None


class Unauthorized(ApiError):
    """A token is missing or wrong (``401``), or belongs to another role (``403``)."""


class NotFound(ApiError):
    """No such job, or it was forgotten after the server's result TTL (``404``)."""


class Conflict(ApiError):
    """The job is not in a state that allows this call (``409``)."""


class Unavailable(ApiError):
    """The server cannot take the request now (``503``): retry after ``retry_after``."""

    def __init__(
        self, status: int, message: str, body: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(status, message, body)
        #: Seconds to wait before trying again (the ``Retry-After`` header).
        self.retry_after = retry_after


class QueueFull(Unavailable):
    """The server holds as many pending jobs as it may (``503`` with ``Retry-After``)."""


class Fail(Exception):
    """Raise in a handler to fail the job with ``message``.

    With ``retry=False`` the job fails for good at once (its client gets
    ``502``); with ``retry=True`` it goes back to the queue while attempts remain.
    Any other exception fails the job too, with retry, and the tail of its
    traceback as the error.
    """

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        #: The error the waiting client sees.
        self.message = message
        #: Whether the server may hand the job out again.
        self.retry = retry
