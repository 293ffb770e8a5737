"""The task bodies that run on slots (worker processes), and the warm-up task.

Parsl pickles these module-level functions by reference, so a slot imports this
module and what it imports: numpy, the data, weights, aggregation and transfer
modules, never torch, the engine, the executors or the config. Training imports
torch lazily (:mod:`flight_parsl.worker.training`), so a no-training ("debug")
round runs on slots that never load it.

A train task runs its clients one after the other: the global model is resolved
once (and cached per process by the store), each client's shard is loaded
(cached per process), and for a linear strategy the clients are folded into one
weighted partial in the slot, so the task returns one model whatever its number
of clients.

With a codec (``compression``, :mod:`flight_parsl.transfer.codecs`) a train task sends
its update, the delta from the global model it started from, encoded: a packed task
folds its clients' deltas first and encodes the partial once; an aggregate task decodes
its children, folds them, and encodes what it sends up. With error feedback each client
adds its residual (kept in the run's client state) to its delta before the fold, and
after the encode every client of the task keeps, as its next residual, what the payload
left out of the partial it was folded into: weighted as in the fold, the residuals add
up to exactly what the task did not send (one client per task: textbook error feedback).
An aggregator does the same with a residual of its own, kept under its id.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from flight_parsl.core.memory import lifetime_peak_rss_mb, rss_mb
from flight_parsl.core.types import ClientOutcome, Faults, LocalSettings, TaskResult, Workload
from flight_parsl.core.weights import FlatWeights
from flight_parsl.transfer.base import Ref
from flight_parsl.transfer.codecs import Codec, Compression, encode_feedback, is_encoded, pack, unpack
from flight_parsl.transfer.state import AggregatorFeedback, ClientState, feedback_key
from flight_parsl.worker.barrier import meet
from flight_parsl.worker.faults import inject

if TYPE_CHECKING:  # annotations only: a slot imports no more than it did
    from flight_parsl.fl.aggregate import Aggregator
    from flight_parsl.fl.protocols import SyncStrategy


#: The node name of the coordinator (the root) that train tasks report to.
COORDINATOR = "coordinator"


def warm_data(workload: Workload) -> None:
    """Load the dataset and its partition, and take one training step, in this process."""
    if workload.mode == "none":
        return
    from flight_parsl.worker.training import warm_up

    warm_up(workload)


#: True once this process was primed when it started (a worker pool of
#: :mod:`flight_parsl.execution.primed_pool`), before it took any task.
PRIMED_AT_START = False


def prime_at_start(modules: tuple[str, ...], workload: Workload | None) -> None:
    """Prime this worker process as it starts, before it takes a task: import what the round's
    tasks import and load the data, as the warm-up task does."""
    import importlib

    global PRIMED_AT_START
    for name in modules:
        importlib.import_module(name)
    if workload is not None:
        warm_data(workload)
    PRIMED_AT_START = True


def prime_task(
    modules: tuple[str, ...] = (),
    barrier: str | None = None,
    expected: int = 1,
    max_wait: float = 0.0,
    workload: Workload | None = None,
    timing: bool = False,
) -> tuple[str, int] | tuple[str, int, dict[str, float | None]]:
    """Warm-up: import what the round's tasks import, load the data; return host and pid.

    With ``barrier`` (a directory the slots share) the task marks itself there and
    waits until ``expected`` tasks have, at most ``max_wait`` seconds: a slot runs one
    task at a time, so ``expected`` concurrent warm-up tasks occupy ``expected``
    distinct slots (see :func:`~flight_parsl.worker.barrier.meet`).

    With ``timing`` a third item gives the slot's start-up in Unix time (the run's
    start-up phases): ``pool_started`` (the slot's parent process: on HTEX the pool's
    forkserver, :mod:`flight_parsl.execution.primed_pool`), ``worker_started`` (this process), ``task_started`` (this task
    reached the slot), ``primed`` (imports and data done, before the barrier).
    """
    import importlib

    task_started = time.time()
    for name in modules:
        importlib.import_module(name)
    if workload is not None:
        warm_data(workload)
    primed = time.time()
    meet(barrier, expected, max_wait)
    if timing:
        from flight_parsl.core.proctime import process_started

        return socket.gethostname(), os.getpid(), {
            "pool_started": process_started(os.getppid()), "worker_started": process_started(),
            "task_started": task_started, "primed": primed,
        }
    return socket.gethostname(), os.getpid()


def _result(kind: str, node: str, round_idx: int, started: float, **values: Any) -> TaskResult:
    return TaskResult(
        kind=kind,
        node=node,
        round=round_idx,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=started,
        finished=time.time(),
        rss_mb=rss_mb(),
        peak_rss_mb=lifetime_peak_rss_mb(),
        thread=threading.get_native_id(),
        block=os.environ.get("PARSL_WORKER_BLOCK_ID", ""),
        primed_at_start=PRIMED_AT_START,
        accelerator=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        **values,
    )


def _train_one(
    weights: FlatWeights, workload: Workload, settings: LocalSettings, client: int, round_idx: int,
    state: ClientState | None,
) -> tuple[FlatWeights, ClientOutcome]:
    """One client's local training from ``weights`` (or the weights back, in debug mode)."""
    started, t0 = time.time(), time.perf_counter()
    if workload.mode == "none":
        out, samples, loss, acc, cpu_s = weights, 1, math.nan, math.nan, 0.0
    else:
        from flight_parsl.worker.training import train_local

        out, samples, loss, acc, cpu_s = train_local(weights, workload, settings, client, round_idx, state)
    if settings.slowdown > 1.0:
        # Injected heterogeneity: based on the loop's CPU time, so neither first-use
        # set-up nor CPU contention is multiplied.
        time.sleep((settings.slowdown - 1.0) * cpu_s)
    if settings.return_delta:
        out = out.like(out.buffer - weights.buffer)
    epochs = 0 if workload.mode == "none" else settings.epochs
    return out, ClientOutcome(
        client, samples, started, time.time(), time.perf_counter() - t0, loss, acc, epochs, settings.straggler
    )


