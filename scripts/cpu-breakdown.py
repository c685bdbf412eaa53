#!/usr/bin/env python3
"""Where a server's CPU goes, per completed job: user and kernel time of each
thread group of a process (tokio workers, jobq-sync, jobq-log, ...) between
two snapshots, and optionally every PostgreSQL server process's CPU.

    cpu-breakdown.py snap PID FILE            # before the load
    cpu-breakdown.py diff PID FILE JOBS       # after it: µs per job

Read from /proc/PID/task/*/stat (utime, stime) and, for processes named
postgres*, /proc/*/stat with their children's time.
"""
import json
import os
import sys


def stat_fields(path):
    s = open(path).read()
    comm = s[s.index("(") + 1 : s.rindex(")")]
    return comm, s[s.rindex(")") + 2 :].split()


def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            comm, f = stat_fields(f"/proc/{pid}/task/{t}/stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[t] = [comm, int(f[11]), int(f[12])]
    return out


def postgres_ticks():
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            comm, f = stat_fields(f"/proc/{p}/stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if comm.startswith("postgres"):
            total += sum(int(x) for x in f[11:15])
    return total


def main():
    cmd, pid, path = sys.argv[1:4]
    if cmd == "snap":
        json.dump({"threads": threads(pid), "postgres": postgres_ticks()}, open(path, "w"))
        return
    before = json.load(open(path))
    jobs = max(int(sys.argv[4]), 1)
    us = 1e6 / os.sysconf("SC_CLK_TCK") / jobs
    groups = {}
    for t, (comm, u, s) in threads(pid).items():
        _, u0, s0 = before["threads"].get(t, [comm, 0, 0])
        # Threads of one pool share a name up to a trailing number.
        g = groups.setdefault(comm.rstrip("0123456789-"), [0, 0])
        g[0] += u - u0
        g[1] += s - s0
    total = [0, 0]
    for name, (u, s) in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        if u + s == 0:
            continue
        total[0] += u
        total[1] += s
        print(f"  {name:18s} user {u * us:6.1f}  kernel {s * us:6.1f}  µs/job")
    print(f"  {'server total':18s} user {total[0] * us:6.1f}  kernel {total[1] * us:6.1f}  µs/job")
    pg = postgres_ticks() - before["postgres"]
    if pg * us >= 1:
        print(f"  {'postgres (all)':18s} {pg * us:6.1f} µs/job")


if __name__ == "__main__":
    main()
