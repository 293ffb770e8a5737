"""The round policy: when a round closes, what failures it tolerates, what it retries.

A synchronous round closes as soon as ``quorum`` of its sampled clients have
reported (1.0: all of them), when every task has an outcome, or when its deadline
passes; work still out then is *late* (``late``: discarded, or ``stale``: folded into
the next aggregation with weight x ``stale_weight``). Failed client work is
resubmitted up to ``retries`` times while the deadline allows, after
``backoff_s`` x 2^attempt seconds. The round stands if at least ``min_fraction`` of
its sampled clients reported; below that the run stops with
:class:`~flight_parsl.core.errors.RoundError`. ``quorum=0.75, min_fraction=0.75``
is the coordinator/worker system's rule.

The default deadline is finite and scales with the work: the first round gets
``first_deadline_s`` plus ``per_client_s`` for every client a slot runs, later
rounds ``slack`` times the slowest round so far, but never less than
``min_deadline_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from flight_parsl.core.errors import ConfigError


Share = Annotated[float, Field(gt=0, le=1)]


@dataclass(frozen=True)
class RoundPolicy:
    """Deadline, quorum and retries of a synchronous round: the config's ``round`` section.

    Args:
        deadline_s: a fixed deadline per round in seconds; None picks it from the
            work (see the module docstring).
        quorum: the share of sampled clients after whose reports the round closes early.
        min_fraction: the share of sampled clients that must return a result.
        late: ``discard`` or ``stale`` (see the module docstring).
        stale_weight: the factor on a stale result's weight.
        retries: how many times failed client work is resubmitted within a round.
        backoff_s: a retry waits ``backoff_s * 2**attempt`` seconds.
        max_missed: rounds in a row a client may miss before it leaves the sample (None: never).
        readmit_after: rounds a removed client stays out before it may be re-admitted.
        checkpoint: write the run directory's checkpoint after every round (what ``--resume`` reads).
        first_deadline_s, per_client_s, min_deadline_s, slack: the default deadline's terms.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    deadline_s: Annotated[float, Field(gt=0)] | None = None
    quorum: Share = 1.0
    min_fraction: Share = 0.5
    late: Literal["discard", "stale"] = "discard"
    stale_weight: Share = 0.5
    retries: Annotated[int, Field(ge=0)] = 1
    backoff_s: Annotated[float, Field(ge=0)] = 0.2
    max_missed: Annotated[int, Field(ge=0)] | None = 2
    readmit_after: Annotated[int, Field(ge=1)] = 1
    checkpoint: bool = True
    first_deadline_s: Annotated[float, Field(gt=0)] = 300.0
    per_client_s: Annotated[float, Field(ge=0)] = 5.0
    min_deadline_s: Annotated[float, Field(gt=0)] = 60.0
    slack: Annotated[float, Field(gt=0)] = 5.0

    def __post_init__(self) -> None:
        if self.quorum < self.min_fraction:
            raise ConfigError(
                f"config: key 'round.quorum' = {self.quorum!r}: must be >= round.min_fraction "
                f"({self.min_fraction!r}); a round closed at its quorum could not stand"
            )

    def deadline(self, slowest_round_s: float | None, clients_per_slot: float) -> float:
        """Seconds the next round may take, given the slowest finished round (None: first)."""
        if self.deadline_s is not None:
            return self.deadline_s
        if slowest_round_s is None:
            return self.first_deadline_s + self.per_client_s * clients_per_slot
        return max(self.min_deadline_s, self.slack * slowest_round_s)

    def must_report(self, sampled: int) -> int:
        """How many of ``sampled`` clients must return a result for the round to stand."""
        return max(1, math.ceil(self.min_fraction * sampled - 1e-9))

    def closes_at(self, sampled: int) -> int:
        """How many of ``sampled`` clients' reports close the round early."""
        return max(1, math.ceil(self.quorum * sampled - 1e-9))

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` of failed work is submitted."""
        return self.backoff_s * 2.0**attempt
