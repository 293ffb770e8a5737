"""Strategies: FedAvg against a hand computation, FedSGD settings, errors."""

from dataclasses import replace

import numpy as np
import pytest

from flight_parsl.core.errors import ConfigError
from flight_parsl.core.types import LocalSettings
from flight_parsl.fl.strategies import make_strategy, strategy_mode, strategy_names
from flight_parsl.core.weights import FlatWeights, Layout

LAYOUT = Layout.from_shapes([("w", (2, 2), "float32"), ("b", (1,), "float32")])


def _w(*values: float) -> FlatWeights:
    return FlatWeights(np.array(values, dtype=np.float32), LAYOUT)


def test_fedavg_weights_by_samples_like_the_hand_computation() -> None:
    agg = make_strategy("fedavg").aggregator(_w(0, 0, 0, 0, 0))
    agg.add(_w(1, 2, 3, 4, 5), 10)
    agg.add(_w(3, 2, 1, 0, -5), 30)
    out = agg.result()
    # (10 * a + 30 * b) / 40
    expected = np.array([2.5, 2.0, 1.5, 1.0, -2.5], dtype=np.float32)
    assert agg.count == 2
    np.testing.assert_allclose(out.buffer, expected, rtol=1e-6)
    assert out.layout == LAYOUT


def test_fedavg_streams_in_any_order_to_the_same_result() -> None:
    parts = [(_w(*np.random.default_rng(i).normal(size=5)), i + 1) for i in range(6)]
    a = make_strategy("fedavg").aggregator(parts[0][0])
    b = make_strategy("fedavg").aggregator(parts[0][0])
    for w, n in parts:
        a.add(w, n)
    for w, n in reversed(parts):
        b.add(w, n)
    np.testing.assert_allclose(a.result().buffer, b.result().buffer, rtol=1e-6)


