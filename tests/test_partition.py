"""Tests of flight_parsl.data.partition: every kind's sizes, skew, determinism and errors."""

from __future__ import annotations

import numpy as np
import pytest

from flight_parsl.data.partition import PartitionSpec, partition, partition_kinds
from flight_parsl.core.errors import ConfigError, DataError

LABELS = np.random.default_rng(11).integers(0, 10, size=1000)
KINDS = ["dirichlet", "iid", "label_pairs", "labels", "power_law"]


def mean_max_class_fraction(labels: np.ndarray, shards: list[np.ndarray]) -> float:
    """The mean, over clients, of the share of a client's most common class."""
    return float(np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in shards]))


def test_kinds():
    assert partition_kinds() == sorted(KINDS + ["majority"])  # majority draws with replacement: tested apart


@pytest.mark.parametrize("kind", KINDS)
def test_disjoint_sorted_int64_and_min_samples(kind):
    spec = PartitionSpec(kind=kind, min_samples=5)
    shards = partition(LABELS, 10, spec, seed=1)
    assert len(shards) == 10
    assert all(s.dtype == np.int64 for s in shards)
    assert all(np.all(np.diff(s) > 0) for s in shards)  # sorted, no repeats
    joined = np.concatenate(shards)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    assert joined.min() >= 0 and joined.max() < len(LABELS)
    assert min(len(s) for s in shards) >= 5


