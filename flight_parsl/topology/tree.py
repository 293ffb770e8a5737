"""Federated-learning topologies: trees of a coordinator, aggregators and workers.

This module owns the shape of an FL system and nothing that runs on it:

* :class:`Node` and :class:`Topology`: a tree with exactly one coordinator (the
  root), optional levels of aggregators, and workers as leaves. Workers carry a
  ``worker_index`` in depth-first, left-to-right leaf order.
* Builders: :func:`flat` and :func:`balanced_tree`.
* Loading: :func:`load_topology` (YAML), :func:`parse_topology` (the ``topology``
  config value: ``flat``, ``tree:H`` or a YAML path).
* The per-round communication-cost model of the Flight artifact (two-tier vs.
  hierarchical bytes): :func:`two_tier_bytes`, :func:`hierarchical_bytes`,
  :func:`reduction`.

Everything is pure Python; every problem a user can fix raises
:class:`~flight_parsl.core.errors.ConfigError` naming the node and the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field

from flight_parsl.config.schema import Schema, check
from flight_parsl.core.errors import ConfigError

COORDINATOR = "coordinator"
AGGREGATOR = "aggregator"
WORKER = "worker"
KINDS = (COORDINATOR, AGGREGATOR, WORKER)


class NodeSchema(Schema):
    """One node of a topology file."""

    model_config = ConfigDict(strict=True)

    name: Annotated[str, Field(min_length=1)]
    kind: Literal["coordinator", "aggregator", "worker"]
    children: list[str] | None = None
    site: str | None = None
    worker_index: Annotated[int, Field(ge=0)] | None = None


class TopologySchema(Schema):
    """A topology file: ``nodes`` (see :meth:`Topology.from_dict` for the tree rules)."""

    description: str | None = None
    nodes: Annotated[list[NodeSchema], Field(min_length=1)]


NODE_KEYS = tuple(NodeSchema.model_fields)
FILE_KEYS = tuple(TopologySchema.model_fields)


@dataclass(frozen=True)
class Node:
    """One node of a topology.

    Attributes:
        name: Unique name within the topology.
        kind: ``coordinator``, ``aggregator`` or ``worker``.
        children: Names of the child nodes, in order (empty for workers).
        site: Optional site/executor label, carried for later use.
        worker_index: Workers only: position in depth-first, left-to-right leaf order.
    """

    name: str
    kind: str
    children: tuple[str, ...] = ()
    site: str | None = None
    worker_index: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.children, tuple):
            object.__setattr__(self, "children", tuple(self.children))


def _where(source: str | None) -> str:
    return f"topology file {source!r}" if source else "topology"


class Topology:
    """A validated FL tree: one coordinator (root), aggregators, worker leaves.

    Construction validates the nodes (see :meth:`from_dict` for the rules) and
    assigns ``worker_index`` in depth-first, left-to-right leaf order unless every
    worker already has one (as in an :meth:`active_subtree`, which keeps the
    original indices). ``nodes`` is ordered depth-first (pre-order) from the root.
    """

    def __init__(self, nodes: Iterable[Node], *, source: str | None = None) -> None:
        """Build and validate a topology.

        Args:
            nodes: The nodes, in any order.
            source: The file the nodes came from, named in error messages.

        Raises:
            ConfigError: The nodes do not form a valid tree; the message names the
                offending node and ``source``.
        """
        self.source = source
        given = list(nodes)
        root_name, parents = _validate(given, _where(source))
        by_name = {n.name: n for n in given}
        order = _pre_order(by_name, root_name)
        leaves = [name for name in order if by_name[name].kind == WORKER]
        indices = [by_name[name].worker_index for name in leaves]
        if all(i is None for i in indices):
            for i, name in enumerate(leaves):
                by_name[name] = dataclasses.replace(by_name[name], worker_index=i)
        elif any(i is None for i in indices):
            missing = next(name for name in leaves if by_name[name].worker_index is None)
            raise ConfigError(
                f"{_where(source)}: node {missing!r} has no worker_index; give every worker one or none"
            )
        else:
            seen: dict[int, str] = {}
            for name in leaves:
                idx = by_name[name].worker_index
                if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
                    raise ConfigError(
                        f"{_where(source)}: node {name!r}: worker_index must be a non-negative int, got {idx!r}"
                    )
                if idx in seen:
                    raise ConfigError(
                        f"{_where(source)}: node {name!r}: worker_index {idx} is also used by {seen[idx]!r}"
                    )
                seen[idx] = name
        self.nodes: dict[str, Node] = {name: by_name[name] for name in order}
        self._root = root_name
        self._parents: dict[str, str] = parents
        self._workers = sorted(
            (n for n in self.nodes.values() if n.kind == WORKER), key=lambda n: int(n.worker_index or 0)
        )
        self._by_index = {int(n.worker_index or 0): n for n in self._workers}
        self._depths: dict[str, int] = {}
        for name in order:
            parent = parents.get(name)
            self._depths[name] = 0 if parent is None else self._depths[parent] + 1

    # --- structure -----------------------------------------------------------

    def _node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no node named {name!r} in this topology") from None

    @property
    def root(self) -> Node:
        """The coordinator."""
        return self.nodes[self._root]

    def parent(self, name: str) -> str | None:
        """The parent's name, or None for the root. Raises KeyError for unknown names."""
        self._node(name)
        return self._parents.get(name)

    def children(self, name: str) -> tuple[str, ...]:
        """The children's names, in order. Raises KeyError for unknown names."""
        return self._node(name).children

    @property
    def workers(self) -> list[Node]:
        """The worker leaves in ``worker_index`` order."""
        return list(self._workers)

    @property
    def num_workers(self) -> int:
        """How many workers the topology has."""
        return len(self._workers)

    @property
    def aggregators(self) -> list[Node]:
        """The aggregators, depth-first (pre-order)."""
        return [n for n in self.nodes.values() if n.kind == AGGREGATOR]

    def depth(self, name: str) -> int:
        """Hops from the root (the root is 0). Raises KeyError for unknown names."""
        self._node(name)
        return self._depths[name]

    @property
    def height(self) -> int:
        """The largest worker depth."""
        return max(self._depths[n.name] for n in self._workers)

    @property
    def edges(self) -> int:
        """The number of parent-child links (nodes minus one)."""
        return len(self.nodes) - 1

    def worker_node(self, index: int) -> Node:
        """The worker with this ``worker_index``. Raises KeyError if there is none."""
        try:
            return self._by_index[index]
        except KeyError:
            raise KeyError(f"no worker with worker_index {index} in this topology") from None

    def path_to_root(self, name: str) -> list[str]:
        """Names from ``name`` up to the root, both included (``depth + 1`` entries)."""
        self._node(name)
        path = [name]
        while (parent := self._parents.get(path[-1])) is not None:
            path.append(parent)
        return path

    def site_of(self, name: str) -> str | None:
        """The node's own site, else the nearest ancestor's, else None."""
        for node_name in self.path_to_root(name):
            site = self.nodes[node_name].site
            if site is not None:
                return site
        return None

    def subtree_workers(self, name: str) -> list[int]:
        """Sorted worker indices of the workers at or below ``name``."""
        self._node(name)
        found: list[int] = []
        stack = [name]
        while stack:
            node = self.nodes[stack.pop()]
            if node.kind == WORKER:
                found.append(int(node.worker_index or 0))
            stack.extend(node.children)
        return sorted(found)

    def active_subtree(self, worker_indices: Iterable[int]) -> Topology:
        """The smallest subtree holding the given workers.

        Keeps every node with at least one given worker below it (and the
        coordinator), with the same names, sites and ``worker_index`` values; an
        aggregator left with one child is kept, not collapsed.

        Args:
            worker_indices: Indices of the participating workers.

        Raises:
            ValueError: No index given, or an index that is not a worker here.
        """
        wanted = set(worker_indices)
        if not wanted:
            raise ValueError("active_subtree needs at least one worker index")
        unknown = sorted(i for i in wanted if i not in self._by_index)
        if unknown:
            raise ValueError(f"worker indices {unknown} are not in this topology (0..{self.num_workers - 1})")
        keep: set[str] = set()
        for i in wanted:
            keep.update(self.path_to_root(self._by_index[i].name))
        kept = [
            dataclasses.replace(node, children=tuple(c for c in node.children if c in keep))
            for name, node in self.nodes.items()
            if name in keep
        ]
        return Topology(kept, source=self.source)

    def post_order(self, names: Iterable[str] | None = None) -> list[str]:
        """Names with every child before its parent (depth-first post-order).

        Args:
            names: Restrict the result to these nodes (any kind, workers
                included). None means the nodes that aggregate: every aggregator
                and the root, ending with the root.

        Raises:
            KeyError: A name that is not in the topology.
        """
        if names is None:
            wanted = {name for name, node in self.nodes.items() if node.kind != WORKER}
        else:
            wanted = set(names)
            for name in wanted:
                self._node(name)
        out: list[str] = []
        stack: list[tuple[str, bool]] = [(self._root, False)]
        while stack:
            name, expanded = stack.pop()
            if expanded:
                if name in wanted:
                    out.append(name)
                continue
            stack.append((name, True))
            stack.extend((child, False) for child in reversed(self.nodes[name].children))
        return out

    # --- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (``{"nodes": [...]}``, pre-order) that :meth:`from_dict` reads back."""
        out: list[dict[str, Any]] = []
        for node in self.nodes.values():
            entry: dict[str, Any] = {"name": node.name, "kind": node.kind, "children": list(node.children)}
            if node.site is not None:
                entry["site"] = node.site
            if node.worker_index is not None:
                entry["worker_index"] = node.worker_index
            out.append(entry)
        return {"nodes": out}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Topology:
        """Build a topology from ``{"nodes": [{name, kind, children, site}, ...]}``.

        Node keys: ``name`` and ``kind`` (required), ``children`` (list of names),
        ``site`` and ``worker_index`` (optional; indices default to depth-first
        leaf order). An optional top-level ``description`` is ignored.

        Rules: exactly one coordinator; kinds from ``coordinator``, ``aggregator``,
        ``worker``; unique names; every child defined; no node with two parents;
        no cycle; every node reachable from the coordinator; workers have no
        children; aggregators and the coordinator have children; the coordinator
        is nobody's child; no unknown keys.

        The keys and their types are :class:`TopologySchema` (checked by
        :func:`flight_parsl.config.schema.check`: ``topology file 'PATH': key 'nodes[2].kind'
        = 'relay': must be one of ...``); the tree rules name the node.

        Raises:
            ConfigError: Any rule broken; names the offending key or node and ``source``.
        """
        where = _where(source)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping with a 'nodes' list, got {type(data).__name__}")
        spec = check(TopologySchema, data, where)
        return cls(
            [
                Node(name=n.name, kind=n.kind, children=tuple(n.children or ()), site=n.site, worker_index=n.worker_index)
                for n in spec.nodes
            ],
            source=source,
        )

    # --- presentation --------------------------------------------------------

    def describe(self) -> str:
        """One line: workers, aggregators, height, branching and edges."""
        fanouts = sorted({len(n.children) for n in self.nodes.values() if n.kind != WORKER})
        branching = str(fanouts[0]) if len(fanouts) == 1 else f"{fanouts[0]}-{fanouts[-1]}"
        return (
            f"{self.num_workers} workers, {len(self.aggregators)} aggregators, "
            f"height {self.height}, branching {branching}, {self.edges} edges"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Topology):
            return NotImplemented
        return self.nodes == other.nodes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Topology({self.describe()})"