def test_aggregator_rejects_empty_and_mismatched_input() -> None:
    agg = make_strategy("fedavg").aggregator(_w(0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="no result"):
        agg.result()
    other = FlatWeights(np.zeros(5, dtype=np.float32), Layout.from_shapes([("x", (5,), "float32")]))
    with pytest.raises(ValueError, match="layout"):
        agg.add(other, 1)


def test_fedsgd_takes_one_full_batch_step() -> None:
    base = LocalSettings(epochs=5, batch_size=16, lr=0.1, momentum=0.9)
    s = make_strategy("fedsgd").configure(0, 3, base)
    assert (s.epochs, s.max_steps, s.full_batch, s.momentum, s.lr) == (1, 1, True, 0.0, 0.1)
    assert make_strategy("fedavg").configure(0, 3, base) == base


def test_sampling_and_names() -> None:
    rng = np.random.default_rng(0)
    assert make_strategy("fedavg").sample(0, 3, rng) == [0, 1, 2]
    assert strategy_names() == ["fedasync", "fedavg", "fedbuff", "fedmedian", "fedprox", "fedsgd"]
    assert [strategy_mode(n) for n in ("fedavg", "fedmedian", "fedasync", "fedbuff")] == ["sync", "sync", "async", "async"]
    with pytest.raises(ConfigError, match="fedasync, fedavg, fedbuff, fedmedian, fedprox, fedsgd"):
        make_strategy("nope")


def test_participation_samples_a_seeded_fraction() -> None:
    s = make_strategy("fedavg", participation=1 / 32)
    picked = s.sample(0, 256, np.random.default_rng(3))
    assert len(picked) == 8 and len(set(picked)) == 8 and picked == sorted(picked)
    assert picked == make_strategy("fedavg", participation=1 / 32).sample(0, 256, np.random.default_rng(3))
    assert picked != make_strategy("fedavg", participation=1 / 32).sample(0, 256, np.random.default_rng(4))
    assert make_strategy("fedavg", participation=0.01).sample(0, 2, np.random.default_rng(0)) in ([0], [1])


def test_clients_per_round_samples_k_of_a_large_population() -> None:
    s = make_strategy("fedavg", clients_per_round=1000)
    picked = s.sample(0, 100_000, np.random.default_rng(0))
    assert len(picked) == 1000 == len(set(picked)) and 0 <= min(picked) and max(picked) < 100_000
    assert make_strategy("fedavg", clients_per_round=10).sample(0, 4, np.random.default_rng(0)) == [0, 1, 2, 3]


def test_aggregate_keeps_the_global_model_when_nothing_came_back() -> None:
    from flight_parsl.core.types import Failure

    s = make_strategy("fedavg")
    g = _w(1, 2, 3, 4, 5)
    failures = [Failure(0, (1, 2), "lost", "WorkerLost")]
    assert s.aggregate(0, g, s.aggregator(g), failures) is g
    agg = s.aggregator(g)
    agg.add(_w(3, 3, 3, 3, 3), 2)
    np.testing.assert_array_equal(s.aggregate(0, g, agg, failures).buffer, 3.0)


def test_fedmedian_takes_the_coordinate_median_and_is_not_linear() -> None:
    s = make_strategy("fedmedian")
    assert s.linear is False and make_strategy("fedavg").linear is True
    agg = s.aggregator(_w(0, 0, 0, 0, 0))
    for w in (_w(1, 5, 0, 0, 9), _w(2, -1, 0, 1, 9), _w(100, 0, 0, 2, 9)):
        agg.add(w, 10)
    np.testing.assert_array_equal(agg.result().buffer, [2, 0, 0, 1, 9])


def test_fedprox_sets_the_proximal_weight() -> None:
    base = LocalSettings(epochs=2, batch_size=8, lr=0.1)
    assert make_strategy("fedprox", mu=2.0).configure(1, 0, base).prox_mu == 2.0
    assert make_strategy("fedprox").configure(1, 0, base).prox_mu == 0.3  # the default mu


def test_fedasync_mixes_by_alpha_and_staleness() -> None:
    g, u = _w(0, 0, 0, 0, 0), _w(10, 10, 10, 10, 10)
    s = make_strategy("fedasync", alpha=0.25)
    np.testing.assert_allclose(s.on_update(g, u, 1, staleness=5).buffer, 2.5)
    p = make_strategy("fedasync", alpha=0.5, staleness="polynomial", exponent=1.0)
    assert p.mixing(0) == 0.5 and p.mixing(3) == 0.5 / 4
    np.testing.assert_allclose(p.on_update(g, u, 1, staleness=3).buffer, 10 * 0.125)


def test_fedbuff_steps_once_per_buffer_like_the_hand_computation() -> None:
    s = make_strategy("fedbuff", buffer_size=3, server_lr=0.5, staleness="polynomial", exponent=1.0)
    base = LocalSettings(epochs=1, batch_size=8, lr=0.1)
    assert s.configure(0, 2, base).return_delta is True
    g = _w(1, 1, 1, 1, 1)
    deltas = [(_w(2, 0, 0, 0, 4), 0), (_w(0, 4, 0, 0, 4), 1), (_w(0, 0, 6, 0, 4), 2)]
    assert s.on_update(g, *deltas[0][:1], 5, staleness=deltas[0][1]) is None
    assert s.on_update(g, deltas[1][0], 5, staleness=deltas[1][1]) is None and s.buffered == 2
    new = s.on_update(g, deltas[2][0], 5, staleness=deltas[2][1])
    # w + 0.5 * (1/3) * (d0 / 1 + d1 / 2 + d2 / 3): staleness s scales a delta by 1 / (1 + s)
    expected = 1 + 0.5 / 3 * np.array([2, 2, 2, 0, 4 + 2 + 4 / 3])
    np.testing.assert_allclose(new.buffer, expected, rtol=1e-6)
    assert s.buffered == 0
    assert s.on_update(new, _w(3, 3, 3, 3, 3), 1, staleness=0) is None  # the next buffer starts empty


def test_proximal_term_matches_the_hand_computation() -> None:
    import torch

    from flight_parsl.worker.training import proximal_term

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight[:] = torch.tensor([[1.0, 2.0]])
        model.bias[:] = 3.0
    anchor = [torch.zeros(1, 2), torch.zeros(1)]
    assert proximal_term(model, anchor, mu=0.5).item() == 0.25 * (1 + 4 + 9)


def test_fedprox_keeps_local_models_closer_to_the_global_one() -> None:
    import torch

    from flight_parsl.data import PartitionSpec
    from flight_parsl.core.model_spec import ModelSpec
    from flight_parsl.models import build_model
    from flight_parsl.core.types import Workload
    from flight_parsl.worker.training import train_local

    spec = ModelSpec("logreg", 1, 8, 10)
    torch.manual_seed(0)
    start = FlatWeights.from_model(build_model(spec))
    wl = Workload("local", spec, "digits", None, PartitionSpec(kind="labels", labels_per_client=2), 4, 0)
    base = LocalSettings(epochs=5, batch_size=16, lr=0.1)
    drift = {}
    for mu in (0.0, 5.0):
        out, *_ = train_local(start, wl, replace(base, prox_mu=mu), client=1, round_idx=0)
        drift[mu] = float(np.linalg.norm(out.buffer - start.buffer))
    assert drift[5.0] < 0.7 * drift[0.0]
