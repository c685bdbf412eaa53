#!/usr/bin/env python3
"""Fills a jobq data dir with N pending 1 KiB jobs, for the restart benchmark
(docs/BENCHMARKS.md). The data dir must hold a database made by this jobq
(start and stop jobq on it once first) and jobq must not be running.
QUEUE (third argument, default `default`) is the queue they are put in.

    scripts/gen-pending.py /tmp/big1m 1000000 [QUEUE]
"""
import sqlite3
import sys
import time
import uuid

data_dir, n = sys.argv[1], int(sys.argv[2])
queue = sys.argv[3] if len(sys.argv) > 3 else "default"
c = sqlite3.connect(f"{data_dir}/jobq.db", isolation_level=None)
start = (c.execute("SELECT max(seq) FROM jobs").fetchone()[0] or 0) + 1
now = int(time.time() * 1e6)
payload = b'{"pad":"' + b"x" * 1000 + b'"}'
headers = b'{"content-type":"application/json"}'
c.execute("BEGIN")
step = 10_000
for first in range(start, start + n, step):
    seqs = range(first, min(first + step, start + n))
    c.executemany(
        "INSERT INTO jobs (seq, id, queue, priority, status, attempts, created_at) "
        "VALUES (?, ?, ?, 0, 'pending', 0, ?)",
        [(s, uuid.uuid4().bytes, queue, now + s) for s in seqs],
    )
    c.executemany(
        "INSERT INTO inputs (seq, payload, headers) VALUES (?, ?, ?)",
        [(s, payload, headers) for s in seqs],
    )
c.execute("COMMIT")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
c.close()