# --- validation ----------------------------------------------------------------


def _validate(nodes: list[Node], where: str) -> tuple[str, dict[str, str]]:
    """Check the tree rules; return the root's name and the child -> parent map."""
    if not nodes:
        raise ConfigError(f"{where}: no nodes")
    by_name: dict[str, Node] = {}
    for node in nodes:
        if node.name in by_name:
            raise ConfigError(f"{where}: node {node.name!r} is defined twice (duplicate name)")
        by_name[node.name] = node
    for node in nodes:
        if node.kind not in KINDS:
            raise ConfigError(
                f"{where}: node {node.name!r} has unknown kind {node.kind!r}; valid kinds: {', '.join(KINDS)}"
            )
        if node.kind == WORKER and node.children:
            raise ConfigError(f"{where}: node {node.name!r} is a worker but has children {list(node.children)}")
        if node.kind != WORKER and not node.children:
            raise ConfigError(f"{where}: node {node.name!r} is a {node.kind} without children")
        if node.kind != WORKER and node.worker_index is not None:
            raise ConfigError(f"{where}: node {node.name!r} is a {node.kind}; only workers have a worker_index")
        if len(set(node.children)) != len(node.children):
            twice = next(c for c in node.children if node.children.count(c) > 1)
            raise ConfigError(f"{where}: node {node.name!r} lists child {twice!r} twice")
    coordinators = [n.name for n in nodes if n.kind == COORDINATOR]
    if len(coordinators) != 1:
        found = ", ".join(repr(c) for c in coordinators) or "none"
        raise ConfigError(f"{where}: expected exactly one coordinator node, found {len(coordinators)} ({found})")
    root = coordinators[0]
    for node in nodes:
        for child in node.children:
            if child not in by_name:
                raise ConfigError(f"{where}: node {node.name!r} lists child {child!r}, which is not defined")
            if child == root:
                raise ConfigError(
                    f"{where}: node {node.name!r} lists the coordinator {root!r} as a child; the coordinator is the root"
                )
    cycle = _find_cycle(by_name)
    if cycle:
        raise ConfigError(f"{where}: node {cycle[0]!r} is in a cycle: {' -> '.join(cycle)}")
    parents: dict[str, str] = {}
    for node in nodes:
        for child in node.children:
            if child in parents:
                raise ConfigError(
                    f"{where}: node {child!r} has two parents, {parents[child]!r} and {node.name!r}"
                )
            parents[child] = node.name
    reached = set(_pre_order(by_name, root))
    orphans = [n.name for n in nodes if n.name not in reached and n.name not in parents]
    if orphans:
        names = ", ".join(repr(o) for o in orphans)
        subject = f"node {names} is" if len(orphans) == 1 else f"nodes {names} are"
        raise ConfigError(
            f"{where}: {subject} not reachable from the coordinator {root!r} (no node lists it as a child)"
        )
    return root, parents


