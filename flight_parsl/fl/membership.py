"""Which clients a synchronous round may sample: members, and clients removed for missing rounds.

A client *misses* a round when it was sampled and did not report before the round
closed (late, failed, or lost). One that misses more than ``max_missed`` rounds in
a row leaves the sample; it is re-admitted ``readmit_after`` rounds later, once the
executor's slots are all alive again (Parsl restarts dead worker processes; the
engine asks a census). A report resets the count. The state is plain data, so a
checkpoint holds it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload


class Members(Sequence[int]):
    """Clients ``0 .. n - 1`` without the removed ones, ascending, computed on demand.

    Memory is O(removed), not O(population): a sync round samples ``k`` of them by
    index, so a population of 10^6 costs nothing per round until its clients are sampled.
    """

    def __init__(self, num_clients: int, removed: Iterable[int] = ()) -> None:
        self.num_clients = num_clients
        self.out = sorted(removed)

    def __len__(self) -> int:
        return self.num_clients - len(self.out)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        size = len(self)
        i = index + size if index < 0 else index
        if not 0 <= i < size:
            raise IndexError(f"member {index} of {size}")
        client = i  # the smallest id with i members below it: a fixed point, reached in few steps
        while (nxt := i + bisect_right(self.out, client)) != client:
            client = nxt
        return client

    def __iter__(self) -> Iterator[int]:
        out = set(self.out)
        return (c for c in range(self.num_clients) if c not in out)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Members):
            return (self.num_clients, self.out) == (other.num_clients, other.out)
        return isinstance(other, (list, tuple, range)) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Members({self.num_clients}, removed={self.out})"


class Membership:
    """Members of a population of ``num_clients`` and each client's missed rounds in a row.

    Args:
        num_clients: the population.
        max_missed: rounds in a row a client may miss (None: never removed).
        readmit_after: rounds a removed client stays out before it may return.
    """

    def __init__(self, num_clients: int, max_missed: int | None = 2, readmit_after: int = 1) -> None:
        self.num_clients = num_clients
        self.max_missed = max_missed
        self.readmit_after = readmit_after
        self.missed: dict[int, int] = {}
        self.removed: dict[int, int] = {}  # client -> round it was removed in

    def members(self) -> Members:
        """Clients that may be sampled, ascending (a lazy sequence: nothing per client)."""
        return Members(self.num_clients, self.removed)

    def update(self, round_idx: int, reported: Iterable[int], missed: Iterable[int]) -> list[int]:
        """Account one round; returns the clients removed by it."""
        for c in reported:
            self.missed.pop(c, None)
        out = []
        for c in missed:
            self.missed[c] = self.missed.get(c, 0) + 1
            if self.max_missed is not None and self.missed[c] > self.max_missed and c not in self.removed:
                self.removed[c] = round_idx
                out.append(c)
        return sorted(out)

    def readmit(self, round_idx: int, slots_alive: Callable[[], bool]) -> list[int]:
        """Before round ``round_idx``: re-admit clients out long enough, if every slot is alive."""
        due = [c for c, r in self.removed.items() if round_idx - r > self.readmit_after]
        if not due or not slots_alive():
            return []
        for c in due:
            del self.removed[c]
            self.missed.pop(c, None)
        return sorted(due)

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return {"missed": dict(self.missed), "removed": dict(self.removed)}

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.missed = {int(k): int(v) for k, v in state["missed"].items()}
        self.removed = {int(k): int(v) for k, v in state["removed"].items()}
