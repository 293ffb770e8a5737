"""Tests of flight_parsl.data.datasets: digits, IDX datasets from tiny files, errors, caching."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flight_parsl.data.datasets import Dataset, dataset_names, load_dataset
from flight_parsl.data.idx import write_idx
from flight_parsl.core.errors import ConfigError, DataError

FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NORMALIZATION = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}


def tiny_arrays(seed: int = 0, n_train: int = 50, n_test: int = 20, side: int = 28) -> dict[str, np.ndarray]:
    """Random uint8 images and labels shaped like a small MNIST."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(n_train, side, side), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, side, side), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }


def write_tiny(directory: Path, arrays: dict[str, np.ndarray], suffix: str = "") -> None:
    """Write the four IDX files into a directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for field, base in FILES.items():
        write_idx(directory / f"{base}{suffix}", arrays[field])


def test_names():
    assert dataset_names() == ["digits", "fashion_mnist", "mnist", "mnist5k", "synthetic"]


def test_digits_shapes_and_split():
    data = load_dataset("digits")
    assert isinstance(data, Dataset)
    assert data.name == "digits"
    assert data.num_classes == 10
    assert data.input_shape == (1, 8, 8)
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    assert data.x_train.shape[1:] == (1, 8, 8)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert len(data.x_train) == len(data.y_train) and len(data.x_test) == len(data.y_test)
    # stratified 80/20: per class, the test share is round(0.2 * class count)
    all_counts = np.bincount(data.y_train, minlength=10) + np.bincount(data.y_test, minlength=10)
    expected_test = np.round(0.2 * all_counts).astype(int)
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), expected_test)
    assert len(data.x_test) == expected_test.sum()
    # standardized with the train statistics
    assert abs(float(data.x_train.mean())) < 1e-4
    assert abs(float(data.x_train.std()) - 1.0) < 1e-4


def test_digits_split_is_fixed_and_disjoint():
    from sklearn.datasets import load_digits

    from flight_parsl.data import datasets

    data = load_dataset("digits")
    # undo the affine standardization: pixel 0 maps to the minimum, 16 to the maximum
    low, high = float(data.x_train.min()), float(data.x_train.max())
    recovered = np.concatenate([data.x_train, data.x_test]).reshape(1797, 64)
    pixels = np.rint((recovered - low) / (high - low) * 16).astype(int)
    raw = load_digits().images.reshape(1797, 64).astype(int)
    # train + test is exactly the dataset, each image once
    assert sorted(map(bytes, pixels.astype(np.uint8))) == sorted(map(bytes, raw.astype(np.uint8)))
    datasets._load_cached.cache_clear()
    again = load_dataset("digits")
    assert again is not data
    np.testing.assert_array_equal(again.x_train, data.x_train)
    np.testing.assert_array_equal(again.y_test, data.y_test)


def test_digits_cached_and_root_ignored(tmp_path):
    first = load_dataset("digits")
    assert load_dataset("digits") is first
    assert load_dataset("digits", root=tmp_path) is first
    assert not first.x_train.flags.writeable


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_dataset(tmp_path, name, suffix):
    arrays = tiny_arrays(seed=3)
    write_tiny(tmp_path / name, arrays, suffix)
    data = load_dataset(name, tmp_path)
    mean, std = NORMALIZATION[name]
    assert data.name == name
    assert data.num_classes == 10
    assert data.input_shape == (1, 28, 28)
    assert data.x_train.shape == (50, 1, 28, 28) and data.x_test.shape == (20, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    expected = (arrays["x_train"].astype(np.float32) / 255 - mean) / std
    np.testing.assert_allclose(data.x_train[:, 0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.y_train, arrays["y_train"])
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])
    assert load_dataset(name, str(tmp_path)) is data  # cached by resolved root


def test_tiny_image_side_kept(tmp_path):
    write_tiny(tmp_path / "mnist", tiny_arrays(side=5))
    assert load_dataset("mnist", tmp_path).input_shape == (1, 5, 5)


def test_mixed_raw_and_gz(tmp_path):
    arrays = tiny_arrays(seed=4)
    directory = tmp_path / "mnist"
    write_tiny(directory, arrays, ".gz")
    write_idx(directory / FILES["y_test"], arrays["y_test"])  # raw copy next to the .gz
    np.testing.assert_array_equal(load_dataset("mnist", tmp_path).y_test, arrays["y_test"])


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_layout(tmp_path, name, folder):
    arrays = tiny_arrays(seed=5)
    write_tiny(tmp_path / folder / "raw", arrays, ".gz")
    data = load_dataset(name, tmp_path)
    np.testing.assert_array_equal(data.y_train, arrays["y_train"])
    assert data.x_test.shape == (20, 1, 28, 28)


def test_root_none():
    with pytest.raises(DataError, match="needs a data root") as info:
        load_dataset("mnist")
    assert "download_data.py" in str(info.value)


def test_missing_files_name_path_and_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "fashion_mnist" / "train-images-idx3-ubyte") in message
    assert f"python download_data.py --root {tmp_path.resolve()} --dataset fashion_mnist" in message


def test_one_missing_file_is_named(tmp_path):
    write_tiny(tmp_path / "mnist", tiny_arrays())
    (tmp_path / "mnist" / FILES["y_test"]).unlink()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message
    assert "download_data.py" in message


def test_count_mismatch(tmp_path):
    arrays = tiny_arrays()
    arrays["y_train"] = arrays["y_train"][:49]
    write_tiny(tmp_path / "mnist", arrays)
    with pytest.raises(DataError, match="50 images .* but 49 labels"):
        load_dataset("mnist", tmp_path)


def test_bad_label_values(tmp_path):
    arrays = tiny_arrays()
    arrays["y_test"][0] = 12
    write_tiny(tmp_path / "mnist", arrays)
    with pytest.raises(DataError, match="labels must lie in 0..9"):
        load_dataset("mnist", tmp_path)


def test_unknown_name_lists_valid():
    with pytest.raises(ConfigError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    assert "'cifar10'" in message
    assert "digits, fashion_mnist, mnist" in message


def test_digits_read_from_the_shipped_file_equal_scikit_learns_and_skip_its_import():
    from sklearn.datasets import load_digits

    from flight_parsl.data.datasets import digits_arrays

    images, labels = digits_arrays()
    bunch = load_digits()
    assert images.shape == (1797, 8, 8) and labels.dtype == np.int64
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
    code = ("import sys; from flight_parsl.data.datasets import load_dataset; d = load_dataset('digits'); "
            "print(len(d.x_train), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["1438", "False"]
