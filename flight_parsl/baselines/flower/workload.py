"""The workloads both frameworks run: the debug round's model arrays, and real training.

Debug (``--train none``): a reference model's weights as numpy arrays.

The model is ``flight_parsl.models.build_model(reference_spec(name))`` under
``torch.manual_seed(0)``, so its weights are the ones flight_parsl's
``--train none`` runs broadcast. Flower moves a list of numpy arrays, one per
state_dict entry in state_dict order: float entries as float32, integer buffers
(BatchNorm's ``num_batches_tracked``) as their own int64 arrays.

Training (``--train local``): :func:`train_config` is the ExperimentConfig that
``python -m flight_parsl.scale`` builds for the same flags (its defaults for
everything else), and :class:`TrainJob` carries what a Flower client needs to run
flight_parsl's own local training (:func:`flight_parsl.worker.training.train_local`:
the same shard, SGD settings and per-round shuffling seed as a slot).

Imports numpy only; torch is imported when a model is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


def model_arrays(name: str) -> list[np.ndarray]:
    """Return the reference model ``name``'s state_dict as C-contiguous numpy arrays (copies).

    Raises:
        ConfigError: ``name`` is not a registered model.
    """
    import torch

    from flight_parsl.models import build_model, reference_spec

    spec = reference_spec(name)
    torch.manual_seed(0)
    model = build_model(spec)
    arrays = []
    for tensor in model.state_dict().values():
        data = tensor.detach().cpu().numpy()
        dtype = np.float32 if data.dtype.kind == "f" else data.dtype
        arrays.append(np.array(data, dtype=dtype, order="C", copy=True))
    return arrays


def describe(arrays: list[np.ndarray]) -> dict[str, Any]:
    """Sizes of a model's arrays: count, elements, raw bytes, dtypes."""
    return {
        "num_arrays": len(arrays),
        "num_elements": int(sum(a.size for a in arrays)),
        "model_bytes": int(sum(a.nbytes for a in arrays)),
        "dtypes": sorted({str(a.dtype) for a in arrays}),
    }


# ---------------------------------------------------------------------------
# The training workload (--train local): flight_parsl's own config, data, model and loop
# ---------------------------------------------------------------------------

TRAIN_MODES = ("none", "local")


def train_config(
    workers: int,
    rounds: int,
    model: str,
    dataset: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
) -> Any:
    """The :class:`~flight_parsl.config.ExperimentConfig` of ``python -m flight_parsl.scale
    --workers N --model M --rounds R [--dataset D]`` with ``train.mode=local``: every value the
    command does not set (dataset, partition, seed, optimizer, lr, epochs, batch size, strategy)
    is ExperimentConfig's default, and ``epochs`` / ``batch_size`` / ``lr`` override theirs.

    Torch-free. Raises ConfigError (flight_parsl's message naming the key) for a bad value.
    """
    from flight_parsl.config.experiment import build_config

    values: dict[str, Any] = {"workers": workers, "rounds": rounds, "model": {"name": model},
                              "train": {"mode": "local"}}
    if dataset is not None:
        values["data"] = {"dataset": dataset}
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            values["train"][key] = value
    return build_config(values=[values])


def check_training(cfg: Any) -> dict[str, Any]:
    """Check, before any process starts, that ``cfg``'s run can train: the data is there, the
    split possible, the model trainable. Torch-free. Returns what the run trains (for
    summary.json).

    Raises:
        ConfigError: what flight_parsl itself would say about the run.
    """
    from flight_parsl.config.experiment import dataset_key
    from flight_parsl.engine.context import workload
    from flight_parsl.models import check_trainable

    work, sizes = workload(cfg)
    check_trainable(work.model)
    t = cfg.train
    return {
        "dataset": dataset_key(cfg),
        "partition": dataclasses.asdict(cfg.partition),
        "seed": cfg.seed,
        "model_spec": dataclasses.asdict(work.model),
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "lr": t.lr,
        "momentum": t.momentum,
        "weight_decay": t.weight_decay,
        "threads": t.threads,
        "eval_batch_size": t.eval_batch_size,
        "shard_sizes": sizes,
    }


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """What a Flower client needs to train like a flight_parsl slot: the workload (model spec,
    dataset, partition, seed), the local settings (SGD, lr, momentum, epochs, batch size) and
    the layout that turns Flower's list of arrays into flight_parsl's flat weights and back.
    Picklable (Ray sends it to every actor with the client function)."""

    workload: Any  # flight_parsl.core.types.Workload
    settings: Any  # flight_parsl.core.types.LocalSettings
    layout: Any  # flight_parsl.core.weights.Layout

    def to_flat(self, arrays: list[np.ndarray]) -> Any:
        """Flower's arrays (state_dict order) as flight_parsl FlatWeights."""
        from flight_parsl.core.weights import FlatWeights

        buffer = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])
        return FlatWeights(buffer, self.layout)

    def to_arrays(self, weights: Any) -> list[np.ndarray]:
        """flight_parsl FlatWeights as Flower's arrays, each in its state_dict dtype (copies)."""
        return [
            np.array(weights.buffer[e.offset : e.offset + e.size].reshape(e.shape), dtype=np.dtype(e.dtype))
            for e in self.layout.entries
        ]
