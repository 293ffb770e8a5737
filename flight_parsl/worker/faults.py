"""Fault injection on slots: a real SIGKILL of the worker process, or a hang.

Faults fire on a task's first attempt only, so a retried task can succeed. They
exist for experiments and tests of the round policy; a run without them has none.
"""

from __future__ import annotations

import os
import signal
import time

from flight_parsl.core.types import Faults


def inject(faults: Faults | None, round_idx: int, client: int, attempt: int) -> None:
    """Kill this process or sleep, if ``faults`` name this (round, client) on attempt 0."""
    if not faults or attempt > 0:
        return
    if (round_idx, client) in faults.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if (round_idx, client) in faults.hang:
        time.sleep(faults.hang_s)
