"""Types that the coordinator and the slots share: workload, settings, outcomes.

A *client* is a logical FL participant (an id and its data shard); a *slot* is one
worker process; a *task* runs one or more clients of one round on one slot. These
types cross the executor boundary, so they are plain picklable dataclasses and
import nothing heavy (no torch, no Parsl).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flight_parsl.core.model_spec import ModelSpec
from flight_parsl.data.partition import PartitionSpec

if TYPE_CHECKING:
    from flight_parsl.transfer.base import Ref


Slot = tuple[str, int, int]  # host, pid, thread id


@dataclass(frozen=True)
class LocalSettings:
    """One client's local training settings for one round.

    ``max_steps`` caps optimizer steps (None: whole epochs); ``full_batch`` makes
    each step use the client's whole shard; ``prox_mu`` adds FedProx's proximal
    term (mu/2) * ||w - w_global||^2; ``slowdown`` >= 1 stretches the client's
    training time by that factor (injected heterogeneity); ``return_delta`` sends
    ``w_local - w_global`` instead of ``w_local``; ``keep_momentum`` keeps the
    client's SGD momentum buffer across rounds in its persistent state;
    ``weight_decay`` is SGD's L2 penalty; ``straggler`` marks a client that does
    fewer epochs this round (systems heterogeneity).
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    max_steps: int | None = None
    full_batch: bool = False
    prox_mu: float = 0.0
    slowdown: float = 1.0
    return_delta: bool = False
    keep_momentum: bool = False
    weight_decay: float = 0.0
    straggler: bool = False


@dataclass(frozen=True)
class Workload:
    """What every task of a run needs to rebuild its model and load its clients' shards."""

    mode: str
    model: ModelSpec
    dataset: str
    data_root: str | None
    partition: PartitionSpec
    num_clients: int
    seed: int
    threads: int = 1


@dataclass(frozen=True)
class Faults:
    """Injected faults, fired on a task's first attempt only (for experiments and tests).

    ``kill``: (round, client) pairs whose slot SIGKILLs itself when it reaches that
    client. ``hang``: (round, client) pairs whose slot sleeps ``hang_s`` seconds there.
    Rounds are 0-based here (the config counts them from 1).
    """

    kill: frozenset[tuple[int, int]] = frozenset()
    hang: frozenset[tuple[int, int]] = frozenset()
    hang_s: float = 30.0

    def __bool__(self) -> bool:
        return bool(self.kill or self.hang)


@dataclass
class ClientOutcome:
    """One client's part of a task, measured on the slot."""

    client: int
    samples: int
    started: float
    finished: float
    compute_s: float
    train_loss: float = math.nan
    train_acc: float = math.nan
    epochs: int = 0
    straggler: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # decentralized mode: accuracies, epsilon, bytes


@dataclass
class TaskResult:
    """A task's answer: its outputs (transfer references) and measurements.

    ``kind`` is ``train`` (clients' local training), ``aggregate`` (an aggregator
    node folding its children) or ``relay`` (an aggregator passing the global model
    down). ``outputs`` holds ``(ref, weight)`` pairs: one folded partial whose weight
    is its clients' total samples (linear strategies), or one result per client.
    Times are Unix seconds on the slot's clock; durations are seconds; ``encode_s`` and
    ``decode_s`` are the task's codec time (:mod:`flight_parsl.transfer.codecs`).
    """

    kind: str
    node: str
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
    rss_mb: float
    peak_rss_mb: float
    outputs: list[tuple[Ref, float]] = field(default_factory=list)
    clients: list[ClientOutcome] = field(default_factory=list)
    thread: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    block: str = ""  # the Parsl block of the slot (PARSL_WORKER_BLOCK_ID); "" off Parsl HTEX
    primed_at_start: bool = False  # the slot primed as it started, before any task (a late block's pool)
    accelerator: str = ""  # the devices the slot sees (CUDA_VISIBLE_DEVICES: Parsl pins one per worker)
    device: str = ""  # the torch device a train task trained on ("cpu", "cuda:0" ...); "" when none trained

    @property
    def slot(self) -> Slot:
        """The slot that ran the task: host, process and thread (threads are slots of a pool)."""
        return self.host, self.pid, self.thread

    @property
    def weight(self) -> float:
        """Total weight of the outputs (samples, for sample-weighted strategies)."""
        return sum(w for _, w in self.outputs)


@dataclass(frozen=True)
class Failure:
    """Client work that produced no result: handed to the strategy, written to tasks.csv.

    ``kind`` is ``error`` (the task raised), ``lost`` (its worker process died) or
    ``deadline`` (the round closed before it returned).
    """

    round: int
    clients: tuple[int, ...]
    kind: str
    message: str
    attempt: int = 0
    node: str = ""
