"""A worker process for the SIGTERM test: a slow handler that says when it starts."""

from __future__ import annotations

import logging
import sys
import time

import jobq


def handler(job: jobq.Job) -> str:
    print("started", job.id, flush=True)
    time.sleep(float(sys.argv[2]))
    return "finished " + job.text()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    jobq.run(handler, sys.argv[1], token="", concurrency=2, long_poll=5)
