"""jobq: workers and clients for the jobq synchronous job queue.

A worker in a few lines::

    import jobq

    def handler(job: jobq.Job) -> str:
        return job.text().upper()

    jobq.run(handler)             # JOBQ_URL, JOBQ_TOKEN from the environment

A client::

    with jobq.Client() as client:
        print(client.submit("hello").text())
"""

from ._errors import (
    ApiError,
    Conflict,
    Fail,
    JobCancelled,
    JobFailed,
    JobqError,
    NotFound,
    ProtocolError,
    QueueFull,
    StillRunning,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from ._types import Event, JobInfo, Result
from .client import AsyncClient, Client
from .worker import Job, Worker, run

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "Event",
    "Fail",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobInfo",
    "JobqError",
    "NotFound",
    "ProtocolError",
    "QueueFull",
    "Result",
    "StillRunning",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "Worker",
    "__version__",
    "run",
]
