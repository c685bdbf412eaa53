#!/usr/bin/env python3
"""What one fsync costs on this disk: wall time and kernel CPU of writing a
WAL frame (a 24-byte header and a 4 KiB page, as SQLite does) into a file
of constant size and calling fdatasync, 2,000 times.

    scripts/fsync-cost.py [DIR]      # DIR: where the data directory would be [.]
"""
import os
import resource
import sys
import tempfile
import time

fd, path = tempfile.mkstemp(dir=sys.argv[1] if len(sys.argv) > 1 else ".")
page = b"x" * 4096
try:
    for i in range(256):
        os.pwrite(fd, page, i * 4096)
    os.fsync(fd)
    n = 2000
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(n):
        os.pwrite(fd, page[:24], (i % 256) * 4096)
        os.pwrite(fd, page, (i % 256) * 4096 + 24)
        os.fdatasync(fd)
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
finally:
    os.close(fd)
    os.unlink(path)
print(
    f"frame write + fdatasync: {1e6 * (t1 - t0) / n:.0f} µs wall, "
    f"{1e6 * (r1.ru_stime - r0.ru_stime) / n:.1f} µs of kernel CPU each"
)
