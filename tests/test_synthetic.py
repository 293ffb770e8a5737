"""FedProx's Synthetic(alpha, beta) generator and the label_pairs partition, against their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from flight_parsl.core.errors import ConfigError, DataError
from flight_parsl.data import PartitionSpec, load_dataset, load_shard, partition, shard_sizes
from flight_parsl.data.synthetic import (
    DIMENSION,
    NUM_CLASSES,
    SyntheticSpec,
    covariance_diagonal,
    device_ranges,
    generate,
)


def device_means(spec: SyntheticSpec) -> np.ndarray:
    """Each device's mean input, shape (devices, 60): an estimate of v_k."""
    data = generate(spec)
    return np.stack([np.concatenate([a, b]).mean(axis=0) for a, b in zip(data.x_train, data.x_test)])


def test_shapes_split_labels_and_the_dataset_view() -> None:
    spec = SyntheticSpec(alpha=1.0, beta=1.0, devices=30, seed=0)
    data = generate(spec)
    assert len(data.x_train) == len(data.y_test) == 30
    for x, y, xt, yt in zip(data.x_train, data.y_train, data.x_test, data.y_test):
        assert x.shape == (len(y), DIMENSION) and xt.shape == (len(yt), DIMENSION)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert len(yt) == round(0.25 * (len(y) + len(yt)))  # the paper's 75/25 split per device
        assert y.min() >= 0 and y.max() < NUM_CLASSES
    ds = load_dataset(spec.name())
    assert ds.input_shape == (DIMENSION, 1, 1) and ds.num_classes == NUM_CLASSES
    assert len(ds.y_train) == sum(len(y) for y in data.y_train)
    # client k's shard is device k's training part, whatever the partition spec says
    x, y = load_shard(spec.name(), None, PartitionSpec(kind="dirichlet"), 30, 7, 0)
    np.testing.assert_array_equal(x[:, :, 0, 0], data.x_train[7])
    np.testing.assert_array_equal(y, data.y_train[7])
    assert shard_sizes(spec.name(), None, PartitionSpec(), 30, 0) == [len(y) for y in data.y_train]
    with pytest.raises(ConfigError, match="has 30 devices but the run has 10 clients"):
        shard_sizes(spec.name(), None, PartitionSpec(), 10, 0)


def test_names_round_trip_and_seeds() -> None:
    spec = SyntheticSpec(alpha=0.5, beta=0.0, iid=True, devices=12, seed=3)
    assert SyntheticSpec.parse(spec.name()) == spec
    assert SyntheticSpec.parse("synthetic") == SyntheticSpec()
    with pytest.raises(ConfigError, match="not a synthetic dataset name"):
        SyntheticSpec.parse("synthetic(alpha=1)")
    with pytest.raises(ConfigError, match="'data.alpha' must be a finite number >= 0, got -1"):
        SyntheticSpec(alpha=-1)
    a, b = generate(SyntheticSpec(seed=1)), generate(SyntheticSpec(seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(a.x_train, b.x_train))
    c = generate(SyntheticSpec(seed=2))
    assert not np.array_equal(a.y_train[0][:5], c.y_train[0][:5]) or len(a.y_train[0]) != len(c.y_train[0])


def test_device_sizes_follow_the_papers_heavy_tail() -> None:
    sizes = np.array([len(r) for r in device_ranges(SyntheticSpec(devices=400, seed=5))])
    totals = sizes / 0.75  # train parts are about 3/4 of floor(lognormal(4, 2)) + 50
    assert totals.min() >= 50 - 1
    # log(n - 50) of lognormal(4, 2): median e^4 ~ 55 above the floor, and a tail far above the median
    assert np.median(totals) == pytest.approx(50 + np.exp(4), rel=0.35)
    assert sizes.max() > 20 * np.median(sizes)


def test_input_covariance_is_diagonal_j_to_the_minus_1_2() -> None:
    spec = SyntheticSpec(alpha=1.0, beta=1.0, devices=30, seed=0)
    data = generate(spec)
    k = int(np.argmax([len(y) for y in data.y_train]))
    x = data.x_train[k].astype(np.float64)
    assert len(x) > 1000
    variances = x.var(axis=0)
    np.testing.assert_allclose(variances, covariance_diagonal(), rtol=0.2)
    off_diagonal = np.corrcoef(x.T)[np.triu_indices(DIMENSION, 1)]
    assert np.abs(off_diagonal).max() < 0.2


def test_beta_spreads_device_means_and_beta_zero_centres_them() -> None:
    # v_k elementwise ~ N(B_k, 1), B_k ~ N(0, beta): the mean of v_k's 60 elements estimates B_k,
    # whose spread over devices is about sqrt(beta^2 + 1/60)
    flat = device_means(SyntheticSpec(alpha=0.0, beta=0.0, devices=200, seed=1)).mean(axis=1)
    wide = device_means(SyntheticSpec(alpha=0.0, beta=2.0, devices=200, seed=1)).mean(axis=1)
    assert flat.std() == pytest.approx(np.sqrt(1 / 60), rel=0.3)
    assert wide.std() == pytest.approx(np.sqrt(4 + 1 / 60), rel=0.3)
    assert abs(flat.mean()) < 0.05  # identical device means in expectation


def test_iid_shares_one_model_and_one_input_distribution() -> None:
    spec = SyntheticSpec(alpha=0.0, beta=0.0, iid=True, devices=40, seed=2)
    means = device_means(spec)
    assert np.abs(means).mean() < 0.15  # every x ~ N(0, Sigma)
    spec = SyntheticSpec(alpha=0.0, beta=0.0, iid=True, devices=8, seed=2)
    data = generate(spec)
    x = np.concatenate(data.x_train).astype(np.float64)
    y = np.concatenate(data.y_train)
    # one shared linear rule: one multinomial logistic regression fits all devices (almost) exactly
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e4, max_iter=500).fit(x, y)
    assert fit.score(x, y) > 0.97


def test_label_pairs_gives_two_consecutive_digits_and_power_law_sizes() -> None:
    labels = load_dataset("digits").y_train
    spec = PartitionSpec(kind="label_pairs", min_samples=2)
    shards = partition(labels, 100, spec, seed=0)
    assert sum(len(s) for s in shards) == len(labels)  # every class is held, every sample used
    for i, shard in enumerate(shards):
        classes, counts = np.unique(labels[shard], return_counts=True)
        assert sorted(classes) == sorted({i % 10, (i + 1) % 10})
        assert counts.min() >= 2
    sizes = np.array([len(s) for s in shards])
    assert sizes.std() > 0.7 * sizes.mean() and sizes.max() > 4 * np.median(sizes)
    again = partition(labels, 100, spec, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))
    with pytest.raises(DataError, match="need min_samples=9 each"):
        partition(labels, 100, PartitionSpec(kind="label_pairs", min_samples=9), seed=0)


def test_label_pairs_splits_an_mnist_sized_set_over_1000_devices() -> None:
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 6000))  # MNIST's 60,000 labels
    shards = partition(labels, 1000, PartitionSpec(kind="label_pairs", min_samples=5), seed=0)
    sizes = np.array([len(s) for s in shards])
    assert len(shards) == 1000 and sizes.sum() == 60000 and sizes.min() >= 10
    assert all(len(np.unique(labels[s])) == 2 for s in shards[:50])
    assert sizes.std() > sizes.mean()  # heavy-tailed, as the paper's (mean 69, std 106)
