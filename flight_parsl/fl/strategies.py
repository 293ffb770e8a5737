"""Federated strategies: who takes part, how they train, how results are combined.

A strategy has one hook per step (Flower-style): :meth:`Strategy.select` picks the
participants of a round, :meth:`Strategy.configure` sets each participant's local
training, and :meth:`Strategy.aggregator` returns a streaming aggregator that folds
results in as they arrive, holding O(model) memory rather than O(N x model).
Strategies whose aggregate is a weighted mean say so with ``linear = True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from flight_parsl.core.errors import unknown_name
from flight_parsl.core.weights import FlatWeights


@dataclass(frozen=True)
class LocalSettings:
    """One participant's local training settings for one round.

    ``max_steps`` caps optimizer steps (None: whole epochs); ``full_batch`` makes
    each step use the worker's whole shard; ``prox_mu`` adds FedProx's proximal
    term (mu/2) * ||w - w_global||^2; ``slowdown`` >= 1 stretches the task's training
    time by that factor (injected heterogeneity for experiments).
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    max_steps: int | None = None
    full_batch: bool = False
    prox_mu: float = 0.0
    slowdown: float = 1.0


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
        self._scratch: np.ndarray | None = None
        self._total = 0.0
        self._count = 0

    def add(self, weights: FlatWeights, samples: int) -> None:
        if weights.layout != self._template.layout:
            raise ValueError("result weights do not match the global model's layout")
        if samples <= 0:
            raise ValueError(f"samples must be > 0, got {samples}")
        if samples == 1:  # cast-and-add in place: no model-sized temporary
            np.add(self._acc, weights.buffer, out=self._acc)
        else:
            if self._scratch is None:
                self._scratch = np.empty_like(self._acc)
            np.multiply(weights.buffer, samples, out=self._scratch)
            self._acc += self._scratch
        self._total += samples
        self._count += 1

    @property
    def total(self) -> float:
        """Sum of the samples added."""
        return self._total

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
    """FedAvg: the selected workers train locally; the mean is weighted by sample counts.

    Args:
        participation: fraction of the workers selected each round (at least one),
            drawn without replacement from the run's seeded generator.
    """

    name = "fedavg"
    linear = True

    def __init__(self, participation: float = 1.0) -> None:
        if not 0 < participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {participation}")
        self.participation = participation

    def select(self, round_idx: int, workers: list[int], rng: np.random.Generator) -> list[int]:
        if self.participation >= 1:
            return list(workers)
        k = max(1, math.ceil(self.participation * len(workers)))
        return sorted(int(w) for w in rng.choice(workers, size=k, replace=False))

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


class FedProx(FedAvg):
    """FedProx: FedAvg whose local objective adds (mu/2) * ||w - w_global||^2."""

    name = "fedprox"

    def __init__(self, participation: float = 1.0, mu: float = 0.3) -> None:
        super().__init__(participation)
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.mu = mu

    def configure(self, round_idx: int, worker: int, base: LocalSettings) -> LocalSettings:
        return replace(base, prox_mu=self.mu)


class FedAsync:
    """FedAsync: each update is mixed into the global model as it arrives.

    ``w <- (1 - a) * w + a * w_client`` with ``a = alpha * s(staleness)``, where the
    staleness is how many updates the global model took since the client's copy,
    and ``s`` is 1 (``constant``) or ``(1 + staleness) ** -exponent`` (``polynomial``).
    """

    name = "fedasync"
    linear = False

    def __init__(self, alpha: float = 0.5, staleness: str = "constant", exponent: float = 0.5) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if staleness not in ("constant", "polynomial"):
            raise ValueError(f"staleness must be constant or polynomial, got {staleness!r}")
        self.alpha, self.staleness, self.exponent = alpha, staleness, exponent

    def configure(self, round_idx: int, worker: int, base: LocalSettings) -> LocalSettings:
        return base

    def mixing(self, staleness: int) -> float:
        """The weight ``a`` of an update that is ``staleness`` updates old."""
        if self.staleness == "polynomial":
            return self.alpha * (1.0 + staleness) ** -self.exponent
        return self.alpha

    def mix(self, global_weights: FlatWeights, update: FlatWeights, staleness: int) -> FlatWeights:
        """The new global model after folding in one update."""
        if update.layout != global_weights.layout:
            raise ValueError("update does not match the global model's layout")
        a = self.mixing(staleness)
        return global_weights.like((1.0 - a) * global_weights.buffer + a * update.buffer)


STRATEGIES: dict[str, type] = {cls.name: cls for cls in (FedAvg, FedSGD, FedProx, FedAsync)}


def strategy_names() -> list[str]:
    """Names accepted by ``--strategy``."""
    return sorted(STRATEGIES)


def make_strategy(name: str, **params: float | str) -> Strategy | FedAsync:
    """Build a strategy by name with its parameters (unknown ones are ignored)."""
    import inspect

    if name not in STRATEGIES:
        raise unknown_name("strategy", name, strategy_names())
    cls = STRATEGIES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})
