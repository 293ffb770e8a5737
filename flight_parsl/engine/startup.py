"""Where a run's start-up goes: the phases in summary.json (``startup_phases``) and the
end-of-run line.

The phases split ``start2end`` along the run's critical path, from the run's ``start``
to its ``end``, each ending at a timestamp (summary.json ``startup_marks``, Unix time):

- ``setup``: the coordinator before Parsl: the workload, the transfer channel (a managed
  redis-server), several sites' namespaces (``start`` -> ``dfk_begin``).
- ``dataflowkernel``: Parsl's DataFlowKernel is loaded, without its executors' start
  (``dfk_begin`` -> ``dfk_loaded`` minus ``interchange``).
- ``interchange``: the HighThroughputExecutor starts: its interchange process is up and
  answers (``interchange_begin`` -> ``interchange_up``; several sites: first begin to last up).
- ``block_wait``: the DataFlowKernel is up, the first block not yet launched
  (``dfk_loaded`` -> ``block_launched``; Parsl launches init blocks at its strategy's first
  tick, ``strategy_period`` later: flight_parsl launches them at once, so this is ~0).
- ``worker_pool``: the block's job starts its worker pool (shell, Python, Parsl's pool
  imports) until its first worker process starts (``block_launched`` -> ``workers_started``).
- ``workers``: the workers start, import, register with the interchange and get their
  warm-up task, until the last one has (``workers_started`` -> ``last_task_started``).
- ``warm_up``: the warm-up tasks import torch and the task modules, load the data and
  meet, and the coordinator has built its model (``last_task_started`` -> ``priming_done``).
- ``rounds``: the rounds (``priming_done`` -> ``end``; ``prime2end``).

``interpreter_imports`` (the process's start, from ``/proc``, to ``start``: Python, the
imports, the config) precedes ``start`` and is not part of ``start2end``; it is given only
for the first run of a ``python -m flight_parsl.scale`` process (in a notebook or a sweep's
later runs the process started long before). A phase whose marks are not there (a thread
or process pool has no DataFlowKernel, block or pool) is ``null`` and its time falls into the
next phase; marks are clamped into ``[start, end]`` in order, so the phases that are given
always sum to ``start2end`` (a reused executor's start-up lies before the run: its phases
are 0). Worker marks come from each slot's ``/proc`` and clock (a slot on another node:
that node's clock).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Phase names in the order of the run.
PHASES = ("setup", "dataflowkernel", "interchange", "block_wait", "worker_pool", "workers", "warm_up", "rounds")
_SHORT = {"interpreter_imports": "imports", "dataflowkernel": "dfk", "block_wait": "block wait",
          "worker_pool": "pool", "warm_up": "warm-up"}

_process_start_counts = False


def count_process_start() -> None:
    """The process is a run's command line: its next run reports ``interpreter_imports``."""
    global _process_start_counts
    _process_start_counts = True


def take_process_start() -> float | None:
    """This process's start (Unix time) for the first run after :func:`count_process_start`; else None."""
    global _process_start_counts
    if not _process_start_counts:
        return None
    _process_start_counts = False
    from flight_parsl.core.proctime import process_started

    return process_started()


def slot_marks(timings: Iterable[Mapping[str, float | None]]) -> dict[str, float]:
    """The workers' marks from the warm-up's per-slot timings (:func:`~flight_parsl.worker.tasks.prime_task`)."""
    timings = list(timings)

    def values(key: str) -> list[float]:
        return [float(v) for t in timings if (v := t.get(key)) is not None]

    marks: dict[str, float] = {}
    for name, key, pick in (("pool_started", "pool_started", min), ("workers_started", "worker_started", min),
                            ("last_worker_started", "worker_started", max),
                            ("last_task_started", "task_started", max), ("last_primed", "primed", max)):
        found = values(key)
        if found:
            marks[name] = pick(found)
    return marks


def phases(marks: Mapping[str, float]) -> dict[str, float | None]:
    """The start-up phases (seconds) from the marks (see the module docstring)."""
    start, end = marks.get("start"), marks.get("end")
    out: dict[str, float | None] = {}
    if start is None or end is None:
        return out
    if marks.get("process_started") is not None:
        out["interpreter_imports"] = max(0.0, start - marks["process_started"])
    timeline = (("setup", "dfk_begin"), ("dataflowkernel", "interchange_begin"), ("interchange", "interchange_up"),
                ("dataflowkernel", "dfk_loaded"), ("block_wait", "block_launched"),
                ("worker_pool", "workers_started"), ("workers", "last_task_started"),
                ("warm_up", "priming_done"), ("rounds", "end"))
    for name in PHASES:
        out[name] = None
    prev = start
    for name, mark in timeline:
        at = marks.get(mark)
        if at is None:
            continue
        at = min(max(float(at), prev), end)
        out[name] = (out[name] or 0.0) + (at - prev)
        prev = at
    return out


def describe(found: Mapping[str, float | None]) -> str:
    """One line: ``imports 1.02s  dfk 0.10s  ...`` (phases that are given, not the rounds)."""
    return "  ".join(f"{_SHORT.get(k, k)} {v:.2f}s" for k, v in found.items() if v is not None and k != "rounds")


def record(summary: dict[str, Any], backend_marks: Mapping[str, float], timings: Iterable[Mapping[str, float | None]],
           process_started: float | None) -> dict[str, float | None]:
    """Put ``startup_marks`` and ``startup_phases`` into ``summary`` (its ``start``/``end``
    are the current segment's: a resumed run's phases are its last segment's); return the phases."""
    segments = summary.get("segments") or [summary]
    current = segments[-1]
    marks: dict[str, float] = {k: float(v) for k, v in backend_marks.items()}
    marks.update(slot_marks(timings))
    for key in ("start", "priming_done", "end"):
        if current.get(key) is not None:
            marks[key] = float(current[key])
    if process_started is not None:
        marks["process_started"] = process_started
    found = phases(marks)
    summary["startup_marks"] = dict(sorted(marks.items(), key=lambda kv: kv[1]))
    summary["startup_phases"] = found
    return found
