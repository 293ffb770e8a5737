"""Real faults injected from the coordinator, and the census of the run's worker processes.

:class:`SlotCensus` records the worker processes the run has seen (the warm-up's
and every task's host and pid) with their parent (the HTEX manager) and counts the
live ones; Parsl's manager restarts a dead worker, so the census is full again once
the replacements run. Only processes on this host are recorded and killed; a
remote site's slots count as alive.

:class:`FaultInjector` does what ``faults.kill_slots``, ``faults.redis_stop`` ask:
SIGKILL chosen worker processes (by the pids the run recorded, their parent checked
so a reused pid is never hit) at a round or a time, and SIGKILL the run's managed
redis-server in a round and start it again on its port. Nothing is simulated:
tasks on a killed process fail with Parsl's ``WorkerLost``, Redis clients lose
their connection and the keys. Every action is a row of ``faults.csv`` in the run
directory (when, round, action, target, detail; ``round`` counts from 1 as in rounds.csv,
0 for a timed fault that fires before the first round starts). What the run did about one is
a row too: ``state_restored`` (target: a site) when a site's restarted server lost client state
that the site's mirror held (:meth:`FaultInjector.record`).
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from flight_parsl.config.experiment import ExperimentConfig

log = logging.getLogger(__name__)

FAULT_COLUMNS = ("time", "round", "action", "target", "detail")


def stat_field(pid: int, index: int) -> int | None:
    """Field ``index`` of /proc/PID/stat counted from the one after the command name
    (1: ppid, 19: start time) for a live process on this host, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[index])


def _ppid(pid: int) -> int | None:
    """The parent pid of a live process on this host, or None."""
    return stat_field(pid, 1)


def worker_rank(pid: int) -> int | None:
    """The rank in its pool (Parsl's ``worker_id``) of an HTEX worker process on this host, or None.

    Every HTEX worker keeps its log file ``.../worker_<rank>.log`` open for its lifetime;
    ``WorkerLost`` names a dead worker by that rank."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        name = target.rsplit("/", 1)[-1]
        if name.startswith("worker_") and name.endswith(".log") and name[7:-4].isdigit():
            return int(name[7:-4])
    return None


def children(parents: set[int]) -> dict[int, int]:
    """Live processes whose parent is in ``parents``: pid -> parent."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent in parents:
                out[int(entry)] = parent
    return out


class SlotCensus:
    """The run's worker processes on this host, and whether all of them are alive.

    Args:
        slots: the slots the executor started.
        seen: (host, pid) of the slots the warm-up reached.
    """

    def __init__(self, slots: int, seen: AbstractSet[tuple[str, int]] = frozenset()) -> None:
        self.host = socket.gethostname()
        self.slots = slots
        self.parent: dict[int, int] = {}  # worker pid -> its manager
        self.rank: dict[int, int] = {}  # worker pid -> its rank in its pool, while no loss has named it
        self._lock = threading.Lock()
        for host, pid in seen:
            self.record(host, pid)
        managers = set(self.parent.values())
        # the manager's other children (its multiprocessing server): counted at the start, left out later
        self._others = len(children(managers)) - len(self.parent) if managers else 0

    def record(self, host: str, pid: int) -> None:
        """Remember a worker process that ran a task (a restarted one has a new pid)."""
        if host != self.host or pid == os.getpid() or pid in self.parent:
            return
        parent = _ppid(pid)
        if parent is not None and parent != os.getpid():
            rank = worker_rank(pid)
            with self._lock:
                self.parent[pid] = parent
                if rank is not None:  # a restarted worker takes its rank over from the dead one
                    for old in [p for p, r in self.rank.items() if r == rank and self.parent.get(p) == parent]:
                        del self.rank[old]
                    self.rank[pid] = rank

    def lost(self, host: str, rank: int) -> int | None:
        """The pid of the recorded worker process of rank ``rank`` on ``host`` that is gone
        (what a ``WorkerLost(rank, host)`` names); None when no single one matches."""
        if host != self.host:
            return None
        with self._lock:
            dead = [pid for pid, r in self.rank.items() if r == rank and _ppid(pid) != self.parent[pid]]
            if len(dead) != 1:
                return None
            del self.rank[dead[0]]  # a later loss of that rank is another process
        return dead[0]

    def alive(self) -> list[int]:
        """Recorded worker pids that still run under the parent they had."""
        with self._lock:
            items = list(self.parent.items())
        return [pid for pid, parent in items if _ppid(pid) == parent]

    def live_slots(self) -> int | None:
        """Worker processes alive under the recorded managers (None: none recorded)."""
        managers = set(self.parent.values())
        if not managers:
            return None
        return len(children(managers)) - self._others

    def full(self) -> bool:
        """Whether every slot is alive (always, where the run recorded no local worker)."""
        live = self.live_slots()
        return live is None or live >= min(self.slots, len(self.parent))


