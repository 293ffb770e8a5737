"""Planning a round: sampled clients -> tasks, balanced by expected work.

A task runs one or more clients of one round on one slot. The planner packs each
group of clients (the children of one tree node; the whole sample on a flat
topology) into tasks of about ``clients_per_task`` clients, longest work first onto
the least-loaded task (LPT), so tasks finish together. Each client lands in exactly
one task.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """One task of a round: its clients, the tree node it reports to, and its attempt."""

    id: int
    node: str
    clients: tuple[int, ...]
    attempt: int = 0


def clients_per_task(sampled: int, slots: int, fixed: int = 0) -> int:
    """``fixed`` when set, else the sample spread evenly over the slots (one task per slot)."""
    if fixed > 0:
        return fixed
    return max(1, math.ceil(sampled / max(1, slots)))


def pack(clients: Sequence[int], bins: int, cost: Callable[[int], float] | None = None) -> list[list[int]]:
    """Split ``clients`` into ``bins`` lists of balanced total cost (LPT), none empty.

    Equal costs give round-robin sizes that differ by at most one. Each list keeps
    its clients in ascending id order.
    """
    bins = max(1, min(bins, len(clients)))
    if bins == 1:
        return [list(clients)]
    order = sorted(clients, key=lambda c: -cost(c)) if cost is not None else list(clients)
    heap = [(0.0, 0, b) for b in range(bins)]  # (load, clients, bin)
    out: list[list[int]] = [[] for _ in range(bins)]
    for c in order:
        load, n, b = heapq.heappop(heap)
        out[b].append(c)
        heapq.heappush(heap, (load + (cost(c) if cost is not None else 1.0), n + 1, b))
    return [sorted(group) for group in out]


class Planner:
    """Turns each round's groups of sampled clients into tasks with run-unique ids."""

    def __init__(
        self,
        slots: int,
        fixed_clients_per_task: int = 0,
        cost: Callable[[int], float] | None = None,
        site: Callable[[int], str] | None = None,
    ) -> None:
        self.slots = max(1, slots)
        self.fixed = fixed_clients_per_task
        self.cost = cost
        self.site = site  # several sites: a task packs clients of one site only
        self._next_id = 0

    def _spec(self, node: str, clients: Sequence[int], attempt: int) -> TaskSpec:
        spec = TaskSpec(self._next_id, node, tuple(clients), attempt)
        self._next_id += 1
        return spec

    def plan(self, groups: Mapping[str, Sequence[int]]) -> list[TaskSpec]:
        """Tasks for one round; ``groups`` maps a tree node to its sampled client children."""
        total = sum(len(g) for g in groups.values())
        per_task = clients_per_task(total, self.slots, self.fixed)
        tasks = []
        for node, clients in groups.items():
            for same_site in self._by_site(clients):
                for part in pack(same_site, math.ceil(len(same_site) / per_task), self.cost):
                    tasks.append(self._spec(node, part, 0))
        return tasks

    def _by_site(self, clients: Sequence[int]) -> list[list[int]]:
        """``clients`` split by site, in order of first appearance (one list without sites)."""
        if not clients:
            return []
        if self.site is None:
            return [list(clients)]
        out: dict[str, list[int]] = {}
        for c in clients:
            out.setdefault(self.site(c), []).append(c)
        return list(out.values())

    def retry(self, task: TaskSpec) -> TaskSpec:
        """The same clients again, as a new task with the next attempt number."""
        return self._spec(task.node, task.clients, task.attempt + 1)
