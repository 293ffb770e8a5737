"""The functions that run on workers, and what they take and return.

Parsl pickles these module-level functions by reference, so a worker imports this
module and what it imports: numpy and the data and weights modules, never torch.
Training imports torch lazily (:mod:`flight_parsl.worker.training`), so a no-training
("debug") round runs on workers that never load it.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass

from flight_parsl.data.partition import PartitionSpec
from flight_parsl.core.memory import lifetime_peak_rss_mb, rss_mb
from flight_parsl.core.model_spec import ModelSpec
from flight_parsl.fl.strategies import LocalSettings, WeightedMean
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
    """A task's answer: its weights (as a transfer reference) and measurements.

    ``kind`` is ``train`` (a worker's local training; ``worker`` is its index),
    ``aggregate`` (an aggregator node combining its children) or ``relay`` (an
    aggregator node passing the global model down the tree). Times are Unix seconds
    on the worker's clock; durations are seconds; ``compute_s`` is training or
    aggregating.
    """

    kind: str
    node: str
    worker: int | None
    round: int
    host: str
    pid: int
    started: float
    finished: float
    get_s: float
    deserialize_s: float
    compute_s: float
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


def _result(kind: str, node: str, worker: int | None, round_idx: int, started: float, **values: object) -> TaskResult:
    return TaskResult(
        kind=kind,
        node=node,
        worker=worker,
        round=round_idx,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=started,
        finished=time.time(),
        rss_mb=rss_mb(),
        peak_rss_mb=lifetime_peak_rss_mb(),
        **values,  # type: ignore[arg-type]
    )


def train_task(ref: Ref, round_idx: int, worker: int, workload: Workload, settings: LocalSettings) -> TaskResult:
    """One worker's part of one round: resolve the global model, train, reply."""
    started = time.time()
    weights, get_s, deserialize_s = ref.resolve()
    t1 = time.perf_counter()
    if workload.mode == "none":
        out, samples, loss, acc, cpu_s = weights, 1, math.nan, math.nan, 0.0
    else:
        from flight_parsl.worker.training import train_local

        out, samples, loss, acc, cpu_s = train_local(weights, workload, settings, worker, round_idx)
    if settings.slowdown > 1.0:
        # Injected heterogeneity: this worker's training takes `slowdown` times as long. Based on
        # the loop's CPU time, so neither first-task setup nor CPU contention is multiplied.
        time.sleep((settings.slowdown - 1.0) * cpu_s)
    compute_s = time.perf_counter() - t1
    payload, serialize_s, put_s = ref.reply(out)
    return _result(
        "train", f"worker-{worker}", worker, round_idx, started,
        get_s=get_s, deserialize_s=deserialize_s, compute_s=compute_s, serialize_s=serialize_s, put_s=put_s,
        bytes_in=ref.nbytes, bytes_out=payload.nbytes, samples=samples, train_loss=loss, train_acc=acc, payload=payload,
    )


def aggregate_task(refs: list[Ref], samples: list[int], round_idx: int, node: str) -> TaskResult:
    """An aggregator node: the sample-weighted mean of its children, as one partial result.

    Children are folded in one at a time (O(model) memory); the partial carries
    the children's total samples so that its parent weights it exactly.
    """
    started = time.time()
    if not refs:
        raise ValueError(f"aggregator {node} got no child result in round {round_idx + 1}")
    get_s = deserialize_s = t_compute = 0.0
    mean: WeightedMean | None = None
    for ref, n in zip(refs, samples):
        weights, g, d = ref.resolve()
        get_s += g
        deserialize_s += d
        t0 = time.perf_counter()
        mean = mean or WeightedMean(weights)
        mean.add(weights, n)
        t_compute += time.perf_counter() - t0
        del weights
    assert mean is not None
    t0 = time.perf_counter()
    result = mean.result()
    t_compute += time.perf_counter() - t0
    payload, serialize_s, put_s = refs[0].reply(result)
    return _result(
        "aggregate", node, None, round_idx, started,
        get_s=get_s, deserialize_s=deserialize_s, compute_s=t_compute, serialize_s=serialize_s, put_s=put_s,
        bytes_in=sum(r.nbytes for r in refs), bytes_out=payload.nbytes, samples=int(mean.total),
        train_loss=math.nan, train_acc=math.nan, payload=payload,
    )


def relay_task(ref: Ref, round_idx: int, node: str) -> TaskResult:
    """An aggregator node passing the global model down: fetch it once, republish it for its children."""
    started = time.time()
    weights, get_s, deserialize_s = ref.resolve()
    payload, serialize_s, put_s = ref.reply(weights)
    return _result(
        "relay", node, None, round_idx, started,
        get_s=get_s, deserialize_s=deserialize_s, compute_s=0.0, serialize_s=serialize_s, put_s=put_s,
        bytes_in=ref.nbytes, bytes_out=payload.nbytes, samples=0, train_loss=math.nan, train_acc=math.nan,
        payload=payload,
    )
