"""Placing a run's tasks on its sites, from the topology's ``site:`` keys.

A node's site is its own ``site:``, else its nearest ancestor's, else the run's
default site (the first site file). A train task runs at the site of its
clients' worker nodes (the planner packs only clients of one site into a task); an
aggregator (and the relay that passes the model down to it) at its own site, or
with ``sites.aggregate_at=children`` at the site most of its children are placed
at. The placement also tells how many clients each site runs, which sizes each
site's slots.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from flight_parsl.core.errors import ConfigError
from flight_parsl.topology.tree import Topology

ROOT = "coordinator"


@dataclass(frozen=True)
class Placement:
    """Which site each client and each aggregator runs at."""

    labels: tuple[str, ...]
    client_site: tuple[str, ...]  # by client index
    aggregator_site: dict[str, str]

    @property
    def default(self) -> str:
        """The default site: the first one."""
        return self.labels[0]

    def train(self, clients: Sequence[int]) -> str:
        """The site of a train task of ``clients`` (the planner packs one site's clients per task)."""
        return self.client_site[clients[0]] if clients else self.default

    def node(self, name: str) -> str:
        """The site of aggregator ``name``'s tasks (aggregate, relay)."""
        return self.aggregator_site.get(name, self.default)

    def clients_per_site(self) -> dict[str, int]:
        """How many clients each site runs (every site listed, 0 when none)."""
        counts = Counter(self.client_site)
        return {label: counts.get(label, 0) for label in self.labels}


def place(tree: Topology | None, workers: int, labels: Sequence[str], aggregate_at: str = "node") -> Placement:
    """The placement of a run's clients and aggregators on sites ``labels``.

    Raises:
        ConfigError: the topology names a site that is not loaded.
    """
    labels = tuple(labels)
    if not labels:
        raise ConfigError("a run needs at least one site")
    default = labels[0]
    if tree is None:
        return Placement(labels, (default,) * workers, {})

    def site(name: str) -> str:
        found = tree.site_of(name)
        if found is None:
            return default
        if found not in labels:
            raise ConfigError(
                f"topology node {name!r}: site {found!r} is not one of the run's sites ({', '.join(labels)}); "
                "set sites.files to site YAMLs with these labels"
            )
        return found

    clients = [default] * workers
    for node in tree.workers:
        clients[int(node.worker_index or 0)] = site(node.name)
    aggregators: dict[str, str] = {}
    for node in tree.aggregators:
        if aggregate_at == "children":
            below = Counter(
                clients[int(tree.nodes[c].worker_index or 0)] if tree.nodes[c].kind == "worker" else site(c)
                for c in tree.children(node.name)
            )
            aggregators[node.name] = below.most_common(1)[0][0] if below else site(node.name)
        else:
            aggregators[node.name] = site(node.name)
    return Placement(labels, tuple(clients), aggregators)
