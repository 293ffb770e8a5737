"""Update codecs: round trips, byte counts, error feedback, folding, the engine path, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conftest import read_csv, read_summary
from flight_parsl.config.experiment import build_config, config_hash
from flight_parsl.core.errors import ConfigError
from flight_parsl.core.types import ClientOutcome, LocalSettings, Workload
from flight_parsl.core.weights import FlatWeights, Layout
from flight_parsl.engine import checkpoint
from flight_parsl.engine.progress import Progress
from flight_parsl.engine.runner import run_experiment
from flight_parsl.fl.strategies import FedAvg
from flight_parsl.transfer import codecs
from flight_parsl.transfer.codecs import Compression, encode_feedback, is_encoded, make_codec, pack, unpack
from flight_parsl.transfer.inline import InlineRef
from flight_parsl.transfer.state import DirState, feedback_key
from flight_parsl.worker import tasks
from redis_fixtures import managed_redis  # noqa: F401 (fixture)

N = 1000  # not a multiple of the int8 block


def _values(seed: int = 0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.01


@pytest.mark.parametrize(
    ("spec", "nbytes"),
    [("none", 4 * N), ("fp16", 2 * N), ("int8", N + 4 * math.ceil(N / 256)),
     ("topk:0.1", 4 * 100 + N // 8),  # values, then a bitmap: smaller than 100 indices
     ("topk:0.01", 8 * 10),  # values, then 10 uint32 indices
     ("topk:1", 4 * N)],
)
def test_each_codec_keeps_its_error_bound_and_byte_count(spec: str, nbytes: int) -> None:
    codec = make_codec(spec, 256)
    x = _values()
    payload = codec.encode(x)
    assert len(payload) == nbytes
    y = codec.decode(memoryview(payload), N)
    assert y.dtype == np.float32 and y.shape == (N,)
    err = float(np.max(np.abs(x - y)))
    assert err <= codec.bound(x)
    lossless = spec in ("none", "topk:1")
    assert (err == 0) == lossless  # the lossy ones do lose something: the bound is not vacuous
    if not lossless:
        assert codec.bound(x) < float(np.max(np.abs(x)))


def test_the_bounds_are_what_the_docs_say() -> None:
    x = _values()
    top = float(np.max(np.abs(x)))
    assert make_codec("fp16").bound(x) == pytest.approx(top * 2**-11 + 2**-25)
    assert make_codec("int8", 64).bound(x) == pytest.approx(top / 254 + top * 2**-20)
    kept = np.sort(np.abs(x))[::-1]
    assert make_codec("topk:0.1").bound(x) == kept[100]  # the largest value left out
    # int8 block size is a setting: a smaller block costs more scales
    assert len(make_codec("int8", 64).encode(x)) == N + 4 * math.ceil(N / 64)


@pytest.mark.parametrize(("n", "spec"), [(50, "topk:0.04"), (1001, "topk:0.002")])  # a bitmap; indices
def test_top_k_keeps_the_largest_magnitudes(n: int, spec: str) -> None:
    x = np.zeros(n, dtype=np.float32)
    x[[3, 17, 40]] = [-5.0, 2.0, 4.0]
    codec = make_codec(spec)
    payload = codec.encode(x)
    assert len(payload) == codec.nbytes(n) == (4 * 2 + math.ceil(n / 8) if n == 50 else 8 * 3)
    y = codec.decode(memoryview(payload), n)
    kept = [3, 40] if n == 50 else [3, 17, 40]
    assert np.flatnonzero(y).tolist() == kept and y[3] == -5.0 and y[40] == 4.0


def test_the_envelope_travels_through_a_channel_and_decodes_to_the_model_layout() -> None:
    layout = Layout.from_shapes([("w", (10, 50), "float32"), ("b", (500,), "float32")])
    weights = FlatWeights(_values(), layout)
    for spec in ("fp16", "int8", "topk:0.1"):
        codec = make_codec(spec, 128)
        enc = codecs.encode(codec, weights, 128)
        assert is_encoded(enc) and not is_encoded(weights)
        ref = InlineRef(enc.to_bytes())  # what a task sends: the channel sees a FlatWeights
        got, _, _, fetched = ref.resolve()
        assert fetched == ref.nbytes < weights.nbytes
        out = unpack(got)
        assert out.layout == layout
        expected = codec.decode(memoryview(codec.encode(weights.buffer)), N)
        np.testing.assert_array_equal(out.buffer, expected)
    assert unpack(weights) is weights


def test_error_feedback_keeps_what_was_left_out() -> None:
    codec = make_codec("topk:0.05")
    u1, u2 = _values(1), _values(2)
    p1, r1 = encode_feedback(codec, u1, None)
    sent1 = codec.decode(memoryview(p1), N)
    np.testing.assert_allclose(sent1 + r1, u1, atol=2e-8)
    p2, r2 = encode_feedback(codec, u2, r1)
    sent2 = codec.decode(memoryview(p2), N)
    # nothing is lost over two rounds: what was sent plus what is kept is all of both updates
    np.testing.assert_allclose(sent1 + sent2 + r2, u1 + u2, atol=1e-7)
    np.testing.assert_array_equal(sent2, codec.decode(memoryview(codec.encode(u2 + r1)), N))


def test_a_registered_codec_is_usable_by_name_and_listed() -> None:
    class Halves:
        sparse = False

        def __init__(self, arg: str | None) -> None:
            self.name = "halves" if arg is None else f"halves:{arg}"

        def encode(self, values: np.ndarray) -> bytes:
            return (values / 2).astype(np.float32).tobytes()

        def decode(self, payload: memoryview, size: int) -> np.ndarray:
            return np.frombuffer(payload, dtype=np.float32, count=size) * 2

        def bound(self, values: np.ndarray) -> float:
            return 0.0

    codecs.register_codec("halves", lambda arg, block: Halves(arg))
    try:
        assert "halves" in codecs.codec_names()
        assert isinstance(make_codec("halves"), codecs.Codec)
        cfg = build_config(overrides=["transfer.codec=halves", "backend=thread"])
        assert cfg.transfer.codec == "halves"
        with pytest.raises(ConfigError, match="valid codecs: .*halves"):
            build_config(overrides=["transfer.codec=quarters"])
    finally:
        codecs._REGISTRY.pop("halves")
        codecs.make_codec.cache_clear()
    with pytest.raises(ValueError):
        codecs.register_codec("bad:name", lambda arg, block: Halves(arg))


# --- the task path --------------------------------------------------------------------

LAYOUT = Layout.from_shapes([("w", (N,), "float32")])
WORK = Workload("none", None, "digits", None, None, 4, 0)  # type: ignore[arg-type]  # _train_one is replaced
SETTINGS = LocalSettings(epochs=1, batch_size=1, lr=0.1)


def _fake_training(monkeypatch, deltas: dict[tuple[int, int], np.ndarray], samples: dict[int, int]) -> None:
    """Each client "trains" to the global model plus a known delta (per round)."""

    def train_one(weights, workload, settings, client, round_idx, state):
        out = weights.like(weights.buffer + deltas[(round_idx, client)])
        return out, ClientOutcome(client, samples.get(client, 1), 0.0, 0.0, 0.0)

    monkeypatch.setattr(tasks, "_train_one", train_one)


def _sent(result) -> list[np.ndarray]:
    return [unpack(ref.resolve()[0]).buffer for ref, _ in result.outputs]


def test_a_clients_residual_after_round_1_is_added_in_round_2(monkeypatch, tmp_path) -> None:
    codec = make_codec("topk:0.1")
    d1, d2 = _values(1), _values(2)
    _fake_training(monkeypatch, {(0, 3): d1, (1, 3): d2}, {})
    state = DirState(str(tmp_path))
    comp = Compression("topk:0.1", feedback=True)
    global_w = FlatWeights(_values(9), LAYOUT)
    ref = InlineRef(global_w.to_bytes())
    r1_res = tasks.train_task(ref, 0, "coordinator", [(3, SETTINGS)], WORK, FedAvg(), state, compression=comp)
    (sent1,) = _sent(r1_res)
    residual1 = np.frombuffer(state.get(feedback_key(3)), dtype=np.float32)
    np.testing.assert_allclose(sent1, codec.decode(memoryview(codec.encode(d1)), N), atol=2e-8)
    np.testing.assert_allclose(residual1, d1 - sent1, atol=2e-8)
    assert np.count_nonzero(residual1) == N - 100 and state.get(3) is None  # its own blob is untouched
    r2_res = tasks.train_task(ref, 1, "coordinator", [(3, SETTINGS)], WORK, FedAvg(), state, compression=comp)
    (sent2,) = _sent(r2_res)
    expected = codec.decode(memoryview(codec.encode(d2 + residual1)), N)
    np.testing.assert_allclose(sent2, expected, atol=1e-7)
    assert not np.allclose(sent2, codec.decode(memoryview(codec.encode(d2)), N))  # the residual mattered
    assert r1_res.bytes_out == r2_res.bytes_out < len(global_w.to_bytes()) / 3  # 800 payload bytes and a header
    assert r1_res.encode_s > 0 and r1_res.decode_s == 0


def test_a_packed_task_folds_first_and_its_clients_keep_the_partials_residual(monkeypatch, tmp_path) -> None:
    codec = make_codec("topk:0.1")
    d = {c: _values(10 + c) for c in (0, 1)}
    w = {0: 30, 1: 10}
    _fake_training(monkeypatch, {(0, c): d[c] for c in d}, w)
    state = DirState(str(tmp_path))
    ref = InlineRef(FlatWeights(_values(9), LAYOUT).to_bytes())
    res = tasks.train_task(ref, 0, "coordinator", [(0, SETTINGS), (1, SETTINGS)], WORK, FedAvg(), state,
                           compression=Compression("topk:0.1", feedback=True))
    (sent,) = _sent(res)  # one encoded partial for two clients
    assert res.outputs[0][1] == 40
    partial = (30 * d[0].astype(np.float64) + 10 * d[1]) / 40
    np.testing.assert_allclose(sent, codec.decode(memoryview(codec.encode(partial.astype(np.float32))), N), atol=1e-8)
    r = {c: np.frombuffer(state.get(feedback_key(c)), dtype=np.float32) for c in (0, 1)}
    # weighted as in the fold, the residuals add up to what the task did not send
    np.testing.assert_allclose((30 * r[0] + 10 * r[1]) / 40, partial - sent, atol=1e-7)


def test_an_aggregators_residual_after_round_1_is_added_in_round_2(tmp_path) -> None:
    """An aggregator keeps what its encode left out under its own key and version, adds it to
    its next partial, and a retry reads the version its last accepted attempt wrote."""
    from flight_parsl.transfer.state import AggregatorFeedback, aggregator_key

    codec = make_codec("topk:0.1")
    comp = Compression("topk:0.1", feedback=True)
    state = DirState(str(tmp_path))
    key = aggregator_key(2)
    assert key < feedback_key(10**9)  # below every client's residual

    def aggregate(round_idx: int, read: str | None, write: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        kids = [_values(seed), _values(seed + 1)]
        children = [(InlineRef(FlatWeights(k, LAYOUT).to_bytes()), 1.0) for k in kids]
        res = tasks.aggregate_task(children, FedAvg(), round_idx, "agg-2-0", comp,
                                   AggregatorFeedback(state, key, read, write))
        return unpack(res.outputs[0][0].resolve()[0]).buffer, (kids[0].astype(np.float64) + kids[1]) / 2

    sent1, p1 = aggregate(0, None, "1.0", 50)
    residual1 = np.frombuffer(state.get(key, "1.0"), dtype=np.float32)
    np.testing.assert_allclose(residual1, p1 - sent1, atol=1e-7)
    assert state.get(key) is None and state.get(feedback_key(2)) is None  # its own key, versioned
    sent2, p2 = aggregate(1, "1.0", "2.0", 60)
    expected = codec.decode(memoryview(codec.encode((p2 + residual1).astype(np.float32))), N)
    np.testing.assert_allclose(sent2, expected, atol=1e-7)
    assert not np.allclose(sent2, codec.decode(memoryview(codec.encode(p2.astype(np.float32))), N))
    retry, _ = aggregate(1, "1.0", "2.1", 60)  # the first attempt's residual (2.0) is not read
    np.testing.assert_array_equal(retry, sent2)


@pytest.mark.parametrize("spec", ["fp16", "int8"])
def test_pre_aggregated_and_per_client_compressed_rounds_agree_within_the_bound(monkeypatch, spec) -> None:
    codec = make_codec(spec, 256)
    clients = [0, 1, 2, 3]
    d = {c: _values(20 + c) * (1 + c) for c in clients}
    w = {c: 10 + 5 * c for c in clients}
    _fake_training(monkeypatch, {(0, c): d[c] for c in clients}, w)
    ref = InlineRef(FlatWeights(_values(9), LAYOUT).to_bytes())
    comp = Compression(spec)
    pairs = [(c, SETTINGS) for c in clients]
    packed = tasks.train_task(ref, 0, "coordinator", pairs, WORK, FedAvg(), None, compression=comp)
    single = tasks.train_task(ref, 0, "coordinator", pairs, WORK, None, None, compression=comp)
    assert len(packed.outputs) == 1 and len(single.outputs) == 4
    assert packed.bytes_out * 4 == single.bytes_out
    total = sum(w.values())
    pre = _sent(packed)[0]
    per = sum(w[c] * s.astype(np.float64) for c, s in zip(clients, _sent(single))) / total
    exact = sum(w[c] * d[c].astype(np.float64) for c in clients) / total
    bound_pre = codec.bound(exact.astype(np.float32))
    bound_per = max(codec.bound(d[c]) for c in clients)
    assert np.max(np.abs(pre - exact)) <= bound_pre * (1 + 1e-6)
    assert np.max(np.abs(per - exact)) <= bound_per * (1 + 1e-6)
    assert np.max(np.abs(pre - per)) <= (bound_pre + bound_per) * (1 + 1e-6)
    # an aggregator decodes its children, folds, and encodes what it sends up
    children = [(r, wt) for r, wt in single.outputs]
    up = tasks.aggregate_task(list(children), FedAvg(), 0, "agg", comp)
    agg = unpack(up.outputs[0][0].resolve()[0]).buffer
    assert up.outputs[0][1] == total and up.bytes_in == single.bytes_out and up.bytes_out == packed.bytes_out
    assert np.max(np.abs(agg - per)) <= codec.bound(per.astype(np.float32)) * (1 + 1e-6)
    assert up.encode_s > 0 and up.decode_s > 0


# --- the engine ------------------------------------------------------------------------


def _final(out: Path) -> np.ndarray:
    point = checkpoint.load(out)
    assert point is not None
    return np.array(point.weights.buffer)


def test_codec_none_is_the_run_without_a_codec_and_fp16_folds_within_its_bound(make_config, tmp_path) -> None:
    def run(name: str, *overrides: str) -> Path:
        cfg = make_config(*overrides, workers=4, rounds=1, out=str(tmp_path / name))
        return run_experiment(cfg, Progress(1, enabled=False))

    plain = run("plain")
    none = run("none", "transfer.codec=none", "transfer.codec_down=none", "transfer.codec_block=64")
    np.testing.assert_array_equal(_final(plain), _final(none))  # bit for bit
    rounds = read_csv(none / "rounds.csv")
    assert float(rounds[0]["compression_ratio"]) == 1.0
    assert all(float(t["task_encode_s"]) == 0 == float(t["task_decode_s"]) for t in read_csv(none / "tasks.csv"))
    pre = run("pre", "transfer.codec=fp16")
    per = run("per", "transfer.codec=fp16", "plan.preaggregate=false")
    from flight_parsl.engine.context import prepare

    initial = prepare(make_config(workers=4, rounds=1)).initial.buffer  # the seeded initial model
    step = float(np.max(np.abs(_final(plain) - initial)))
    # every sent value is within 2**-11 relative of a delta; deltas of one client stay within a few mean steps
    for out in (pre, per):
        assert np.max(np.abs(_final(out) - _final(plain))) <= 8 * step * 2**-11 + 1e-6
    assert not np.array_equal(_final(pre), _final(plain))
    tasks_pre = read_csv(pre / "tasks.csv")
    ratio = float(read_csv(pre / "rounds.csv")[0]["compression_ratio"])
    assert 1.9 < ratio < 2.0  # fp16: half the bytes, plus the envelope's header
    assert all(float(t["task_encode_s"]) > 0 for t in tasks_pre)
    assert int(tasks_pre[0]["task_bytes_out"]) < int(read_csv(plain / "tasks.csv")[0]["task_bytes_out"]) / 1.9


def test_error_feedback_over_redis_on_a_tree_with_an_encoded_broadcast(make_config, managed_redis, tmp_path) -> None:
    import redis as redis_py

    from flight_parsl.transfer.redis_server import count_keys

    cfg = make_config("transfer.kind=redis", f"transfer.redis={managed_redis.address}", "transfer.codec=topk:0.1",
                      "transfer.error_feedback=true", "transfer.codec_down=int8", "topology=tree:2",
                      "broadcast=tree", "plan.clients_per_task=1", workers=4, rounds=2)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds, rows = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert [r["participants"] for r in rounds] == ["4", "4"] and float(rounds[-1]["test_acc"]) > 0.5
    assert 7.2 < float(rounds[0]["compression_ratio"]) < 7.7  # 10% kept: 4 bytes a kept value and a bitmap
    kinds = {t["kind"] for t in rows}
    assert kinds == {"train", "aggregate", "relay"}
    train = [t for t in rows if t["kind"] == "train"]
    agg = [t for t in rows if t["kind"] == "aggregate"]
    assert all(float(t["task_decode_s"]) > 0 and float(t["task_encode_s"]) > 0 for t in train + agg)
    model_bytes = read_summary(out)["model_bytes"]
    broadcast = {int(t["task_bytes_in"]) for t in train} - {0}  # 0: the slot's store had it cached
    assert len(broadcast) == 1 and 0.25 * model_bytes < broadcast.pop() < 0.26 * model_bytes  # int8
    up = {int(t["task_bytes_out"]) for t in train + agg}
    assert len(up) == 1 and all(int(t["task_bytes_in"]) == 2 * min(up) for t in agg)  # two top-k children each
    assert count_keys(managed_redis.address) == 0  # residuals and results are gone with the run
    assert redis_py.Redis(managed_redis.address.host, managed_redis.address.port).dbsize() == 0


@pytest.mark.parametrize("spec", ["int8", "topk:0.2"])
def test_a_two_level_tree_decodes_folds_and_encodes_again_at_each_aggregator(monkeypatch, make_config, tmp_path,
                                                                              spec) -> None:
    """tree:3 over 8 clients: 4 aggregators over 2 clients each, 2 over those, then the root. Each
    aggregator's partial is the fold of its children's decoded updates, encoded again: the round's
    model is what that computation gives, within the codecs' bounds of the exact mean and of a flat
    per-client compressed round, and every aggregator sends up one compressed update."""
    from flight_parsl.engine.context import prepare

    clients = range(8)
    base = make_config("train.mode=none", "model.name=logreg", workers=8, rounds=1)
    initial = prepare(base).initial
    n = initial.buffer.size
    d = {c: _values(40 + c, n) * (1 + c % 3) for c in clients}
    samples = {c: 1 + c for c in clients}
    _fake_training(monkeypatch, {(0, c): d[c] for c in clients}, samples)
    codec = make_codec(spec, 256)

    def run(name: str, *overrides: str) -> tuple[np.ndarray, Path]:
        cfg = make_config("train.mode=none", "model.name=logreg", "plan.clients_per_task=1", *overrides,
                          workers=8, rounds=1, out=str(tmp_path / name))
        out = run_experiment(cfg, Progress(1, enabled=False))
        return _final(out) - initial.buffer, out

    def sent(x: np.ndarray) -> np.ndarray:
        return codec.decode(memoryview(codec.encode(x.astype(np.float32))), n).astype(np.float64)

    def fold(parts: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, float]:
        total = sum(w for _, w in parts)
        return sum(w * x for x, w in parts) / total, total

    leaves = [(sent(d[c]), float(samples[c])) for c in clients]
    level2 = [fold(leaves[i : i + 2]) for i in range(0, 8, 2)]
    level1 = [fold([(sent(p), w) for p, w in level2[i : i + 2]]) for i in (0, 2)]
    expected, _ = fold([(sent(p), w) for p, w in level1])
    exact, _ = fold([(d[c].astype(np.float64), float(samples[c])) for c in clients])

    tree, out = run("tree", f"transfer.codec={spec}", "topology=tree:3")
    flat, flat_out = run("flat", f"transfer.codec={spec}", "plan.preaggregate=false")
    np.testing.assert_allclose(tree, expected, atol=1e-6)  # decode, fold, encode: at every aggregator
    bound = 3 * max(codec.bound(d[c]) for c in clients) * (1 + 1e-6)  # three encodes on the way up
    if spec == "int8":  # a partial's absmax is at most its children's: one bound per level
        assert np.max(np.abs(tree - exact)) <= bound
        assert np.max(np.abs(tree - flat)) <= bound + bound / 3
    else:  # top-k's bound is what it left out: of each level's own partial
        bounds = [max(codec.bound(d[c]) for c in clients), max(codec.bound(p.astype(np.float32)) for p, _ in level2),
                  max(codec.bound(p.astype(np.float32)) for p, _ in level1)]
        assert np.max(np.abs(tree - exact)) <= sum(bounds) * (1 + 1e-6)
    assert not np.allclose(tree, exact, atol=1e-9)
    rows = read_csv(out / "tasks.csv")
    train = [t for t in rows if t["kind"] == "train"]
    aggs = [t for t in rows if t["kind"] == "aggregate"]
    assert len(train) == 8 and len(aggs) == 6
    one = {int(t["task_bytes_out"]) for t in train}  # one compressed update (fixed size for both codecs)
    assert len(one) == 1 and one.pop() < 0.6 * len(initial.to_bytes())
    up = int(train[0]["task_bytes_out"])
    assert all(int(t["task_bytes_out"]) == up and int(t["task_bytes_in"]) == 2 * up for t in aggs)
    assert all(float(t["task_decode_s"]) > 0 and float(t["task_encode_s"]) > 0 for t in aggs)


@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff"])
def test_async_updates_travel_encoded_and_fold_within_the_codecs_bound(make_config, tmp_path, strategy) -> None:
    """FedBuff folds the decoded delta, FedAsync mixes in the client's model rebuilt on the exact
    weights of the version it trained from: the final model stays within the codec's relative error."""
    def run(name: str, *overrides: str) -> Path:
        cfg = make_config("mode=async", f"strategy.name={strategy}", "model.name=logreg", "slots=1", *overrides,
                          workers=4, rounds=1, out=str(tmp_path / name))
        return run_experiment(cfg, Progress(1, enabled=False))

    plain = run("plain")
    from flight_parsl.engine.context import prepare

    initial = prepare(make_config("model.name=logreg", workers=4, rounds=1)).initial.buffer
    step = float(np.max(np.abs(_final(plain) - initial)))
    plain_bytes = int(read_csv(plain / "tasks.csv")[0]["task_bytes_out"])
    for spec, relative, smaller in (("fp16", 2.0**-11, 1.5), ("int8", 1 / 254, 2.5)):  # logreg: the header counts
        out = run(spec, f"transfer.codec={spec}")
        error = float(np.max(np.abs(_final(out) - _final(plain))))
        assert 0 < error <= 4 * relative * step, (spec, error / step)
        rows = read_csv(out / "tasks.csv")
        assert len(rows) == 4 and all(float(t["task_encode_s"]) > 0 for t in rows)
        assert all(int(t["task_bytes_out"]) * smaller < plain_bytes for t in rows)
        assert float(read_csv(out / "rounds.csv")[0]["compression_ratio"]) > smaller


