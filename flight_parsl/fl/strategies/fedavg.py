"""Synchronous strategies whose aggregate is a weighted mean: FedAvg, FedSGD, FedProx.

Each samples its round's clients (a fraction, or a fixed number, drawn without
replacement from the run's seeded generator), configures their local training, and
folds results into a sample-weighted mean. Failures cost only the failed clients'
contributions: the mean is over the clients that returned; with none, the global
model stays as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from flight_parsl.core.types import Failure, LocalSettings
from flight_parsl.core.weights import FlatWeights
from flight_parsl.fl.aggregate import Aggregator, CoordinateMedian, WeightedMean
from flight_parsl.fl.population import sample_clients, sample_size


class FedAvg:
    """FedAvg: the sampled clients train locally; the mean is weighted by sample counts.

    Args:
        participation: fraction of the clients sampled each round (at least one).
        clients_per_round: a fixed number of clients per round instead (0: use
            ``participation``).
    """

    name = "fedavg"
    linear = True

    def __init__(self, participation: float = 1.0, clients_per_round: int = 0) -> None:
        if not 0 < participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {participation}")
        if clients_per_round < 0:
            raise ValueError(f"clients_per_round must be >= 0, got {clients_per_round}")
        self.participation = participation
        self.clients_per_round = clients_per_round

    def sample(self, round_idx: int, num_clients: int, rng: np.random.Generator) -> list[int]:
        k = sample_size(num_clients, self.participation, self.clients_per_round)
        return sample_clients(num_clients, k, rng)

    def configure(self, round_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        return base

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

    def __init__(self, participation: float = 1.0, clients_per_round: int = 0, mu: float = 0.3) -> None:
        super().__init__(participation, clients_per_round)
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.mu = mu

    def configure(self, round_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        return replace(base, prox_mu=self.mu)


class FedMedian(FedAvg):
    """FedMedian: the coordinate-wise median of the clients' models (robust to outliers).

    Not linear: every client's result travels back on its own.
    """

    name = "fedmedian"
    linear = False

    def aggregator(self, global_weights: FlatWeights) -> Aggregator:
        return CoordinateMedian(global_weights)
