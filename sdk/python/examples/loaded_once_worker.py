"""A worker that loads something expensive once, at start-up, and reuses it
for every job: the shape of a model-serving worker.

Here the "model" is a word-frequency table built from the Python standard
library's own source files (a second or so of work); each job is a text and
the result is its words ranked by how rare they are in that table.

    python loaded_once_worker.py
    jobq submit 'the quick brown fox'      # {"words": [["fox", 0], ...]}
"""

from __future__ import annotations

import collections
import logging
import pathlib
import re
import sysconfig
import time
from typing import Any

import jobq

WORD = re.compile(r"[a-z]+")


def load_model() -> collections.Counter[str]:
    """Reads every .py file of the standard library once."""
    started = time.monotonic()
    counts: collections.Counter[str] = collections.Counter()
    for path in pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"):
        counts.update(WORD.findall(path.read_text(errors="replace").lower()))
    logging.info("model loaded: %d words in %.1fs", len(counts), time.monotonic() - started)
    return counts


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    model = load_model()  # once, before the first job

    def rank(job: jobq.Job) -> dict[str, Any]:
        words = WORD.findall(job.text().lower())
        if not words:
            raise jobq.Fail("the payload has no words", retry=False)
        ranked = sorted({(w, model[w]) for w in words}, key=lambda wc: wc[1])
        return {"words": ranked}

    # Handlers run in threads of their own: a model that is not thread-safe
    # wants concurrency=1 (the default), one that is can take more.
    jobq.run(rank)


if __name__ == "__main__":
    main()
