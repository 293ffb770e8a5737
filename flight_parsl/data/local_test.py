"""Each client's own test set, drawn from the test split like its training shard.

Decentralized methods with private models are judged on data like the client's
own (ProxyFL evaluates each private model on a test set with the client's class
mix): the test split is partitioned with the same spec and a derived seed, with
``test_samples`` per client for the ``majority`` kind. Cached per process.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np

from flight_parsl.data.datasets import load_dataset, resolve_root
from flight_parsl.data.partition import PartitionSpec, partition


def load_local_test(
    dataset: str, root: str | None, spec: PartitionSpec, num_clients: int, client: int, seed: int, samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) test set of ``client``: the test split partitioned like the training split."""
    return _cached(dataset, resolve_root(dataset, root), spec, int(num_clients), int(client), int(seed), int(samples))


@lru_cache(maxsize=256)
def _cached(
    dataset: str, root: str | None, spec: PartitionSpec, num_clients: int, client: int, seed: int, samples: int
) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset(dataset, root)
    test_spec = replace(spec, samples_per_client=samples, min_samples=1) if spec.kind == "majority" else replace(
        spec, min_samples=1
    )
    idx = partition(data.y_test, num_clients, test_spec, seed + 7919)[client]
    x, y = data.x_test[idx], data.y_test[idx]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y
