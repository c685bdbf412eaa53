#!/usr/bin/env python3
"""Compares two callgrind profiles of scripts/bench-callgrind.sh function by
function, per job: the functions whose cost changed most, first.

    scripts/callgrind-diff.py NEW.callgrind NEW_JOBS OLD.callgrind OLD_JOBS [--inclusive] [--top N]
    scripts/callgrind-diff.py NEW.callgrind NEW_JOBS --callers 'Extensions::insert'

Self cost by default (instructions in the function's own code); --inclusive
adds what it calls (a caller's share of a shared callee is counted with it).
--callers PATTERN lists who calls the functions whose name holds PATTERN.
"""
import argparse
import collections
import re

NAME = re.compile(r"^(fn|cfn|cfni)=\((\d+)\)(?: (.*))?$")


def parse(path):
    """Self cost by function and inclusive cost by (caller, callee)."""
    names, own, calls = {}, collections.Counter(), collections.Counter()
    fn = callee = None
    after_calls = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        m = NAME.match(line)
        if m:
            kind, ident, name = m.groups()
            if name:
                names[ident] = name
            if kind == "fn":
                fn = names.get(ident, ident)
            else:
                callee = names.get(ident, ident)
            continue
        if line.startswith("calls="):
            after_calls = True
            continue
        if line[0].isdigit() or line[0] in "+-*":
            parts = line.split()
            if len(parts) < 2:
                continue
            cost = int(parts[1])
            if after_calls:
                calls[(fn, callee)] += cost
                after_calls = False
            else:
                own[fn] += cost
    return own, calls


def per_job(path, jobs, inclusive):
    own, calls = parse(path)
    cost = dict(own)
    if inclusive:
        for (caller, callee), c in calls.items():
            if caller != callee:
                cost[caller] = cost.get(caller, 0) + c
    return {k: v / jobs for k, v in cost.items() if k}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("new")
    ap.add_argument("new_jobs", type=int)
    ap.add_argument("old", nargs="?")
    ap.add_argument("old_jobs", type=int, nargs="?")
    ap.add_argument("--inclusive", action="store_true")
    ap.add_argument("--callers")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    if a.callers:
        _, calls = parse(a.new)
        rows = sorted(
            ((c / a.new_jobs, caller, callee) for (caller, callee), c in calls.items()
             if callee and a.callers in callee),
            reverse=True,
        )
        for c, caller, callee in rows[: a.top]:
            print(f"{c:9.0f}  {caller[:110]}  ->  {callee[:80]}")
        return
    new = per_job(a.new, a.new_jobs, a.inclusive)
    if not a.old:
        for k, v in sorted(new.items(), key=lambda kv: -kv[1])[: a.top]:
            print(f"{v:9.0f}  {k[:150]}")
        return
    old = per_job(a.old, a.old_jobs, a.inclusive)
    rows = sorted(((new.get(k, 0) - old.get(k, 0), k) for k in set(new) | set(old)),
                  key=lambda r: -abs(r[0]))
    print(f"{'change':>8}  {'new':>7}  {'old':>7}  function (instructions per job)")
    for d, k in rows[: a.top]:
        print(f"{d:+8.0f}  {new.get(k, 0):7.0f}  {old.get(k, 0):7.0f}  {k[:140]}")


if __name__ == "__main__":
    main()
