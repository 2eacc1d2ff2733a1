"""CPU seconds of a process tree, for the bench scripts (imported as a sibling: it touches no import path).

A loader's workers are child processes, so `time.process_time` misses them; /proc has every live descendant's
user + system ticks. Elsewhere than Linux the process's own CPU time is the fallback.
"""

from __future__ import annotations

import os
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