def _decoded(weights: FlatWeights) -> tuple[FlatWeights, float]:
    """``weights`` decoded when they are an encoded payload, and the seconds it took."""
    if not is_encoded(weights):
        return weights, 0.0
    t0 = time.perf_counter()
    out = unpack(weights)
    return out, time.perf_counter() - t0


def _residual(state: ClientState | None, client: int, size: int) -> np.ndarray | None:
    """``client``'s error-feedback residual (None before its first)."""
    if state is None:
        raise ValueError("error feedback needs the run's client state")
    blob = state.get(feedback_key(client))
    if blob is None:
        return None
    residual = np.frombuffer(blob, dtype=np.float32)
    if residual.size != size:
        raise ValueError(f"client {client}'s residual has {residual.size} values, the model {size}")
    return residual


def _encode(
    codec: Codec, comp: Compression, update: FlatWeights, state: ClientState | None, keepers: Sequence[int]
) -> tuple[FlatWeights, float]:
    """``update`` encoded; with error feedback each of ``keepers`` keeps what it left out."""
    t0 = time.perf_counter()
    if comp.feedback:
        payload, left = encode_feedback(codec, update.buffer, None)
        assert state is not None  # _residual checked it
        blob = left.tobytes()
        for client in keepers:
            state.put(feedback_key(client), blob)
    else:
        payload = codec.encode(update.buffer)
    out = pack(codec, payload, update.layout, comp.block)
    return out, time.perf_counter() - t0


