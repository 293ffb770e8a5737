"""Partitioners: split a label array into per-client index arrays (disjoint but for ``majority``).

Each kind is deterministic for a seed (``np.random.default_rng(seed)``), returns
``num_clients`` sorted int64 index arrays, and gives every client at least
``spec.min_samples`` samples.

* ``iid``: a seeded permutation split into sizes that differ by at most one.
* ``dirichlet``: client sizes and per-client label mixes from Dirichlet draws,
  filled greedily from per-class pools (see ``_dirichlet``). Flight's artifact
  uses labels alpha 1 and samples alpha 10, the defaults here.
* ``labels``: client ``i`` holds exactly the classes ``(i * k + j) mod C`` for
  ``j < k`` (of the C distinct labels, sorted); each class is split evenly among
  the clients holding it.
* ``power_law``: the client at size rank ``r`` (1-based) gets a share
  proportional to ``r ** -power_law_exponent``; ranks are shuffled over clients
  and the labels are IID.
* ``label_pairs``: FedProx's MNIST split. Client ``i`` holds the classes
  ``(i + j) mod C`` for ``j < labels_per_client`` (2: "two digits per device");
  it first gets ``min_samples`` samples of each of its classes, then the rest of
  each class is shared among its holders in proportions drawn from
  ``lognormal(0, size_sigma)``, so sizes follow a heavy (power-law-like) tail.
* ``majority``: client ``i``'s majority class is the ``i mod C``-th class and makes
  ``majority_fraction`` of its ``samples_per_client`` samples (0: N // K); the rest
  are drawn uniformly from the samples of the other classes (ProxyFL's non-IID
  split). Draws are without replacement within a client while a pool is large
  enough, with replacement beyond it, and clients may share samples.

All kinds but ``labels``, ``label_pairs`` and ``majority`` use every sample, disjointly;
``labels`` and ``label_pairs`` leave out classes no client holds (when
``num_clients * labels_per_client < C``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flight_parsl.core.errors import ConfigError, DataError, key_error, unknown_name


@dataclass(frozen=True)
class PartitionSpec:
    """How to split a dataset over clients.

    Attributes:
        kind: One of ``partition_kinds()``.
        labels_alpha: ``dirichlet``: concentration of each client's label mix; small is skewed.
        samples_alpha: ``dirichlet``: concentration of the client size shares; small is skewed.
        labels_per_client: ``labels``: the number of distinct classes each client holds.
        power_law_exponent: ``power_law``: the rank-r client's share is proportional to
            ``r ** -exponent``; 0 gives equal sizes.
        min_samples: The fewest samples any client gets (at least 1); ``label_pairs``:
            of each of its classes.
        max_samples: When > 0, each client keeps a seeded random subset of at most this
            many samples of its shard (0: the whole shard).
        size_sigma: ``label_pairs``: sigma of the lognormal size proportions.
        majority_fraction: ``majority``: the share of a client's samples from its majority class.
        samples_per_client: ``majority``: samples per client (0: the training set size // clients).
    """

    kind: str = "iid"
    labels_alpha: float = 1.0
    samples_alpha: float = 10.0
    labels_per_client: int = 2
    power_law_exponent: float = 1.5
    min_samples: int = 1
    max_samples: int = 0
    size_sigma: float = 2.0
    majority_fraction: float = 0.8
    samples_per_client: int = 0

    def __post_init__(self) -> None:
        """Check the values that do not depend on the data."""
        if self.kind not in _PARTITIONERS:
            raise key_error("config", "partition.kind", self.kind,
                            f"unknown partition; valid names: {', '.join(partition_kinds())}")
        for field in ("labels_alpha", "samples_alpha"):
            value = getattr(self, field)
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                raise key_error("config", f"partition.{field}", value, "must be a finite number > 0")
        if not _is_real(self.size_sigma) or not math.isfinite(self.size_sigma) or self.size_sigma < 0:
            raise key_error("config", "partition.size_sigma", self.size_sigma, "must be a finite number >= 0")
        exponent = self.power_law_exponent
        if not _is_real(exponent) or not math.isfinite(exponent) or exponent < 0:
            raise key_error("config", "partition.power_law_exponent", exponent, "must be a finite number >= 0")
        for field in ("labels_per_client", "min_samples"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                raise key_error("config", f"partition.{field}", value, "must be an integer >= 1")
        if not _is_int(self.max_samples) or self.max_samples < 0:
            raise key_error("config", "partition.max_samples", self.max_samples, "must be an integer >= 0")
        frac = self.majority_fraction
        if not _is_real(frac) or not 0 <= frac <= 1:
            raise key_error("config", "partition.majority_fraction", frac, "must be in [0, 1]")
        if not _is_int(self.samples_per_client) or self.samples_per_client < 0:
            raise key_error("config", "partition.samples_per_client", self.samples_per_client, "must be an integer >= 0")


def partition_kinds() -> list[str]:
    """Return the partition kinds, sorted."""
    return sorted(_PARTITIONERS)


def partition(labels: np.ndarray, num_clients: int, spec: PartitionSpec, seed: int) -> list[np.ndarray]:
    """Split sample indices over clients.

    Args:
        labels: 1-D integer labels of the samples to split.
        num_clients: How many shards to make.
        spec: The partition kind and its parameters.
        seed: The seed of ``np.random.default_rng``.

    Returns:
        ``num_clients`` sorted (disjoint but for ``majority``) int64 arrays of indices into ``labels``.

    Raises:
        ConfigError: ``num_clients`` or a spec value is invalid.
        DataError: The labels cannot be split as asked.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"labels must be a 1-D integer array, got dtype {labels.dtype} and shape {labels.shape}")
    if not _is_int(num_clients) or num_clients < 1:
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    num_samples = len(labels)
    if num_clients > num_samples:
        raise DataError(f"num_clients={num_clients} exceeds the number of samples ({num_samples})")
    if num_clients * spec.min_samples > num_samples:
        raise DataError(
            f"min_samples={spec.min_samples} is impossible: {num_clients} clients x {spec.min_samples} "
            f"> {num_samples} samples"
        )
    rng = np.random.default_rng(seed)
    shards = _PARTITIONERS[spec.kind](labels.astype(np.int64), int(num_clients), spec, rng)
    if spec.max_samples > 0:
        shards = [rng.choice(s, spec.max_samples, replace=False) if len(s) > spec.max_samples else s for s in shards]
    return [np.sort(shard).astype(np.int64) for shard in shards]


