"""FL topologies: builders, YAML loading and validation, active subtrees, the cost model."""

from __future__ import annotations

from pathlib import Path

import pytest

from flight_parsl.core.errors import ConfigError
from flight_parsl.topology.tree import (
    Node,
    Topology,
    balanced_tree,
    flat,
    hierarchical_bytes,
    load_topology,
    parse_topology,
    reduction,
    two_tier_bytes,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "topologies" / "example_two_sites.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.yaml"
    path.write_text(text)
    return path


# --- builders -------------------------------------------------------------------


def test_flat_structure() -> None:
    topo = flat(5)
    assert topo.root.name == "coordinator" and topo.root.kind == "coordinator"
    assert topo.children("coordinator") == tuple(f"worker-{i}" for i in range(5))
    assert [w.name for w in topo.workers] == [f"worker-{i}" for i in range(5)]
    assert [w.worker_index for w in topo.workers] == list(range(5))
    assert topo.aggregators == []
    assert (topo.edges, topo.height, topo.num_workers) == (5, 1, 5)
    assert topo.parent("worker-3") == "coordinator" and topo.parent("coordinator") is None
    assert topo.worker_node(2).name == "worker-2"
    assert topo.describe() == "5 workers, 0 aggregators, height 1, branching 5, 5 edges"


def test_flat_needs_a_worker() -> None:
    with pytest.raises(ConfigError, match="at least one worker"):
        flat(0)


@pytest.mark.parametrize(
    ("height", "branching", "edges", "aggregators"),
    [(1, 256, 256, 0), (2, 16, 272, 16), (4, 4, 340, 84), (8, 2, 510, 254)],
)
def test_balanced_trees_of_256_leaves(height: int, branching: int, edges: int, aggregators: int) -> None:
    topo = balanced_tree(256, height)
    assert topo.height == height
    assert topo.edges == edges
    assert topo.num_workers == len(topo.workers) == 256
    assert len(topo.aggregators) == aggregators
    internal = [topo.root, *topo.aggregators]
    assert {len(n.children) for n in internal} == {branching}
    assert f"branching {branching}," in topo.describe()
    # Leaves in depth-first, left-to-right order are the workers in worker_index order.
    leaves = [name for name in topo.nodes if topo.nodes[name].kind == "worker"]
    assert leaves == [w.name for w in topo.workers]
    assert [w.worker_index for w in topo.workers] == list(range(256))
    for w in topo.workers:
        path = topo.path_to_root(w.name)
        assert len(path) - 1 == height == topo.depth(w.name)
        assert path[0] == w.name and path[-1] == "coordinator"


def test_balanced_tree_names_aggregators_by_level_and_position() -> None:
    topo = balanced_tree(16, 2)
    assert topo.children("coordinator") == ("agg-1-0", "agg-1-1", "agg-1-2", "agg-1-3")
    assert topo.children("agg-1-1") == ("worker-4", "worker-5", "worker-6", "worker-7")
    assert topo.parent("agg-1-3") == "coordinator"
    deep = balanced_tree(8, 3)
    assert deep.children("agg-1-1") == ("agg-2-2", "agg-2-3")
    assert deep.children("agg-2-3") == ("worker-6", "worker-7")
    assert deep.subtree_workers("agg-1-1") == [4, 5, 6, 7]


def test_balanced_tree_height_one_is_flat() -> None:
    assert balanced_tree(12, 1) == flat(12)


def test_invalid_height_lists_valid_heights() -> None:
    with pytest.raises(ConfigError) as err:
        balanced_tree(256, 3)
    msg = str(err.value)
    assert "256 leaves" in msg and "height 3" in msg
    assert "1 (branching 256), 2 (branching 16), 4 (branching 4), 8 (branching 2)" in msg
    assert "nearest: 2, 4" in msg


# --- cost model -----------------------------------------------------------------


@pytest.mark.parametrize(("height", "expected"), [(1, 0.0), (2, 0.306), (4, 0.501), (8, 0.601)])
def test_reduction_for_256_leaves(height: int, expected: float) -> None:
    topo = balanced_tree(256, height)
    assert reduction(topo) == pytest.approx(expected, abs=5e-4)
    for size in (1, 1000, 232_000_000):
        two, hier = two_tier_bytes(topo, size), hierarchical_bytes(topo, size)
        assert 1 - hier / two == pytest.approx(reduction(topo), abs=1e-12)


def test_cost_by_hand_for_height_two() -> None:
    topo = balanced_tree(256, 2)
    assert two_tier_bytes(topo, 10) == (272 + 512) * 10
    assert hierarchical_bytes(topo, 10) == 2 * 272 * 10


# --- active subtree ----------------------------------------------------------------


def test_active_subtree_keeps_only_needed_aggregators() -> None:
    topo = balanced_tree(16, 2)  # agg-1-k holds workers 4k..4k+3
    sub = topo.active_subtree([0, 1, 9])
    assert set(sub.nodes) == {"coordinator", "agg-1-0", "agg-1-2", "worker-0", "worker-1", "worker-9"}
    assert sub.children("coordinator") == ("agg-1-0", "agg-1-2")
    assert sub.children("agg-1-2") == ("worker-9",)
    assert [w.worker_index for w in sub.workers] == [0, 1, 9]
    assert sub.worker_node(9).name == "worker-9"
    assert sub.edges == 5 and sub.height == 2
    # The cost is the active subtree's: 5 edges, 3 leaves at depth 2.
    assert two_tier_bytes(topo, 7, participants=[0, 1, 9]) == two_tier_bytes(sub, 7) == (5 + 6) * 7
    assert hierarchical_bytes(topo, 7, participants=[9, 1, 0]) == 2 * 5 * 7
    assert reduction(topo, [0, 1, 9]) == pytest.approx(1 - 10 / 11)
    assert reduction(topo, range(16)) == pytest.approx(reduction(topo))


def test_active_subtree_keeps_the_coordinator_and_sites(tmp_path: Path) -> None:
    topo = load_topology(EXAMPLE)
    sub = topo.active_subtree([6])
    assert list(sub.nodes) == ["coordinator", "agg-b", "w6"]
    assert sub.nodes["agg-b"].site == "site-b" and sub.site_of("w6") == "site-b"
    with pytest.raises(ValueError, match="at least one"):
        topo.active_subtree([])
    with pytest.raises(ValueError, match=r"\[8\]"):
        topo.active_subtree([1, 8])


# --- YAML -------------------------------------------------------------------------


def test_load_example_two_sites() -> None:
    topo = load_topology(EXAMPLE)
    assert topo.root.name == "coordinator"
    assert [a.name for a in topo.aggregators] == ["agg-a", "agg-b"]
    assert [a.site for a in topo.aggregators] == ["site-a", "site-b"]
    assert [w.name for w in topo.workers] == [f"w{i}" for i in range(8)]
    assert topo.worker_node(5).name == "w5" and topo.parent("w5") == "agg-b"
    assert topo.subtree_workers("agg-a") == [0, 1, 2, 3]
    assert (topo.edges, topo.height, topo.num_workers) == (10, 2, 8)
    assert topo.site_of("w1") == "site-a" and topo.site_of("coordinator") is None
    assert topo.describe() == "8 workers, 2 aggregators, height 2, branching 2-4, 10 edges"


def test_worker_order_is_tree_order_not_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
nodes:
  - {name: late, kind: worker}
  - {name: coordinator, kind: coordinator, children: [a, early]}
  - {name: early, kind: worker}
  - {name: a, kind: aggregator, children: [late, mid]}
  - {name: mid, kind: worker}
""",
    )
    topo = load_topology(path)
    assert [w.name for w in topo.workers] == ["late", "mid", "early"]
    assert list(topo.nodes) == ["coordinator", "a", "late", "mid", "early"]


W = "  - {name: w0, kind: worker}\n  - {name: w1, kind: worker}\n"


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        pytest.param(
            "  - {name: c1, kind: coordinator, children: [w0]}\n  - {name: c2, kind: coordinator, children: [w1]}\n" + W,
            ["exactly one coordinator", "'c1'", "'c2'"],
            id="two-coordinators",
        ),
        pytest.param(
            "  - {name: agg, kind: aggregator, children: [w0, w1]}\n" + W,
            ["exactly one coordinator", "found 0"],
            id="no-coordinator",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [x]}\n  - {name: x, kind: relay, children: [w0, w1]}\n" + W,
            ["key 'nodes[1].kind' = 'relay': must be one of 'coordinator', 'aggregator' or 'worker'"],
            id="unknown-kind",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [w0, w1]}\n  - {name: w0, kind: worker}\n" + W,
            ["node 'w0'", "defined twice"],
            id="duplicate-name",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [w0, w1, ghost]}\n" + W,
            ["node 'c'", "'ghost'", "not defined"],
            id="undefined-child",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [a, b]}\n"
            "  - {name: a, kind: aggregator, children: [w0]}\n"
            "  - {name: b, kind: aggregator, children: [w0, w1]}\n" + W,
            ["node 'w0'", "two parents", "'a'", "'b'"],
            id="two-parents",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [a, w1]}\n"
            "  - {name: a, kind: aggregator, children: [b]}\n"
            "  - {name: b, kind: aggregator, children: [a, w0]}\n" + W,
            ["node 'a'", "cycle", "a -> b -> a"],
            id="cycle",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [w0]}\n  - {name: lost, kind: aggregator, children: [w1]}\n" + W,
            ["node 'lost'", "not reachable"],
            id="unreachable",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [w0]}\n"
            "  - {name: w0, kind: worker, children: [w1]}\n  - {name: w1, kind: worker}\n",
            ["node 'w0'", "worker but has children"],
            id="worker-with-children",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [w0, w1, a]}\n  - {name: a, kind: aggregator}\n" + W,
            ["node 'a'", "aggregator without children"],
            id="aggregator-without-children",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: []}\n",
            ["node 'c'", "coordinator without children"],
            id="coordinator-without-children",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [a]}\n"
            "  - {name: a, kind: aggregator, children: [c, w0, w1]}\n" + W,
            ["node 'a'", "coordinator 'c' as a child"],
            id="coordinator-as-child",
        ),
        pytest.param(
            "  - {name: c, kind: coordinator, children: [w0, w1], weight: 3}\n" + W,
            ["unknown key 'nodes[0].weight'", "allowed keys in nodes[0]: name, kind, children, site, worker_index"],
            id="unknown-key",
        ),
    ],
)
def test_validation_errors_name_node_and_file(tmp_path: Path, body: str, needles: list[str]) -> None:
    path = write(tmp_path, "nodes:\n" + body)
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    msg = str(err.value)
    assert msg.startswith(f"topology file {str(path)!r}: ")
    for needle in needles:
        assert needle in msg


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as err:
        load_topology(missing)
    assert str(missing) in str(err.value)


def test_bad_yaml_names_path(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes: [ {name: c, kind: coordinator\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_topology(path)
    assert str(path) in str(err.value)


def test_file_without_nodes_names_path(tmp_path: Path) -> None:
    path = write(tmp_path, "just a string\n")
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    assert str(path) in str(err.value)


# --- parse_topology ------------------------------------------------------------------


def test_parse_flat_and_tree() -> None:
    assert parse_topology("flat", 6) == flat(6)
    tree = parse_topology("tree:2", 16)
    assert tree == balanced_tree(16, 2) and tree.height == 2 and len(tree.aggregators) == 4


def test_parse_path() -> None:
    topo = parse_topology(str(EXAMPLE), 8)
    assert topo.num_workers == 8 and [a.site for a in topo.aggregators] == ["site-a", "site-b"]


def test_parse_worker_count_mismatch() -> None:
    with pytest.raises(ConfigError) as err:
        parse_topology(str(EXAMPLE), 6)
    msg = str(err.value)
    assert "8 workers" in msg and "6 workers" in msg and "--workers 8" in msg


def test_parse_bad_tree_specs() -> None:
    with pytest.raises(ConfigError, match="positive integer"):
        parse_topology("tree:x", 16)
    with pytest.raises(ConfigError, match="valid heights"):
        parse_topology("tree:3", 16)


# --- serialisation and traversal -------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: flat(3), lambda: balanced_tree(27, 3), lambda: load_topology(EXAMPLE)])
def test_to_dict_round_trip(make) -> None:
    topo = make()
    again = Topology.from_dict(topo.to_dict())
    assert again == topo
    assert again.to_dict() == topo.to_dict()
    assert [w.name for w in again.workers] == [w.name for w in topo.workers]


def test_round_trip_keeps_active_subtree_indices() -> None:
    sub = balanced_tree(16, 2).active_subtree([3, 12])
    again = Topology.from_dict(sub.to_dict())
    assert [w.worker_index for w in again.workers] == [3, 12]
    assert again == sub


def test_post_order_children_before_parents() -> None:
    topo = balanced_tree(8, 3)
    order = topo.post_order()
    assert order[-1] == "coordinator"
    assert set(order) == {"coordinator", *(a.name for a in topo.aggregators)}
    everything = topo.post_order(topo.nodes)
    assert sorted(everything) == sorted(topo.nodes)
    for seq in (order, everything):
        pos = {name: i for i, name in enumerate(seq)}
        for name in seq:
            parent = topo.parent(name)
            if parent is not None:
                assert pos[name] < pos[parent]
    assert everything[:3] == ["worker-0", "worker-1", "agg-2-0"]


def test_node_children_are_tuples() -> None:
    node = Node("a", "aggregator", children=["x", "y"])  # type: ignore[arg-type]
    assert node.children == ("x", "y")
    with pytest.raises(AttributeError):
        node.name = "b"  # type: ignore[misc]