def train_task(
    ref: Ref,
    round_idx: int,
    node: str,
    clients: Sequence[tuple[int, LocalSettings]],
    workload: Workload,
    fold: SyncStrategy | None = None,
    state: ClientState | None = None,
    faults: Faults | None = None,
    attempt: int = 0,
    compression: Compression | None = None,
) -> TaskResult:
    """Train ``clients`` one after the other from the global model ``ref``.

    Args:
        fold: a linear strategy (its ``aggregator``) to fold the clients into one
            partial in the slot; None returns every client's result.
        state: the run's per-client state, for clients whose settings keep some.
        faults: injected faults (first attempt only).
        compression: the run's codecs: with ``compression.deltas`` the task sends its
            update (delta from the model it started from), encoded.
    """
    started = time.time()
    weights, get_s, deserialize_s, fetched = ref.resolve()
    weights, decode_s = _decoded(weights)  # an encoded broadcast (transfer.codec_down)
    t0 = time.perf_counter()
    codec = compression.codec_up() if compression is not None and compression.deltas else None
    feedback = codec is not None and compression is not None and compression.feedback
    # Results for the coordinator, which folds each once and lets it go at once, may reuse an
    # evicted result's storage; not those for an aggregator: a late aggregate task may still be
    # reading them after their round ended (see Ref.reply).
    recycle = node == COORDINATOR
    # A lone client's result is its own partial: no accumulator to fill.
    partial = fold.aggregator(weights) if fold is not None and len(clients) > 1 else None
    # Without a codec, the last client's fold, the cast and the put of the partial go slice by slice
    # (a streamed put: each slice leaves while the next is folded), where the store streams.
    stream = partial is not None and codec is None and _streams(ref, partial)
    last: tuple[FlatWeights, float] | None = None
    outputs: list[tuple[Ref, float]] = []
    outcomes: list[ClientOutcome] = []
    serialize_s = put_s = encode_s = 0.0
    for index, (client, settings) in enumerate(clients):
        inject(faults, round_idx, client, attempt)
        out, outcome = _train_one(weights, workload, settings, client, round_idx, state)
        outcomes.append(outcome)
        if codec is not None:  # the update, plus what the client did not send before
            delta = out.buffer if settings.return_delta else out.buffer - weights.buffer
            residual = _residual(state, client, delta.size) if feedback else None
            out = out.like(delta if residual is None else delta + residual)
        if stream and index == len(clients) - 1:
            last = (out, outcome.samples)  # folded as it is sent, below
        elif partial is not None:
            partial.add(out, outcome.samples)
        else:
            if codec is not None:
                assert compression is not None
                out, e = _encode(codec, compression, out, state, (client,))
                encode_s += e
            payload, s, p = ref.reply(out, recycle=recycle)
            serialize_s, put_s = serialize_s + s, put_s + p
            outputs.append((payload, outcome.samples))
        del out
    if partial is not None and last is not None:
        slices = partial.finish(*last)  # type: ignore[attr-defined]  # _streams checked it
        last = None
        payload, serialize_s, put_s = ref.reply_stream(weights.layout, slices)  # type: ignore[attr-defined]
        outputs.append((payload, partial.total))
    elif partial is not None:
        result = partial.result()
        if codec is not None:
            assert compression is not None
            result, encode_s = _encode(codec, compression, result, state, [c for c, _ in clients])
        payload, serialize_s, put_s = ref.reply(result, recycle=recycle)
        outputs.append((payload, partial.total))
    compute_s = time.perf_counter() - t0 - serialize_s - put_s - encode_s
    return _result(
        "train", node, round_idx, started,
        get_s=get_s, deserialize_s=deserialize_s, compute_s=compute_s, serialize_s=serialize_s, put_s=put_s,
        bytes_in=fetched, bytes_out=sum(r.nbytes for r, _ in outputs), outputs=outputs, clients=outcomes,
        encode_s=encode_s, decode_s=decode_s, device=_device(workload),
    )


def _streams(ref: Ref, partial: Aggregator) -> bool:
    """Whether a partial can be finished and stored slice by slice: an aggregator that finishes in
    slices (:meth:`~flight_parsl.fl.aggregate.WeightedMean.finish`) and a store that takes a
    streamed put (:meth:`~flight_parsl.transfer.proxy.ProxyRef.reply_stream`: Redis)."""
    streams = getattr(ref, "streams", None)
    return hasattr(partial, "finish") and streams is not None and bool(streams())


def _device(workload: Workload) -> str:
    """The device a train task's clients trained on (``cpu``, ``cuda:0`` ...); "" when none trained."""
    if workload.mode == "none":
        return ""
    from flight_parsl.worker.training import device_name

    return device_name()


