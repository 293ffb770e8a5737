"""Turn a config into what the engine runs, and hold a run's parts in one place.

:func:`prepare` builds the :class:`Experiment`: workload, initial model,
evaluator, strategy, per-client settings. The model's input shape and classes
follow the dataset when training, and the model's reference architecture (the
published sizes) in no-training mode, where no data is touched; ``model.*`` keys
override either. :class:`RunContext` is everything a loop needs once the
executor, the transfer and the run directory are open.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any

from flight_parsl.config.experiment import ClientAt, ExperimentConfig, dataset_key
from flight_parsl.core.model_spec import REFERENCE_SPECS, ModelSpec
from flight_parsl.core.types import Faults, LocalSettings, Workload
from flight_parsl.core.weights import FlatWeights
from flight_parsl.data import load_dataset, shard_sizes
from flight_parsl.engine.placement import Placement
from flight_parsl.engine.progress import Progress
from flight_parsl.engine.records import RunRecorder
from flight_parsl.fl.policy import RoundPolicy
from flight_parsl.fl.protocols import Strategy
from flight_parsl.fl.strategies import make_strategy
from flight_parsl.fl.stragglers import Stragglers
from flight_parsl.transfer.base import Transfer
from flight_parsl.transfer.codecs import Compression
from flight_parsl.transfer.state import ClientState

Evaluator = Callable[[FlatWeights], tuple[float, float]]


@dataclass
class Experiment:
    """Everything a run needs besides the executor and the transfer."""

    workload: Workload
    initial: FlatWeights
    settings: LocalSettings
    strategy: Strategy  # the loop of its mode narrows it (fl.protocols.as_sync, as_async, as_peer)
    evaluate: Evaluator | None
    num_parameters: int
    slowdowns: list[float] | None
    shard_sizes: list[int] | None
    evaluate_train: Evaluator | None = None

    def settings_for(self, round_idx: int, client: int) -> LocalSettings:
        """A client's local settings (sync and async modes): the strategy's, with its injected slowdown."""
        strategy = self.strategy
        if strategy.mode == "decentralized":  # a peer method configures PeerSettings (engine.decentralized)
            raise TypeError(f"strategy {strategy.name!r} runs in decentralized mode: no local settings")
        settings = strategy.configure(round_idx, client, self.settings)
        if self.slowdowns is None or self.slowdowns[client] == 1.0:
            return settings
        return replace(settings, slowdown=self.slowdowns[client])

    def expected_work(self, client: int) -> float:
        """A client's expected work, for balancing tasks: its shard size (1 without data)."""
        return float(self.shard_sizes[client]) if self.shard_sizes else 1.0


@dataclass
class RunContext:
    """One run's open parts: what the loops see instead of long argument lists."""

    cfg: ExperimentConfig
    exp: Experiment
    executor: Executor
    transfer: Transfer
    recorder: RunRecorder
    progress: Progress
    slots: int
    policy: RoundPolicy
    state: ClientState | None = None
    faults: Faults | None = None
    injector: Any = None  # processes.injector.FaultInjector: coordinator-side faults and the slot census
    resume: Any = None  # engine.checkpoint.Checkpoint to continue from
    late: list[Any] | None = None  # futures of work still out when its round closed (the runner may wait)
    placement: Placement | None = None  # several sites: where each task runs
    checkpoint_hash: str = ""  # the config's hash, computed once: what a checkpoint is tied to
    compression: Compression | None = None  # the run's codecs (None: models travel as they are)


def compression(cfg: ExperimentConfig) -> Compression | None:
    """The run's codecs (``transfer.codec``, ``codec_down``, ``codec_block``, ``error_feedback``);
    None when both are ``none``: then nothing on the transfer path changes."""
    t = cfg.transfer
    if t.codec == "none" and t.codec_down == "none":
        return None
    return Compression(t.codec, t.codec_down, t.codec_block, t.error_feedback)


def model_spec(cfg: ExperimentConfig) -> ModelSpec:
    """The model to build, from the dataset (training) or the reference (no training); no torch."""
    m = cfg.model
    if cfg.train.mode == "none":
        base = REFERENCE_SPECS[m.name]
    else:
        ds = load_dataset(dataset_key(cfg), cfg.data.root)
        c, h, _ = ds.input_shape
        base = ModelSpec(m.name, in_channels=c, image_size=h, num_classes=ds.num_classes)
    given = {k: getattr(m, k) for k in ("in_channels", "image_size", "num_classes") if getattr(m, k) is not None}
    if m.extra_blocks:
        given["extra_blocks"] = m.extra_blocks
    return replace(base, **given)


