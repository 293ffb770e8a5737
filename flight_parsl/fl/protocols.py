"""What each engine mode asks of a strategy: one hook per step (Flower-style).

Synchronous strategies (:class:`SyncStrategy`) sample the round's clients,
configure each client's local training, give the aggregator that folds results as
they arrive, and turn the folded results plus the round's failures into the next
global model. ``linear`` says the aggregator is a weighted mean: the engine then
folds a task's clients in the slot and an aggregator's children in the tree, so a
round moves O(tasks) models instead of O(clients).

Asynchronous strategies (:class:`AsyncStrategy`) see one update at a time and say
whether it produced a new global model.

Decentralized strategies (:class:`PeerStrategy`) name the clients that train, the
models each holds and where each client's shared model goes after a round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from flight_parsl.core.peer import PeerSettings
from flight_parsl.core.types import Failure, LocalSettings
from flight_parsl.core.weights import FlatWeights
from flight_parsl.fl.aggregate import Aggregator


class SyncStrategy(Protocol):
    """A synchronous strategy (FedAvg, FedSGD, FedProx, FedMedian)."""

    name: str
    linear: bool

    def sample(
        self, round_idx: int, num_clients: int, rng: np.random.Generator, population: Sequence[int] | None = None
    ) -> list[int]:
        """The clients of round ``round_idx``, sorted, from a population of ``num_clients``
        (their ids are ``population``'s, when given: the clients still members)."""

    def configure(self, round_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        """Local settings of ``client`` in round ``round_idx``."""

    def aggregator(self, global_weights: FlatWeights) -> Aggregator:
        """A fresh aggregator for one round (or one task's clients, or one tree node)."""

    def aggregate(
        self, round_idx: int, global_weights: FlatWeights, folded: Aggregator, failures: Sequence[Failure]
    ) -> FlatWeights:
        """The next global model from everything folded and the round's failures."""


class AsyncStrategy(Protocol):
    """An asynchronous strategy (FedAsync, FedBuff)."""

    name: str

    def configure(self, update_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        """Local settings of ``client``'s next task (``update_idx``: updates folded so far)."""

    def on_update(
        self, global_weights: FlatWeights, update: FlatWeights, weight: float, staleness: int
    ) -> FlatWeights | None:
        """Fold one client update; return the new global model, or None while buffering."""


class PeerStrategy(Protocol):
    """A decentralized-mode method (ProxyFL and its baselines)."""

    name: str
    exchange: str  # none | replace | push | average

    @property
    def central(self) -> bool:
        """Whether the coordinator averages the shared models (FedAvg, FML); False for ProxyFL."""

    def participants(self, num_clients: int) -> list[int]:
        """The clients that train each round."""

    def routes(self, round_idx: int, num_clients: int) -> dict[int, int]:
        """Sender -> receiver of round ``round_idx``; empty when nothing goes peer to peer."""

    def configure(self, client: int, base: PeerSettings) -> PeerSettings:
        """``client``'s local step settings."""
