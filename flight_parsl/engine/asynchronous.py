"""Asynchronous federated learning (FedAsync) on a flat topology.

Every worker always has a task: as soon as a worker's update is folded into the
global model (``w <- (1 - a) w + a w_client``, ``a`` from the strategy and the
update's staleness), that worker gets its next task with the new model. The
budget counts updates: ``rounds`` rounds mean ``rounds x workers`` updates in
all, the number of local trainings a synchronous run of ``rounds`` rounds does,
so the two compare at equal work. rounds.csv gets one row per ``workers`` updates
(a "round" of updates), with the model evaluated at that point.

Each published model version is released once no running task holds it.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait

from flight_parsl.engine.sync import RoundSummary, RunResult, WorkerClock, _mean, task_row
from flight_parsl.core.errors import TaskError
from flight_parsl.engine.context import Experiment
from flight_parsl.engine.progress import Progress
from flight_parsl.engine.records import RunRecorder
from flight_parsl.fl.strategies import FedAsync
from flight_parsl.worker.tasks import TaskResult, train_task
from flight_parsl.transfer.base import Ref, Transfer
from flight_parsl.core.weights import FlatWeights


class _Window:
    """Measurements of one round's worth of updates."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.publish_s = self.aggregate_s = 0.0
        self.bytes_to = self.bytes_from = 0
        self.losses: list[float] = []
        self.accs: list[float] = []
        self.updates = 0


def run_async(
    exp: Experiment,
    executor: Executor,
    transfer: Transfer,
    recorder: RunRecorder,
    progress: Progress,
    workers: int,
    rounds: int,
    round_timeout: float | None = None,
) -> RunResult:
    """Run ``rounds x workers`` asynchronous updates.

    ``round_timeout`` bounds the wait for any one update. Raises TaskError when a
    task fails or no update arrives in time; finished rows stay on disk.
    """
    strategy = exp.strategy
    if not isinstance(strategy, FedAsync):
        raise TaskError(f"asynchronous mode needs the fedasync strategy, got {getattr(strategy, 'name', strategy)!r}")
    total = rounds * workers
    weights = exp.initial
    version = 0
    refs: dict[int, Ref] = {}
    holders: dict[int, int] = {}
    pending: dict[Future[TaskResult], tuple[int, float, int]] = {}
    clock = WorkerClock()
    peaks: dict[tuple[str, int], float] = {}
    summaries: list[RoundSummary] = []
    window = _Window(time.time())
    submitted = 0

    def publish() -> None:
        t0 = time.perf_counter()
        refs[version] = transfer.publish(weights, version)
        holders.setdefault(version, 0)
        window.publish_s += time.perf_counter() - t0

    def submit(worker: int) -> None:
        nonlocal submitted
        settings = exp.settings_for(version, worker)
        future = executor.submit(train_task, refs[version], version, worker, exp.workload, settings)
        pending[future] = (worker, time.time(), version)
        holders[version] += 1
        submitted += 1

    def release(old: int) -> None:
        if old != version and holders.get(old) == 0:
            del holders[old], refs[old]
            transfer.end_round(old)

    publish()
    progress.start_round(0, workers)
    for w in range(min(workers, total)):
        submit(w)
    folded = 0
    while folded < total:
        done, _ = wait(list(pending), timeout=round_timeout, return_when=FIRST_COMPLETED)
        if not done:
            raise TaskError(f"no update arrived within {round_timeout} s after {folded}/{total} updates")
        for future in done:
            worker, when, base = pending.pop(future)
            try:
                res = future.result()
            except Exception as exc:
                raise TaskError(
                    f"worker {worker} failed on update {folded + 1}: {type(exc).__name__}: {exc}"
                ) from exc
            received = time.time()
            t0 = time.perf_counter()
            update = transfer.collect(res.payload)
            collect_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            weights = strategy.mix(weights, update, staleness=version - base)
            window.aggregate_s += time.perf_counter() - t0
            del update
            version += 1
            folded += 1
            holders[base] -= 1
            release(base)
            idle = clock.record(worker, res.started, res.finished)
            peaks[(res.host, res.pid)] = max(peaks.get((res.host, res.pid), 0.0), res.peak_rss_mb)
            window.bytes_to += res.bytes_in
            window.bytes_from += res.bytes_out
            window.losses.append(res.train_loss)
            window.accs.append(res.train_acc)
            window.updates += 1
            recorder.task_row(task_row(res, when, received, collect_s, idle))
            if submitted < total:
                publish()
                release(version - 1)
                submit(worker)
            round_idx = (folded - 1) // workers
            progress.task_done(round_idx, window.updates, workers)
            if folded % workers == 0 or folded == total:
                if folded == total:
                    recorder.mark("end")
                summaries.append(_close_window(exp, recorder, progress, window, round_idx, weights))
                window = _Window(time.time())
                if folded < total:
                    progress.start_round(round_idx + 1, workers)
    for old in list(holders):
        holders[old] = 0
        release(old)
    return RunResult(weights, summaries, peaks, clock)


def _close_window(
    exp: Experiment, recorder: RunRecorder, progress: Progress, window: _Window, round_idx: int, weights: FlatWeights
) -> RoundSummary:
    """Evaluate the current model and write the window's rounds.csv row."""
    end = time.time()
    t0 = time.perf_counter()
    loss, acc = exp.evaluate(weights) if exp.evaluate else (math.nan, math.nan)
    eval_s = time.perf_counter() - t0
    recorder.round_row(
        {
            "round": round_idx,
            "start": window.start,
            "end": end,
            "makespan_s": end - window.start,
            "publish_s": window.publish_s,
            "aggregate_s": window.aggregate_s,
            "eval_s": eval_s,
            "participants": window.updates,
            "bytes_to_workers": window.bytes_to,
            "bytes_from_workers": window.bytes_from,
            "bytes_moved": window.bytes_to + window.bytes_from,
            "edge_bytes": window.bytes_to + window.bytes_from,
            "test_loss": loss,
            "test_acc": acc,
            "train_loss": _mean(window.losses),
            "train_acc": _mean(window.accs),
        }
    )
    progress.end_round(round_idx, window.updates, window.updates, end - window.start, loss, acc)
    return RoundSummary(round_idx, end - window.start, loss, acc)
