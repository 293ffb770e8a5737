"""Data for flight_parsl: IDX files, dataset sources, partitioners, worker shards, downloads.

Importable without torch (numpy only), so that workers can load their shards.
"""

from flight_parsl.data.datasets import Dataset, dataset_names, load_dataset, resolve_root
from flight_parsl.data.download import download_dataset, downloadable_names
from flight_parsl.data.idx import read_idx, write_idx
from flight_parsl.data.partition import PartitionSpec, partition, partition_kinds
from flight_parsl.data.shards import load_shard, shard_sizes

__all__ = [
    "Dataset",
    "PartitionSpec",
    "dataset_names",
    "download_dataset",
    "downloadable_names",
    "load_dataset",
    "load_shard",
    "partition",
    "partition_kinds",
    "read_idx",
    "resolve_root",
    "shard_sizes",
    "write_idx",
]
