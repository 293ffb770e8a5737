"""FedProx's Synthetic(alpha, beta) data: one generated device per client.

Li et al. (FedProx, MLSys 2020) define, for device k:

* labels ``y = argmax(softmax(W_k x + b_k))``, ``x`` in R^60, 10 classes;
* ``W_k, b_k ~ N(u_k, 1)`` elementwise, ``u_k ~ N(0, alpha)``;
* ``x_k ~ N(v_k, Sigma)``, ``v_k`` elementwise ``~ N(B_k, 1)``, ``B_k ~ N(0, beta)``,
  ``Sigma`` diagonal with ``Sigma_jj = j ** -1.2``;
* device sizes from a power law: ``floor(lognormal(4, 2)) + 50`` samples, as the
  paper's generator draws them.

As in the paper's generator, ``alpha`` and ``beta`` are the scales (standard
deviations) handed to the normal draws (``np.random.normal(0, alpha)``). ``alpha``
controls how much the local models differ, ``beta`` how much the local inputs do.
The IID variant (``iid=True``) shares one ``W, b ~ N(0, 1)`` over all devices and
draws every device's ``x`` from ``N(B_k * 1, Sigma)`` (all zero means with beta 0),
as the paper's ``synthetic_iid`` does.

Each device's samples are split 75/25 into its train and test parts (the paper's
split). The :class:`~flight_parsl.data.datasets.Dataset` view concatenates the
train parts in device order, so client ``k``'s shard is one contiguous range: the
partition is the generator's (:func:`device_ranges`), no partitioner runs. Inputs
have shape ``(N, 60, 1, 1)``, so the zoo's ``logreg`` and ``mlp`` see 60 features.

A synthetic dataset is named by its whole spec (:meth:`SyntheticSpec.name`, for
example ``synthetic(alpha=1.0,beta=1.0,iid=0,devices=30,seed=0)``): that string
travels in the workload, and every slot regenerates the same data from it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from flight_parsl.core.errors import ConfigError

DIMENSION = 60
NUM_CLASSES = 10
TEST_FRACTION = 0.25
#: Sizes are ``floor(lognormal(SIZE_MEAN, SIZE_SIGMA)) + SIZE_MIN`` (the paper's generator).
SIZE_MEAN, SIZE_SIGMA, SIZE_MIN = 4.0, 2.0, 50
BASE_NAME = "synthetic"
_NAME = re.compile(
    r"^synthetic\(alpha=(?P<alpha>[^,]+),beta=(?P<beta>[^,]+),iid=(?P<iid>[01]),"
    r"devices=(?P<devices>\d+),seed=(?P<seed>-?\d+)\)$"
)


@dataclass(frozen=True)
class SyntheticSpec:
    """One Synthetic(alpha, beta) dataset.

    Attributes:
        alpha: Scale of the per-device model means ``u_k``.
        beta: Scale of the per-device input means ``B_k``.
        iid: The IID variant (one shared model; see the module docstring).
        devices: Number of devices (clients).
        seed: Seed of the generator.
    """

    alpha: float = 1.0
    beta: float = 1.0
    iid: bool = False
    devices: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        """Check the values."""
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"config key 'data.{key}' must be a finite number >= 0, got {value!r}")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1:
            raise ConfigError(f"synthetic data: devices must be an integer >= 1, got {self.devices!r}")

    def name(self) -> str:
        """The dataset name that carries this spec (parsed back by :meth:`parse`)."""
        return (
            f"{BASE_NAME}(alpha={float(self.alpha)!r},beta={float(self.beta)!r},iid={int(self.iid)},"
            f"devices={self.devices},seed={self.seed})"
        )

    @classmethod
    def parse(cls, name: str) -> "SyntheticSpec":
        """The spec of a name made by :meth:`name`; plain ``synthetic`` gives the defaults.

        Raises:
            ConfigError: The name is neither.
        """
        if name == BASE_NAME:
            return cls()
        match = _NAME.match(name)
        if match is None:
            raise ConfigError(f"dataset {name!r} is not a synthetic dataset name (expected {cls().name()})")
        return cls(
            alpha=float(match["alpha"]),
            beta=float(match["beta"]),
            iid=match["iid"] == "1",
            devices=int(match["devices"]),
            seed=int(match["seed"]),
        )


def is_synthetic(name: str) -> bool:
    """Whether a dataset name is a synthetic one (plain or with its spec)."""
    return name == BASE_NAME or name.startswith(BASE_NAME + "(")


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """Per-device arrays of one generated dataset (float32 x of shape (n, 60), int64 y)."""

    spec: SyntheticSpec
    x_train: tuple[np.ndarray, ...]
    y_train: tuple[np.ndarray, ...]
    x_test: tuple[np.ndarray, ...]
    y_test: tuple[np.ndarray, ...]


def device_sizes(rng: np.random.Generator, devices: int) -> np.ndarray:
    """Samples per device: ``floor(lognormal(4, 2)) + 50`` (a heavy, power-law-like tail)."""
    return rng.lognormal(SIZE_MEAN, SIZE_SIGMA, devices).astype(np.int64) + SIZE_MIN


def covariance_diagonal() -> np.ndarray:
    """``Sigma_jj = j ** -1.2`` for j = 1 .. 60."""
    return np.arange(1, DIMENSION + 1, dtype=np.float64) ** -1.2


@lru_cache(maxsize=4)
def generate(spec: SyntheticSpec) -> SyntheticData:
    """Generate the dataset of ``spec`` (cached per process; arrays read-only).

    Draw order (fixed, so a seed always gives the same data): sizes, ``u_k``,
    ``B_k``, then per device ``v_k``, ``W_k``, ``b_k``, ``x``; the IID variant draws
    the shared ``W, b`` after ``B_k``. Each device's samples are then split by a
    seeded permutation, the first ``round(0.25 * n)`` to test.
    """
    rng = np.random.default_rng([spec.seed, 1812, 6127])
    sizes = device_sizes(rng, spec.devices)
    u = rng.normal(0.0, spec.alpha, spec.devices)
    b_means = rng.normal(0.0, spec.beta, spec.devices)
    scale = np.sqrt(covariance_diagonal())
    shared = None
    if spec.iid:
        shared = (rng.normal(0.0, 1.0, (DIMENSION, NUM_CLASSES)), rng.normal(0.0, 1.0, NUM_CLASSES))
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for k in range(spec.devices):
        n = int(sizes[k])
        if spec.iid:
            v = np.full(DIMENSION, b_means[k])
            w, b = shared  # type: ignore[misc]
        else:
            v = rng.normal(b_means[k], 1.0, DIMENSION)
            w = rng.normal(u[k], 1.0, (DIMENSION, NUM_CLASSES))
            b = rng.normal(u[k], 1.0, NUM_CLASSES)
        x = v + rng.standard_normal((n, DIMENSION)) * scale
        y = np.argmax(x @ w + b, axis=1)  # argmax of the softmax is the argmax of the logits
        order = rng.permutation(n)
        n_test = int(round(TEST_FRACTION * n))
        test, train = order[:n_test], order[n_test:]
        for i, array in enumerate((x[train], y[train], x[test], y[test])):
            out = array.astype(np.float32 if i % 2 == 0 else np.int64)
            out.setflags(write=False)
            parts[i].append(out)
    return SyntheticData(spec, *(tuple(p) for p in parts))


def device_ranges(spec: SyntheticSpec) -> tuple[np.ndarray, ...]:
    """Client ``k``'s indices into the concatenated training set: one contiguous range."""
    sizes = [len(y) for y in generate(spec).y_train]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    ranges = tuple(np.arange(bounds[k], bounds[k + 1], dtype=np.int64) for k in range(spec.devices))
    for r in ranges:
        r.setflags(write=False)
    return ranges


def concatenated(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train (N, 60, 1, 1), y_train, x_test, y_test: every device's parts in device order."""
    data = generate(spec)

    def stack(arrays: tuple[np.ndarray, ...]) -> np.ndarray:
        return np.concatenate(arrays)[:, :, None, None]

    return stack(data.x_train), np.concatenate(data.y_train), stack(data.x_test), np.concatenate(data.y_test)
