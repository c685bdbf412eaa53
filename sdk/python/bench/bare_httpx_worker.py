"""A bare echo worker loop on httpx, without the SDK: the floor the SDK's own
cost is measured against (sdk/python/BENCHMARKS.md).

    python bare_httpx_worker.py async|sync URL SECONDS

Polls (``wait=1``) and completes with the lease, nothing else: no heartbeats,
no stop handling, no retries.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx


async def run_async(url: str, secs: float) -> int:
    n = 0
    async with httpx.AsyncClient(base_url=url) as c:
        end = time.monotonic() + secs
        while time.monotonic() < end:
            r = await c.get("/api/worker/poll", params={"wait": "1"})
            if r.status_code == 200:
                j = r.json()
                await c.post(
                    f"/api/worker/complete/{j['job_id']}",
                    content=json.dumps(j["payload"]).encode(),  # the bench's payloads are JSON
                    headers={"x-lease-id": j["lease_id"]},
                )
                n += 1
    return n


def run_sync(url: str, secs: float) -> int:
    n = 0
    with httpx.Client(base_url=url) as c:
        end = time.monotonic() + secs
        while time.monotonic() < end:
            r = c.get("/api/worker/poll", params={"wait": "1"})
            if r.status_code == 200:
                j = r.json()
                c.post(
                    f"/api/worker/complete/{j['job_id']}",
                    content=json.dumps(j["payload"]).encode(),
                    headers={"x-lease-id": j["lease_id"]},
                )
                n += 1
    return n


if __name__ == "__main__":
    mode, url, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
    done = asyncio.run(run_async(url, secs)) if mode == "async" else run_sync(url, secs)
    print(f"{mode}: {done} jobs", file=sys.stderr)
