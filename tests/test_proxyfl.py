"""Decentralized mode: the peer graph, the majority partitioner, DP-SGD and its accountant,
ProxyFL and its baselines end to end (thread backend), bytes per client constant in K."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flight_parsl.core.errors import ConfigError
from flight_parsl.data.partition import PartitionSpec, partition
from flight_parsl.topology.peers import exponential_peer, exponential_routes
from flight_parsl.worker import dp
from conftest import read_csv, read_summary, run_quietly
from redis_fixtures import managed_redis  # noqa: F401 (fixture)

SMALL = (
    "partition.kind=majority", "partition.samples_per_client=60", "peer.test_samples=20", "peer.batch_size=20",
    "model.name=logreg",
)


# --- peer graph ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8, 13, 16])
def test_exponential_graph_is_a_shift_without_fixed_points(k: int) -> None:
    for r in range(6):
        routes = exponential_routes(r, k)
        assert sorted(routes) == list(range(k))
        assert sorted(routes.values()) == list(range(k))  # one receive per client
        assert all(routes[i] != i for i in range(k))


def test_exponential_graph_of_eight_cycles_shifts_one_two_four() -> None:
    assert [exponential_peer(0, r, 8) for r in range(4)] == [1, 2, 4, 1]
    assert exponential_peer(7, 2, 8) == 3


# --- majority partitioner -----------------------------------------------------------------


def test_majority_partition_gives_each_client_eighty_percent_of_its_class() -> None:
    labels = np.repeat(np.arange(10), 150)
    shards = partition(labels, 8, PartitionSpec(kind="majority", samples_per_client=1000), seed=3)
    for i, shard in enumerate(shards):
        counts = np.bincount(labels[shard], minlength=10)
        assert len(shard) == 1000 and counts[i] == 800 and counts.sum() - counts[i] == 200
    again = partition(labels, 8, PartitionSpec(kind="majority", samples_per_client=1000), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))
    with pytest.raises(ConfigError, match="majority_fraction"):
        PartitionSpec(kind="majority", majority_fraction=1.5)


# --- accountant -----------------------------------------------------------------------------


def test_rdp_matches_values_published_with_tf_privacy() -> None:
    assert dp.compute_rdp(0.1, 2, 10, 5) == pytest.approx(0.07737, abs=1e-5)
    got = dp.compute_rdp(0.01, 2.5, 50, [1.5, 2.5, 5, 50, 100, np.inf])
    want = [0.00065, 0.001085, 0.00218075, 0.023846, 167.416307, np.inf]
    np.testing.assert_allclose(got[:-1], want[:-1], atol=1e-5)
    assert got[-1] == np.inf
    orders = list(range(2, 33))
    eps, order = dp.privacy_spent(orders, dp.compute_rdp(0.01, 4, 10000, orders), 1e-5, improved=False)
    assert eps == pytest.approx(1.258575, abs=1e-5) and order == 20
    assert dp.compute_rdp(1.0, 10, 1, 20) == pytest.approx(0.1)
    assert dp.builtin_epsilon(0.25, 1.0, 0, 1e-3) == 0.0


@pytest.mark.parametrize("q,sigma,steps,delta", [(0.25, 1.0, 40, 1e-3), (0.004, 1.1, 15000, 1e-5)])
def test_builtin_accountant_agrees_with_opacus(q: float, sigma: float, steps: int, delta: float) -> None:
    pytest.importorskip("opacus")
    want = dp.opacus_epsilon(q, sigma, steps, delta)
    assert dp.builtin_epsilon(q, sigma, steps, delta) == pytest.approx(want, rel=1e-6)
    assert dp.epsilon(q, sigma, steps, delta) == pytest.approx(want, rel=1e-6)  # per-step RDP times steps


# --- DP-SGD ---------------------------------------------------------------------------------


def _per_example_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    out = []
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append([p.grad.clone() for p in model.parameters()])
    return out


def test_private_gradients_clip_each_example_and_add_calibrated_noise() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    x, y = torch.randn(10, 6) * 5, torch.randint(0, 3, (10,))
    per = _per_example_grads(model, x, y)
    clip = 0.1
    want = [sum(g[j] * min(1.0, clip / float(torch.sqrt(sum((t**2).sum() for t in g)))) for g in per) / 8.0
            for j in range(2)]
    frac = dp.private_gradients(model, F.cross_entropy, [x, y], clip, 0.0, 8.0)
    assert frac == 1.0  # inputs scaled up: every example exceeds the bound
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-6)
    # Noise only (no examples): std noise * clip / expected batch.
    dp.private_gradients(model, F.cross_entropy, [x[:0], y[:0]], 2.0, 1.5, 4.0, torch.Generator().manual_seed(1))
    noise = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(noise.std()) == pytest.approx(1.5 * 2.0 / 4.0, rel=0.4)


# --- end to end -------------------------------------------------------------------------------


def _rows(run: Path) -> list[dict[str, str]]:
    return read_csv(run / "tasks.csv")


@pytest.mark.parametrize("k", [4, 8, 16])
def test_proxyfl_bytes_per_client_per_round_are_constant_in_k(make_config, tmp_path, k: int) -> None:
    run = run_quietly(
        make_config, *SMALL, "plan.clients_per_task=4",
        mode="decentralized", workers=k, rounds=2, strategy={"name": "proxyfl"}, out=str(tmp_path / f"k{k}"),
    )
    rows = _rows(run)
    assert len(rows) == 2 * k and {int(r["task_clients"]) for r in rows} == {4}  # clients packed into tasks
    later = [r for r in rows if r["round"] != "1"]
    ins = {int(r["client_bytes_in"]) for r in later}
    outs = {int(r["client_bytes_out"]) for r in rows}
    # every client reads one proxy plus its state and writes one proxy plus its state, whatever K
    assert len(ins) == 1 and len(outs) == 1
    model_bytes = read_summary(run)["model_bytes"]
    assert ins.pop() - model_bytes == outs.pop() - model_bytes > 0
    rounds = read_csv(run / "rounds.csv")
    assert all(float(r["aggregate_s"]) == 0.0 for r in rounds)  # the coordinator averaged nothing
    to_workers = {int(r["bytes_to_workers"]) for r in rounds[1:]}  # the K proxies read in round 2
    assert len(to_workers) == 1 and to_workers.pop() % k == 0
    assert model_bytes < int(rounds[1]["bytes_to_workers"]) // k < model_bytes + 1024  # a proxy and its header
    _BYTES[k] = (int(later[0]["client_bytes_in"]), int(rows[0]["client_bytes_out"]))
    # epsilon: 2 rounds of 3 Poisson steps at q = 20/60, noise 1, delta 1/60
    want = dp.epsilon(20 / 60, 1.0, 6, 1 / 60)
    assert [float(r["epsilon"]) for r in rows if r["round"] == "2"] == [pytest.approx(want)] * k
    assert read_summary(run)["final_epsilon"] == pytest.approx(want)


_BYTES: dict[int, tuple[int, int]] = {}


def test_bytes_equal_across_k() -> None:
    if len(_BYTES) < 3:
        pytest.skip("needs the three runs of the test above")
    assert len(set(_BYTES.values())) == 1, _BYTES


@pytest.mark.parametrize("method", ["regular", "joint", "fedavg", "avgpush", "fml"])
def test_baselines_run_in_the_same_harness(make_config, tmp_path, method: str) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    run = run_quietly(
        make_config, *SMALL, f"transfer.file_dir={shm}", mode="decentralized", workers=4, rounds=2,
        strategy={"name": method}, out=str(tmp_path / method),
    )
    rows = _rows(run)
    summary = read_summary(run)
    assert summary["status"] == "completed"
    assert len(rows) == (2 if method == "joint" else 8)
    accs = [float(r["private_test_acc"]) for r in rows]
    assert all(0.0 <= a <= 1.0 for a in accs)
    shared = method in ("fedavg", "avgpush", "fml")
    assert ("final_epsilon" in summary) == shared
    assert all((r["proxy_test_acc"] != "") == (method == "fml") for r in rows)
    # round 1 reads nothing; round 2 reads what round 1 wrote: the state, and for FedAvg / FML / AvgPush a
    # model of the size the client sent (the mean, or its peer's model)
    assert all(int(r["client_bytes_in"]) == 0 for r in rows if r["round"] == "1")
    assert all(int(r["client_bytes_in"]) == int(r["client_bytes_out"]) > 0 for r in rows if r["round"] == "2")
    assert all((float(r["aggregate_s"]) > 0) == (method in ("fedavg", "fml")) for r in read_csv(run / "rounds.csv"))
    assert list(shm.iterdir()) == []  # the models' store and the client state are gone


def test_decentralized_config_errors(make_config) -> None:
    with pytest.raises(ConfigError, match="topology"):
        make_config(mode="decentralized", topology="tree:2", strategy={"name": "proxyfl"})
    with pytest.raises(ConfigError, match="at least 2 clients"):
        make_config(mode="decentralized", workers=1, strategy={"name": "proxyfl"})
    with pytest.raises(ConfigError, match="peer.alpha"):
        make_config("peer.alpha=2", mode="decentralized", strategy={"name": "proxyfl"})
    with pytest.raises(ConfigError, match="mode"):
        make_config(mode="sync", strategy={"name": "proxyfl"})
    with pytest.raises(ConfigError, match="unknown model"):
        make_config("peer.private_models=mlp,nope", mode="decentralized", strategy={"name": "proxyfl"})


def test_dp_on_a_batchnorm_proxy_is_refused(make_config, tmp_path) -> None:
    with pytest.raises(ConfigError, match="BatchNorm"):
        run_quietly(make_config, *SMALL[:-1], "model.name=cnn_blocks", mode="decentralized", workers=2, rounds=1,
                    strategy={"name": "proxyfl"})
    assert read_summary(tmp_path / "run")["status"] == "failed"


def test_proxyfl_on_htex_slots_with_clients_packed_through_redis(make_config, managed_redis) -> None:
    """Real HTEX worker processes, 4 clients on 2 slots (2 per task), proxies and state in Redis."""
    from flight_parsl.transfer.redis_server import count_keys

    run = run_quietly(
        make_config, *SMALL, "transfer.kind=redis", f"transfer.redis={managed_redis.address}", "slots=2",
        mode="decentralized", workers=4, rounds=2, backend="parsl", strategy={"name": "proxyfl"},
    )
    rows = _rows(run)
    assert read_summary(run)["status"] == "completed" and len(rows) == 8
    assert {int(r["task_clients"]) for r in rows} == {2}
    assert len({r["pid"] for r in rows}) <= 2  # packed onto the two slots, not a process per client
    assert len({int(r["client_bytes_in"]) for r in rows if r["round"] == "2"}) == 1
    assert count_keys(managed_redis.address) == 0  # proxies and client state are gone


def test_proxies_ride_inside_the_tasks_with_the_parsl_transfer(make_config, tmp_path) -> None:
    runs = {
        kind: run_quietly(make_config, *SMALL, f"transfer.kind={kind}", "peer.private_models=mlp,logreg",
                          mode="decentralized", workers=4, rounds=2, strategy={"name": "proxyfl"},
                          out=str(tmp_path / kind))
        for kind in ("parsl", "file")
    }
    got = {
        kind: sorted((r["round"], r["client"], r["client_bytes_in"], r["private_test_acc"]) for r in _rows(run))
        for kind, run in runs.items()
    }
    assert got["parsl"] == got["file"]  # the same proxies reach the same clients, whichever way they travel
    written = {int(r["client"]): int(r["client_bytes_out"]) for r in _rows(runs["file"])}
    assert written[0] == written[2] > written[1] == written[3]  # private mlp (clients 0, 2) vs logreg (1, 3)
