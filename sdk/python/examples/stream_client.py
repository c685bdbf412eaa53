"""A client that prints a job's stream as it comes, then its outcome.

    python stream_client.py 'tell me a story'

Against a server without streaming it prints the result in one go.
"""

from __future__ import annotations

import sys

import jobq


def main() -> int:
    payload = " ".join(sys.argv[1:]) or "hello"
    with jobq.Client() as client:
        for event in client.stream(payload, timeout=60):
            if event.kind == "progress":
                print(event.text(), end="", flush=True)
            elif event.kind == "gap":
                print("[…]", end="", flush=True)
            elif event.kind == "result":
                print(f"\n-- result: {event.text()}")
            elif event.kind == "failed":
                print(f"\n-- failed: {event.json().get('error')}", file=sys.stderr)
                return 3
            elif event.kind == "cancelled":
                print("\n-- cancelled", file=sys.stderr)
                return 4
            elif event.kind == "accepted":
                print(f"\n-- still running: job {event.job_id}", file=sys.stderr)
                return 5
    return 0


if __name__ == "__main__":
    sys.exit(main())
