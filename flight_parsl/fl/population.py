"""Client sampling from a population of 1 to 10^5+ logical clients.

Nothing here is per-client state: sampling ``k`` of ``n`` clients costs O(k) memory
and time (numpy's sampler without replacement), so a population of 100,000 costs
the coordinator nothing until its clients are sampled.
"""

from __future__ import annotations

import math

import numpy as np


def sample_size(num_clients: int, participation: float = 1.0, clients_per_round: int | None = None) -> int:
    """How many clients a round samples: ``clients_per_round``, or a fraction (at least one)."""
    if clients_per_round:
        return min(int(clients_per_round), num_clients)
    return max(1, min(num_clients, math.ceil(participation * num_clients)))


def sample_clients(num_clients: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` distinct client ids of ``0 .. num_clients - 1``, sorted (all of them when k >= n)."""
    if k >= num_clients:
        return list(range(num_clients))
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))
