"""What the coordinator's loops are built on: a completion queue and slot clocks.

:class:`CompletionQueue` submits work to any ``concurrent.futures.Executor`` and
hands back each future as it completes (a done-callback puts it on a queue), so
the coordinator spends O(1) per event however many tasks are out, instead of
scanning every pending future. :class:`SlotClock` accounts each slot's busy and
idle time from task start and finish times taken on the slot.
"""

from __future__ import annotations

import math
import queue
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from flight_parsl.core import stopping
from flight_parsl.core.types import Slot

T = TypeVar("T")


@dataclass
class Pending(Generic[T]):
    """A submitted task: its future, what the caller tagged it with, when it was submitted."""

    future: Future[Any]
    tag: T
    submitted: float


class CompletionQueue(Generic[T]):
    """Submit tasks; get them back in completion order."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._done: queue.SimpleQueue[Pending[T]] = queue.SimpleQueue()
        self.outstanding: dict[int, Pending[T]] = {}

    def submit(self, tag: T, fn: Any, *args: Any, site: str | None = None) -> Pending[T]:
        """Submit ``fn(*args)``; the returned record comes back from :meth:`next` when done.

        ``site``: run it at that site (the executor is then a multi-site ``SiteRouter``).
        """
        submitted = time.time()  # taken before submit: submission itself is part of the task's time
        if site is None:
            future = self.executor.submit(fn, *args)
        else:
            future = getattr(self.executor, "submit_to")(site, fn, *args)  # noqa: B009 - a SiteRouter
        item = Pending(future, tag, submitted)
        self.outstanding[id(item)] = item
        future.add_done_callback(lambda _f: self._done.put(item))
        return item

    def next(self, timeout: float | None) -> Pending[T] | None:
        """The next completed task, or None if none completes within ``timeout`` seconds."""
        stopping.check()  # a stop signal whose exception was lost (see core.stopping) ends the wait
        try:
            item = self._done.get(timeout=None if timeout is None else max(0.0, timeout))
        except queue.Empty:
            return None
        self.outstanding.pop(id(item), None)
        return item

    def abandon(self) -> list[Pending[T]]:
        """Stop waiting for everything outstanding; returns what was abandoned."""
        items = list(self.outstanding.values())
        self.outstanding.clear()
        for item in items:
            try:
                item.future.cancel()
            except NotImplementedError:  # Parsl's AppFuture cannot cancel: the task runs to its end
                pass
        return items

    def __len__(self) -> int:
        return len(self.outstanding)


@dataclass
class SlotClock:
    """Busy and idle seconds per slot (host, pid), from task times on the slot's clock.

    A slot is idle from finishing one task to starting its next one.
    """

    last_finished: dict[Slot, float] = field(default_factory=dict)
    busy_s: dict[Slot, float] = field(default_factory=dict)
    idle_s: dict[Slot, float] = field(default_factory=dict)

    def record(self, slot: Slot, started: float, finished: float) -> float:
        """Account one task; returns the idle seconds before it (NaN for a slot's first task)."""
        idle = started - self.last_finished[slot] if slot in self.last_finished else math.nan
        if not math.isnan(idle):
            self.idle_s[slot] = self.idle_s.get(slot, 0.0) + max(idle, 0.0)
        self.busy_s[slot] = self.busy_s.get(slot, 0.0) + (finished - started)
        self.last_finished[slot] = max(finished, self.last_finished.get(slot, finished))
        return idle

    def idle_percent(self) -> dict[Slot, float]:
        """Idle share of each slot's time between its first start and last finish, in %."""
        out = {}
        for slot, busy in self.busy_s.items():
            idle = self.idle_s.get(slot, 0.0)
            out[slot] = 100.0 * idle / (idle + busy) if idle + busy > 0 else 0.0
        return out