def workload(cfg: ExperimentConfig) -> tuple[Workload, list[int] | None]:
    """What every task needs, and each client's shard size; torch-free and quick.

    Fails here, on the coordinator, before any executor starts, when the data is
    missing or the split impossible.
    """
    sizes = None
    if cfg.train.mode == "local":
        sizes = shard_sizes(dataset_key(cfg), cfg.data.root, cfg.partition, cfg.workers, cfg.seed)
    work = Workload(
        mode=cfg.train.mode,
        model=model_spec(cfg),
        dataset=dataset_key(cfg),
        data_root=cfg.data.root,
        partition=cfg.partition,
        num_clients=cfg.workers,
        seed=cfg.seed,
        threads=cfg.train.threads,
    )
    return work, sizes


def slowdowns(cfg: ExperimentConfig) -> list[float] | None:
    """Per-client slowdown factors, uniform in [1, train.slowdown_max], fixed by the seed."""
    if cfg.train.slowdown_max == 1.0:
        return None
    import numpy as np

    rng = np.random.default_rng([cfg.seed, 7])
    return [float(f) for f in rng.uniform(1.0, cfg.train.slowdown_max, size=cfg.workers)]


def faults(cfg: ExperimentConfig) -> Faults | None:
    """The injected faults of the config, or None."""
    f = cfg.faults
    def pairs(items: list[ClientAt]) -> frozenset[tuple[int, int]]:  # 0-based (round, client)
        return frozenset((c.round - 1, c.client) for c in items)

    out = Faults(pairs(f.kill), pairs(f.hang), f.hang_s)
    return out or None


def evaluator(cfg: ExperimentConfig, spec: ModelSpec) -> Evaluator | None:
    """Test loss and accuracy of a global model on the dataset's test split (None without training)."""
    if cfg.train.mode != "local":
        return None
    ds = load_dataset(dataset_key(cfg), cfg.data.root)
    from flight_parsl.worker.training import evaluate

    return lambda weights: evaluate(weights, spec, ds.x_test, ds.y_test, cfg.train.eval_batch_size)


def train_evaluator(cfg: ExperimentConfig, spec: ModelSpec) -> Evaluator | None:
    """Loss and accuracy of a global model on the whole training split (``train.eval_train``):
    the global objective FedProx plots as its training loss."""
    if cfg.train.mode != "local" or not cfg.train.eval_train:
        return None
    ds = load_dataset(dataset_key(cfg), cfg.data.root)
    from flight_parsl.worker.training import evaluate

    return lambda weights: evaluate(weights, spec, ds.x_train, ds.y_train, cfg.train.eval_batch_size)


def prepare(cfg: ExperimentConfig, work: tuple[Workload, list[int] | None] | None = None) -> Experiment:
    """Build the initial model (seeded, in torch), the evaluator and the strategy.

    ``work`` is :func:`workload`'s answer when the caller already has it.
    """
    from flight_parsl.models import check_trainable, count_parameters, seeded_model

    wl, sizes = work or workload(cfg)
    spec = wl.model
    if cfg.train.mode == "local":
        check_trainable(spec)
    model = seeded_model(spec, cfg.seed)
    t, s = cfg.train, cfg.strategy
    settings = LocalSettings(
        epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, keep_momentum=t.keep_momentum,
        weight_decay=t.weight_decay,
    )
    return Experiment(
        workload=wl,
        initial=FlatWeights.from_model(model),
        settings=settings,
        strategy=make_strategy(
            s.name,
            mode=cfg.mode,
            participation=s.participation,
            clients_per_round=s.clients_per_round,
            mu=s.mu,
            alpha=s.alpha,
            staleness=s.staleness,
            exponent=s.staleness_exponent,
            buffer_size=s.buffer_size,
            server_lr=s.server_lr,
            stragglers=Stragglers(s.stragglers, s.drop_stragglers, cfg.seed),
        ),
        slowdowns=slowdowns(cfg),
        evaluate=evaluator(cfg, spec),
        num_parameters=count_parameters(model),
        shard_sizes=sizes,
        evaluate_train=train_evaluator(cfg, spec),
    )
