"""What every loop (sync, async, decentralized) shares: how a task's outcome is read and counted.

- :class:`RoundStats`: what a round (or an async window) moved and measured.
- :class:`RoundSummary`: one round's result as the runner sees it (rounds.csv has the full row,
  built by :func:`flight_parsl.engine.records.round_row`).
- :class:`LoopResult`: what a loop hands the runner: the final model, the rounds, peak RSS and
  slot idle times. (Not the public :class:`flight_parsl.RunResult`, which reads a run directory.)
- :func:`classify`, :func:`describe`: a failed task's kind and one-line message.
- :func:`lost_slot`: the host and pid of the worker process whose death failed a task.
- :func:`release_late`: release what a task stored when it returned after its round closed.
- :func:`mean_finite`: a mean that skips NaN.

This module imports no loop; the loops import it.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flight_parsl.core.types import Slot, TaskResult
from flight_parsl.core.weights import FlatWeights
from flight_parsl.engine.events import SlotClock
from flight_parsl.transfer.base import Transfer

__all__ = ["LoopResult", "RoundStats", "RoundSummary", "classify", "describe", "lost_slot", "mean_finite", "release_late"]


@dataclass
class RoundSummary:
    """What one round produced (its row of rounds.csv has more). ``round`` is 0-based, as in the loops."""

    round: int
    makespan_s: float
    test_loss: float
    test_acc: float
    participants: int = 0
    failed: int = 0


@dataclass
class LoopResult:
    """The final model, one summary per round, each slot's peak RSS, and slot idle times."""

    weights: FlatWeights
    rounds: list[RoundSummary]
    slot_peak_rss_mb: dict[Slot, float]
    clock: SlotClock


@dataclass
class RoundStats:
    """What a round (or an async window) moved and measured; every loop counts train results alike."""

    bytes_to: int = 0
    bytes_from: int = 0
    outputs_from: int = 0  # results train tasks sent up (models, partials or updates)
    edge_bytes: int = 0
    aggregate_s: float = 0.0
    retries: int = 0
    tasks: int = 0
    losses: list[float] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)

    def count_train(self, res: TaskResult) -> None:
        """Count a train task's bytes each way and its clients' training loss and accuracy."""
        self.bytes_to += res.bytes_in
        self.bytes_from += res.bytes_out
        self.outputs_from += len(res.outputs)
        self.losses += [c.train_loss for c in res.clients]
        self.accs += [c.train_acc for c in res.clients]

    def raw_up(self, model_bytes: int) -> int:
        """Bytes the train tasks' results would have taken as full float32 models."""
        return self.outputs_from * model_bytes


#: Exception class names (anywhere in the exception's MRO) that mean the worker process died.
LOST = ("WorkerLost", "ManagerLost", "BrokenProcessPool")


def classify(exc: BaseException) -> str:
    """A failed task's kind: ``lost`` when its worker process died, else ``error``."""
    return "lost" if any(c.__name__ in LOST for c in type(exc).__mro__) else "error"


def describe(exc: BaseException) -> str:
    """One line for an exception."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def lost_slot(exc: BaseException, injector: Any = None) -> tuple[str, int | None] | None:
    """Where the worker process whose death failed a task ran: ``(host, pid)``, or None.

    Parsl's ``WorkerLost`` names the host and the worker's rank in its pool (``worker_id``),
    not its pid (``ManagerLost``, a pool that stopped answering, names only the host); the run's slot census (``injector.census``,
    :class:`~flight_parsl.processes.injector.SlotCensus`) knows which recorded pid had that
    rank and is gone. The pid is None where the census cannot tell (another host, no census).
    """
    host, rank = getattr(exc, "hostname", None), getattr(exc, "worker_id", None)
    if classify(exc) != "lost" or host is None:
        return None
    if rank is None:  # ManagerLost: a whole worker pool (a node) went silent; its host is known
        return str(host), None
    census = getattr(injector, "census", None)
    pid = census.lost(str(host), int(rank)) if census is not None else None
    return str(host), pid


def release_late(transfer: Transfer, future: Future[TaskResult]) -> None:
    """A task that returned after its round closed: release what it stored."""
    try:
        res = future.result()
    except Exception:  # failed or cancelled: it stored nothing. Never BaseException: this runs in the
        return  # main thread for a future already done, where it would swallow a stop signal's exception
    for ref, _ in res.outputs:
        transfer.discard(ref)


def mean_finite(values: list[float]) -> float:
    """Mean of the non-NaN values (NaN if none)."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
