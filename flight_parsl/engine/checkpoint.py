"""A run's checkpoint: what a synchronous run needs to continue after any kind of stop.

After every round the loop writes ``checkpoint.pkl`` in the run directory: the
global model, the next round's index, the sampling generator's state, the slowest
round so far (for the next deadline), per-client state (membership, AIMD epochs)
and the config hash. It is written to a temporary file, flushed to disk and moved
into place with ``os.replace``, so a reader sees the previous checkpoint or the new
one, never half of one, whatever kills the coordinator.

Not in the checkpoint: stale results still out when the run stopped (lost; their
clients count as having missed that round), the per-client momentum of
``train.keep_momentum`` (kept in the run's transfer directory or Redis, which a
stop removes) and the round's keys in the store.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flight_parsl.core.errors import ConfigError
from flight_parsl.core.weights import FlatWeights

FILENAME = "checkpoint.pkl"
VERSION = 1


@dataclass
class Checkpoint:
    """The state after round ``next_round - 1``."""

    next_round: int
    weights: FlatWeights
    rng_state: Mapping[str, Any]  # numpy's bit_generator.state (a dict)
    slowest_s: float | None
    config_hash: str
    clients: dict[str, Any] = field(default_factory=dict)  # membership, aimd
    version: int = VERSION


def save(run_dir: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically into ``run_dir``; returns its path."""
    path = Path(run_dir) / FILENAME
    tmp = path.with_name(FILENAME + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(checkpoint, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(run_dir: str | Path, config_hash: str | None = None) -> Checkpoint | None:
    """The checkpoint in ``run_dir`` (None when no round finished yet).

    Raises:
        ConfigError: the file is unreadable, of another version, or of another config.
    """
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            checkpoint = pickle.load(f)
    except Exception as exc:
        raise ConfigError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(checkpoint, Checkpoint) or checkpoint.version != VERSION:
        raise ConfigError(f"checkpoint {path} is not a version-{VERSION} flight_parsl checkpoint")
    if config_hash is not None and checkpoint.config_hash != config_hash:
        raise ConfigError(
            f"checkpoint {path} belongs to another experiment (config hash {checkpoint.config_hash}, "
            f"this config {config_hash}); resume with the run directory's own config.yaml"
        )
    return checkpoint
