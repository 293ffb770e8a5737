"""The coordinator folds a result as it reads it from Redis (``ProxyTransfer.collect_fold``): slice by
slice into the weighted mean, through a small scratch instead of a model-sized receive buffer,
with the bytes of a read-then-add."""

from __future__ import annotations

import os

import numpy as np
import pytest
import redis
from conftest import read_csv, run_quietly
from flight_parsl.core.errors import TransferError
from flight_parsl.core.memory import peak_rss_mb, reset_peak_rss, rss_mb
from flight_parsl.core.weights import FlatWeights, Layout, PayloadSlices
from flight_parsl.engine import checkpoint
from flight_parsl.fl.aggregate import WeightedMean
from flight_parsl.transfer import bulk, open_transfer
from flight_parsl.transfer.bulk import BulkReader
from flight_parsl.transfer.proxy import ProxyTransfer
from flight_parsl.transfer.redis_server import count_keys
from redis_fixtures import managed_redis  # noqa: F401 (fixture)


def _weights(seed: int, n: int = 5003, name: str = "a") -> FlatWeights:
    layout = Layout.from_shapes([(name, (n - 3,), "float32"), ("b", (3,), "float32")])
    return FlatWeights(np.random.default_rng(seed).normal(size=n).astype(np.float32), layout)


def _cut(data: bytes, step: int) -> list[tuple[int, memoryview]]:
    return [(at, memoryview(data)[at : at + step]) for at in range(0, len(data), step)]


@pytest.mark.parametrize("step", [4, 12, 64, 100, 4096, 1 << 20])
def test_payload_slices_hand_on_every_value_once_in_order_however_the_bytes_are_cut(step) -> None:
    """Slices shorter than the head (it is gathered), cut inside it, or holding all of it."""
    weights = _weights(0)
    data = weights.to_bytes()
    seen: list[str] = []
    out = np.full(weights.layout.size, np.nan, dtype=np.float32)

    def values(at: int, part: np.ndarray) -> None:
        assert np.isnan(out[at : at + part.size]).all()  # each element once
        out[at : at + part.size] = part

    payload = PayloadSlices(lambda layout: seen.append("layout") if layout == weights.layout else None, values)
    for at, view in _cut(data, step):
        payload(at, view)
    assert seen == ["layout"] and payload.done() == weights.layout
    assert out.tobytes() == weights.buffer.tobytes()


def test_payload_slices_refuse_another_layout_before_any_value_and_a_short_payload_at_the_end() -> None:
    data = _weights(0).to_bytes()
    got: list[int] = []

    def refuse(layout: Layout) -> None:
        raise ValueError("result weights do not match the global model's layout")

    payload = PayloadSlices(refuse, lambda at, part: got.append(at))
    with pytest.raises(ValueError, match="do not match"):
        for at, view in _cut(data, 1 << 20):
            payload(at, view)
    assert got == []
    short = PayloadSlices(lambda layout: None, lambda at, part: got.append(part.size))
    for at, view in _cut(data[:-400], 4096):
        short(at, view)
    with pytest.raises(ValueError, match="ended before"):
        short.done()
    with pytest.raises(TypeError, match="magic"):
        PayloadSlices(lambda layout: None, lambda at, part: None)(0, memoryview(b"not a payload at all"))
    with pytest.raises(ValueError, match="in order"):
        again = PayloadSlices(lambda layout: None, lambda at, part: None)
        again(0, memoryview(data)[:8])
        again(16, memoryview(data)[16:4096])


