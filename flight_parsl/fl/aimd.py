"""AIMD local epochs: each client's training budget grows by one on time, halves when late.

The coordinator/worker system's load balancing: a client starts at ``start`` local
epochs, gains one per on-time report (additive increase, up to ``cap`` when set) and
halves, at least one, when its report is late (multiplicative decrease). Failed
work (an error, a lost process) leaves the budget as it was. Plain data, so a
checkpoint holds it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class AIMDEpochs:
    """Per-client local epochs under AIMD.

    Args:
        start: every client's first budget.
        cap: the largest budget (0: no cap).
    """

    def __init__(self, start: int = 4, cap: int = 0) -> None:
        if start < 1 or cap < 0:
            raise ValueError(f"need start >= 1 and cap >= 0, got {start}, {cap}")
        self.start, self.cap = start, cap
        self.budget: dict[int, int] = {}

    def epochs(self, client: int) -> int:
        """``client``'s local epochs for its next round."""
        return self.budget.get(client, self.start)

    def update(self, on_time: Iterable[int], late: Iterable[int]) -> None:
        """Additive increase for on-time clients, multiplicative decrease for late ones."""
        for c in on_time:
            grown = self.epochs(c) + 1
            self.budget[c] = min(grown, self.cap) if self.cap else grown
        for c in late:
            self.budget[c] = max(1, self.epochs(c) // 2)

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return {"budget": dict(self.budget)}

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.budget = {int(k): int(v) for k, v in state["budget"].items()}