def _find_cycle(by_name: dict[str, Node]) -> list[str] | None:
    """A cycle in the child graph as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in by_name:
        if start in state:
            continue
        path: list[str] = [start]
        iters = [iter(by_name[start].children)]
        state[start] = 1
        while iters:
            child = next(iters[-1], None)
            if child is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state:
                state[child] = 1
                path.append(child)
                iters.append(iter(by_name[child].children))
    return None


def _pre_order(by_name: Mapping[str, Node], root: str) -> list[str]:
    """Names reachable from ``root``, depth-first, children left to right."""
    out: list[str] = []
    stack = [root]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        out.append(name)
        stack.extend(reversed(by_name[name].children))
    return out


# --- builders ------------------------------------------------------------------


def flat(n: int) -> Topology:
    """A coordinator named ``coordinator`` with workers ``worker-0`` .. ``worker-{n-1}``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"a flat topology needs at least one worker, got {n!r}")
    workers = [Node(f"worker-{i}", WORKER, worker_index=i) for i in range(n)]
    root = Node(COORDINATOR, COORDINATOR, children=tuple(w.name for w in workers))
    return Topology([root, *workers])


def _branching(leaves: int, height: int) -> int | None:
    """The branching b with ``b ** height == leaves``, or None."""
    b = max(1, round(leaves ** (1.0 / height)))
    for cand in (b - 1, b, b + 1):
        if cand >= 1 and cand**height == leaves:
            return cand
    return None


