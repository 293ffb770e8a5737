"""Hierarchical rounds: linear aggregation pushed down a tree, edge bytes, participation."""

import pytest

from conftest import read_csv, read_summary, run_quietly
from flight_parsl.topology.tree import balanced_tree


run = run_quietly
#: Every task reads its model over its edge: no process keeps one (see the tests of measured bytes).
NO_CACHE = ("transfer.kind=file", "transfer.cache_size=0")


def test_tree_broadcast_moves_exactly_the_modeled_hierarchical_bytes(make_config) -> None:
    # one client per task and no slot keeping a model (cache_size=0): one model per edge, as the cost
    # model assumes (the thread pool is one process: with a cache, its tasks would share what they read)
    out = run(make_config, "train.mode=none", "model.name=smallnet", "topology=tree:2", "broadcast=tree",
              "plan.clients_per_task=1", *NO_CACHE, workers=16, rounds=2)
    rounds, tasks = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    tree = balanced_tree(16, 2)  # 4 aggregators of 4 workers: 20 edges, 32 leaf hops
    for r in rounds:
        size = int(r["modeled_hierarchical_bytes"]) // (2 * tree.edges)
        assert int(r["edge_bytes"]) == int(r["modeled_hierarchical_bytes"]) == 2 * 20 * size
        assert int(r["modeled_two_tier_bytes"]) == (20 + 32) * size
        assert 1 - int(r["edge_bytes"]) / int(r["modeled_two_tier_bytes"]) == pytest.approx(1 - 40 / 52)
    kinds = [t["kind"] for t in tasks if t["round"] == "1"]
    assert kinds.count("train") == 16 and kinds.count("aggregate") == 4 and kinds.count("relay") == 4
    assert "height 2" in read_summary(out)["topology"]


def test_packed_tasks_move_fewer_bytes_than_the_cost_model(make_config) -> None:
    # each aggregator's 4 clients run as one task that reads the model once and returns one partial
    out = run(make_config, "train.mode=none", "model.name=smallnet", "topology=tree:2", "broadcast=tree",
              *NO_CACHE, workers=16, rounds=1)
    (r,) = read_csv(out / "rounds.csv")
    size = int(r["modeled_hierarchical_bytes"]) // 40
    assert r["tasks"] == str(4 + 4 + 4)  # relays, train tasks, aggregates
    assert int(r["edge_bytes"]) == (4 + 4 + 4 + 4) * size  # relay in, task in, task partial, aggregate in


def test_direct_broadcast_skips_the_inner_edges(make_config) -> None:
    out = run(make_config, "train.mode=none", "model.name=smallnet", "topology=tree:2", "plan.clients_per_task=1",
              *NO_CACHE, workers=16, rounds=1)
    (r,) = read_csv(out / "rounds.csv")
    size = int(r["modeled_hierarchical_bytes"]) // 40
    assert int(r["edge_bytes"]) == (40 - 4) * size  # the 4 coordinator->aggregator edges carry nothing
    assert [t["kind"] for t in read_csv(out / "tasks.csv")].count("relay") == 0


def test_hierarchical_fedavg_equals_flat_fedavg(make_config, tmp_path) -> None:
    common = ("model.name=logreg", "train.epochs=1", "partition.kind=power_law")
    flat = run(make_config, *common, "topology=flat", workers=8, rounds=2, out=str(tmp_path / "flat"))
    tree = run(make_config, *common, "topology=tree:3", workers=8, rounds=2, out=str(tmp_path / "tree"))
    for a, b in zip(read_csv(flat / "rounds.csv"), read_csv(tree / "rounds.csv")):
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-5)
        assert float(a["test_acc"]) == pytest.approx(float(b["test_acc"]))
    # the coordinator received one partial per child of the root: 2 aggregates, not 8 results
    root_inputs = [t for t in read_csv(tree / "tasks.csv") if t["round"] == "1" and t["node"] in ("agg-1-0", "agg-1-1")]
    assert len(root_inputs) == 2 and all(int(t["samples"]) > 1 for t in root_inputs)


@pytest.mark.parametrize("strategy", ["fedprox", "fedsgd"])
def test_every_strategy_runs_on_a_tree(make_config, strategy) -> None:
    out = run(make_config, f"strategy.name={strategy}", "model.name=logreg", "train.lr=0.5", "topology=tree:2", workers=4, rounds=3)
    losses = [float(r["test_loss"]) for r in read_csv(out / "rounds.csv")]
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]


def test_participation_runs_only_the_active_subtree(make_config) -> None:
    out = run(
        make_config, "train.mode=none", "model.name=tiny", "topology=tree:2", "strategy.participation=0.25",
        "broadcast=tree", "plan.clients_per_task=1", *NO_CACHE, workers=16, rounds=3,
    )
    tasks = read_csv(out / "tasks.csv")
    for r in ("1", "2", "3"):
        mine = [t for t in tasks if t["round"] == r]
        trained = {int(t["client"]) for t in mine if t["kind"] == "train"}
        assert len(trained) == 4
        active_aggs = {balanced_tree(16, 2).parent(f"worker-{w}") for w in trained}
        assert {t["node"] for t in mine if t["kind"] == "aggregate"} == active_aggs
    for row in read_csv(out / "rounds.csv"):
        assert row["participants"] == "4" and int(row["edge_bytes"]) == int(row["modeled_hierarchical_bytes"])


def test_topology_from_yaml(make_config) -> None:
    out = run(make_config, "train.mode=none", "model.name=tiny", "topology=configs/topologies/example_two_sites.yaml", workers=8, rounds=1)
    nodes = {t["node"] for t in read_csv(out / "tasks.csv") if t["kind"] == "aggregate"}
    assert len(nodes) == 2


def test_topology_errors_name_the_problem(make_config) -> None:
    from flight_parsl.core.errors import ConfigError

    with pytest.raises(ConfigError, match="set --workers 8"):
        run(make_config, "train.mode=none", "model.name=tiny", "topology=configs/topologies/example_two_sites.yaml", workers=6, rounds=1)
    with pytest.raises(ConfigError, match="valid heights for 16 leaves"):
        run(make_config, "train.mode=none", "model.name=tiny", "topology=tree:3", workers=16, rounds=1)
    with pytest.raises(ConfigError, match="is not flat, tree:HEIGHT or an existing YAML file"):
        make_config("topology=nowhere.yaml")
