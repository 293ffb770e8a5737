"""Turn a config into what the engine runs: workload, initial model, evaluator.

The model's input shape and classes follow the dataset when training, and the
model's reference architecture (the published sizes) in no-training mode, where
no data is touched; ``model.*`` keys override either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from flight_parsl.config.experiment import ExperimentConfig
from flight_parsl.data import load_dataset, shard_sizes
from flight_parsl.core.model_spec import ModelSpec
from flight_parsl.fl.strategies import FedAsync, LocalSettings, Strategy, make_strategy
from flight_parsl.worker.tasks import Workload
from flight_parsl.core.weights import FlatWeights

Evaluator = Callable[[FlatWeights], tuple[float, float]]


@dataclass
class Experiment:
    """Everything a run needs besides the executor and the transfer."""

    workload: Workload
    initial: FlatWeights
    settings: LocalSettings
    strategy: Strategy | FedAsync
    evaluate: Evaluator | None
    num_parameters: int
    slowdowns: list[float]

    def settings_for(self, round_idx: int, worker: int) -> LocalSettings:
        """A worker's local settings: the strategy's, with its injected slowdown."""
        settings = self.strategy.configure(round_idx, worker, self.settings)
        factor = self.slowdowns[worker]
        return settings if factor == 1.0 else replace(settings, slowdown=factor)


def model_spec(cfg: ExperimentConfig) -> ModelSpec:
    """The model to build, from the dataset (training) or the reference (no training)."""
    from flight_parsl.models import reference_spec

    m = cfg.model
    if cfg.train.mode == "none":
        base = reference_spec(m.name)
    else:
        ds = load_dataset(cfg.data.dataset, cfg.data.root)
        c, h, _ = ds.input_shape
        base = ModelSpec(m.name, in_channels=c, image_size=h, num_classes=ds.num_classes)
    given = {k: getattr(m, k) for k in ("in_channels", "image_size", "num_classes") if getattr(m, k) is not None}
    if m.extra_blocks:
        given["extra_blocks"] = m.extra_blocks
    return replace(base, **given)


def slowdowns(cfg: ExperimentConfig) -> list[float]:
    """Per-worker slowdown factors, uniform in [1, train.slowdown_max], fixed by the seed."""
    if cfg.train.slowdown_max == 1.0:
        return [1.0] * cfg.workers
    import numpy as np

    rng = np.random.default_rng([cfg.seed, 7])
    return [float(f) for f in rng.uniform(1.0, cfg.train.slowdown_max, size=cfg.workers)]


def prepare(cfg: ExperimentConfig) -> Experiment:
    """Build the initial model (seeded) and check data and partition up front."""
    import torch

    from flight_parsl.models import build_model, check_trainable, count_parameters

    spec = model_spec(cfg)
    partition = cfg.partition
    evaluate: Evaluator | None = None
    if cfg.train.mode == "local":
        check_trainable(spec)
        # Fails here, on the coordinator, before any task, if the split is impossible.
        shard_sizes(cfg.data.dataset, cfg.data.root, partition, cfg.workers, cfg.seed)
        ds = load_dataset(cfg.data.dataset, cfg.data.root)
        from flight_parsl.worker.training import evaluate as evaluate_on

        def evaluate(weights: FlatWeights) -> tuple[float, float]:
            return evaluate_on(weights, spec, ds.x_test, ds.y_test, cfg.train.eval_batch_size)

    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    workload = Workload(
        mode=cfg.train.mode,
        model=spec,
        dataset=cfg.data.dataset,
        data_root=cfg.data.root,
        partition=partition,
        num_clients=cfg.workers,
        seed=cfg.seed,
        threads=cfg.train.threads,
    )
    t = cfg.train
    settings = LocalSettings(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum)
    return Experiment(
        workload=workload,
        initial=FlatWeights.from_model(model),
        settings=settings,
        strategy=make_strategy(
            cfg.strategy.name,
            participation=cfg.strategy.participation,
            mu=cfg.strategy.mu,
            alpha=cfg.strategy.alpha,
            staleness=cfg.strategy.staleness,
            exponent=cfg.strategy.staleness_exponent,
        ),
        slowdowns=slowdowns(cfg),
        evaluate=evaluate,
        num_parameters=count_parameters(model),
    )
