"""Strategies: FedAvg against a hand computation, FedSGD settings, errors."""

import numpy as np
import pytest

from flight_parsl.errors import ConfigError
from flight_parsl.strategies import LocalSettings, make_strategy, strategy_names
from flight_parsl.weights import FlatWeights, Layout

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


def test_selection_and_names() -> None:
    rng = np.random.default_rng(0)
    assert make_strategy("fedavg").select(0, [0, 1, 2], rng) == [0, 1, 2]
    assert strategy_names() == ["fedavg", "fedsgd"]
    with pytest.raises(ConfigError, match="fedavg, fedsgd"):
        make_strategy("nope")
