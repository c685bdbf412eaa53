"""An echo worker: every job's result is its payload, byte for byte.

JOBQ_URL=http://127.0.0.1:3000 python echo_worker.py [CONCURRENCY]
jobq submit hello            # prints hello
"""

import sys

import jobq


def echo(job: jobq.Job) -> bytes:
    return job.payload


if __name__ == "__main__":
    jobq.run(echo, concurrency=int(sys.argv[1]) if len(sys.argv) > 1 else 1)
