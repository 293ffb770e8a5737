"""Tasks that must reach every slot meet at a barrier directory the slots share."""

from __future__ import annotations

import os
import socket
import time

UNSHARED_HOLD_S = 0.5


def meet(barrier: str | None, expected: int, max_wait: float) -> None:
    """Mark this task in the ``barrier`` directory and wait until ``expected`` tasks have
    (at most ``max_wait`` s): a slot runs one task at a time, so ``expected`` tasks that
    meet occupy ``expected`` distinct slots. Without a reachable barrier (a slot on another host
    that does not share the directory) it holds a moment instead, so that concurrent tasks
    still spread over idle slots."""
    deadline = time.monotonic() + max_wait
    if barrier is not None and os.path.isdir(barrier):
        open(os.path.join(barrier, f"{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}"), "w").close()
        while len(os.listdir(barrier)) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        time.sleep(min(max_wait, UNSHARED_HOLD_S))