def aggregate_task(
    children: list[tuple[Ref, float]], strategy: SyncStrategy, round_idx: int, node: str,
    compression: Compression | None = None, feedback: AggregatorFeedback | None = None,
) -> TaskResult:
    """An aggregator node: its children's results folded by the strategy's aggregator.

    Children are resolved and dropped one at a time (popped from the list, read
    past the process's store cache, so no reference keeps a resolved model alive):
    the task holds one child model and the accumulator, whatever its branching, and
    the accumulator is dropped before the result is serialized. The partial's weight
    is the children's total, so its parent folds it exactly. Encoded children are
    decoded; with ``compression.deltas`` the partial is encoded again; with ``feedback``
    (``transfer.error_feedback``) the aggregator's residual is added first and what the
    payload left out becomes its next residual.
    """
    started = time.time()
    if not children:
        raise ValueError(f"aggregator {node} got no child result in round {round_idx + 1}")
    get_s = deserialize_s = compute_s = decode_s = encode_s = 0.0
    bytes_in = 0
    partial: Aggregator | None = None
    encoding = compression is not None and compression.deltas
    while children:  # the last child's reference also carries the reply
        ref, weight = children.pop()
        weights, g, d, fetched = ref.resolve(cache=False)
        get_s, deserialize_s, bytes_in = get_s + g, deserialize_s + d, bytes_in + fetched
        weights, dec = _decoded(weights)
        decode_s += dec
        t0 = time.perf_counter()
        if partial is None:
            partial = strategy.aggregator(weights)
        if not children and not encoding and _streams(ref, partial):
            # the last child's fold, the cast and the put slice by slice (a streamed put)
            total = partial.total + weight
            slices = partial.finish(weights, weight)  # type: ignore[attr-defined]  # _streams checked it
            compute_s += time.perf_counter() - t0
            layout = weights.layout
            del weights
            partial = None
            payload, serialize_s, put_s = ref.reply_stream(layout, slices)  # type: ignore[attr-defined]
            return _result(
                "aggregate", node, round_idx, started,
                get_s=get_s, deserialize_s=deserialize_s, compute_s=compute_s, serialize_s=serialize_s,
                put_s=put_s, bytes_in=bytes_in, bytes_out=payload.nbytes, outputs=[(payload, total)],
                encode_s=encode_s, decode_s=decode_s,
            )
        partial.add(weights, weight)
        compute_s += time.perf_counter() - t0
        del weights
    assert partial is not None  # children was not empty
    t0 = time.perf_counter()
    result, total = partial.result(), partial.total
    partial = None  # the float64 accumulator goes before the result is serialized
    compute_s += time.perf_counter() - t0
    if compression is not None and compression.deltas:
        t0 = time.perf_counter()
        codec = compression.codec_up()
        if feedback is not None:
            blob = feedback.residual()
            residual = None if blob is None else np.frombuffer(blob, dtype=np.float32)
            if residual is not None and residual.size != result.buffer.size:
                raise ValueError(f"aggregator {node}'s residual has {residual.size} values, the model "
                                 f"{result.buffer.size}")
            encoded, left = encode_feedback(codec, result.buffer, residual)
            feedback.keep(left.tobytes())
        else:
            encoded = codec.encode(result.buffer)
        result = pack(codec, encoded, result.layout, compression.block)
        encode_s = time.perf_counter() - t0
    payload, serialize_s, put_s = ref.reply(result)
    return _result(
        "aggregate", node, round_idx, started,
        get_s=get_s, deserialize_s=deserialize_s, compute_s=compute_s, serialize_s=serialize_s, put_s=put_s,
        bytes_in=bytes_in, bytes_out=payload.nbytes, outputs=[(payload, total)], encode_s=encode_s, decode_s=decode_s,
    )


def relay_task(ref: Ref, round_idx: int, node: str) -> TaskResult:
    """An aggregator node passing the global model down: fetch it once, republish it
    (an encoded broadcast as it is)."""
    started = time.time()
    weights, get_s, deserialize_s, fetched = ref.resolve()
    payload, serialize_s, put_s = ref.reply(weights)
    return _result(
        "relay", node, round_idx, started,
        get_s=get_s, deserialize_s=deserialize_s, compute_s=0.0, serialize_s=serialize_s, put_s=put_s,
        bytes_in=fetched, bytes_out=payload.nbytes, outputs=[(payload, 0.0)],
    )
