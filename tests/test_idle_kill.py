"""A worker process SIGKILLed while it is idle must not stop its pool.

Parsl's idle HTEX workers wait in ``multiprocessing.Queue.get(timeout=...)`` on the pool's shared
task queue, holding the queue's reader lock for the whole wait: SIGKILLed there, the lock is never
released and no worker takes a task again. Every pool flight_parsl starts waits through
:class:`~flight_parsl.execution.primed_pool.LockFreeTaskQueue` instead (see that module).

The first tests show the wedge with Parsl's own wait and its absence with ours, on the queue
itself (a few seconds); the last one is a run on HTEX (2 slots) whose slots are all SIGKILLed, one
busy and one idle, and which completes under the round policy.
"""

from __future__ import annotations

import os
import queue
import signal
import time

import pytest
from parsl.multiprocessing import SpawnContext

from flight_parsl.execution.primed_pool import LockFreeTaskQueue

pytestmark = pytest.mark.timeout(180)


def _parsl_wait(task_queue, ready, lock_free: bool) -> None:
    """An idle worker's loop, as Parsl's: wait for a task with a timeout, again and again."""
    q = LockFreeTaskQueue(task_queue) if lock_free else task_queue
    ready.put(os.getpid())
    while True:
        try:
            q.get(timeout=2)
        except queue.Empty:
            continue


def _take(task_queue, results, lock_free: bool) -> None:
    q = LockFreeTaskQueue(task_queue) if lock_free else task_queue
    try:
        results.put(("took", q.get(timeout=3)))
    except queue.Empty:
        results.put(("empty", None))


def _lock_held(task_queue) -> bool:
    if task_queue._rlock.acquire(False):
        task_queue._rlock.release()
        return False
    return True


def _idle_workers_killed(lock_free: bool, waiting: int = 2) -> tuple[str, object]:
    """Start ``waiting`` idle workers on one task queue, SIGKILL them all while they wait, put a
    task, and see whether a new worker takes it."""
    tasks, results, ready = SpawnContext.Queue(), SpawnContext.Queue(), SpawnContext.Queue()
    idle = [SpawnContext.Process(target=_parsl_wait, args=(tasks, ready, lock_free)) for _ in range(waiting)]
    for p in idle:
        p.start()
    try:
        for _ in idle:
            ready.get(timeout=30)
        time.sleep(0.5)  # every worker is in its wait
        held = _lock_held(tasks)
        assert held != lock_free, f"lock held while workers wait: {held} (lock_free={lock_free})"
        for p in idle:
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
        tasks.put({"task_id": 7})
        taker = SpawnContext.Process(target=_take, args=(tasks, results, lock_free))
        taker.start()
        taker.join(20)
        return results.get(timeout=10)
    finally:
        for p in idle:
            if p.is_alive():
                p.kill()
                p.join()


def test_parsls_wait_wedges_the_queue_when_its_idle_workers_are_sigkilled() -> None:
    # the queue's reader lock died with the worker that held it: the task is never taken
    assert _idle_workers_killed(lock_free=False) == ("empty", None)


def test_a_lock_free_wait_leaves_the_queue_usable_after_the_same_kills() -> None:
    assert _idle_workers_killed(lock_free=True) == ("took", {"task_id": 7})


def test_a_lock_free_get_times_out_and_reads_every_task_once() -> None:
    tasks = SpawnContext.Queue()
    q = LockFreeTaskQueue(tasks)
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert 0.15 < time.monotonic() - start < 2
    with pytest.raises(queue.Empty):
        q.get(block=False)
    for i in range(3):
        tasks.put(i)
    assert [q.get(timeout=5) for _ in range(3)] == [0, 1, 2]
    assert q.qsize() == 0 and not _lock_held(tasks)


def test_every_slot_sigkilled_one_idle_the_run_completes(make_config, tmp_path) -> None:
    # two clients on 2 HTEX slots: in round 2 client 0 sleeps 1.5 s on one slot while the other,
    # done with client 1, waits for a task; 0.5 s into round 2 the coordinator SIGKILLs both. With Parsl's own wait the
    # idle one held the task queue's lock: the retry would never start and the round would close
    # below its quorum at its deadline.
    from conftest import read_csv, read_summary  # here: the spawned processes above import this module

    from flight_parsl.engine.progress import Progress
    from flight_parsl.engine.runner import run_experiment

    cfg = make_config(
        "train.mode=none", "model.name=tiny", "slots=2", "plan.clients_per_task=1", "round.retries=2",
        "round.min_deadline_s=20", "round.min_fraction=1.0", "transfer.kind=file", f"transfer.file_dir={tmp_path}",
        "faults.kill_slots=2@2", "faults.hang=0@2", "faults.hang_s=1.5",
        workers=2, rounds=3, backend="parsl",
    )
    start = time.monotonic()
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    took = time.monotonic() - start
    rounds, tasks, faults = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv"), read_csv(out / "faults.csv")
    summary = read_summary(out)
    assert summary["status"] == "completed" and len(rounds) == 3, summary.get("status")
    assert [f["action"] for f in faults] == ["kill_slot", "kill_slot"] and {f["round"] for f in faults} == {"2"}
    killed = {int(f["target"]) for f in faults}
    primed = {int(slot.split(":")[1]) for slot in summary["slot_pids"]}
    assert killed == primed and len(killed) == 2  # every slot of the pool
    lost = [t for t in tasks if t["status"] == "lost"]
    assert len(lost) == 1 and lost[0]["round"] == "2" and "WorkerLost" in lost[0]["error"]
    assert int(lost[0]["pid"]) in killed
    assert lost[0]["client"] == "0"
    retried = [t for t in tasks if t["round"] == "2" and t["attempt"] == "1"]
    assert len(retried) == 1 and retried[0]["status"] == "ok" and retried[0]["client"] == "0"
    assert int(retried[0]["pid"]) not in killed  # on a worker Parsl restarted
    assert retried[0]["task_cold"] == "1"
    assert [r["reported"] for r in rounds] == ["2", "2", "2"]
    assert all(int(t["pid"]) not in killed for t in tasks if t["round"] == "3" and t["pid"])
    assert took < 60, took  # no round waited for its deadline
    assert not (out / "leftovers.json").exists() and list(tmp_path.glob("flight_parsl-*")) == []