class FaultInjector:
    """Injects the config's coordinator-side faults into a run.

    Args:
        cfg: the experiment (``faults.kill_slots``, ``faults.redis_stop`` ...).
        run_dir: where ``faults.csv`` goes.
        census: the run's worker processes.
        server: the run's managed redis-server (for ``faults.redis_stop``).
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, census: SlotCensus, server: Any = None,
                 site_servers: dict[str, Any] | None = None) -> None:
        f = cfg.faults
        self.census, self.server = census, server
        self.site_servers = site_servers or {}  # a store per site: label -> that site's managed server
        # (count or fraction, "round" | "time", 0-based round or seconds), as the config typed them
        self.kills = [(k.count, k.at, k.when - 1 if k.at == "round" else k.when) for k in f.kill_slots]
        self.redis_rounds: dict[int, list[str | None]] = {}  # 0-based round -> sites (None: every server)
        for stop in f.redis_stop:
            self.redis_rounds.setdefault(stop.round - 1, []).append(stop.site)
        self.after_s, self.down_s = f.kill_after_s, f.redis_down_s
        self.seed = cfg.seed
        self.round = -1
        self.killed: dict[int, int] = {}  # round -> processes killed in it
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()
        self._closed = False
        self._file: TextIO | None = None
        self._writer: Any = None
        self.path = Path(run_dir) / "faults.csv"
        if self.kills or self.redis_rounds:
            self._open()

    def _open(self) -> None:
        new = not self.path.exists()
        self._file = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=FAULT_COLUMNS)
        if new:
            self._writer.writeheader()
            self._file.flush()

    def __bool__(self) -> bool:
        return bool(self.kills or self.redis_rounds)

    # scheduling ---------------------------------------------------------------

    def _later(self, delay: float, action: Any, *args: Any) -> None:
        timer = threading.Timer(max(0.0, delay), action, args)
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            self._timers.append(timer)
        timer.start()

    def start_run(self) -> None:
        """The first round starts: schedule the time-based kills."""
        for count, kind, when in self.kills:
            if kind == "time":
                self._later(when, self.kill_slots, count)

    def start_round(self, round_idx: int) -> None:
        """Round ``round_idx`` has submitted its tasks: schedule its faults."""
        self.round = round_idx
        for count, kind, when in self.kills:
            if kind == "round" and int(when) == round_idx:
                self._later(self.after_s, self.kill_slots, count)
        for site in dict.fromkeys(self.redis_rounds.get(round_idx, [])):
            self._later(self.after_s, self.stop_redis, site)

    def close(self) -> None:
        """Cancel what has not fired; close faults.csv."""
        with self._lock:
            self._closed = True
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        for timer in timers:
            if timer is not threading.current_thread():
                timer.join(timeout=10)
        if self._file is not None:
            self._file.close()
            self._file = None

    # actions ------------------------------------------------------------------

    def _row(self, action: str, target: str, detail: str = "") -> None:
        with self._lock:
            if self._writer is not None and self._file is not None:
                self._writer.writerow(
                    {"time": time.time(), "round": self.round + 1, "action": action, "target": target, "detail": detail}
                )
                self._file.flush()

    def record(self, action: str, target: str, detail: str = "") -> None:
        """A row of faults.csv for what the run did about a fault (``state_restored``: client
        state a site's restarted server lost, read back from the site's mirror), in the round
        under way; faults.csv is made if nothing was injected (a server that stopped by itself)."""
        with self._lock:
            if self._file is None and not self._closed:
                self._open()
        self._row(action, target, detail)

    def kill_slots(self, count: float) -> list[int]:
        """SIGKILL ``count`` recorded worker processes (a fraction of the slots when < 1)."""
        alive = sorted(self.census.alive())
        want = max(1, round(count * self.census.slots)) if count < 1 else int(count)
        rng = np.random.default_rng([self.seed, 11, max(self.round, 0), len(alive)])
        chosen = sorted(int(p) for p in rng.choice(alive, size=min(want, len(alive)), replace=False)) if alive else []
        for pid in chosen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed[self.round] = self.killed.get(self.round, 0) + 1
            self._row("kill_slot", str(pid), f"SIGKILL worker process (parent {self.census.parent.get(pid)})")
        if len(chosen) < want:
            self._row("kill_slot", "", f"asked for {want}, {len(alive)} recorded worker processes alive")
        log.info("killed worker processes %s", chosen)
        return chosen

    def stop_redis(self, site: str | None = None) -> None:
        """SIGKILL the managed redis-server (with a store per site: ``site``'s, or every site's
        when None); start each again on its port ``redis_down_s`` later."""
        targets: list[tuple[str | None, Any]]
        if self.site_servers:
            targets = [(label, self.site_servers[label]) for label in
                       ([site] if site is not None else list(self.site_servers))]
        else:
            targets = [(None, self.server)]
        for label, server in targets:
            of = "" if label is None else f" of site {label}"
            if server is None or not server.running:
                self._row("redis_kill", "", f"no managed redis-server{of} running")
                continue
            pid = server.pid
            server.kill()
            self._row("redis_kill", str(pid), f"SIGKILL redis-server{of} at {server.address}")
            if self.down_s >= 0:
                self._later(self.down_s, self._restart_redis, server, of)

    def _restart_redis(self, server: Any = None, of: str = "") -> None:
        server = self.server if server is None else server
        try:
            address = server.restart()
        except Exception as exc:  # noqa: BLE001 - recorded; the run sees Redis gone
            self._row("redis_restart", "", f"failed{of}: {type(exc).__name__}: {exc}")
            return
        self._row("redis_restart", str(server.pid), f"redis-server{of} back at {address} (empty)")

    def killed_in(self, round_idx: int) -> int:
        """Worker processes killed while round ``round_idx`` ran."""
        return self.killed.get(round_idx, 0)

