"""When a process started, in Unix time, from ``/proc`` (no psutil).

``/proc/PID/stat`` gives a process's start as clock ticks since boot (field 22) and
``/proc/uptime`` the seconds since boot now (to 10 ms; ``/proc/stat``'s ``btime`` is whole
seconds, too coarse); now minus uptime plus the ticks is the process's start in Unix time. Used for the start-up phases of a run (the coordinator's
interpreter and imports, a worker pool's and its workers' start). ``None`` where
``/proc`` is not there (not Linux) or the process is gone.
"""

from __future__ import annotations

import os

import time


def _boot_time() -> float | None:
    try:
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime


def process_started(pid: int | str = "self") -> float | None:
    """Unix time process ``pid`` (this one by default) started; None if unknown."""
    boot = _boot_time()
    if boot is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: fields after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        ticks = int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")
