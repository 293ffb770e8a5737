"""The strategy protocols are real: every registered strategy implements its own protocol
(and no other), the engine narrows a strategy through the protocols only, and the sync
loop's ``dropped`` hook is part of SyncStrategy with a default in the protocol.

The static side (each strategy checked against its protocol by mypy) runs in CI:
``mypy flight_parsl/core flight_parsl/fl flight_parsl/engine flight_parsl/worker flight_parsl/transfer``.
That the worker side imports only core, fl, transfer, data and models is
tests/test_engine_v2.py::test_the_worker_side_never_imports_engine_execution_or_config.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from flight_parsl.core.errors import ConfigError
from flight_parsl.core.types import LocalSettings
from flight_parsl.fl.protocols import AsyncStrategy, PeerStrategy, SyncStrategy, as_async, as_peer, as_sync
from flight_parsl.fl.strategies import (
    ASYNC_STRATEGIES,
    PEER_STRATEGIES,
    SYNC_STRATEGIES,
    make_strategy,
    strategy_mode,
    strategy_modes,
)
from flight_parsl.fl.stragglers import Stragglers

PACKAGE = Path(__file__).resolve().parents[1] / "flight_parsl"
PROTOCOLS = {"sync": SyncStrategy, "async": AsyncStrategy, "decentralized": PeerStrategy}
NARROW = {"sync": as_sync, "async": as_async, "decentralized": as_peer}
REGISTERED = (
    [("sync", name) for name in SYNC_STRATEGIES]
    + [("async", name) for name in ASYNC_STRATEGIES]
    + [("decentralized", name) for name in PEER_STRATEGIES]
)


def test_every_mode_has_strategies() -> None:
    assert sorted(SYNC_STRATEGIES) == ["fedavg", "fedmedian", "fedprox", "fedsgd"]
    assert sorted(ASYNC_STRATEGIES) == ["fedasync", "fedbuff"]
    assert sorted(PEER_STRATEGIES) == ["avgpush", "fedavg", "fml", "joint", "proxyfl", "regular"]


@pytest.mark.parametrize(("mode", "name"), REGISTERED)
def test_a_registered_strategy_implements_its_protocol_and_no_other(mode: str, name: str) -> None:
    strategy = make_strategy(name, mode=mode)
    assert strategy.name == name and strategy.mode == mode
    assert mode in strategy_modes(name)
    # declared: the class subclasses its protocol, so mypy checks it against the protocol
    assert PROTOCOLS[mode] in type(strategy).__mro__
    # structural, at run time: every member is there
    for other, protocol in PROTOCOLS.items():
        assert isinstance(strategy, protocol) is (other == mode), (name, other)
    assert NARROW[mode](strategy) is strategy
    for other, narrow in NARROW.items():
        if other != mode:
            with pytest.raises(TypeError, match=f"{name}.*is not a {PROTOCOLS[other].__name__}"):
                narrow(strategy)


@pytest.mark.parametrize("name", sorted(SYNC_STRATEGIES) + sorted(ASYNC_STRATEGIES))
def test_make_strategy_without_a_mode_builds_the_names_own_kind(name: str) -> None:
    assert make_strategy(name).mode == strategy_mode(name)


def test_make_strategy_refuses_a_name_of_another_mode() -> None:
    with pytest.raises(ConfigError, match="strategy 'fedasync' runs in mode 'async', not 'sync'"):
        make_strategy("fedasync", mode="sync")
    with pytest.raises(ConfigError, match="runs in mode 'sync', not 'async'"):
        make_strategy("fedprox", mode="async")
    # fedavg is both: a sync strategy, and a peer method in decentralized mode
    assert isinstance(make_strategy("fedavg", mode="sync"), SyncStrategy)
    assert isinstance(make_strategy("fedavg", mode="decentralized"), PeerStrategy)


def test_an_object_missing_a_member_is_not_a_strategy() -> None:
    class Incomplete:  # a sync strategy without aggregate()
        name, mode, linear = "incomplete", "sync", True

        def sample(self, round_idx, num_clients, rng, population=None):  # noqa: ANN001, ANN202
            return [0]

        def dropped(self, round_idx):  # noqa: ANN001, ANN202
            return []

        def configure(self, round_idx, client, base):  # noqa: ANN001, ANN202
            return base

        def aggregator(self, global_weights):  # noqa: ANN001, ANN202
            raise NotImplementedError

    assert not isinstance(Incomplete(), SyncStrategy)
    with pytest.raises(TypeError, match="'incomplete' \\(Incomplete, mode 'sync'\\) is not a SyncStrategy"):
        as_sync(Incomplete())


def test_dropped_is_a_protocol_hook_with_a_default_of_none() -> None:
    class Minimal(SyncStrategy):  # declares the protocol, keeps its default dropped()
        name, mode, linear = "minimal", "sync", True

        def sample(self, round_idx, num_clients, rng, population=None):  # noqa: ANN001, ANN202
            return list(range(num_clients))

        def configure(self, round_idx, client, base):  # noqa: ANN001, ANN202
            return base

        def aggregator(self, global_weights):  # noqa: ANN001, ANN202
            raise NotImplementedError

        def aggregate(self, round_idx, global_weights, folded, failures):  # noqa: ANN001, ANN202
            return global_weights

    assert Minimal().dropped(0) == [] and isinstance(Minimal(), SyncStrategy)
    # FedAvg without dropped stragglers drops nothing; with them, the round's stragglers
    assert make_strategy("fedavg", clients_per_round=10).dropped(0) == []
    drop = make_strategy("fedavg", mode="sync", clients_per_round=10, stragglers=Stragglers(0.5, drop=True, seed=1))
    sampled = drop.sample(3, 100, np.random.default_rng(0))
    dropped = drop.dropped(3)
    assert len(dropped) == 5 and not set(dropped) & set(sampled) and len(sampled) == 5
    assert drop.dropped(4) == []  # another round than the one last sampled


def test_local_settings_come_from_sync_and_async_strategies_only() -> None:
    from flight_parsl.engine.context import Experiment

    base = LocalSettings(epochs=2, batch_size=8, lr=0.1)
    for mode, name, expected in (("sync", "fedprox", 0.3), ("async", "fedasync", 0.0)):
        exp = Experiment(None, None, base, make_strategy(name, mode=mode), None, 0, None, None)
        assert exp.settings_for(0, 1).prox_mu == expected
    peer = Experiment(None, None, base, make_strategy("proxyfl", mode="decentralized"), None, 0, None, None)
    with pytest.raises(TypeError, match="decentralized mode"):
        peer.settings_for(0, 1)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_engine_sees_strategies_through_the_protocols_only() -> None:
    """No engine module imports a concrete strategy: only fl.protocols and the registry's make_strategy."""
    for path in (PACKAGE / "engine").rglob("*.py"):
        for name in _imports(path):
            if name.startswith("flight_parsl.fl.strategies"):
                assert name == "flight_parsl.fl.strategies.make_strategy", f"{path.name} imports {name}"
        assert "hasattr(exp.strategy" not in path.read_text(), path.name
