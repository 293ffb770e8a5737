"""Peer graphs of decentralized mode: who sends to whom in each round.

ProxyFL's directed exponential graph: in round ``r`` client ``i`` sends to
``(i + 2 ** (r mod m)) mod K`` with ``m = ceil(log2 K)`` (``log2 K`` when K is a
power of two, as in the paper). Each round's graph is a shift, so every client
sends once and receives once, and the per-client cost is constant in K; over
``m`` consecutive rounds every client's model can reach every other client. When
clients leave the graph (decentralized runs under faults), the graph is the same
construction over the n current members, in ascending order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def exponential_routes(round_idx: int, members: int | Sequence[int]) -> dict[int, int]:
    """Sender -> receiver for every client in round ``round_idx`` (a permutation without fixed points).

    ``members``: the number of clients K (clients 0..K-1), or the clients that are members of
    the graph now, ascending: the graph is then the exponential graph over them, member ``i``
    of the list sending to member ``(i + 2 ** (r mod ceil(log2 n))) mod n``. Fewer than two
    members exchange nothing (an empty mapping).
    """
    if isinstance(members, int):
        return {c: exponential_peer(c, round_idx, members) for c in range(members)}
    ids = list(members)
    if len(ids) < 2:
        return {}
    n = len(ids)
    return {ids[i]: ids[exponential_peer(i, round_idx, n)] for i in range(n)}
