"""A worker's view of the data: its own client's training shard.

A worker process may train many clients over many rounds, so the dataset, the
partition of a (dataset, root, spec, num_clients, seed) and each shard are
computed once per process and cached. The shard arrays are read-only copies.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from flight_parsl.data.datasets import load_dataset, resolve_root
from flight_parsl.data.partition import PartitionSpec, partition
from flight_parsl.data import synthetic
from flight_parsl.core.errors import ConfigError


def load_shard(
    dataset: str,
    root: str | None,
    spec: PartitionSpec,
    num_clients: int,
    client_id: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the (x, y) training shard of one client, cached per process.

    Args:
        dataset: A name from ``dataset_names()``.
        root: The data root (ignored by ``digits``).
        spec: How the training set is partitioned.
        num_clients: The number of clients in the partition.
        client_id: This client, in ``0 .. num_clients - 1``.
        seed: The partition seed.

    Raises:
        ConfigError: An unknown dataset, a bad spec or an out-of-range client_id.
        DataError: The dataset cannot be loaded or partitioned.
    """
    key = resolve_root(dataset, root)
    _check_client(client_id, num_clients)
    return _shard_cached(dataset, key, spec, int(num_clients), int(client_id), seed)


def shard_sizes(dataset: str, root: str | None, spec: PartitionSpec, num_clients: int, seed: int) -> list[int]:
    """Return the number of training samples of each client, in client order."""
    key = resolve_root(dataset, root)
    return [len(shard) for shard in _partition_cached(dataset, key, spec, num_clients, seed)]


def _check_client(client_id: int, num_clients: int) -> None:
    """Raise ConfigError unless 0 <= client_id < num_clients."""
    if not isinstance(num_clients, (int, np.integer)) or isinstance(num_clients, bool) or num_clients < 1:
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    valid_id = isinstance(client_id, (int, np.integer)) and not isinstance(client_id, bool)
    if not valid_id or not 0 <= client_id < num_clients:
        raise ConfigError(
            f"client_id={client_id!r} is out of range for num_clients={num_clients} (valid: 0..{num_clients - 1})"
        )


@lru_cache(maxsize=16)
def _partition_cached(
    dataset: str, root: str | None, spec: PartitionSpec, num_clients: int, seed: int
) -> tuple[np.ndarray, ...]:
    """Partition a dataset's training labels once per process (a synthetic dataset: its devices)."""
    if synthetic.is_synthetic(dataset):
        spec_ = synthetic.SyntheticSpec.parse(dataset)
        if spec_.devices != num_clients:
            raise ConfigError(
                f"synthetic dataset {dataset!r} has {spec_.devices} devices but the run has {num_clients} clients"
            )
        return synthetic.device_ranges(spec_)
    shards = tuple(partition(load_dataset(dataset, root).y_train, num_clients, spec, seed))
    for shard in shards:
        shard.setflags(write=False)
    return shards


@lru_cache(maxsize=256)
def _shard_cached(
    dataset: str, root: str | None, spec: PartitionSpec, num_clients: int, client_id: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gather one client's rows once per process."""
    indices = _partition_cached(dataset, root, spec, num_clients, seed)[client_id]
    data = load_dataset(dataset, root)
    x, y = data.x_train[indices], data.y_train[indices]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y
