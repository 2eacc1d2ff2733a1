"""CPU seconds of a process tree, for the bench scripts (imported as a sibling: it touches no import path).

A loader's workers are child processes, so `time.process_time` misses them; /proc has every live descendant's
user + system ticks. Elsewhere than Linux the process's own CPU time is the fallback.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc; elsewhere this process)."""
    pid = pid or os.getpid()
    try:
        stats = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    except OSError:
        return time.process_time()
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


def reaped_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished (waited-for) children (`resource.getrusage`)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def all_cpu_seconds() -> float:
    """`reaped_cpu_seconds` plus the live descendants' (Linux /proc): worker processes that exited (a build's) and
    ones still running (a loader's persistent workers) alike."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return reaped_cpu_seconds() + tree_cpu_seconds() - (int(fields[11]) + int(fields[12])) / TICK