def valid_heights(leaves: int) -> list[tuple[int, int]]:
    """``(height, branching)`` pairs that give a balanced tree with exactly ``leaves`` leaves.

    For one leaf every height works; the list stops at height 1 then.
    """
    out: list[tuple[int, int]] = []
    for h in range(1, max(2, leaves.bit_length())):
        b = _branching(leaves, h)
        if b is not None:
            out.append((h, b))
    return out


def balanced_tree(leaves: int, height: int) -> Topology:
    """A balanced tree with exactly ``leaves`` workers at depth ``height``.

    The branching is ``b = round(leaves ** (1 / height))`` and ``b ** height``
    must equal ``leaves``. Aggregators are named ``agg-<level>-<position>``
    (level 1 = children of the root); workers ``worker-<i>``. Height 1 is
    :func:`flat`.

    Raises:
        ConfigError: No such tree; names leaves, height and the valid heights.
    """
    if not isinstance(leaves, int) or isinstance(leaves, bool) or leaves < 1:
        raise ConfigError(f"a tree topology needs at least one leaf, got {leaves!r}")
    if not isinstance(height, int) or isinstance(height, bool) or height < 1:
        raise ConfigError(f"a tree topology needs a height of at least 1, got {height!r}")
    if height == 1:
        return flat(leaves)
    b = _branching(leaves, height)
    if b is None:
        valid = valid_heights(leaves)
        listed = ", ".join(f"{h} (branching {bb})" for h, bb in valid)
        nearest = sorted(valid, key=lambda hb: (abs(hb[0] - height), hb[0]))
        best = min(abs(h - height) for h, _ in nearest)
        near = ", ".join(str(h) for h, _ in nearest if abs(h - height) == best)
        approx = round(leaves ** (1.0 / height))
        raise ConfigError(
            f"cannot build a balanced tree with {leaves} leaves and height {height}: "
            f"branching {approx} gives {approx**height} leaves; valid heights for {leaves} leaves: {listed}; "
            f"nearest: {near}"
        )
    nodes: list[Node] = []
    level_names = [COORDINATOR]
    for level in range(1, height + 1):
        count = b**level
        if level < height:
            names = [f"agg-{level}-{p}" for p in range(count)]
        else:
            names = [f"worker-{i}" for i in range(count)]
        kind = COORDINATOR if level == 1 else AGGREGATOR
        for p, parent in enumerate(level_names):
            nodes.append(Node(parent, kind, children=tuple(names[p * b : (p + 1) * b])))
        level_names = names
    nodes.extend(Node(name, WORKER, worker_index=i) for i, name in enumerate(level_names))
    return Topology(nodes)


