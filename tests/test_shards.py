"""Tests of flight_parsl.data.shards: the right rows, per-process caching and errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from flight_parsl.data.datasets import load_dataset
from flight_parsl.data.idx import write_idx
from flight_parsl.data.partition import PartitionSpec, partition
from flight_parsl.data.shards import load_shard, shard_sizes
from flight_parsl.core.errors import ConfigError, DataError


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "labels", "power_law"])
def test_digits_shard_rows_match_partition(kind):
    spec = PartitionSpec(kind=kind)
    data = load_dataset("digits")
    indices = partition(data.y_train, 6, spec, seed=9)
    for client in range(6):
        x, y = load_shard("digits", None, spec, 6, client, 9)
        assert x.shape == (len(indices[client]), 1, 8, 8)
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x, data.x_train[indices[client]])
        np.testing.assert_array_equal(y, data.y_train[indices[client]])
    assert shard_sizes("digits", None, spec, 6, 9) == [len(i) for i in indices]
    assert sum(shard_sizes("digits", None, spec, 6, 9)) == len(data.y_train)


def test_cached_same_object():
    spec = PartitionSpec(kind="iid")
    first = load_shard("digits", None, spec, 4, 2, 0)
    second = load_shard("digits", None, spec, 4, 2, 0)
    assert second is first
    assert second[0] is first[0]
    assert not first[0].flags.writeable
    other_seed = load_shard("digits", None, spec, 4, 2, 1)
    assert not np.array_equal(other_seed[1], first[1])


def test_partition_shared_across_clients(monkeypatch):
    from flight_parsl.data import shards

    calls: list[int] = []
    real = shards.partition

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "partition", counting)
    spec = PartitionSpec(kind="dirichlet", labels_alpha=0.5)
    for client in range(5):
        load_shard("digits", None, spec, 5, client, 123)
    assert shard_sizes("digits", None, spec, 5, 123)
    assert len(calls) == 1


def test_idx_dataset_shard(tmp_path):
    rng = np.random.default_rng(0)
    directory = tmp_path / "mnist"
    directory.mkdir()
    images = rng.integers(0, 256, size=(40, 6, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40, dtype=np.uint8)
    write_idx(directory / "train-images-idx3-ubyte.gz", images)
    write_idx(directory / "train-labels-idx1-ubyte.gz", labels)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", images[:10])
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels[:10])
    spec = PartitionSpec()
    indices = partition(labels, 3, spec, seed=0)
    x, y = load_shard("mnist", str(tmp_path), spec, 3, 1, 0)
    assert x.shape == (len(indices[1]), 1, 6, 6)
    np.testing.assert_array_equal(y, labels[indices[1]].astype(np.int64))
    same_root = f"{tmp_path}/../{tmp_path.name}"  # resolves to the same root, so hits the cache
    assert load_shard("mnist", same_root, spec, 3, 1, 0)[0] is x
    assert shard_sizes("mnist", str(tmp_path), spec, 3, 0) == [14, 13, 13]


@pytest.mark.parametrize("client_id", [-1, 4, 10])
def test_client_id_out_of_range(client_id):
    with pytest.raises(ConfigError, match=rf"client_id={client_id} is out of range for num_clients=4 \(valid: 0..3\)"):
        load_shard("digits", None, PartitionSpec(), 4, client_id, 0)


def test_bad_num_clients():
    with pytest.raises(ConfigError, match="num_clients must be an integer >= 1, got 0"):
        load_shard("digits", None, PartitionSpec(), 0, 0, 0)
    with pytest.raises(ConfigError, match="num_clients must be an integer >= 1, got 0"):
        shard_sizes("digits", None, PartitionSpec(), 0, 0)


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'"):
        load_shard("svhn", None, PartitionSpec(), 2, 0, 0)
    with pytest.raises(DataError, match="download_data.py"):
        load_shard("mnist", str(tmp_path), PartitionSpec(), 2, 0, 0)


def test_workers_load_shards_without_torch():
    code = (
        "import sys; from flight_parsl.data import PartitionSpec, load_shard; "
        "x, y = load_shard('digits', None, PartitionSpec(), 3, 0, 0); "
        "print(len(y), 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["480", "False"]
