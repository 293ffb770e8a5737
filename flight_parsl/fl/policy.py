"""The round policy: when a round closes, what failures it tolerates, what it retries.

A synchronous round closes when every task has an outcome or its deadline passes;
work still out then counts as failed (``deadline``). Failed client work is
resubmitted up to ``retries`` times while the deadline allows. The round stands if
at least ``min_fraction`` of its sampled clients returned a result; below that the
run stops with :class:`~flight_parsl.core.errors.RoundError`.

The default deadline is finite and scales with the work: the first round gets
``first_deadline_s`` plus ``per_client_s`` for every client a slot runs, later
rounds ``slack`` times the slowest round so far, but never less than
``min_deadline_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RoundPolicy:
    """Deadline, quorum and retries of a synchronous round.

    Args:
        deadline_s: a fixed deadline per round in seconds; None picks it from the
            work (see the module docstring).
        min_fraction: the share of sampled clients that must return a result.
        retries: how many times failed client work is resubmitted within a round.
    """

    deadline_s: float | None = None
    min_fraction: float = 0.5
    retries: int = 1
    first_deadline_s: float = 300.0
    per_client_s: float = 5.0
    min_deadline_s: float = 60.0
    slack: float = 5.0

    def __post_init__(self) -> None:
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if not 0 < self.min_fraction <= 1:
            raise ValueError(f"min_fraction must be in (0, 1], got {self.min_fraction}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    def deadline(self, slowest_round_s: float | None, clients_per_slot: float) -> float:
        """Seconds the next round may take, given the slowest finished round (None: first)."""
        if self.deadline_s is not None:
            return self.deadline_s
        if slowest_round_s is None:
            return self.first_deadline_s + self.per_client_s * clients_per_slot
        return max(self.min_deadline_s, self.slack * slowest_round_s)

    def quorum(self, sampled: int) -> int:
        """How many of ``sampled`` clients must return a result for the round to stand."""
        return max(1, math.ceil(self.min_fraction * sampled - 1e-9))
