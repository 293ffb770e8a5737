"""The functions that run on workers, and what they take and return.

Parsl pickles these module-level functions by reference, so a worker imports this
module and what it imports: numpy and the data and weights modules, never torch.
Training imports torch lazily (:mod:`flight_parsl.training`), so a no-training
("debug") round runs on workers that never load it.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass

from flight_parsl.data.partition import PartitionSpec
from flight_parsl.memory import lifetime_peak_rss_mb, rss_mb
from flight_parsl.model_spec import ModelSpec
from flight_parsl.strategies import LocalSettings
from flight_parsl.transfer.base import Ref


@dataclass(frozen=True)
class Workload:
    """What every task of a run needs to rebuild its model and load its own shard."""

    mode: str
    model: ModelSpec
    dataset: str
    data_root: str | None
    partition: PartitionSpec
    num_clients: int
    seed: int
    threads: int = 1


@dataclass
class TaskResult:
    """A worker's answer: its weights (as a transfer reference) and measurements.

    Times are Unix seconds on the worker's clock; durations are seconds.
    """

    worker: int
    round: int
    host: str
    pid: int
    started: float
    finished: float
    get_s: float
    deserialize_s: float
    train_s: float
    serialize_s: float
    put_s: float
    bytes_in: int
    bytes_out: int
    samples: int
    train_loss: float
    train_acc: float
    rss_mb: float
    peak_rss_mb: float
    payload: Ref


def prime_task(modules: tuple[str, ...] = (), hold_s: float = 0.0) -> tuple[str, int]:
    """Warm-up task: imports what the round's tasks will import; returns host and pid.

    ``hold_s`` keeps the worker busy a moment so that concurrent warm-up tasks
    spread over idle workers instead of queueing on the first one.
    """
    import importlib

    for name in modules:
        importlib.import_module(name)
    time.sleep(hold_s)
    return socket.gethostname(), os.getpid()


def train_task(ref: Ref, round_idx: int, worker: int, workload: Workload, settings: LocalSettings) -> TaskResult:
    """One worker's part of one round: resolve the global model, train, reply."""
    started = time.time()
    weights, get_s, deserialize_s = ref.resolve()
    t1 = time.perf_counter()
    if workload.mode == "none":
        out, samples, loss, acc = weights, 1, math.nan, math.nan
    else:
        from flight_parsl.training import train_local

        out, samples, loss, acc = train_local(weights, workload, settings, worker, round_idx)
    if settings.slowdown > 1.0:  # injected heterogeneity: this worker is `slowdown` times slower
        time.sleep((settings.slowdown - 1.0) * (time.perf_counter() - t1))
    train_s = time.perf_counter() - t1
    payload, serialize_s, put_s = ref.reply(out)
    return TaskResult(
        worker=worker,
        round=round_idx,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=started,
        finished=time.time(),
        get_s=get_s,
        deserialize_s=deserialize_s,
        train_s=train_s,
        serialize_s=serialize_s,
        put_s=put_s,
        bytes_in=ref.nbytes,
        bytes_out=payload.nbytes,
        samples=samples,
        train_loss=loss,
        train_acc=acc,
        rss_mb=rss_mb(),
        peak_rss_mb=lifetime_peak_rss_mb(),
        payload=payload,
    )
