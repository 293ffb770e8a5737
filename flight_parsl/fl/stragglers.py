"""Systems heterogeneity as FedProx defines it: stragglers among each round's clients.

Each round, ``round(fraction * K)`` of the K sampled clients are stragglers. A
straggler does only ``x ~ Uniform{1..E}`` local epochs (E: the configured epochs).
FedProx keeps their partial work; FedProx's FedAvg baseline drops them from the
round (``drop=True``). Every draw is a pure function of (seed, round, clients), so
the coordinator, a retry and any slot agree without sharing state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Mixed into every draw's seed, so straggler draws never coincide with other seeded streams.
_STREAM = 0x5172A6


@dataclass(frozen=True)
class Stragglers:
    """Which sampled clients straggle, and how many epochs each one does.

    Attributes:
        fraction: Share of each round's sampled clients that straggle, in [0, 1].
        drop: Drop stragglers from the round (FedAvg) instead of keeping their partial work.
        seed: The run's seed.
    """

    fraction: float = 0.0
    drop: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        """Check the fraction."""
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"stragglers must be in [0, 1], got {self.fraction}")

    def count(self, sampled: int) -> int:
        """How many of ``sampled`` clients straggle: ``round(fraction * sampled)``.

        When they are dropped, at least one client stays, so that a round always trains.
        """
        n = int(round(self.fraction * sampled))
        return min(n, sampled - 1) if self.drop and sampled > 0 else n

    def pick(self, round_idx: int, sampled: Sequence[int]) -> list[int]:
        """The stragglers among the round's ``sampled`` clients, sorted (seeded by round)."""
        n = self.count(len(sampled))
        if n <= 0:
            return []
        rng = np.random.default_rng([self.seed, round_idx, _STREAM])
        return sorted(int(c) for c in rng.choice(np.asarray(sampled, dtype=np.int64), size=n, replace=False))

    def epochs(self, round_idx: int, client: int, max_epochs: int) -> int:
        """A straggler's epochs this round: uniform on 1 .. max_epochs, seeded by (seed, round, client)."""
        rng = np.random.default_rng([self.seed, round_idx, client, _STREAM])
        return int(rng.integers(1, max(1, max_epochs) + 1))
