"""The decentralized-mode task body: a few clients' local steps on one slot.

For each of its clients the task reads the model the client received last round
(through the transfer's store, past the process's cache, so every read is
counted), runs the client's step (:mod:`flight_parsl.worker.peer_training`:
state from the per-client store, training, evaluation, state back), and publishes
the client's shared model for its peer through the round's channel. It returns
one reference per client that sends something; the coordinator only routes them.
Per client it records what the client read and wrote: the received model and its
state blob in, the sent model and its state blob out. With a codec (``compression``: a dense
one, fp16 or int8) the client's shared model is encoded before it is published and a received
model decoded before the step, so the bytes counted are the encoded ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from flight_parsl.core.peer import PeerSettings
from flight_parsl.core.types import ClientOutcome, Faults, TaskResult, Workload
from flight_parsl.transfer.base import Ref
from flight_parsl.transfer.codecs import Compression, encode, is_encoded, unpack
from flight_parsl.transfer.state import ClientState
from flight_parsl.worker.faults import inject
from flight_parsl.worker.tasks import _result


def peer_task(
    channel: Ref,
    round_idx: int,
    clients: Sequence[tuple[int, PeerSettings, Ref | None]],
    workload: Workload,
    state: ClientState,
    faults: Faults | None = None,
    attempt: int = 0,
    compression: Compression | None = None,
) -> TaskResult:
    """Run ``clients`` (id, settings, the reference it received or None) one after the other.

    Args:
        channel: the round's channel: what the clients publish goes through its ``reply``.
        state: the run's per-client store (models, optimizer states, DP step counts).
        faults: injected faults (first attempt only).
        compression: the run's codecs: with ``compression.deltas`` every shared model sent is
            encoded by ``compression.up`` (whole models: a dense codec).
    """
    from flight_parsl.worker.peer_training import train_peer

    started = time.time()
    get_s = deserialize_s = serialize_s = put_s = encode_s = decode_s = 0.0
    codec = compression.codec_up() if compression is not None and compression.deltas else None
    bytes_in = 0
    outputs: list[tuple[Ref, float]] = []
    outcomes: list[ClientOutcome] = []
    t_task = time.perf_counter()
    for client, settings, inbox in clients:
        inject(faults, round_idx, client, attempt)
        c_started, t0 = time.time(), time.perf_counter()
        received, got = None, 0
        if inbox is not None:
            received, g, d, got = inbox.resolve(cache=False)
            get_s, deserialize_s = get_s + g, deserialize_s + d
            if is_encoded(received):
                t0 = time.perf_counter()
                received = unpack(received)
                decode_s += time.perf_counter() - t0
        step = train_peer(workload, settings, client, round_idx, state, received)
        del received
        sent = 0
        if step.shared is not None:
            shared = step.shared
            if codec is not None:
                assert compression is not None
                t0 = time.perf_counter()
                shared = encode(codec, shared, compression.block)
                encode_s += time.perf_counter() - t0
            ref, s, p = channel.reply(shared)
            serialize_s, put_s = serialize_s + s, put_s + p
            outputs.append((ref, float(step.samples)))
            sent = ref.nbytes
        bytes_in += got
        m = dict(step.metrics)
        m["model_bytes_in"], m["model_bytes_out"] = float(got), float(sent)
        m["client_bytes_in"] = m["model_bytes_in"] + m.get("state_bytes_in", 0.0)
        m["client_bytes_out"] = m["model_bytes_out"] + m.get("state_bytes_out", 0.0)
        outcomes.append(
            ClientOutcome(
                client, step.samples, c_started, time.time(), time.perf_counter() - t0,
                step.train_loss, step.train_acc, metrics=m,
            )
        )
    compute_s = time.perf_counter() - t_task - get_s - deserialize_s - serialize_s - put_s - encode_s - decode_s
    return _result(
        "train", "coordinator", round_idx, started,
        get_s=get_s, deserialize_s=deserialize_s, compute_s=max(compute_s, 0.0), serialize_s=serialize_s,
        put_s=put_s, bytes_in=bytes_in, bytes_out=sum(r.nbytes for r, _ in outputs), outputs=outputs,
        clients=outcomes, encode_s=encode_s, decode_s=decode_s,
    )


def client_metric(outcome: ClientOutcome, key: str) -> float:
    """A metric of a client's outcome, NaN when it has none."""
    return float(outcome.metrics.get(key, math.nan))
