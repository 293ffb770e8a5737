"""One message per client (``plan.preaggregate=false``): each client's result is its own
file, written straight from the slot's buffer, folded at the coordinator in float32 blocks
and released as soon as it is folded; a result's file is reused by a later result."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
from conftest import read_csv, run_quietly
from flight_parsl.core.weights import FlatWeights, Layout
from flight_parsl.engine import checkpoint
from flight_parsl.fl.aggregate import CHUNK, WeightedMean
from flight_parsl.transfer import open_transfer
from flight_parsl.transfer.proxy import MappedFileConnector


def _weights(seed: int, n: int = 5000) -> FlatWeights:
    layout = Layout.from_shapes([("a", (n - 7,), "float32"), ("b", (7,), "float32")])
    return FlatWeights(np.random.default_rng(seed).normal(size=n).astype(np.float32), layout)


def _files(store_dir) -> list[str]:
    return sorted(p.name for p in store_dir.iterdir() if p.is_file())


def test_the_parts_of_a_model_are_its_bytes_and_written_without_joining(tmp_path) -> None:
    w = _weights(0)
    header, body = w.to_parts()
    assert header + bytes(body) == w.to_bytes() and len(header) % 64 == 0
    assert np.shares_memory(np.frombuffer(body, np.float32), w.buffer)  # a view, not a copy
    conn = MappedFileConnector(str(tmp_path / "s"))
    key = conn.put_parts(w.to_parts())
    back = FlatWeights.from_bytes(conn.get(key))
    assert np.array_equal(back.buffer, w.buffer) and back.layout == w.layout


def test_an_evicted_result_s_file_is_reused_by_the_next_result_and_a_model_s_is_deleted(tmp_path) -> None:
    with open_transfer("file", file_dir=str(tmp_path)) as t:
        (store_dir,) = tmp_path.iterdir()
        ref = t.publish(_weights(0), 0)
        big, _, _ = ref.reply(_weights(1), recycle=True)
        t.adopt(big)
        first = os.stat(store_dir / big.key.filename).st_ino
        t.discard(big)  # folded: released at once, its file into the pool
        pool = store_dir / ".pool"
        assert len(os.listdir(pool)) == 1 and not (store_dir / big.key.filename).exists()
        small = ref.reply(_weights(2, n=300), recycle=True)[0]  # a shorter result in the same file
        assert small.key != big.key and os.listdir(pool) == []
        assert os.stat(store_dir / small.key.filename).st_ino == first
        got = t.collect(small)
        assert np.array_equal(got.buffer, _weights(2, n=300).buffer) and small.nbytes == len(got.to_bytes())
        del got
        plain = ref.reply(_weights(3))[0]  # not a result (a relay's model): deleted on eviction
        t.adopt(plain)
        t.end_round(0)
        assert _files(store_dir) == [] and sorted(os.listdir(pool)) == [small.key.filename]
    assert list(tmp_path.iterdir()) == []  # closing removes the pool too


def test_the_pool_keeps_at_most_pool_files(tmp_path) -> None:
    conn = MappedFileConnector(str(tmp_path / "s"), pool_files=2)
    assert MappedFileConnector.from_config(conn.config()).pool_files == 2  # workers rebuild it from the config
    keys = [conn.put_parts(_weights(i).to_parts(), recycle=True) for i in range(3)]
    for key in keys:
        conn.evict(key)
    assert len(os.listdir(conn.pool_dir)) == 2 and _files(tmp_path / "s") == []
    none = MappedFileConnector(str(tmp_path / "n"), pool_files=0)
    none.evict(none.put_parts(_weights(0).to_parts(), recycle=True))
    assert list((tmp_path / "n").iterdir()) == []


def test_a_blocked_mean_equals_the_float64_mean_to_float32_precision() -> None:
    rng = np.random.default_rng(1)
    layout = Layout.from_shapes([("w", (4000,), "float32")])
    parts = [rng.normal(size=4000).astype(np.float32) for _ in range(70)]
    weights = [float(w) for w in rng.integers(1, 40, size=70)]
    weights[::3] = [1.0] * len(weights[::3])  # the unscaled add too
    exact = sum(p.astype(np.float64) * w for p, w in zip(parts, weights)) / sum(weights)
    means = {}
    for block in (1, 16):
        mean = WeightedMean(FlatWeights(parts[0], layout), block=block)
        for p, w in zip(parts, weights):
            mean.add(FlatWeights(p, layout), w)
        means[block] = mean.result().buffer
        assert mean.count == 70 and mean.total == sum(weights)
    scale = np.abs(exact).max()
    assert np.abs(means[1] - exact).max() <= 1e-7 * scale
    assert np.abs(means[16] - exact).max() <= 4e-7 * scale  # a few float32 ulps of the mean's scale
    ints = WeightedMean(FlatWeights(parts[0], layout))
    for i in range(40):  # small integers sum exactly in float32: the same mean as float64
        ints.add(FlatWeights(np.full(4000, i % 5, np.float32), layout), float(i % 3 + 1))
    total = sum(i % 3 + 1 for i in range(40))
    assert np.all(ints.result().buffer == np.float32(sum((i % 5) * (i % 3 + 1) for i in range(40)) / total))


def test_a_small_fold_holds_one_float32_model() -> None:
    n = 4_000_000
    layout = Layout.from_shapes([("w", (n,), "float32")])
    child = FlatWeights(np.ones(n, np.float32), layout)
    tracemalloc.start()
    try:
        mean = WeightedMean(child)
        for w in (1.0, 2.0, 3.0):
            mean.add(child, w)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 4 + CHUNK * 4 + 2**20  # the block and the scaled add's scratch, no float64 sum (2 models)
    assert np.all(mean.result().buffer == 1.0)


def test_one_message_per_client_gives_the_pre_aggregated_model(make_config, tmp_path) -> None:
    """The same run with results folded in the slot and with every client's result its own
    file folded at the coordinator (the files of round 1's results reused in round 2): the
    same global model to float tolerance."""
    common = ("model.name=mlp", "train.epochs=1", "partition.kind=power_law", "slots=2", "transfer.kind=file",
              f"transfer.file_dir={tmp_path}")
    packed = run_quietly(make_config, *common, workers=24, rounds=2, out=str(tmp_path / "packed"))
    each = run_quietly(make_config, *common, "plan.preaggregate=false", workers=24, rounds=2,
                       out=str(tmp_path / "each"))
    a, b = checkpoint.load(packed), checkpoint.load(each)
    assert a is not None and b is not None and a.next_round == b.next_round == 2
    np.testing.assert_allclose(b.weights.buffer, a.weights.buffer, rtol=1e-5, atol=1e-6)
    moved = [int(r["bytes_from_workers"]) for r in read_csv(each / "rounds.csv")]
    assert moved == [12 * int(r["bytes_from_workers"]) for r in read_csv(packed / "rounds.csv")]  # 24 vs 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("flight_parsl-")] == []  # stores removed


def test_only_results_for_the_coordinator_reuse_files(tmp_path) -> None:
    """A late aggregate task may still map its children after their round's keys went:
    their files are deleted on eviction, never reused; the coordinator's results are."""
    from flight_parsl.core.model_spec import ModelSpec
    from flight_parsl.core.types import LocalSettings, Workload
    from flight_parsl.data import PartitionSpec
    from flight_parsl.worker.tasks import COORDINATOR, train_task

    workload = Workload("none", ModelSpec("logreg", 1, 8, 10), "digits", None, PartitionSpec(), 4, 0)
    clients = [(c, LocalSettings(epochs=1, batch_size=16, lr=0.1, momentum=0.5)) for c in range(3)]
    with open_transfer("file", file_dir=str(tmp_path)) as t:
        (store_dir,) = tmp_path.iterdir()
        ref = t.publish(_weights(0), 0)
        for node, pooled in (("agg-1-0", 0), (COORDINATOR, 3)):
            res = train_task(ref, 0, node, clients, workload)
            assert len(res.outputs) == 3
            for out, _ in res.outputs:
                assert np.array_equal(t.collect(out).buffer, _weights(0).buffer)
                t.discard(out)
            assert len(os.listdir(store_dir / ".pool")) == pooled if pooled else not (store_dir / ".pool").exists()


def test_a_reader_keeps_the_map_of_a_reused_result_file_and_reads_the_new_result_through_it(tmp_path) -> None:
    """The coordinator maps a pooled file once: the next result written into it (longer or
    shorter) reads right through the kept map; a deleted file's map is forgotten first."""
    conn = MappedFileConnector(str(tmp_path / "s"), pool_files=1)
    first = conn.put_parts(_weights(1).to_parts(), recycle=True)
    got = FlatWeights.from_bytes(conn.get(first))
    assert np.array_equal(got.buffer, _weights(1).buffer) and conn.kept_maps() == 1
    (kept,) = conn._maps.values()
    del got
    conn.evict(first)  # into the pool, its map kept
    for seed, n in ((2, 5000), (3, 300), (4, 5000), (5, 9000)):  # the same file, shorter and longer again
        key = conn.put_parts(_weights(seed, n=n).to_parts(), recycle=True)
        data = conn.get(key)
        assert len(data) == len(_weights(seed, n=n).to_bytes())
        got = FlatWeights.from_bytes(data)
        assert np.array_equal(got.buffer, _weights(seed, n=n).buffer) and conn.kept_maps() == 1
        if n <= 5000:
            assert next(iter(conn._maps.values())) is kept  # read through the same map, not a new one
        del got, data
        conn.evict(key)
    a, b = (conn.put_parts(_weights(s).to_parts(), recycle=True) for s in (6, 7))
    for key in (a, b):
        assert conn.get(key) is not None
    assert conn.kept_maps() == 2
    conn.evict(a)
    conn.evict(b)  # the pool is full: b's file is deleted, and its map forgotten before
    assert conn.kept_maps() == 1 and len(os.listdir(conn.pool_dir)) == 1
    plain = conn.put_parts(_weights(8).to_parts())  # not a result: mapped per read, never kept
    assert np.array_equal(FlatWeights.from_bytes(conn.get(plain)).buffer, _weights(8).buffer)
    assert conn.kept_maps() == 1
    conn.close()
    assert conn.kept_maps() == 0 and not (tmp_path / "s").exists()
    off = MappedFileConnector(str(tmp_path / "o"), map_files=0)
    assert MappedFileConnector.from_config(off.config()).map_files == 0
    key = off.put_parts(_weights(9).to_parts(), recycle=True)
    assert np.array_equal(FlatWeights.from_bytes(off.get(key)).buffer, _weights(9).buffer) and off.kept_maps() == 0
