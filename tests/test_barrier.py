"""Removing a warm-up barrier never leaves a task waiting on it (a stop during the warm-up)."""

from __future__ import annotations

import os
import tempfile
import threading

from flight_parsl.execution.backends import remove_barrier
from flight_parsl.worker.barrier import meet


def test_a_barrier_removed_while_a_task_marks_itself_holds_no_task_and_leaves_nothing() -> None:
    for _ in range(100):
        barrier = tempfile.mkdtemp(prefix="fp-barrier-")
        done = threading.Event()

        def task() -> None:
            try:
                meet(barrier, 2, 30.0)  # a second task never comes: only the removal may end the wait
            except FileNotFoundError:
                pass
            done.set()

        thread = threading.Thread(target=task)
        thread.start()
        remove_barrier(barrier)
        assert done.wait(5.0), "a task kept waiting on a removed barrier"
        thread.join()
        parent = os.path.dirname(barrier)
        assert not [n for n in os.listdir(parent) if n.startswith(os.path.basename(barrier))]
