"""The synchronous round loop.

Per round: the strategy picks participants; the global model is published once;
one task per participant is submitted; results are folded into a streaming
aggregate as they complete (O(model) memory); the new model is evaluated and the
round's rows are written. The loop sees only a ``concurrent.futures.Executor`` and
a transfer, so it runs unchanged on a thread pool and on Parsl HTEX.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Executor, Future, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass

import numpy as np

from flight_parsl.errors import TaskError
from flight_parsl.experiment import Experiment
from flight_parsl.progress import Progress
from flight_parsl.results import RunRecorder
from flight_parsl.tasks import TaskResult, train_task
from flight_parsl.transfer.base import Transfer
from flight_parsl.weights import FlatWeights


@dataclass
class RoundSummary:
    """What one round produced (also written to rounds.csv)."""

    round: int
    makespan_s: float
    test_loss: float
    test_acc: float


@dataclass
class SyncResult:
    """The final model, one summary per round, and each worker process's peak RSS (MiB)."""

    weights: FlatWeights
    rounds: list[RoundSummary]
    worker_peak_rss_mb: dict[tuple[str, int], float]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def run_sync(
    exp: Experiment,
    executor: Executor,
    transfer: Transfer,
    recorder: RunRecorder,
    progress: Progress,
    workers: int,
    rounds: int,
    seed: int,
    round_timeout: float | None = None,
) -> SyncResult:
    """Run ``rounds`` synchronous rounds.

    Raises:
        TaskError: a task failed or the round timed out. Rows of finished tasks
            and rounds are already on disk.
    """
    rng = np.random.default_rng(seed)
    weights = exp.initial
    summaries: list[RoundSummary] = []
    worker_peaks: dict[tuple[str, int], float] = {}
    all_workers = list(range(workers))
    for r in range(rounds):
        start = time.time()
        participants = exp.strategy.select(r, all_workers, rng)
        t0 = time.perf_counter()
        ref = transfer.publish(weights, r)
        publish_s = time.perf_counter() - t0
        progress.start_round(r, len(participants))
        futures: dict[Future[TaskResult], tuple[int, float]] = {}
        for w in participants:
            settings = exp.settings_for(r, w)
            futures[executor.submit(train_task, ref, r, w, exp.workload, settings)] = (w, time.time())
        aggregator = exp.strategy.aggregator(weights)
        aggregate_s = 0.0
        bytes_in = bytes_out = 0
        losses: list[float] = []
        accs: list[float] = []
        try:
            for fut in as_completed(futures, timeout=round_timeout):
                worker, submitted = futures[fut]
                try:
                    res = fut.result()
                except Exception as exc:
                    raise TaskError(
                        f"worker {worker} failed in round {r + 1}: {type(exc).__name__}: {exc}"
                    ) from exc
                received = time.time()
                t0 = time.perf_counter()
                result_weights = transfer.collect(res.payload)
                collect_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                aggregator.add(result_weights, res.samples)
                aggregate_s += time.perf_counter() - t0
                del result_weights
                bytes_in += res.bytes_in
                bytes_out += res.bytes_out
                process = (res.host, res.pid)
                worker_peaks[process] = max(worker_peaks.get(process, 0.0), res.peak_rss_mb)
                losses.append(res.train_loss)
                accs.append(res.train_acc)
                recorder.task_row(_task_row(res, submitted, received, collect_s))
                progress.task_done(r, aggregator.count, len(participants))
        except FuturesTimeout as exc:
            raise TaskError(
                f"round {r + 1} timed out after {round_timeout} s with "
                f"{aggregator.count}/{len(participants)} results"
            ) from exc
        t0 = time.perf_counter()
        weights = aggregator.result()
        aggregate_s += time.perf_counter() - t0
        transfer.end_round(r)
        end = time.time()
        t0 = time.perf_counter()
        loss, acc = exp.evaluate(weights) if exp.evaluate else (math.nan, math.nan)
        eval_s = time.perf_counter() - t0
        recorder.round_row(
            {
                "round": r,
                "start": start,
                "end": end,
                "makespan_s": end - start,
                "publish_s": publish_s,
                "aggregate_s": aggregate_s,
                "eval_s": eval_s,
                "participants": len(participants),
                "bytes_to_workers": bytes_in,
                "bytes_from_workers": bytes_out,
                "bytes_moved": bytes_in + bytes_out,
                "test_loss": loss,
                "test_acc": acc,
                "train_loss": _mean(losses),
                "train_acc": _mean(accs),
            }
        )
        progress.end_round(r, aggregator.count, len(participants), end - start, loss, acc)
        summaries.append(RoundSummary(r, end - start, loss, acc))
    return SyncResult(weights, summaries, worker_peaks)


def _task_row(res: TaskResult, submitted: float, received: float, collect_s: float) -> dict[str, object]:
    return {
        "round": res.round,
        "worker": res.worker,
        "host": res.host,
        "pid": res.pid,
        "submitted": submitted,
        "started": res.started,
        "finished": res.finished,
        "received": received,
        "get_s": res.get_s,
        "deserialize_s": res.deserialize_s,
        "train_s": res.train_s,
        "serialize_s": res.serialize_s,
        "put_s": res.put_s,
        "collect_s": collect_s,
        "bytes_in": res.bytes_in,
        "bytes_out": res.bytes_out,
        "samples": res.samples,
        "train_loss": res.train_loss,
        "train_acc": res.train_acc,
        "rss_mb": res.rss_mb,
        "peak_rss_mb": res.peak_rss_mb,
    }
