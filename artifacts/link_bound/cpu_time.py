"""CPU seconds of a run's processes, per kind of process, over a stretch of wall time.

:class:`CpuSampler` reads ``/proc/PID/stat`` (utime + stime, every thread of the process) of
this process and of every process below it (the interchange, the sites' worker pools and their
workers, the redis-servers, the delay line, ``ip``/``tc``) every ``interval`` seconds in a
thread of its own, and the machine's own counters (``/proc/stat``: all CPUs' busy time, and
the share of it in softirq, where the kernel's network stack, ``tbf`` and the veths do their
work; it is charged to no process of the run). :meth:`CpuSampler.between` gives the CPU
seconds each kind spent between two Unix times (``KIND_sys``: the part of it in the kernel) (a kind's counter at a time in between two
samples is interpolated linearly); the sampler's own CPU time is taken off the coordinator's.

Stdlib only (``artifacts/`` imports only flight_parsl's public modules).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path

#: Kinds of process, in the order tables list them.
KINDS = ("coordinator", "interchange", "workers", "redis", "delay_line", "other")
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, utime + stime seconds, stime seconds) of ``pid``; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[12]) / TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def classify(cmdline: str, under_pool: bool) -> str:
    """The kind of a process from its command line (``under_pool``: a worker pool is above it)."""
    if "redis-server" in cmdline:
        return "redis"
    if "delayline" in cmdline:
        return "delay_line"
    if "interchange" in cmdline:
        return "interchange"
    if under_pool or "process_worker_pool" in cmdline:
        return "workers"
    return "other"


def machine_busy() -> tuple[float, float]:
    """(busy seconds of all CPUs, softirq seconds of all CPUs) since boot."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in first[:8])
    return (user + nice + system + irq + softirq + steal) / TICK, softirq / TICK


class CpuSampler:
    """Samples the CPU time of this process's tree, by kind, until :meth:`stop`; with ``match``
    also of every process whose command line holds it (and the processes below them)."""

    def __init__(self, interval: float = 0.2, match: str | None = None) -> None:
        self.interval = interval
        self.match = match
        self.root = os.getpid()
        self._cmd: dict[int, str] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._kind: dict[int, str] = {}
        # pid -> its last CPU seconds, all and in the kernel (a process that ended keeps them)
        self._last: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._own = 0.0
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample(self) -> dict[str, float]:
        parent: dict[int, int] = {}
        cpu: dict[int, tuple[float, float]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _stat(int(entry))
                if st is not None:
                    parent[int(entry)], cpu[int(entry)] = st[0], st[1:]
        below = {self.root}
        if self.match:  # processes started outside this tree (HTEX's worker pools, by the provider)
            for pid in parent:
                if pid not in self._cmd:
                    self._cmd[pid] = _cmdline(pid)
                if self.match in self._cmd[pid]:
                    below.add(pid)
        changed = True
        while changed:  # the tree below this process
            changed = False
            for pid, ppid in parent.items():
                if ppid in below and pid not in below:
                    below.add(pid)
                    changed = True
        for pid in below:
            if self._kind.get(pid) == "other":  # ``ip netns exec`` becomes the redis-server it execs: look again
                self._cmd.pop(pid, None)
                del self._kind[pid]
            if pid not in self._kind:
                if pid == self.root:
                    self._kind[pid] = "coordinator"
                else:
                    up, pool = parent.get(pid), False
                    while up and up != self.root:
                        pool = pool or "process_worker_pool" in self._cmd.get(up, "")
                        up = parent.get(up)
                    self._kind[pid] = classify(self._cmd.get(pid) or _cmdline(pid), pool)
            self._last[pid] = cpu[pid]
        total: dict[str, float] = defaultdict(float)
        for pid, (seconds, kernel) in self._last.items():
            total[self._kind[pid]] += seconds
            total[f"{self._kind[pid]}_sys"] += kernel
        total["coordinator"] -= self._own  # the sampler's own reads of /proc
        total["machine"], total["softirq"] = machine_busy()
        return dict(total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.thread_time()
            sample = self._sample()
            self._own += time.thread_time() - t0
            sample["coordinator"] -= time.thread_time() - t0
            self.samples.append((time.time(), sample))
            self._stop.wait(self.interval)

    def at(self, when: float) -> dict[str, float]:
        """Every kind's CPU seconds at Unix time ``when`` (interpolated between samples)."""
        s = self.samples
        if not s:
            return {}
        if when <= s[0][0]:
            return s[0][1]
        for (t0, a), (t1, b) in zip(s, s[1:]):
            if t0 <= when <= t1:
                f = (when - t0) / (t1 - t0) if t1 > t0 else 0.0
                return {k: a.get(k, 0.0) + f * (b.get(k, 0.0) - a.get(k, 0.0)) for k in set(a) | set(b)}
        return s[-1][1]

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each kind (and ``machine``, ``softirq``) spent between two Unix times."""
        a, b = self.at(start), self.at(end)
        return {k: max(b.get(k, 0.0) - a.get(k, 0.0), 0.0) for k in set(a) | set(b)}
