#!/usr/bin/env python3
"""CPU time of the handoff-manager process and of each of its threads, from /proc.

    manager_cpu.py snapshot PID               one JSON object on stdout (wall clock, ticks)
    manager_cpu.py merge PID BEFORE FILE      adds "manager_cpu" (what PID used since the
                                              BEFORE snapshot) to the last line of FILE

bench/run.sh takes a snapshot before each client run and merges after it. The result:

    "manager_cpu": {"wall_s": 3.2, "cpu_s": 1.9,
                    "threads": {"download-0": 1.1, "download-1": 0.7, "handoff-manage": 0.1, ...}}

cpu_s is user + system time of the whole process (/proc/PID/stat); each thread's is from
/proc/PID/task/TID/stat, keyed by its name (the manager names its download loops
download-0, download-1, ...; the main thread, which runs the handshake loop, keeps the
process name, cut to 15 characters). A thread's busy share of one core is its cpu_s / wall_s.
"""

import json
import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def stat(path):
    """(name, user + system ticks) from a /proc stat file."""
    with open(path) as f:
        s = f.read()
    name = s[s.index("(") + 1:s.rindex(")")]
    fields = s[s.rindex(")") + 2:].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return name, int(fields[11]) + int(fields[12])


def snapshot(pid):
    snap = {"t": time.monotonic(), "total": stat(f"/proc/{pid}/stat")[1], "tasks": {}}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            snap["tasks"][tid] = stat(f"/proc/{pid}/task/{tid}/stat")
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended between listdir and open
    return snap


def merge(pid, before, path):
    now = snapshot(pid)
    threads = {}
    for tid, (name, ticks) in now["tasks"].items():
        start = before["tasks"].get(tid, (name, 0))[1]
        threads[name] = round(threads.get(name, 0) + (ticks - start) / HZ, 3)
    cpu = {"wall_s": round(now["t"] - before["t"], 3),
           "cpu_s": round((now["total"] - before["total"]) / HZ, 3),
           "threads": dict(sorted(threads.items()))}
    with open(path) as f:
        lines = f.read().splitlines()
    last = json.loads(lines[-1])
    last["manager_cpu"] = cpu
    lines[-1] = json.dumps(last)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "snapshot":
        print(json.dumps(snapshot(sys.argv[2])))
    elif len(sys.argv) == 5 and sys.argv[1] == "merge":
        merge(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(__doc__)