def test_async_error_feedback_per_client_with_an_encoded_broadcast(make_config, tmp_path) -> None:
    cfg = make_config("mode=async", "strategy.name=fedasync", "model.name=logreg", "slots=2",
                      "transfer.codec=topk:0.1", "transfer.error_feedback=true", "transfer.codec_down=int8",
                      workers=4, rounds=3)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds, rows = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert len(rows) == 12 and float(rounds[-1]["test_acc"]) > 0.8
    assert all(float(t["task_decode_s"]) > 0 and float(t["task_encode_s"]) > 0 for t in rows)
    point = checkpoint.load(out)
    assert point is not None and point.loop["residuals"].keys() == {0, 1, 2, 3}  # one residual per client
    for c, (version, blob) in point.loop["residuals"].items():
        residual = np.frombuffer(blob, dtype=np.float32)
        assert residual.size == point.weights.buffer.size and np.count_nonzero(residual) > 0.8 * residual.size
    assert read_summary(out)["status"] == "completed"


@pytest.mark.parametrize("strategy", ["proxyfl", "fedavg"])
def test_decentralized_peers_exchange_encoded_models(make_config, tmp_path, strategy) -> None:
    """ProxyFL's proxies (FedAvg's shared models and their mean, on the coordinator) cross encoded:
    a byte a value with int8, decoded before a peer's step, accuracy as without."""
    peer = ["partition.kind=majority", "partition.samples_per_client=60", "peer.test_samples=20", "peer.batch_size=20"]

    def run(name: str, *overrides: str) -> Path:
        cfg = make_config("mode=decentralized", f"strategy.name={strategy}", "model.name=logreg", "slots=2", *peer,
                          *overrides, workers=4, rounds=3, out=str(tmp_path / name))
        return run_experiment(cfg, Progress(cfg.rounds, enabled=False))

    plain, int8 = run("plain"), run("int8", "transfer.codec=int8")
    rows = {c: read_csv(out / "tasks.csv") for c, out in (("plain", plain), ("int8", int8))}
    for p, q in zip(rows["plain"], rows["int8"]):  # 1 byte a value; logreg is small: the header counts
        assert int(q["task_bytes_out"]) < int(p["task_bytes_out"]) / 2.5
        assert float(q["task_encode_s"]) > 0 and float(p["task_encode_s"]) == 0
    assert all(float(q["task_decode_s"]) > 0 for q in rows["int8"] if q["round"] != "1")  # round 1 received none
    accs = [[float(r["test_acc"]) for r in read_csv(out / "rounds.csv")] for out in (plain, int8)]
    assert np.allclose(accs[0], accs[1], atol=0.05)


