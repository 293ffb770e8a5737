"""Asynchronous strategies: FedAsync mixes each update in; FedBuff buffers K of them.

Both see one update at a time (:class:`~flight_parsl.fl.protocols.AsyncStrategy`)
with its staleness: how many new global models were made since the client's copy.
"""

from __future__ import annotations

from dataclasses import replace

from typing import Any

import numpy as np

from flight_parsl.core.types import LocalSettings
from flight_parsl.core.weights import FlatWeights
from flight_parsl.fl.protocols import AsyncStrategy

STALENESS = ("constant", "polynomial")


def staleness_factor(kind: str, exponent: float, staleness: int) -> float:
    """``1`` (constant) or ``(1 + staleness) ** -exponent`` (polynomial)."""
    return (1.0 + staleness) ** -exponent if kind == "polynomial" else 1.0


def _check_staleness(staleness: str) -> None:
    if staleness not in STALENESS:
        raise ValueError(f"staleness must be constant or polynomial, got {staleness!r}")


class FedAsync(AsyncStrategy):
    """FedAsync: ``w <- (1 - a) * w + a * w_client``, ``a = alpha * s(staleness)``."""

    name = "fedasync"
    mode = "async"

    def __init__(self, alpha: float = 0.5, staleness: str = "constant", exponent: float = 0.5) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        _check_staleness(staleness)
        self.alpha, self.staleness, self.exponent = alpha, staleness, exponent

    def configure(self, update_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        return base

    def mixing(self, staleness: int) -> float:
        """The weight ``a`` of an update that is ``staleness`` models old."""
        return self.alpha * staleness_factor(self.staleness, self.exponent, staleness)

    def on_update(
        self, global_weights: FlatWeights, update: FlatWeights, weight: float, staleness: int
    ) -> FlatWeights:
        if update.layout != global_weights.layout:
            raise ValueError("update does not match the global model's layout")
        a = self.mixing(staleness)
        return global_weights.like((1.0 - a) * global_weights.buffer + a * update.buffer)


class FedBuff(AsyncStrategy):
    """FedBuff (Nguyen et al. 2022): buffer ``buffer_size`` client deltas, then step.

    Clients return ``delta = w_local - w_start`` (their settings ask for it). Each
    delta is scaled by ``s(staleness)``; once ``buffer_size`` are in, the global model
    moves by ``server_lr`` times their mean: ``w <- w + eta * (1/K) * sum(s_i * delta_i)``.
    """

    name = "fedbuff"
    mode = "async"

    def __init__(
        self, buffer_size: int = 4, server_lr: float = 1.0, staleness: str = "polynomial", exponent: float = 0.5
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        _check_staleness(staleness)
        self.buffer_size, self.server_lr = buffer_size, server_lr
        self.staleness, self.exponent = staleness, exponent
        self._acc: np.ndarray | None = None
        self._count = 0

    def configure(self, update_idx: int, client: int, base: LocalSettings) -> LocalSettings:
        return replace(base, return_delta=True)

    @property
    def buffered(self) -> int:
        """Deltas waiting in the buffer."""
        return self._count

    def state(self) -> dict[str, Any]:
        """The buffer, for a checkpoint (a resumed run continues it)."""
        return {"acc": None if self._acc is None else self._acc.copy(), "count": self._count}

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        acc = state.get("acc")
        self._acc = None if acc is None else np.array(acc, dtype=np.float64)
        self._count = int(state.get("count", 0))

    def on_update(
        self, global_weights: FlatWeights, update: FlatWeights, weight: float, staleness: int
    ) -> FlatWeights | None:
        if update.layout != global_weights.layout:
            raise ValueError("update does not match the global model's layout")
        if self._acc is None:
            self._acc = np.zeros(update.layout.size, dtype=np.float64)
        self._acc += staleness_factor(self.staleness, self.exponent, staleness) * update.buffer
        self._count += 1
        if self._count < self.buffer_size:
            return None
        step = self.server_lr * self._acc / self._count
        self._acc[:] = 0.0
        self._count = 0
        return global_weights.like(global_weights.buffer + step)