def _iid(labels: np.ndarray, num_clients: int, spec: PartitionSpec, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle all indices and split them into near-equal parts."""
    return list(np.array_split(rng.permutation(len(labels)), num_clients))


def _dirichlet(
    labels: np.ndarray, num_clients: int, spec: PartitionSpec, rng: np.random.Generator
) -> list[np.ndarray]:
    """Dirichlet sizes and label mixes, filled greedily without replacement.

    1. Shuffle each class's indices into a pool.
    2. Draw size shares ``p ~ Dir(samples_alpha * 1_K)``; client k gets
       ``min_samples + round(p_k * (N - K * min_samples))`` samples (largest-remainder
       rounding, so the sizes sum to N).
    3. Draw each client's label mix ``q_k ~ Dir(labels_alpha * 1_C)``.
    4. Visit the clients in a seeded random order. Each takes ``round(size * q)``
       samples per class from the pools, capped by what is left; the shortfall is
       asked again, spread over the classes still available by ``q`` renormalized
       (by the remaining pool sizes where ``q`` is zero on all of them), until the
       client is full. The sizes sum to N, so every sample is used.
    """
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    available = np.array([len(pool) for pool in pools], dtype=np.int64)
    taken = np.zeros_like(available)
    spare = len(labels) - num_clients * spec.min_samples
    sizes = spec.min_samples + _largest_remainder(spare, _safe_dirichlet(rng, spec.samples_alpha, num_clients))
    mixes = [_safe_dirichlet(rng, spec.labels_alpha, len(classes)) for _ in range(num_clients)]
    shards: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * num_clients
    for client in rng.permutation(num_clients):
        counts = _fill_counts(int(sizes[client]), mixes[client], available - taken)
        shards[client] = np.concatenate(
            [pools[c][taken[c] : taken[c] + counts[c]] for c in range(len(classes))]
        )
        taken += counts
    return shards


def _fill_counts(size: int, mix: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Per-class counts summing to ``size``, following ``mix`` and capped by ``free``."""
    counts = np.zeros_like(free)
    deficit = size
    while deficit > 0:
        left = free - counts
        weights = np.where(left > 0, mix, 0.0)
        if weights.sum() <= 0:
            weights = left.astype(np.float64)
        got = np.minimum(_largest_remainder(deficit, weights), left)
        if got.sum() == 0:  # guards against float rounding; cannot loop forever
            got[np.argmax(left)] = 1
        counts += got
        deficit -= int(got.sum())
    return counts


def _holders(
    labels: np.ndarray, num_clients: int, per_client: int, stride: int
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Classes, each sample's class index, and per class the clients holding it: client i
    holds the classes (i * stride + j) mod C, j < per_client."""
    classes, inverse = np.unique(labels, return_inverse=True)
    num_classes = len(classes)
    if per_client > num_classes:
        raise ConfigError(
            f"labels_per_client={per_client} exceeds the number of classes in the data ({num_classes})"
        )
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for client in range(num_clients):
        for j in range(per_client):
            holders[(client * stride + j) % num_classes].append(client)
    return classes, inverse, holders


def _labels(labels: np.ndarray, num_clients: int, spec: PartitionSpec, rng: np.random.Generator) -> list[np.ndarray]:
    """Give client i the classes (i * k + j) mod C, j < k; split each class evenly among its holders."""
    classes, inverse, holders = _holders(labels, num_clients, spec.labels_per_client, spec.labels_per_client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, clients in enumerate(holders):
        if not clients:
            continue
        pool = rng.permutation(np.flatnonzero(inverse == c))
        if len(pool) < len(clients):
            raise DataError(
                f"labels partition: class {classes[c]} has {len(pool)} samples but {len(clients)} clients hold it"
            )
        for client, chunk in zip(clients, np.array_split(pool, len(clients))):
            parts[client].append(chunk)
    shards = [np.concatenate(chunks) for chunks in parts]
    smallest = min(len(shard) for shard in shards)
    if smallest < spec.min_samples:
        raise DataError(
            f"labels partition: a client gets only {smallest} samples, fewer than min_samples={spec.min_samples}"
        )
    return shards


def _label_pairs(
    labels: np.ndarray, num_clients: int, spec: PartitionSpec, rng: np.random.Generator
) -> list[np.ndarray]:
    """Client i holds classes (i + j) mod C, j < k: min_samples of each, the rest by lognormal shares."""
    classes, inverse, holders = _holders(labels, num_clients, spec.labels_per_client, 1)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, clients in enumerate(holders):
        if not clients:
            continue
        pool = rng.permutation(np.flatnonzero(inverse == c))
        floor = spec.min_samples * len(clients)
        if len(pool) < floor:
            raise DataError(
                f"label_pairs partition: class {classes[c]} has {len(pool)} samples but its {len(clients)} "
                f"clients need min_samples={spec.min_samples} each"
            )
        shares = rng.lognormal(0.0, spec.size_sigma, len(clients))
        counts = spec.min_samples + _largest_remainder(len(pool) - floor, shares)
        for client, chunk in zip(clients, np.split(pool, np.cumsum(counts)[:-1])):
            parts[client].append(chunk)
    return [np.concatenate(chunks) for chunks in parts]


def _power_law(
    labels: np.ndarray, num_clients: int, spec: PartitionSpec, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sizes min_samples + share of the rest proportional to rank ** -exponent; IID labels."""
    ranks = np.arange(1, num_clients + 1, dtype=np.float64)
    weights = rng.permutation(ranks ** -spec.power_law_exponent)
    spare = len(labels) - num_clients * spec.min_samples
    sizes = spec.min_samples + _largest_remainder(spare, weights)
    return list(np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1]))


