"""Strategies: FedAvg, FedSGD and FedProx against hand computations, settings, errors."""

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
    assert strategy_names() == [
        "avgpush", "fedasync", "fedavg", "fedbuff", "fedmedian", "fedprox", "fedsgd", "fml", "joint", "proxyfl", "regular"
    ]
    assert [strategy_mode(n) for n in ("fedavg", "fedmedian", "fedasync", "fedbuff")] == ["sync", "sync", "async", "async"]
    with pytest.raises(ConfigError, match="fedasync, fedavg, fedbuff, fedmedian, fedprox, fedsgd, fml"):
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


# Logistic regression on one client's digits shard (180 samples), by hand in float64 ----------

LOGREG = ("logreg", 1, 8, 10)
CLIENTS, CLIENT = 8, 3


def _logreg_start(seed: int = 0) -> FlatWeights:
    """Known weights: W ~ N(0, 0.1) of shape (10, 64), b ~ N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    layout = Layout.from_shapes([("fc.weight", (10, 64), "float32"), ("fc.bias", (10,), "float32")])
    return FlatWeights(rng.normal(0, 0.1, layout.size).astype(np.float32), layout)


def _shard() -> tuple[np.ndarray, np.ndarray]:
    from flight_parsl.data import PartitionSpec
    from flight_parsl.data.shards import load_shard

    x, y = load_shard("digits", None, PartitionSpec(kind="iid"), CLIENTS, CLIENT, 0)
    return x.reshape(len(y), -1).astype(np.float64), y


def _loss_and_gradient(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of flat logreg weights ``w`` (W then b) and its gradient."""
    weight, bias = w[:640].reshape(10, 64), w[640:]
    z = x @ weight.T + bias
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = float(-np.log(p[rows, y]).mean())
    p[rows, y] -= 1.0
    p /= len(y)
    return loss, np.concatenate([(p.T @ x).ravel(), p.sum(axis=0)])


def _train(settings: LocalSettings) -> tuple[FlatWeights, int, float]:
    from flight_parsl.core.model_spec import ModelSpec
    from flight_parsl.core.types import Workload
    from flight_parsl.data import PartitionSpec
    from flight_parsl.worker.training import train_local

    wl = Workload("local", ModelSpec(*LOGREG), "digits", None, PartitionSpec(kind="iid"), CLIENTS, 0)
    out, samples, loss, _, _ = train_local(_logreg_start(), wl, settings, client=CLIENT, round_idx=0)
    return out, samples, loss


def _assert_step(got: np.ndarray, expected: np.ndarray, start: np.ndarray) -> None:
    """``got`` equals ``expected`` to 1e-5 of the step it took from ``start``."""
    step = np.linalg.norm(expected - start)
    assert step > 0.1  # a real step, not a no-op
    assert np.linalg.norm(got - expected) <= 1e-5 * step, np.linalg.norm(got - expected) / step


def test_fedsgd_is_one_full_batch_gradient_step_by_hand_and_by_autograd() -> None:
    import torch
    import torch.nn.functional as F

    base = LocalSettings(epochs=5, batch_size=16, lr=0.5, momentum=0.9)
    out, samples, loss = _train(make_strategy("fedsgd").configure(0, CLIENT, base))
    x, y = _shard()
    w0 = _logreg_start().buffer.astype(np.float64)
    hand_loss, grad = _loss_and_gradient(w0, x, y)
    assert samples == len(y) == 180
    assert loss == pytest.approx(hand_loss, rel=1e-5)  # measured before the step, over the whole shard
    _assert_step(out.buffer, w0 - 0.5 * grad, w0)
    # torch autograd on the same batch from the same weights
    layer = torch.nn.Linear(64, 10)
    with torch.no_grad():
        layer.weight[:] = torch.from_numpy(w0[:640].reshape(10, 64))
        layer.bias[:] = torch.from_numpy(w0[640:])
    F.cross_entropy(layer(torch.from_numpy(x.astype(np.float32))), torch.from_numpy(y)).backward()
    autograd = np.concatenate([layer.weight.grad.numpy().ravel(), layer.bias.grad.numpy()]).astype(np.float64)
    _assert_step(out.buffer, w0 - 0.5 * autograd, w0)


def test_fedprox_steps_along_the_gradient_of_its_proximal_objective() -> None:
    # two full-batch steps: the second one's gradient has mu * (w1 - w_global) added
    mu, lr = 4.0, 0.2
    base = LocalSettings(epochs=2, batch_size=16, lr=lr, max_steps=2, full_batch=True)
    out, _, _ = _train(make_strategy("fedprox", mu=mu).configure(0, CLIENT, base))
    x, y = _shard()
    w0 = _logreg_start().buffer.astype(np.float64)
    w1 = w0 - lr * _loss_and_gradient(w0, x, y)[1]
    w2 = w1 - lr * (_loss_and_gradient(w1, x, y)[1] + mu * (w1 - w0))
    _assert_step(out.buffer, w2, w0)
    plain, _, _ = _train(replace(base, prox_mu=0.0))  # without the term the second step differs by lr*mu*(w1-w0)
    assert np.linalg.norm(plain.buffer - w2) == pytest.approx(lr * mu * np.linalg.norm(w1 - w0), rel=1e-3)


def test_fedprox_with_a_large_mu_keeps_the_local_model_within_its_bound() -> None:
    # f + (mu/2)||w - w_g||^2 is mu-strongly convex (f, the logreg loss, is convex), so its minimizer w*
    # lies within ||grad f(w_g)|| / mu of w_g, and full-batch gradient descent with lr <= 1 / (L + mu)
    # never moves away from w*: every iterate stays within 2 ||grad f(w_g)|| / mu of w_g
    # (L <= lambda_max(X'X / n) + 1 bounds the logreg loss's smoothness on this shard).
    x, y = _shard()
    w0 = _logreg_start().buffer.astype(np.float64)
    smooth = float(np.linalg.eigvalsh(x.T @ x / len(y)).max()) + 1.0
    mu = 20.0
    lr = 1.0 / (smooth + mu)
    base = LocalSettings(epochs=30, batch_size=16, lr=lr, full_batch=True)
    bound = 2 * np.linalg.norm(_loss_and_gradient(w0, x, y)[1]) / mu
    out, _, _ = _train(make_strategy("fedprox", mu=mu).configure(0, CLIENT, base))
    free, _, _ = _train(base)
    assert np.linalg.norm(out.buffer - w0) <= bound
    assert np.linalg.norm(free.buffer - w0) > 2 * bound  # without the term it goes well past it
