"""Synchronous strategies whose aggregate is a weighted mean: FedAvg, FedSGD, FedProx.

Each samples its round's clients (a fraction, or a fixed number, drawn without
replacement from the run's seeded generator), configures their local training, and
folds results into a sample-weighted mean. Failures cost only the failed clients'
contributions: the mean is over the clients that returned; with none, the global
model stays as it was.

With :class:`~flight_parsl.fl.stragglers.Stragglers`, a share of each round's
sampled clients do only a random part of the local epochs (FedProx's systems
heterogeneity); with ``drop`` they are left out of the round (``dropped``), as
FedProx's FedAvg baseline does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from flight_parsl.core.types import Failure, LocalSettings
from flight_parsl.core.weights import FlatWeights
from flight_parsl.fl.aggregate import Aggregator, CoordinateMedian, WeightedMean
from flight_parsl.fl.population import sample_clients, sample_size
from flight_parsl.fl.protocols import SyncStrategy
from flight_parsl.fl.stragglers import Stragglers


class FedAvg(SyncStrategy):
    """FedAvg: the sampled clients train locally; the mean is weighted by sample counts.

    Args:
        participation: fraction of the clients sampled each round (at least one).
        clients_per_round: a fixed number of clients per round instead (0: use
            ``participation``).
        stragglers: which sampled clients straggle each round (None: none).
    """

    name = "fedavg"
    mode = "sync"
    linear = True

    def __init__(
        self, participation: float = 1.0, clients_per_round: int = 0, stragglers: Stragglers | None = None
    ) -> None:
        if not 0 < participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {participation}")
        if clients_per_round < 0:
            raise ValueError(f"clients_per_round must be >= 0, got {clients_per_round}")
        self.participation = participation
        self.clients_per_round = clients_per_round
        self.stragglers = stragglers if stragglers is not None and stragglers.fraction > 0 else None
        self._slow: tuple[int, frozenset[int]] = (-1, frozenset())  # (round, its stragglers)

    def sample(
        self, round_idx: int, num_clients: int, rng: np.random.Generator, population: Sequence[int] | None = None
    ) -> list[int]:
        """The round's clients (ids from ``population``, else 0 .. n - 1); with dropped
        stragglers, only those that are not."""
        k = sample_size(num_clients, self.participation, self.clients_per_round)
        sampled = sample_clients(num_clients, k, rng)
        if population is not None:
            sampled = [int(population[i]) for i in sampled]
        if self.stragglers is None:
            return sampled
        self._slow = (round_idx, frozenset(self.stragglers.pick(round_idx, sampled)))
        if self.stragglers.drop:
            return [c for c in sampled if c not in self._slow[1]]
        return sampled

    def dropped(self, round_idx: int) -> list[int]:
        """The stragglers left out of round ``round_idx`` (the round last sampled)."""
        if self.stragglers is None or not self.stragglers.drop or self._slow[0] != round_idx:
            return []
        return sorted(self._slow[1])

    def configure(self, round_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        """A straggler's settings: a seeded 1 .. E of the local epochs."""
        if self.stragglers is None or self._slow[0] != round_idx or client not in self._slow[1]:
            return base
        return replace(base, epochs=self.stragglers.epochs(round_idx, client, base.epochs), straggler=True)

    def aggregator(self, global_weights: FlatWeights) -> Aggregator:
        return WeightedMean(global_weights)

    def aggregate(
        self, round_idx: int, global_weights: FlatWeights, folded: Aggregator, failures: Sequence[Failure]
    ) -> FlatWeights:
        return folded.result() if folded.count else global_weights


class FedSGD(FedAvg):
    """FedSGD: each client takes one full-batch gradient step; the sample-weighted mean of
    the results equals one step along the sample-weighted mean gradient."""

    name = "fedsgd"

    def configure(self, round_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        return replace(base, epochs=1, max_steps=1, full_batch=True, momentum=0.0)


class FedProx(FedAvg):
    """FedProx: FedAvg whose local objective adds (mu/2) * ||w - w_global||^2."""

    name = "fedprox"

    def __init__(
        self,
        participation: float = 1.0,
        clients_per_round: int = 0,
        mu: float = 0.3,
        stragglers: Stragglers | None = None,
    ) -> None:
        super().__init__(participation, clients_per_round, stragglers)
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.mu = mu

    def configure(self, round_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        return replace(super().configure(round_idx, client, base), prox_mu=self.mu)


class FedMedian(FedAvg):
    """FedMedian: the coordinate-wise median of the clients' models (robust to outliers).

    Not linear: every client's result travels back on its own.
    """

    name = "fedmedian"
    linear = False

    def aggregator(self, global_weights: FlatWeights) -> Aggregator:
        return CoordinateMedian(global_weights)
