"""A streamed put: a slot's (or an aggregate task's) partial leaves for a Redis store slice by
slice while its last fold and its cast are still going (``WeightedMean.finish`` +
``ProxyRef.reply_stream``), the same bytes as the fold-then-put it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_csv, run_quietly
from flight_parsl.core.weights import FlatWeights, Layout
from flight_parsl.engine import checkpoint
from flight_parsl.fl.aggregate import CHUNK, WeightedMean
from flight_parsl.transfer import open_transfer
from flight_parsl.transfer.redis_server import count_keys
from flight_parsl.worker import tasks
from redis_fixtures import managed_redis  # noqa: F401 (fixture)


def _weights(seed: int, n: int = 5003) -> FlatWeights:
    layout = Layout.from_shapes([("a", (n - 3,), "float32"), ("b", (3,), "float32")])
    return FlatWeights(np.random.default_rng(seed).normal(size=n).astype(np.float32), layout)


@pytest.mark.parametrize("block", [1, 2, 3, 16])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_finish_gives_the_bytes_of_add_then_result(block, count) -> None:
    results = [_weights(seed) for seed in range(count)]
    weights = [1.0 if seed % 2 else 2.5 + seed for seed in range(count)]
    whole, sliced = WeightedMean(results[0], block), WeightedMean(results[0], block)
    for w, x in zip(results[:-1], weights[:-1]):
        whole.add(w, x)
        sliced.add(w, x)
    whole.add(results[-1], weights[-1])
    expected = whole.result().buffer.tobytes()
    for step in (1000, 5003, 1 << 20):
        again = WeightedMean(results[0], block)
        for w, x in zip(results[:-1], weights[:-1]):
            again.add(w, x)
        parts = again.finish(results[-1], weights[-1], step=step)
        assert again.total == whole.total and again.count == whole.count  # before the first slice
        assert b"".join(p.tobytes() for p in parts) == expected, step


def test_a_streamed_reply_is_the_bytes_of_a_reply(managed_redis) -> None:
    with open_transfer("redis", redis=str(managed_redis.address)) as t:
        ref = t.publish(_weights(0), 0)
        assert ref.streams()
        mean = WeightedMean(_weights(1))
        mean.add(_weights(1), 2.0)
        plain, _, _ = ref.reply(_reference(), recycle=True)
        streamed, ser_s, put_s = ref.reply_stream(_weights(1).layout, mean.finish(_weights(2), 3.0, step=1000))
        assert streamed.nbytes == plain.nbytes == len(_weights(0).to_bytes())
        assert t.collect(streamed).buffer.tobytes() == t.collect(plain).buffer.tobytes()
        t.end_round(0)
    assert count_keys(managed_redis.address) == 0  # no temporary key left behind


def _reference() -> FlatWeights:
    mean = WeightedMean(_weights(1))
    mean.add(_weights(1), 2.0)
    mean.add(_weights(2), 3.0)
    return mean.result()


@pytest.mark.parametrize("topology", ["flat", "tree:3"])
def test_a_run_with_streamed_puts_is_the_run_without_them_bit_for_bit(
    make_config, tmp_path, managed_redis, monkeypatch, topology
) -> None:
    """Training through Redis, clients packed into tasks (and aggregate tasks on a tree): the
    same test losses and global model with the streamed put as with the fold-then-put."""
    common = ("transfer.kind=redis", f"transfer.redis={managed_redis.address}", "model.name=mlp", "train.epochs=1",
              "slots=2", f"topology={topology}")
    streamed_puts = []  # folds finished as they were sent
    real = WeightedMean.finish

    def counted(self, weights, weight, step=CHUNK):
        streamed_puts.append(1)
        return real(self, weights, weight, step)

    monkeypatch.setattr(WeightedMean, "finish", counted)
    streamed = run_quietly(make_config, *common, workers=8, rounds=2, out=str(tmp_path / "streamed"))
    count = len(streamed_puts)
    assert count >= 4  # two rounds of at least two tasks (+ aggregate tasks on the tree)
    monkeypatch.setattr(tasks, "_streams", lambda ref, partial: False)
    plain = run_quietly(make_config, *common, workers=8, rounds=2, out=str(tmp_path / "plain"))
    assert len(streamed_puts) == count  # none more
    a, b = checkpoint.load(streamed), checkpoint.load(plain)
    assert a is not None and b is not None
    assert a.weights.buffer.tobytes() == b.weights.buffer.tobytes()
    losses = [[r["test_loss"] for r in read_csv(run / "rounds.csv")] for run in (streamed, plain)]
    assert losses[0] == losses[1] and all(x != "" for x in losses[0])
    assert count_keys(managed_redis.address) == 0


@pytest.mark.parametrize("block", [1, 16])
def test_a_reserved_mean_is_the_same_mean(block) -> None:
    results = [_weights(seed) for seed in range(3)]
    plain, reserved = WeightedMean(results[0], block), WeightedMean(results[0], block)
    reserved.reserve()
    for i, w in enumerate(results):
        plain.add(w, 1.0 + i)
        reserved.add(w, 1.0 + i)
    assert plain.result().buffer.tobytes() == reserved.result().buffer.tobytes()