def test_a_read_in_slices_hands_on_the_value_exactly_without_a_buffer_of_its_size(managed_redis) -> None:
    client = redis.Redis(managed_redis.address.host, managed_redis.address.port)
    reader = BulkReader(managed_redis.address.host, managed_redis.address.port, timeout=5.0)
    try:
        for size in (1, bulk.CHUNK - 1, bulk.CHUNK, 3 * bulk.CHUNK + 12345):
            value = os.urandom(size)
            client.set("k", value)
            parts: list[tuple[int, bytes]] = []
            assert reader.get_slices("k", lambda at, view: parts.append((at, bytes(view)))) == size
            assert [at for at, _ in parts] == list(range(0, size, bulk.CHUNK))
            assert b"".join(p for _, p in parts) == value, size
        client.set("empty", b"")
        assert reader.get_slices("empty", lambda at, view: None) == 0
        assert reader.get_slices("missing", lambda at, view: None) is None
        size = 100 * 2**20
        client.set("big", os.urandom(size))
        total = [0]
        assert reset_peak_rss()
        before = rss_mb()
        assert reader.get_slices("big", lambda at, view: total.__setitem__(0, total[0] + len(view))) == size
        assert total[0] == size
        assert peak_rss_mb() - before < 0.2 * size / 2**20  # a read into one buffer: a whole payload
    finally:
        reader.close()
        client.close()


@pytest.mark.parametrize("block", [1, 16])
def test_a_result_folded_as_it_is_read_is_the_bytes_of_a_read_then_add(managed_redis, monkeypatch, block) -> None:
    monkeypatch.setattr(bulk, "CHUNK", 4096)  # many slices, the head inside the first
    results = [_weights(seed) for seed in range(1, 4)]
    with open_transfer("redis", redis=str(managed_redis.address)) as t:
        assert isinstance(t, ProxyTransfer)
        ref = t.publish(_weights(0), 0)
        refs = [ref.reply(w, recycle=True)[0] for w in results]
        plain, sliced = WeightedMean(results[0], block), WeightedMean(results[0], block)
        for i, (r, w) in enumerate(zip(refs, results)):
            plain.add(t.read(r), 1.0 if i == 1 else 2.5 + i)
            assert t.collect_fold(r, sliced, 1.0 if i == 1 else 2.5 + i) >= 0.0
        assert sliced.count == plain.count == 3 and sliced.total == plain.total
        assert sliced.result().buffer.tobytes() == plain.result().buffer.tobytes()
        other = ref.reply(_weights(5, name="other"), recycle=True)[0]
        with pytest.raises(ValueError, match="do not match"):  # refused before any value is folded
            t.collect_fold(other, sliced, 1.0)
        assert sliced.count == 3 and sliced.result().buffer.tobytes() == plain.result().buffer.tobytes()
        t.discard(refs[0])
        with pytest.raises(TransferError, match="missing"):
            t.collect_fold(refs[0], sliced, 1.0)
        t.end_round(0)
    assert count_keys(managed_redis.address) == 0


def test_a_run_folding_as_it_reads_is_the_run_reading_then_adding_bit_for_bit(
    make_config, tmp_path, managed_redis, monkeypatch
) -> None:
    common = ("transfer.kind=redis", f"transfer.redis={managed_redis.address}", "model.name=mlp", "train.epochs=1",
              "slots=2")
    folds: list[int] = []
    real = ProxyTransfer.collect_fold

    def counted(self, ref, into, weight):
        folds.append(1)
        return real(self, ref, into, weight)

    monkeypatch.setattr(ProxyTransfer, "collect_fold", counted)
    sliced = run_quietly(make_config, *common, workers=6, rounds=2, out=str(tmp_path / "sliced"))
    assert len(folds) >= 4  # every task of both rounds
    monkeypatch.delattr(ProxyTransfer, "collect_fold")
    plain = run_quietly(make_config, *common, workers=6, rounds=2, out=str(tmp_path / "plain"))
    a, b = checkpoint.load(sliced), checkpoint.load(plain)
    assert a is not None and b is not None
    assert a.weights.buffer.tobytes() == b.weights.buffer.tobytes()
    rows = [read_csv(run / "rounds.csv") for run in (sliced, plain)]
    assert [r["test_loss"] for r in rows[0]] == [r["test_loss"] for r in rows[1]]
    tasks = read_csv(sliced / "tasks.csv")
    assert all(float(r["task_collect_s"]) >= 0 for r in tasks if r["kind"] == "train")
    assert count_keys(managed_redis.address) == 0
