"""Peer graphs of decentralized mode: who sends to whom in each round.

ProxyFL's directed exponential graph: in round ``r`` client ``i`` sends to
``(i + 2 ** (r mod m)) mod K`` with ``m = ceil(log2 K)`` (``log2 K`` when K is a
power of two, as in the paper). Each round's graph is a shift, so every client
sends once and receives once, and the per-client cost is constant in K; over
``m`` consecutive rounds every client's model can reach every other client.
"""

from __future__ import annotations

import math

from flight_parsl.core.errors import ConfigError


def exponential_period(num_clients: int) -> int:
    """``m``: the number of distinct shifts (1, 2, 4, ... < K) the graph cycles through."""
    if num_clients < 2:
        raise ConfigError(f"a peer graph needs at least 2 clients, got {num_clients}")
    return max(1, math.ceil(math.log2(num_clients)))


def exponential_shift(round_idx: int, num_clients: int) -> int:
    """How far ahead client ``i`` sends in round ``round_idx``: ``2 ** (r mod m)``."""
    return 2 ** (round_idx % exponential_period(num_clients))


def exponential_peer(client: int, round_idx: int, num_clients: int) -> int:
    """The client that ``client`` sends its model to in round ``round_idx``."""
    return (client + exponential_shift(round_idx, num_clients)) % num_clients


def exponential_routes(round_idx: int, num_clients: int) -> dict[int, int]:
    """Sender -> receiver for every client in round ``round_idx`` (a permutation without fixed points)."""
    return {c: exponential_peer(c, round_idx, num_clients) for c in range(num_clients)}