# --- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["transfer.codec=zstd"], "'transfer.codec' = 'zstd': unknown codec; valid codecs: fp16, int8, none, topk:FRACTION"),
        (["transfer.codec=topk:0"], "FRACTION in \\(0, 1\\]"),
        (["transfer.codec=topk:1.5"], "FRACTION in \\(0, 1\\]"),
        (["transfer.codec=topk"], "top-k needs the FRACTION"),
        (["transfer.codec=int8:3"], "its block size is transfer.codec_block"),
        (["transfer.codec_block=0"], "transfer.codec_block"),
        (["transfer.codec_down=topk:0.1"], "'transfer.codec_down' = 'topk:0.1': a sparse codec"),
        (["transfer.error_feedback=true"], "'transfer.error_feedback' = True: error feedback keeps what a lossy"),
        (["transfer.codec=topk:0.1", "transfer.error_feedback=true", "transfer.kind=parsl"],
         "give transfer.file_dir"),
        (["strategy.name=fedmedian", "transfer.codec=fp16"], "strategy 'fedmedian' is not linear"),
        (["mode=decentralized", "strategy.name=proxyfl", "transfer.codec=topk:0.1"], "exchange whole proxy models"),
        (["mode=decentralized", "strategy.name=proxyfl", "transfer.codec_down=fp16"], "has no broadcast"),
        (["mode=decentralized", "strategy.name=proxyfl", "transfer.codec=int8", "transfer.error_feedback=true"],
         "not an update left out"),
    ],
)
def test_bad_codec_settings_fail_at_config_time_with_one_message(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(values=[{"backend": "thread"}], overrides=overrides)


def test_codec_keys_at_their_defaults_keep_old_config_hashes() -> None:
    base = build_config(values=[{"backend": "thread"}])
    same = build_config(values=[{"backend": "thread"}], overrides=[
        "transfer.codec=none", "transfer.codec_down=none", "transfer.codec_block=256", "transfer.error_feedback=false"])
    assert config_hash(base) == config_hash(same) == "72531f440930ec05"  # as before the codecs (test_config_grammar)
    other = build_config(values=[{"backend": "thread"}], overrides=["transfer.codec=int8"])
    assert config_hash(other) != config_hash(base)
    feedback = build_config(values=[{"backend": "thread"}], overrides=["transfer.codec=topk:0.1",
                                                                        "transfer.error_feedback=true"])
    assert feedback.transfer.error_feedback and feedback.transfer.kind == "file"