# --- loading -------------------------------------------------------------------


def load_topology(path: str | Path) -> Topology:
    """Read a topology YAML file (see :meth:`Topology.from_dict` for the format).

    Raises:
        ConfigError: Missing or unreadable file, bad YAML, or an invalid tree;
            the message names the path (and the node).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"topology file {str(path)!r} not found (a topology is 'flat', 'tree:H' or a YAML file)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read topology file {str(path)!r}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"topology file {str(path)!r} is not valid YAML: {exc}") from None
    return Topology.from_dict(data, source=str(path))


def parse_topology(spec: str, workers: int) -> Topology:
    """The topology for a config value: ``flat``, ``tree:H`` or a YAML path.

    Raises:
        ConfigError: Bad spec, invalid tree, or a worker count that differs from
            ``workers`` (set ``--workers`` to the topology's count).
    """
    spec = spec.strip()
    if spec == "flat":
        topo = flat(workers)
    elif spec.startswith("tree:"):
        raw = spec[len("tree:") :].strip()
        try:
            height = int(raw)
        except ValueError:
            raise ConfigError(f"topology {spec!r}: the height after 'tree:' must be a positive integer") from None
        topo = balanced_tree(workers, height)
    else:
        topo = load_topology(spec)
    if topo.num_workers != workers:
        raise ConfigError(
            f"topology {spec!r} has {topo.num_workers} workers but {workers} workers were asked for; "
            f"set --workers {topo.num_workers}"
        )
    return topo


# --- communication cost ---------------------------------------------------------


def _active(topo: Topology, participants: Iterable[int] | None) -> Topology:
    return topo if participants is None else topo.active_subtree(participants)


def two_tier_bytes(topo: Topology, size: int, participants: Iterable[int] | None = None) -> int:
    """Bytes one round moves when updates travel to the root unaggregated.

    ``edges * size`` for the broadcast (each edge carries the model once) plus
    ``sum of leaf depths * size`` for the return (each update crosses every hop).

    Args:
        topo: The topology.
        size: Model size in bytes.
        participants: Worker indices taking part; None means all. The cost is
            then computed on :meth:`Topology.active_subtree`.
    """
    if size < 0:
        raise ValueError(f"model size must be >= 0 bytes, got {size}")
    t = _active(topo, participants)
    hops = sum(t.depth(w.name) for w in t.workers)
    return (t.edges + hops) * size


def hierarchical_bytes(topo: Topology, size: int, participants: Iterable[int] | None = None) -> int:
    """Bytes one round moves when every aggregator forwards one aggregate: ``2 * edges * size``.

    ``participants`` as in :func:`two_tier_bytes`.
    """
    if size < 0:
        raise ValueError(f"model size must be >= 0 bytes, got {size}")
    return 2 * _active(topo, participants).edges * size


def reduction(topo: Topology, participants: Iterable[int] | None = None) -> float:
    """``1 - hierarchical / two_tier``: the share of bytes hierarchical aggregation saves.

    Independent of model size; 0.0 for a flat topology.
    """
    parts = None if participants is None else list(participants)
    return 1.0 - hierarchical_bytes(topo, 1, parts) / two_tier_bytes(topo, 1, parts)