@pytest.mark.parametrize("kind", ["dirichlet", "iid", "label_pairs", "labels", "power_law"])
def test_full_coverage(kind):
    # with 10 clients x 2 labels every class is held, so every kind uses every sample
    shards = partition(LABELS, 10, PartitionSpec(kind=kind), seed=2)
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(len(LABELS)))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_seed_dependent(kind):
    spec = PartitionSpec(kind=kind)
    a = partition(LABELS, 8, spec, seed=3)
    b = partition(LABELS, 8, spec, seed=3)
    c = partition(LABELS, 8, spec, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_and_mix():
    shards = partition(LABELS, 7, PartitionSpec(kind="iid"), seed=0)
    sizes = [len(s) for s in shards]
    assert sum(sizes) == 1000
    assert max(sizes) - min(sizes) <= 1
    assert mean_max_class_fraction(LABELS, shards) < 0.25  # about 0.1 + noise


def test_labels_exact_classes():
    shards = partition(LABELS, 10, PartitionSpec(kind="labels", labels_per_client=3), seed=0)
    for client, shard in enumerate(shards):
        expected = {(client * 3 + j) % 10 for j in range(3)}
        assert set(np.unique(LABELS[shard]).tolist()) == expected


def test_labels_split_each_class_evenly():
    shards = partition(LABELS, 5, PartitionSpec(kind="labels", labels_per_client=4), seed=0)
    # 5 clients x 4 classes = 20 slots over 10 classes: each class held by 2 clients
    for cls in range(10):
        counts = [int(np.sum(LABELS[s] == cls)) for s in shards if np.any(LABELS[s] == cls)]
        assert len(counts) == 2
        assert max(counts) - min(counts) <= 1
        assert sum(counts) == int(np.sum(LABELS == cls))


def test_labels_unheld_classes_left_out():
    shards = partition(LABELS, 2, PartitionSpec(kind="labels", labels_per_client=2), seed=0)
    held = np.unique(LABELS[np.concatenate(shards)])
    np.testing.assert_array_equal(held, [0, 1, 2, 3])


def test_dirichlet_label_skew_follows_alpha():
    skewed = partition(LABELS, 10, PartitionSpec(kind="dirichlet", labels_alpha=0.1), seed=5)
    mixed = partition(LABELS, 10, PartitionSpec(kind="dirichlet", labels_alpha=100.0), seed=5)
    assert mean_max_class_fraction(LABELS, skewed) > 0.45
    assert mean_max_class_fraction(LABELS, mixed) < 0.2


def test_dirichlet_size_skew_follows_alpha():
    even = partition(LABELS, 10, PartitionSpec(kind="dirichlet", samples_alpha=1000.0), seed=6)
    uneven = partition(LABELS, 10, PartitionSpec(kind="dirichlet", samples_alpha=0.3), seed=6)
    assert np.std([len(s) for s in even]) < 10
    assert np.std([len(s) for s in uneven]) > 50
    assert sum(len(s) for s in uneven) == 1000


def test_power_law_sizes_unequal():
    shards = partition(LABELS, 10, PartitionSpec(kind="power_law", power_law_exponent=1.5), seed=0)
    sizes = sorted(len(s) for s in shards)
    assert sum(sizes) <= 1000
    assert sizes[-1] / sizes[0] > 10  # 10 ** 1.5 ~ 31 before rounding
    assert len(set(sizes)) > 5


def test_power_law_exponent_zero_is_equal():
    sizes = [len(s) for s in partition(LABELS, 8, PartitionSpec(kind="power_law", power_law_exponent=0.0), seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_power_law_sizes_shuffled_over_clients():
    spec = PartitionSpec(kind="power_law")
    largest = {int(np.argmax([len(s) for s in partition(LABELS, 10, spec, seed=seed)])) for seed in range(8)}
    assert len(largest) > 1


def test_single_client_gets_everything():
    for kind in KINDS:
        spec = PartitionSpec(kind=kind, labels_per_client=10)
        (only,) = partition(LABELS, 1, spec, seed=0)
        assert len(only) == 1000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "shards"}, "config: key 'partition.kind' = 'shards': unknown partition; valid names: dirichlet, iid, label_pairs, labels, majority, power_law"),
        ({"labels_alpha": 0.0}, "config: key 'partition.labels_alpha' = 0.0: must be a finite number > 0"),
        ({"samples_alpha": -1.0}, "key 'partition.samples_alpha' = -1.0: must be a finite number > 0"),
        ({"labels_per_client": 0}, "key 'partition.labels_per_client' = 0: must be an integer >= 1"),
        ({"min_samples": 0}, "key 'partition.min_samples' = 0: must be an integer >= 1"),
        ({"power_law_exponent": -0.5}, "key 'partition.power_law_exponent' = -0.5: must be a finite number >= 0"),
    ],
)
def test_bad_spec(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PartitionSpec(**kwargs)


@pytest.mark.parametrize("num_clients", [0, -3])
def test_bad_num_clients(num_clients):
    with pytest.raises(ConfigError, match=f"num_clients must be an integer >= 1, got {num_clients}"):
        partition(LABELS, num_clients, PartitionSpec(), seed=0)


def test_more_clients_than_samples():
    with pytest.raises(DataError, match=r"num_clients=11 exceeds the number of samples \(10\)"):
        partition(LABELS[:10], 11, PartitionSpec(), seed=0)


@pytest.mark.parametrize("kind", KINDS)
def test_min_samples_too_large(kind):
    with pytest.raises(DataError, match="min_samples=101 is impossible"):
        partition(LABELS, 10, PartitionSpec(kind=kind, min_samples=101), seed=0)


def test_labels_per_client_too_many():
    with pytest.raises(ConfigError, match=r"labels_per_client=11 exceeds the number of classes in the data \(10\)"):
        partition(LABELS, 4, PartitionSpec(kind="labels", labels_per_client=11), seed=0)


def test_labels_class_too_small_for_holders():
    labels = np.array([0] * 50 + [1] * 2)
    with pytest.raises(DataError, match="class 1 has 2 samples but 5 clients hold it"):
        partition(labels, 10, PartitionSpec(kind="labels", labels_per_client=1), seed=0)


def test_labels_min_samples_unmet():
    labels = np.array([0] * 40 + [1] * 4)
    with pytest.raises(DataError, match="fewer than min_samples=5"):
        partition(labels, 4, PartitionSpec(kind="labels", labels_per_client=1, min_samples=5), seed=0)


def test_bad_labels_array():
    with pytest.raises(DataError, match="1-D integer array"):
        partition(np.zeros((4, 2), dtype=int), 2, PartitionSpec(), seed=0)
    with pytest.raises(DataError, match="1-D integer array"):
        partition(np.linspace(0, 1, 10), 2, PartitionSpec(), seed=0)
