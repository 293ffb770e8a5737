"""Federated strategies: who takes part, how they train, how results are combined.

A strategy has one hook per step (Flower-style): :meth:`Strategy.select` picks the
participants of a round, :meth:`Strategy.configure` sets each participant's local
training, and :meth:`Strategy.aggregator` returns a streaming aggregator that folds
results in as they arrive, holding O(model) memory rather than O(N x model).
Strategies whose aggregate is a weighted mean say so with ``linear = True``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from flight_parsl.errors import unknown_name
from flight_parsl.weights import FlatWeights


@dataclass(frozen=True)
class LocalSettings:
    """One participant's local training settings for one round.

    ``max_steps`` caps optimizer steps (None: whole epochs); ``full_batch`` makes
    each step use the worker's whole shard.
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    max_steps: int | None = None
    full_batch: bool = False


class Aggregator(Protocol):
    """Folds results in one at a time."""

    def add(self, weights: FlatWeights, samples: int) -> None:
        """Fold in one participant's weights, trained on ``samples`` examples."""

    def result(self) -> FlatWeights:
        """The aggregate of everything added."""

    @property
    def count(self) -> int:
        """How many results were added."""


class WeightedMean:
    """Streaming sample-weighted mean of flat buffers (float64 accumulator)."""

    def __init__(self, template: FlatWeights) -> None:
        self._template = template
        self._acc = np.zeros(template.layout.size, dtype=np.float64)
        self._total = 0.0
        self._count = 0

    def add(self, weights: FlatWeights, samples: int) -> None:
        if weights.layout != self._template.layout:
            raise ValueError("result weights do not match the global model's layout")
        if samples <= 0:
            raise ValueError(f"samples must be > 0, got {samples}")
        self._acc += samples * weights.buffer
        self._total += samples
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def result(self) -> FlatWeights:
        if self._count == 0:
            raise ValueError("no result to aggregate")
        return self._template.like(self._acc / self._total)


class Strategy(Protocol):
    """What the engine asks of a strategy."""

    name: str
    linear: bool

    def select(self, round_idx: int, workers: list[int], rng: np.random.Generator) -> list[int]:
        """The participants of round ``round_idx``."""

    def configure(self, round_idx: int, worker: int, base: LocalSettings) -> LocalSettings:
        """Local settings of ``worker`` in round ``round_idx``."""

    def aggregator(self, global_weights: FlatWeights) -> Aggregator:
        """A fresh aggregator for one round."""


class FedAvg:
    """FedAvg: all workers train locally; the mean is weighted by sample counts."""

    name = "fedavg"
    linear = True

    def select(self, round_idx: int, workers: list[int], rng: np.random.Generator) -> list[int]:
        return list(workers)

    def configure(self, round_idx: int, worker: int, base: LocalSettings) -> LocalSettings:
        return base

    def aggregator(self, global_weights: FlatWeights) -> Aggregator:
        return WeightedMean(global_weights)


class FedSGD(FedAvg):
    """FedSGD: each worker takes one full-batch gradient step; results are averaged
    weighted by samples, which equals applying the sample-weighted mean gradient."""

    name = "fedsgd"

    def configure(self, round_idx: int, worker: int, base: LocalSettings) -> LocalSettings:
        return replace(base, epochs=1, max_steps=1, full_batch=True, momentum=0.0)


STRATEGIES: dict[str, type] = {cls.name: cls for cls in (FedAvg, FedSGD)}


def strategy_names() -> list[str]:
    """Names accepted by ``--strategy``."""
    return sorted(STRATEGIES)


def make_strategy(name: str) -> Strategy:
    """Build a strategy by name."""
    if name not in STRATEGIES:
        raise unknown_name("strategy", name, strategy_names())
    return STRATEGIES[name]()
