"""A run's checkpoint: what a run of any mode needs to continue after any kind of stop.

After every round (an async run: every window) the loop writes ``checkpoint.pkl``
in the run directory, tied to the config hash:

- every mode: the next round's index, the slowest round so far (for the next
  deadline), the global model (decentralized: the initial shared model);
- sync: the sampling generator's state, membership and AIMD epochs (``clients``),
  with ``train.keep_momentum`` every client's accepted momentum blob, and with
  ``transfer.error_feedback`` every client's (and a tree's aggregators') accepted residual;
- async (``loop``): the model version, the strategy's buffer (FedBuff), the client
  queue, the updates folded, and the work still out (client and model version, with
  the weights of every version it started from): re-issued first on resume; each
  client's accepted momentum and residual;
- decentralized (``loop``): every client's accepted state blob (private and proxy
  models, Adam states, the DP step count the accountant continues from), the model
  each client received for its next round, membership (the exchange graph is
  re-formed from it), the epsilon and bytes so far.

It is written to a temporary file, flushed to disk and moved into place with
``os.replace``, so a reader sees the previous checkpoint or the new one, never half
of one, whatever kills the coordinator.

Not in the checkpoint: late results still out when a sync run stopped (lost; their
clients count as having missed that round) and the round's keys in the store.
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
    clients: dict[str, Any] = field(default_factory=dict)  # membership, aimd, momentum
    version: int = VERSION
    mode: str = "sync"
    loop: dict[str, Any] = field(default_factory=dict)  # the async / decentralized loop's own state


def save(run_dir: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically into ``run_dir``; returns its path."""
    path = Path(run_dir) / FILENAME
    tmp = path.with_name(FILENAME + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(checkpoint, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # the rename itself on disk, so a crash of the machine keeps one of the two
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
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
    checkpoint.__dict__.setdefault("mode", "sync")  # written before other modes could resume
    checkpoint.__dict__.setdefault("loop", {})
    if config_hash is not None and checkpoint.config_hash != config_hash:
        raise ConfigError(
            f"checkpoint {path} belongs to another experiment (config hash {checkpoint.config_hash}, "
            f"this config {config_hash}); resume with the run directory's own config.yaml"
        )
    return checkpoint
