"""Experiment configuration: dataclasses, YAML loading and ``key.sub=value`` overrides.

A whole experiment is one :class:`ExperimentConfig`. It is built from defaults,
then an optional experiment YAML file, then command-line flags, then
``key.sub=value`` overrides, and validated once. Every validation error names the
key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from flight_parsl.config.peer import PeerConfig, validate_peer
from flight_parsl.data.partition import PartitionSpec
from flight_parsl.core.errors import ConfigError

BACKENDS = ("parsl", "thread", "process")
MODES = ("sync", "async", "decentralized")
TRAIN_MODES = ("local", "none")


@dataclass
class DataConfig:
    """Where the data comes from.

    ``alpha``, ``beta``, ``iid``: the ``synthetic`` dataset's parameters (FedProx's
    Synthetic(alpha, beta); one generated device per client, seeded by ``seed``).
    """

    dataset: str = "digits"
    root: str | None = None
    alpha: float = 1.0
    beta: float = 1.0
    iid: bool = False


@dataclass
class ModelConfig:
    """Which model, and optional overrides of its input shape and classes.

    Unset fields follow the dataset when training, and the model's reference
    architecture (the published sizes) when ``train.mode`` is ``none``.
    """

    name: str = "mlp"
    in_channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None
    extra_blocks: int = 0


@dataclass
class TrainConfig:
    """Local training on each worker."""

    mode: str = "local"
    epochs: int = 2
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.9
    threads: int = 1
    eval_batch_size: int = 1024
    slowdown_max: float = 1.0
    keep_momentum: bool = False
    weight_decay: float = 0.0
    eval_train: bool = False


@dataclass
class StrategyConfig:
    """The federated strategy and its parameters.

    ``participation``: fraction of clients sampled per round, or
    ``clients_per_round`` of them when > 0. ``mu``: FedProx's proximal weight.
    ``alpha``, ``staleness`` (constant | polynomial), ``staleness_exponent``:
    FedAsync's mixing (FedBuff's staleness scaling). ``buffer_size``,
    ``server_lr``: FedBuff. ``stragglers``: fraction of each round's sampled
    clients that do only x ~ Uniform{1..E} local epochs; ``drop_stragglers``: leave
    them out of the round instead (FedProx's FedAvg baseline). ``aimd``: per-client
    local epochs by AIMD (synchronous mode): each client starts at ``aimd_start``,
    gains one per on-time report, halves (at least 1) when late; ``aimd_max`` caps it
    (0: no cap).
    """

    name: str = "fedavg"
    participation: float = 1.0
    clients_per_round: int = 0
    mu: float = 0.3
    alpha: float = 0.5
    staleness: str = "constant"
    staleness_exponent: float = 0.5
    buffer_size: int = 4
    server_lr: float = 1.0
    stragglers: float = 0.0
    drop_stragglers: bool = False
    aimd: bool = False
    aimd_start: int = 4
    aimd_max: int = 0


@dataclass
class PlanConfig:
    """How sampled clients are packed into tasks.

    ``clients_per_task``: 0 spreads the round's clients over the slots (one task
    per slot); K packs K per task. ``preaggregate``: a linear strategy's task folds
    its clients into one partial in the slot (false: every client's result travels).
    """

    clients_per_task: int = 0
    preaggregate: bool = True


@dataclass
class RoundConfig:
    """When a synchronous round closes and what it does with late and failing clients
    (see flight_parsl.fl.policy). ``policy.X`` is accepted as an alias of ``round.X``.

    ``deadline_s``: seconds per round (null: picked from the work, always finite).
    ``quorum``: share of sampled clients whose reports close the round early (1.0: all).
    ``min_fraction``: share of sampled clients that must have reported for the round to stand.
    ``late``: what happens to work still out when the round closes: ``discard`` or
    ``stale`` (folded into the next aggregation with weight x ``stale_weight``).
    ``retries``: resubmissions of failed client work within a round, after
    ``backoff_s`` x 2^attempt seconds. ``max_missed``: a client that misses more
    rounds in a row than this leaves the sample (null: never); it is re-admitted
    ``readmit_after`` rounds later, once every slot is alive again. ``checkpoint``:
    write the run directory's checkpoint after every round (what ``--resume`` reads).
    """

    deadline_s: float | None = None
    quorum: float = 1.0
    min_fraction: float = 0.5
    late: str = "discard"
    stale_weight: float = 0.5
    retries: int = 1
    backoff_s: float = 0.2
    max_missed: int | None = 2
    readmit_after: int = 1
    checkpoint: bool = True


#: The section's earlier name.
PolicyConfig = RoundConfig


@dataclass
class FaultsConfig:
    """Injected faults, all real (see flight_parsl.engine.injector and flight_parsl.worker.faults).

    In the slot, comma lists of CLIENT@ROUND (rounds from 1), first attempt only:
    ``kill``: the slot running that client SIGKILLs itself (parsl backend only).
    ``hang``: the slot sleeps ``hang_s`` seconds at that client.

    From the coordinator: ``kill_slots``: comma list of K@ROUND (K worker processes,
    or a fraction of the slots when K < 1, SIGKILLed ``kill_after_s`` seconds into
    that round) or K@Ts (T seconds after the first round started); the pids are the
    ones the run recorded (parsl backend, local site). ``redis_stop``: comma list of
    rounds in which the run's managed redis-server is SIGKILLed ``kill_after_s`` into
    the round, and started again on its port ``redis_down_s`` seconds later (< 0:
    never). ``slow``: comma list of clients whose training is stretched ``slow_factor``
    times, every round.
    """

    kill: str = ""
    hang: str = ""
    hang_s: float = 30.0
    kill_slots: str = ""
    kill_after_s: float = 0.5
    redis_stop: str = ""
    redis_down_s: float = 1.0
    slow: str = ""
    slow_factor: float = 4.0


@dataclass
class TransferConfig:
    """How model weights travel (see flight_parsl.transfer).

    ``kind``: ``auto`` (the default) picks ``file`` when every slot runs on this
    host (a local site, or the thread / process backends), else ``parsl``.
    ``redis``: ``HOST:PORT`` of a running server; unset starts a managed one on
    loopback. ``file_dir``: a directory every worker sees; unset uses /dev/shm
    (or the temp dir). ``cache_size``: objects each worker process keeps resolved.
    ``redis_timeout``: seconds every Redis client waits to connect and for each reply;
    a server that stops answering fails the run with its address after this long.
    """

    kind: str = "auto"
    redis: str | None = None
    file_dir: str | None = None
    cache_size: int = 1
    redis_timeout: float = 30.0


@dataclass
class SitesConfig:
    """Several sites in one run (see flight_parsl.execution.sites).

    ``files``: comma list of site YAMLs, one executor each (the first is the default
    site, for nodes without ``site:``); unset: the one site of ``parsl_config``.
    ``aggregate_at``: ``node`` runs an aggregator at its own site (its ``site:``, else
    its parent's); ``children`` at the site of its children.
    """

    files: str | None = None
    aggregate_at: str = "node"


@dataclass
class ExperimentConfig:
    """One experiment: the engine's whole input."""

    workers: int = 4
    rounds: int = 3
    seed: int = 0
    mode: str = "sync"
    topology: str = "flat"
    broadcast: str = "direct"
    backend: str = "parsl"
    slots: str = "auto"
    parsl_config: str | None = None
    out: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    round: RoundConfig = field(default_factory=RoundConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    sites: SitesConfig = field(default_factory=SitesConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)

    @property
    def policy(self) -> RoundConfig:
        """The ``round`` section under its earlier name."""
        return self.round

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what config.yaml holds)."""
        return dataclasses.asdict(self)


# --- building -----------------------------------------------------------------


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint of ``key``; ints widen to floats."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-2" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if hint is bool and isinstance(value, bool):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config key {key!r}: expected {name}, got {value!r}")


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Set fields of dataclass ``obj`` from a nested dict, checking keys and types.

    Returns ``obj`` itself, or a replaced copy when it is a frozen dataclass (such
    sections, like the partition spec, validate themselves on construction).
    """
    if not isinstance(values, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {values!r}")
    hints = _section_types(type(obj))
    if not prefix and "policy" in values and isinstance(obj, ExperimentConfig):
        values = _round_alias(values)
    changes: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(
                f"unknown config key {full!r}; allowed keys{' in ' + prefix.rstrip('.') if prefix else ''}: "
                f"{_allowed(type(obj))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _apply(current, value, f"{full}.")
        else:
            changes[key] = _coerce(full, value, hints[key])
    if type(obj).__dataclass_params__.frozen:  # type: ignore[attr-defined]
        return dataclasses.replace(obj, **changes)
    for key, value in changes.items():
        setattr(obj, key, value)
    return obj


def _round_alias(values: dict[str, Any]) -> dict[str, Any]:
    """Accept the ``policy`` section as the ``round`` section (its earlier name)."""
    values = dict(values)
    alias = values.pop("policy")
    if not isinstance(alias, dict):
        raise ConfigError(f"config key 'policy': expected a mapping, got {alias!r}")
    merged = dict(values.get("round") or {})
    for key, value in alias.items():
        if key in merged:
            raise ConfigError(f"config keys 'policy.{key}' and 'round.{key}' are the same key; give one")
        merged[key] = value
    values["round"] = merged
    return values


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b=value`` into ``{"a": {"b": value}}``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def build_config(
    file: str | Path | None = None,
    values: list[dict[str, Any]] | None = None,
    overrides: list[str] | None = None,
) -> ExperimentConfig:
    """Defaults, then ``file``, then nested ``values`` dicts, then ``key=value`` overrides."""
    cfg = ExperimentConfig()
    if file is not None:
        _apply(cfg, load_yaml(file))
    for nested in values or []:
        _apply(cfg, nested)
    for text in overrides or []:
        _apply(cfg, parse_override(text))
    validate(cfg)
    cfg.transfer.kind = resolve_transfer(cfg)
    return cfg


def resolve_transfer(cfg: ExperimentConfig) -> str:
    """The transfer ``auto`` stands for: ``file`` (a directory in memory every slot sees)
    when all slots run on this host, else ``parsl`` (weights inside the tasks)."""
    if cfg.transfer.kind != "auto":
        return cfg.transfer.kind
    if cfg.backend != "parsl":
        return "file"
    if cfg.sites.files:  # virtual hosts count as other hosts
        from flight_parsl.execution.sites import load_sites

        local = all(s["provider"]["kind"] == "local" and not s["virtual_host"] for s in load_sites(cfg.sites.files))
        return "file" if local else "parsl"
    from flight_parsl.execution.site import load_site

    return "file" if load_site(cfg.parsl_config)["provider"]["kind"] == "local" else "parsl"


def validate(cfg: ExperimentConfig) -> None:
    """Check values that types alone do not catch; names come from the registries."""
    from flight_parsl.data import dataset_names
    from flight_parsl.core.errors import unknown_name
    from flight_parsl.fl.strategies import strategy_names

    def positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if value is None or value <= 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {value!r}")

    positive("workers", cfg.workers)
    positive("rounds", cfg.rounds)
    positive("round.deadline_s", cfg.round.deadline_s, allow_none=True)
    positive("train.epochs", cfg.train.epochs)
    positive("train.batch_size", cfg.train.batch_size)
    positive("train.lr", cfg.train.lr)
    positive("train.threads", cfg.train.threads)
    positive("train.eval_batch_size", cfg.train.eval_batch_size)
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"config key 'backend': unknown backend {cfg.backend!r}; valid: {', '.join(BACKENDS)}")
    if cfg.train.mode not in TRAIN_MODES:
        raise ConfigError(f"config key 'train.mode': unknown mode {cfg.train.mode!r}; valid: {', '.join(TRAIN_MODES)}")
    if cfg.train.weight_decay < 0:
        raise ConfigError(f"config key 'train.weight_decay' must be >= 0, got {cfg.train.weight_decay!r}")
    if not 0 <= cfg.strategy.stragglers <= 1:
        raise ConfigError(f"config key 'strategy.stragglers' must be in [0, 1], got {cfg.strategy.stragglers!r}")
    if cfg.data.dataset == "synthetic":
        from flight_parsl.data.synthetic import SyntheticSpec

        SyntheticSpec(cfg.data.alpha, cfg.data.beta, cfg.data.iid, cfg.workers, cfg.seed)
    if not 0 <= cfg.train.momentum < 1:
        raise ConfigError(f"config key 'train.momentum' must be in [0, 1), got {cfg.train.momentum!r}")
    if cfg.data.dataset not in dataset_names():
        raise unknown_name("dataset", cfg.data.dataset, dataset_names())
    from flight_parsl.transfer import TRANSFER_KINDS

    if cfg.transfer.kind not in TRANSFER_KINDS + ("auto",):
        raise unknown_name("transfer", cfg.transfer.kind, TRANSFER_KINDS + ("auto",))
    positive("transfer.redis_timeout", cfg.transfer.redis_timeout)
    if cfg.transfer.cache_size < 0:
        raise ConfigError(f"config key 'transfer.cache_size' must be >= 0, got {cfg.transfer.cache_size!r}")
    if cfg.transfer.redis is not None:
        from flight_parsl.transfer.redis_server import RedisAddress

        RedisAddress.parse(cfg.transfer.redis)
    if cfg.strategy.name not in strategy_names():
        raise unknown_name("strategy", cfg.strategy.name, strategy_names())
    _validate_modes(cfg)
    _validate_engine(cfg)
    validate_peer(cfg)
    from flight_parsl.core.model_spec import model_names

    if cfg.model.name not in model_names():
        raise unknown_name("model", cfg.model.name, model_names())


def dataset_key(cfg: ExperimentConfig) -> str:
    """The dataset name the workload carries: ``data.dataset``, or for ``synthetic`` the
    name of its whole spec (alpha, beta, iid, one device per client, the run's seed)."""
    if cfg.data.dataset != "synthetic":
        return cfg.data.dataset
    from flight_parsl.data.synthetic import SyntheticSpec

    return SyntheticSpec(cfg.data.alpha, cfg.data.beta, cfg.data.iid, cfg.workers, cfg.seed).name()


def _validate_modes(cfg: ExperimentConfig) -> None:
    """Mode, strategy and topology must fit together; strategy parameters in range."""
    s = cfg.strategy
    if cfg.mode not in MODES:
        raise ConfigError(f"config key 'mode': unknown mode {cfg.mode!r}; valid: {', '.join(MODES)}")
    from flight_parsl.fl.strategies import strategy_mode, strategy_modes

    if cfg.mode not in strategy_modes(s.name):
        raise ConfigError(
            f"config key 'mode': strategy {s.name!r} runs in mode {strategy_mode(s.name)!r}, got {cfg.mode!r}"
            f" (--mode {strategy_mode(s.name)})"
        )
    if cfg.sites.aggregate_at not in ("node", "children"):
        raise ConfigError(
            f"config key 'sites.aggregate_at': unknown {cfg.sites.aggregate_at!r}; valid: node, children"
        )
    if cfg.sites.files and cfg.backend != "parsl":
        raise ConfigError(f"config key 'sites.files': several sites need backend parsl, got {cfg.backend!r}")
    if cfg.sites.files and cfg.mode != "sync":
        raise ConfigError(f"config key 'sites.files': several sites run in mode sync, got {cfg.mode!r}")
    if cfg.broadcast not in ("direct", "tree"):
        raise ConfigError(f"config key 'broadcast': unknown {cfg.broadcast!r}; valid: direct, tree")
    if cfg.topology != "flat" and not cfg.topology.startswith("tree:"):
        from pathlib import Path

        if not Path(cfg.topology).is_file():
            raise ConfigError(f"config key 'topology': {cfg.topology!r} is not flat, tree:HEIGHT or an existing YAML file")
    if cfg.mode == "async" and cfg.topology != "flat":
        raise ConfigError(f"config key 'topology': mode 'async' runs on a flat topology, got {cfg.topology!r}")
    if not 0 < s.participation <= 1:
        raise ConfigError(f"config key 'strategy.participation' must be in (0, 1], got {s.participation!r}")
    if s.mu < 0:
        raise ConfigError(f"config key 'strategy.mu' must be >= 0, got {s.mu!r}")
    if not 0 < s.alpha <= 1:
        raise ConfigError(f"config key 'strategy.alpha' must be in (0, 1], got {s.alpha!r}")
    if s.staleness not in ("constant", "polynomial"):
        raise ConfigError(f"config key 'strategy.staleness': unknown {s.staleness!r}; valid: constant, polynomial")
    if cfg.train.slowdown_max < 1:
        raise ConfigError(f"config key 'train.slowdown_max' must be >= 1, got {cfg.train.slowdown_max!r}")
    if s.clients_per_round < 0:
        raise ConfigError(f"config key 'strategy.clients_per_round' must be >= 0, got {s.clients_per_round!r}")
    if s.buffer_size < 1:
        raise ConfigError(f"config key 'strategy.buffer_size' must be >= 1, got {s.buffer_size!r}")
    if not s.server_lr > 0:
        raise ConfigError(f"config key 'strategy.server_lr' must be > 0, got {s.server_lr!r}")


def parse_slots(text: str) -> int | str:
    """``slots``: ``auto``, ``per_client`` or a positive integer."""
    if text in ("auto", "per_client"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ConfigError(f"config key 'slots': expected auto, per_client or a positive integer, got {text!r}")


def parse_client_rounds(key: str, text: str) -> frozenset[tuple[int, int]]:
    """``CLIENT@ROUND,...`` (rounds from 1) as 0-based (round, client) pairs."""
    pairs = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        c, sep, r = item.partition("@")
        if not sep or not r.isdigit() or not c.isdigit() or int(r) < 1:
            raise ConfigError(f"config key {key!r}: {item!r} is not CLIENT@ROUND (rounds count from 1)")
        pairs.add((int(r) - 1, int(c)))
    return frozenset(pairs)


def _validate_engine(cfg: ExperimentConfig) -> None:
    """Slots, planning, round policy and faults."""
    parse_slots(cfg.slots)
    if cfg.plan.clients_per_task < 0:
        raise ConfigError(f"config key 'plan.clients_per_task' must be >= 0, got {cfg.plan.clients_per_task!r}")
    _validate_round(cfg.round)
    kill = parse_client_rounds("faults.kill", cfg.faults.kill)
    parse_client_rounds("faults.hang", cfg.faults.hang)
    if kill and cfg.backend == "thread":
        raise ConfigError("config key 'faults.kill': a slot that kills itself needs its own process (backend parsl)")
    if cfg.faults.hang_s < 0:
        raise ConfigError(f"config key 'faults.hang_s' must be >= 0, got {cfg.faults.hang_s!r}")
    _validate_injection(cfg)
    s = cfg.strategy
    if s.aimd and cfg.mode != "sync":
        raise ConfigError("config key 'strategy.aimd': AIMD epochs need synchronous rounds (mode sync)")
    if s.aimd_start < 1 or s.aimd_max < 0 or (s.aimd_max and s.aimd_max < s.aimd_start):
        raise ConfigError(
            f"config keys 'strategy.aimd_start' / 'strategy.aimd_max': need aimd_start >= 1 and aimd_max 0 (no cap) "
            f"or >= aimd_start, got {s.aimd_start!r} / {s.aimd_max!r}"
        )
    if cfg.train.keep_momentum and cfg.train.momentum == 0:
        raise ConfigError("config key 'train.keep_momentum' needs train.momentum > 0")


LATE_MODES = ("discard", "stale")


def _validate_round(p: RoundConfig) -> None:
    """The round section's ranges; quorum below min_fraction could close a round that cannot stand."""
    if not 0 < p.min_fraction <= 1:
        raise ConfigError(f"config key 'round.min_fraction' must be in (0, 1], got {p.min_fraction!r}")
    if not 0 < p.quorum <= 1:
        raise ConfigError(f"config key 'round.quorum' must be in (0, 1], got {p.quorum!r}")
    if p.quorum < p.min_fraction:
        raise ConfigError(
            f"config key 'round.quorum': {p.quorum!r} is below round.min_fraction={p.min_fraction!r}; a round closed "
            "at its quorum could not stand (use quorum >= min_fraction)"
        )
    if p.late not in LATE_MODES:
        raise ConfigError(f"config key 'round.late': unknown {p.late!r}; valid: {', '.join(LATE_MODES)}")
    if not 0 < p.stale_weight <= 1:
        raise ConfigError(f"config key 'round.stale_weight' must be in (0, 1], got {p.stale_weight!r}")
    if p.retries < 0:
        raise ConfigError(f"config key 'round.retries' must be >= 0, got {p.retries!r}")
    if p.backoff_s < 0:
        raise ConfigError(f"config key 'round.backoff_s' must be >= 0, got {p.backoff_s!r}")
    if p.max_missed is not None and p.max_missed < 0:
        raise ConfigError(f"config key 'round.max_missed' must be >= 0 or null (never remove), got {p.max_missed!r}")
    if p.readmit_after < 1:
        raise ConfigError(f"config key 'round.readmit_after' must be >= 1, got {p.readmit_after!r}")


def parse_kill_slots(text: str) -> list[tuple[float, str, float]]:
    """``faults.kill_slots``: ``K@ROUND`` or ``K@Ts`` items as (count or fraction, "round" | "time", when).

    K >= 1 is a number of worker processes, 0 < K < 1 a fraction of the slots; rounds
    count from 1 (returned 0-based), times are seconds after the first round started.
    """
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        k, sep, when = item.partition("@")
        try:
            count = float(k)
            at_time = when.endswith("s")
            moment = float(when[:-1]) if at_time else int(when)
        except ValueError:
            count, moment, at_time = -1.0, -1, False
        valid_count = 0 < count < 1 or (count >= 1 and count.is_integer())
        if not sep or not valid_count or moment < (0 if at_time else 1):
            raise ConfigError(
                f"config key 'faults.kill_slots': {item!r} is not K@ROUND or K@Ts (K a count >= 1 or a fraction "
                "in (0, 1), rounds from 1, T seconds >= 0)"
            )
        out.append((count, "time" if at_time else "round", float(moment) if at_time else float(moment - 1)))
    return out


def parse_rounds(key: str, text: str) -> frozenset[int]:
    """A comma list of rounds (from 1) as 0-based round indices."""
    out = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.isdigit() or int(item) < 1:
            raise ConfigError(f"config key {key!r}: {item!r} is not a round number (rounds count from 1)")
        out.add(int(item) - 1)
    return frozenset(out)


def parse_clients(key: str, text: str, workers: int) -> frozenset[int]:
    """A comma list of client ids below ``workers``."""
    out = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.isdigit() or int(item) >= workers:
            raise ConfigError(f"config key {key!r}: {item!r} is not a client id in 0..{workers - 1}")
        out.add(int(item))
    return frozenset(out)


def _validate_injection(cfg: ExperimentConfig) -> None:
    """Faults the coordinator injects: real kills need processes, a Redis restart a managed server."""
    f = cfg.faults
    kills = parse_kill_slots(f.kill_slots)
    if kills and cfg.backend != "parsl":
        raise ConfigError("config key 'faults.kill_slots': killing worker processes needs backend parsl")
    if f.kill_after_s < 0:
        raise ConfigError(f"config key 'faults.kill_after_s' must be >= 0, got {f.kill_after_s!r}")
    if parse_rounds("faults.redis_stop", f.redis_stop) and (cfg.transfer.kind != "redis" or cfg.transfer.redis):
        raise ConfigError(
            "config key 'faults.redis_stop': stopping Redis needs transfer.kind=redis with the run's own managed "
            f"server (transfer.redis unset), got transfer.kind={cfg.transfer.kind!r}, transfer.redis={cfg.transfer.redis!r}"
        )
    if parse_clients("faults.slow", f.slow, cfg.workers) and cfg.train.mode == "none":
        raise ConfigError("config key 'faults.slow': slowing clients stretches their training; needs train.mode=local")
    if f.slow_factor < 1:
        raise ConfigError(f"config key 'faults.slow_factor' must be >= 1, got {f.slow_factor!r}")


#: Keys that say where a run writes or finds things, not what it runs: left out of config_hash,
#: so a sweep resumed in a new job (another head node's Redis, other scratch paths) finds its cells.
LOCATION_KEYS = ("out", "data.root", "transfer.redis", "transfer.file_dir")


def config_hash(cfg: ExperimentConfig) -> str:
    """A stable 16-hex-digit hash of the resolved config, without :data:`LOCATION_KEYS`.

    Two configs have the same hash exactly when they run the same experiment (workers,
    rounds, seed, model, data, training, strategy, topology, transfer kind, site...);
    the sweep's results table keys its resume on it.
    """
    values = cfg.to_dict()
    for key in LOCATION_KEYS:
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node[part]
        node.pop(leaf)
    values["parsl_config"] = _site_identity(values.get("parsl_config"))
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _site_identity(parsl_config: Any) -> Any:
    """What a site file contributes to :func:`config_hash`: its parsed content, not its path.

    A batch job runs from a per-job copy of its site file, so the same experiment resubmitted
    names another path; a bare site name or an unreadable path stays as it is.
    """
    if not isinstance(parsl_config, str):
        return parsl_config
    path = Path(parsl_config).expanduser()
    try:
        return {"site": yaml.safe_load(path.read_text(encoding="utf-8"))} if path.is_file() else parsl_config
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return parsl_config


def save_yaml(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
