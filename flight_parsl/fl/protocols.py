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

Every strategy declares its protocol (it subclasses it, so a type checker checks
it against the protocol) and says which engine mode runs it (``mode``, a literal
that tells the three apart without an ``isinstance``). The engine holds a
:data:`Strategy` and narrows it once with :func:`as_sync`, :func:`as_async` or
:func:`as_peer`. The protocols are ``runtime_checkable``: ``isinstance(s, SyncStrategy)``
checks that ``s`` has every member.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, TypeAlias, runtime_checkable

import numpy as np

from flight_parsl.core.peer import PeerSettings
from flight_parsl.core.types import Failure, LocalSettings
from flight_parsl.core.weights import FlatWeights
from flight_parsl.fl.aggregate import Aggregator


@runtime_checkable
class SyncStrategy(Protocol):
    """A synchronous strategy (FedAvg, FedSGD, FedProx, FedMedian)."""

    name: str
    mode: Literal["sync"]
    linear: bool

    def sample(
        self, round_idx: int, num_clients: int, rng: np.random.Generator, population: Sequence[int] | None = None
    ) -> list[int]:
        """The clients of round ``round_idx``, sorted, from a population of ``num_clients``
        (their ids are ``population``'s, when given: the clients still members)."""

    def dropped(self, round_idx: int) -> list[int]:
        """Sampled clients that :meth:`sample` left out of round ``round_idx`` (the round
        last sampled), for the records: FedProx's FedAvg baseline drops its stragglers.
        By default none."""
        return []

    def configure(self, round_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        """Local settings of ``client`` in round ``round_idx``."""

    def aggregator(self, global_weights: FlatWeights) -> Aggregator:
        """A fresh aggregator for one round (or one task's clients, or one tree node)."""

    def aggregate(
        self, round_idx: int, global_weights: FlatWeights, folded: Aggregator, failures: Sequence[Failure]
    ) -> FlatWeights:
        """The next global model from everything folded and the round's failures."""


@runtime_checkable
class AsyncStrategy(Protocol):
    """An asynchronous strategy (FedAsync, FedBuff)."""

    name: str
    mode: Literal["async"]

    def configure(self, update_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        """Local settings of ``client``'s next task (``update_idx``: updates folded so far)."""

    def on_update(
        self, global_weights: FlatWeights, update: FlatWeights, weight: float, staleness: int
    ) -> FlatWeights | None:
        """Fold one client update; return the new global model, or None while buffering."""


@runtime_checkable
class PeerStrategy(Protocol):
    """A decentralized-mode method (ProxyFL and its baselines)."""

    name: str
    mode: Literal["decentralized"]
    exchange: str  # none | replace | push | average

    @property
    def central(self) -> bool:
        """Whether the coordinator averages the shared models (FedAvg, FML); False for ProxyFL."""

    def participants(self, members: Sequence[int]) -> list[int]:
        """The clients among ``members`` (ascending) that train this round."""

    def routes(self, round_idx: int, members: Sequence[int]) -> dict[int, int]:
        """Sender -> receiver of round ``round_idx`` over the graph's ``members`` (ascending);
        empty when nothing goes peer to peer."""

    def configure(self, client: int, base: PeerSettings) -> PeerSettings:
        """``client``'s local step settings."""


#: What :func:`~flight_parsl.fl.strategies.make_strategy` builds: one of the three.
Strategy: TypeAlias = SyncStrategy | AsyncStrategy | PeerStrategy


def _wrong(strategy: object, protocol: type) -> TypeError:
    mode = getattr(strategy, "mode", None)
    return TypeError(
        f"strategy {getattr(strategy, 'name', strategy)!r} ({type(strategy).__name__}, mode {mode!r}) "
        f"is not a {protocol.__name__}"
    )


def as_sync(strategy: Strategy) -> SyncStrategy:
    """``strategy`` as a synchronous strategy; TypeError when it is another kind or lacks a member."""
    if isinstance(strategy, SyncStrategy) and strategy.mode == "sync":
        return strategy
    raise _wrong(strategy, SyncStrategy)


def as_async(strategy: Strategy) -> AsyncStrategy:
    """``strategy`` as an asynchronous strategy; TypeError when it is another kind or lacks a member."""
    if isinstance(strategy, AsyncStrategy) and strategy.mode == "async":
        return strategy
    raise _wrong(strategy, AsyncStrategy)


def as_peer(strategy: Strategy) -> PeerStrategy:
    """``strategy`` as a decentralized-mode method; TypeError when it is another kind or lacks a member."""
    if isinstance(strategy, PeerStrategy) and strategy.mode == "decentralized":
        return strategy
    raise _wrong(strategy, PeerStrategy)


__all__ = ["AsyncStrategy", "PeerStrategy", "Strategy", "SyncStrategy", "as_async", "as_peer", "as_sync"]