def _majority(labels: np.ndarray, num_clients: int, spec: PartitionSpec, rng: np.random.Generator) -> list[np.ndarray]:
    """Client i: ``majority_fraction`` of its samples from class ``i mod C``, the rest from the others."""
    classes, inverse = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"majority partition needs at least 2 classes, the data has {len(classes)}")
    size = spec.samples_per_client or len(labels) // num_clients
    if size < spec.min_samples:
        raise DataError(f"majority partition: {size} samples per client is fewer than min_samples={spec.min_samples}")
    major = int(round(spec.majority_fraction * size))
    shards = []
    for client in range(num_clients):
        c = client % len(classes)
        own, rest = np.flatnonzero(inverse == c), np.flatnonzero(inverse != c)
        shards.append(np.concatenate([_draw(rng, own, major), _draw(rng, rest, size - major)]))
    return shards


def _draw(rng: np.random.Generator, pool: np.ndarray, count: int) -> np.ndarray:
    """``count`` indices from ``pool``: without replacement while it lasts, then with."""
    if count <= len(pool):
        return rng.choice(pool, size=count, replace=False)
    return np.concatenate([rng.permutation(pool), rng.choice(pool, size=count - len(pool), replace=True)])


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Round ``total * weights / sum(weights)`` to integers that sum to ``total``."""
    weights = np.asarray(weights, dtype=np.float64)
    if total <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    if short > 0:
        counts[order[:short]] += 1
    while short < 0:  # float rounding overshoot: take back from the largest
        counts[np.argmax(counts)] -= 1
        short += 1
    return counts


def _safe_dirichlet(rng: np.random.Generator, alpha: float, size: int) -> np.ndarray:
    """A Dirichlet(alpha * 1) draw; a random one-hot if tiny alpha underflows."""
    draw = rng.dirichlet(np.full(size, alpha))
    if not np.all(np.isfinite(draw)) or draw.sum() <= 0:
        draw = np.zeros(size)
        draw[rng.integers(size)] = 1.0
    return draw


def _is_int(value: object) -> bool:
    """True for ints (numpy ones too), False for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: object) -> bool:
    """True for real numbers, False for bools."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


_PARTITIONERS: dict[str, Callable[[np.ndarray, int, PartitionSpec, np.random.Generator], list[np.ndarray]]] = {
    "dirichlet": _dirichlet,
    "iid": _iid,
    "label_pairs": _label_pairs,
    "labels": _labels,
    "majority": _majority,
    "power_law": _power_law,
}
