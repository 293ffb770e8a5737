"""Fault injection on slots: a real SIGKILL of the worker process, or a hang.

Faults fire on a task's first attempt only, so a retried task can succeed. They
exist for experiments and tests of the round policy; a run without them has none.
"""

from __future__ import annotations

import os
import signal
import threading

from flight_parsl.core.types import Faults

#: Set when the slots of this process stop (a thread pool shutting down): an injected hang
#: ends at once instead of holding the run's stop for ``hang_s`` seconds.
_released = threading.Event()


def arm() -> None:
    """Slots of a new run start in this process: hangs last their full time again."""
    _released.clear()


def release_hangs() -> None:
    """The thread slots of this process stop: end every injected hang now."""
    _released.set()


def inject(faults: Faults | None, round_idx: int, client: int, attempt: int) -> None:
    """Kill this process or sleep, if ``faults`` name this (round, client) on attempt 0."""
    if not faults or attempt > 0:
        return
    if (round_idx, client) in faults.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if (round_idx, client) in faults.hang:
        _released.wait(faults.hang_s)
