"""A generator worker: each yield is a progress event streamed to the
waiting client; when the generator returns nothing, its yields joined are
the result.

    python stream_words_worker.py
    python stream_client.py 'tell me a story'
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import jobq


def words(job: jobq.Job) -> Iterator[str]:
    for word in f"you said: {job.text()}".split():
        time.sleep(0.2)  # a model producing one token at a time
        yield word + " "


if __name__ == "__main__":
    jobq.run(words)
