"""The experiment config: one typed schema, built once, validated once.

A whole experiment is one :class:`ExperimentConfig`: standard dataclasses whose
type hints carry their constraints (``Annotated[int, Field(gt=0)]``, ``Literal``)
and are checked by pydantic through :func:`flight_parsl.config.schema.check`, the
one idiom every user-written file goes through. It is built from the defaults,
then an optional experiment YAML (or a preset), then command-line flags, then
``key.sub=value`` overrides: the layers are merged as plain data and validated
once, so the loops receive typed values (lists of client ids, ``CLIENT@ROUND``
pairs, slot kills) and never parse text mid-run.

Types decide the override grammar (see :mod:`flight_parsl.cli.grid`): a key whose
type is a list (``sites.files``, ``peer.private_models``, ``faults.kill``,
``faults.hang``, ``faults.kill_slots``, ``faults.redis_stop``, ``faults.slow``)
takes ``key=a,b`` as one two-item list; scalar keys sweep.

Every error names the key, the value and what is allowed, in the format of
:mod:`flight_parsl.config.schema`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, PlainSerializer

from flight_parsl.config.schema import STRICT, CommaList, check, dump, key_error
from flight_parsl.core.errors import ConfigError, unknown_name
from flight_parsl.core.peer import PeerParams
from flight_parsl.data.partition import PartitionSpec
from flight_parsl.fl.policy import RoundPolicy

#: Where the experiment's errors say they come from.
SOURCE = "config"

Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


# --- typed values of the faults section -----------------------------------------


@dataclass(frozen=True, order=True)
class ClientAt:
    """``CLIENT@ROUND``: a client in one round (rounds count from 1)."""

    client: int
    round: int

    def __str__(self) -> str:
        return f"{self.client}@{self.round}"


def _client_at(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    c, sep, r = value.strip().partition("@")
    if not sep or not c.isdigit() or not r.isdigit() or int(r) < 1:
        raise ValueError(f"{value!r} is not CLIENT@ROUND (rounds count from 1)")
    return ClientAt(int(c), int(r))


@dataclass(frozen=True)
class SlotKill:
    """``K@ROUND`` or ``K@Ts``: SIGKILL K worker processes (a fraction of the slots when
    K < 1) in round ROUND (from 1), or T seconds after the first round started."""

    count: float
    at: Literal["round", "time"]
    when: float

    def __str__(self) -> str:
        count = int(self.count) if self.count >= 1 else self.count
        return f"{count}@{self.when:g}s" if self.at == "time" else f"{count}@{int(self.when)}"


def _slot_kill(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    k, sep, when = value.strip().partition("@")
    try:
        count = float(k)
        at_time = when.endswith("s")
        moment = float(when[:-1]) if at_time else int(when)
    except ValueError:
        count, moment, at_time = -1.0, -1, False
    if not sep or not (0 < count < 1 or (count >= 1 and count.is_integer())) or moment < (0 if at_time else 1):
        raise ValueError(
            f"{value!r} is not K@ROUND or K@Ts (K a count >= 1 or a fraction in (0, 1), rounds from 1, T seconds >= 0)"
        )
    return SlotKill(count, "time" if at_time else "round", float(moment))


@dataclass(frozen=True)
class RedisStop:
    """``ROUND`` or ``SITE@ROUND`` (``faults.redis_stop``): SIGKILL the run's managed redis-server
    in round ROUND (from 1); with a store per site (``transfer.per_site``) ``ROUND`` stops every
    site's server and ``SITE@ROUND`` the server of site SITE (its label) only."""

    round: int
    site: str | None = None

    def __str__(self) -> str:
        return str(self.round) if self.site is None else f"{self.site}@{self.round}"

    @property
    def shown(self) -> int | str:
        """As config.yaml and errors show it: the round alone (an int, as before sites), or ``SITE@ROUND``."""
        return self.round if self.site is None else str(self)


def _redis_stop(value: Any) -> Any:
    if isinstance(value, RedisStop):
        return value
    text = str(value).strip()
    site, sep, r = text.rpartition("@")
    if isinstance(value, bool) or not r.isdigit() or int(r) < 1 or (sep and (not site or any(c.isspace() for c in site))):
        raise ValueError(f"{value!r} is not ROUND or SITE@ROUND (rounds count from 1, SITE a site's label)")
    return RedisStop(int(r), site if sep else None)


ClientRound = Annotated[ClientAt, BeforeValidator(_client_at), PlainSerializer(str)]
Stop = Annotated[RedisStop, BeforeValidator(_redis_stop), PlainSerializer(lambda v: v.shown)]
Kill = Annotated[SlotKill, BeforeValidator(_slot_kill), PlainSerializer(str)]
Slots = Annotated[int, Field(gt=0)] | Literal["auto", "per_client"]


# --- sections -------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the data comes from.

    ``alpha``, ``beta``, ``iid``: the ``synthetic`` dataset's parameters (FedProx's
    Synthetic(alpha, beta); one generated device per client, seeded by ``seed``).
    """

    __pydantic_config__ = STRICT

    dataset: str = "digits"
    root: str | None = None
    alpha: NonNegativeFloat = 1.0
    beta: NonNegativeFloat = 1.0
    iid: bool = False


@dataclass
class ModelConfig:
    """Which model, and optional overrides of its input shape and classes.

    Unset fields follow the dataset when training, and the model's reference
    architecture (the published sizes) when ``train.mode`` is ``none``.
    """

    __pydantic_config__ = STRICT

    name: str = "mlp"
    in_channels: Positive | None = None
    image_size: Positive | None = None
    num_classes: Positive | None = None
    extra_blocks: NonNegative = 0


@dataclass
class TrainConfig:
    """Local training on each worker (SGD; ``keep_momentum`` keeps each client's momentum
    buffer across the rounds it takes part in; ``slowdown_max`` stretches each client's
    training by a fixed factor in [1, K]; ``eval_train`` adds the global model's loss on the
    whole training split to rounds.csv)."""

    __pydantic_config__ = STRICT

    mode: Literal["local", "none"] = "local"
    epochs: Positive = 2
    batch_size: Positive = 16
    lr: PositiveFloat = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    threads: Positive = 1
    eval_batch_size: Positive = 1024
    slowdown_max: Annotated[float, Field(ge=1)] = 1.0
    keep_momentum: bool = False
    weight_decay: NonNegativeFloat = 0.0
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

    __pydantic_config__ = STRICT

    name: str = "fedavg"
    participation: Annotated[float, Field(gt=0, le=1)] = 1.0
    clients_per_round: NonNegative = 0
    mu: NonNegativeFloat = 0.3
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.5
    staleness: Literal["constant", "polynomial"] = "constant"
    staleness_exponent: float = 0.5
    buffer_size: Positive = 4
    server_lr: PositiveFloat = 1.0
    stragglers: Fraction = 0.0
    drop_stragglers: bool = False
    aimd: bool = False
    aimd_start: Positive = 4
    aimd_max: NonNegative = 0


@dataclass
class PlanConfig:
    """How sampled clients are packed into tasks.

    ``clients_per_task``: 0 spreads the round's clients over the slots (one task
    per slot); K packs K per task. ``preaggregate``: a linear strategy's task folds
    its clients into one partial in the slot (false: every client's result travels).
    """

    __pydantic_config__ = STRICT

    clients_per_task: NonNegative = 0
    preaggregate: bool = True


@dataclass
class FaultsConfig:
    """Injected faults, all real (see flight_parsl.processes.injector and flight_parsl.worker.faults).

    In the slot, lists of CLIENT@ROUND (rounds from 1), first attempt only:
    ``kill``: the slot running that client SIGKILLs itself (parsl backend only).
    ``hang``: the slot sleeps ``hang_s`` seconds at that client.

    From the coordinator: ``kill_slots``: a list of K@ROUND (K worker processes, or a
    fraction of the slots when K < 1, SIGKILLed ``kill_after_s`` seconds into that
    round) or K@Ts (T seconds after the first round started); the pids are the ones
    the run recorded (parsl backend, local site). ``redis_stop``: rounds in which the
    run's managed redis-server is SIGKILLed ``kill_after_s`` into the round, and
    started again on its port ``redis_down_s`` seconds later (< 0: never); with a store per
    site (``transfer.per_site``) ``ROUND`` stops every site's server, ``SITE@ROUND`` the
    server of site SITE only. ``slow``:
    clients whose training is stretched ``slow_factor`` times, every round.
    """

    __pydantic_config__ = STRICT

    kill: CommaList[ClientRound] = field(default_factory=list)
    hang: CommaList[ClientRound] = field(default_factory=list)
    hang_s: NonNegativeFloat = 30.0
    kill_slots: CommaList[Kill] = field(default_factory=list)
    kill_after_s: NonNegativeFloat = 0.5
    redis_stop: CommaList[Stop] = field(default_factory=list)
    redis_down_s: float = 1.0
    slow: CommaList[NonNegative] = field(default_factory=list)
    slow_factor: Annotated[float, Field(ge=1)] = 4.0


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
    ``redis_tls``: whether Redis speaks TLS. ``auto`` (the default): a managed server does
    when it listens on an address other hosts reach (a site on a virtual host, a cluster's
    compute nodes), not on loopback; an external server (``redis``) does not. ``true``:
    always (a managed server gets a CA and certificate made for the run; an external one
    is checked against the CA in ``FLIGHT_PARSL_REDIS_CA_FILE``, else the system's).
    ``false``: never.
    ``per_site``: a store per site (several sites on virtual hosts, ``kind=redis``, mode
    ``sync``): a managed redis-server inside each site's namespace keeps the results of the
    site's clients, so only the site's partial and one copy of the global model cross the
    site's link each round (docs/sites-and-clusters.md, "A store per site").

    Codecs (see flight_parsl.transfer.codecs): ``codec`` encodes what tasks send up, the
    update (delta from the global model) of a train task's clients, folded first, and an
    aggregator's partial: ``none``, ``fp16``, ``int8`` (blockwise absmax, ``codec_block``
    values per block), ``topk:FRACTION`` or a registered name. ``codec_down`` encodes the
    broadcast model (not a sparse codec). ``error_feedback``: each client (and each
    aggregator of a tree) keeps what the codec left out in the run's client state and adds
    it to its next update. In mode
    ``decentralized`` ``codec`` (dense: fp16, int8) encodes every model peers exchange.
    """

    __pydantic_config__ = STRICT

    kind: str = "auto"
    redis: str | None = None
    file_dir: str | None = None
    cache_size: NonNegative = 1
    redis_timeout: PositiveFloat = 30.0
    redis_tls: Literal["auto", True, False] = "auto"
    codec: str = "none"
    codec_down: str = "none"
    codec_block: Positive = 256
    error_feedback: bool = False
    per_site: bool = False


@dataclass
class SitesConfig:
    """Several sites in one run (see flight_parsl.execution.sites).

    ``files``: site YAMLs, one executor each (the first is the default site, for nodes
    without ``site:``); empty: the one site of ``parsl_config``. ``aggregate_at``:
    ``node`` runs an aggregator at its own site (its ``site:``, else its parent's);
    ``children`` at the site of its children.
    """

    __pydantic_config__ = STRICT

    files: CommaList[str] = field(default_factory=list)
    aggregate_at: Literal["node", "children"] = "node"


@dataclass(frozen=True)
class PeerConfig(PeerParams):
    """Decentralized mode (``--mode decentralized``): the method's hyperparameters (defaults are
    ProxyFL's: Adam with lr 0.001, expected batch 250, one local epoch per round, DML weights 0.5,
    DP-SGD on the shared model with clipping norm 1.0, noise multiplier 1.0 and delta 1 / n) and
    ``private_models``, the private models cycled over the clients (empty: ``--model``).
    ``train.*`` keys (SGD) do not apply in this mode."""

    __pydantic_config__ = STRICT

    alpha: Fraction = 0.5
    beta: Fraction = 0.5
    lr: PositiveFloat = 0.001
    batch_size: Positive = 250
    epochs: Positive = 1
    clip: PositiveFloat = 1.0
    noise: NonNegativeFloat = 1.0
    delta: Annotated[float, Field(ge=0, lt=1)] = 0.0
    test_samples: Positive = 200
    private_models: CommaList[str] = field(default_factory=list)

    def private_model_names(self, default: str) -> list[str]:
        """The private models' names, in client order (cycled)."""
        return list(self.private_models) or [default]


@dataclass
class ExperimentConfig:
    """One experiment: the engine's whole input."""

    __pydantic_config__ = STRICT

    workers: Positive = 4
    rounds: Positive = 3
    seed: int = 0
    mode: Literal["sync", "async", "decentralized"] = "sync"
    topology: str = "flat"
    broadcast: Literal["direct", "tree"] = "direct"
    backend: Literal["parsl", "thread", "process"] = "parsl"
    slots: Slots = "auto"
    parsl_config: str | None = None
    out: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    round: RoundPolicy = field(default_factory=RoundPolicy)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    sites: SitesConfig = field(default_factory=SitesConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data (what config.yaml holds; lists of ``CLIENT@ROUND`` as text)."""
        return dump(ExperimentConfig, self)


#: Section name -> its type, for messages and the override grammar.
SECTIONS = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}


# --- building -----------------------------------------------------------------


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


def merge(into: dict[str, Any], values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``values`` into ``into`` (a later layer wins key by key); ``policy`` is ``round``.

    Raises:
        ConfigError: a section given a value that is not a mapping.
    """
    if not isinstance(values, dict):
        raise key_error(SOURCE, prefix.rstrip(".") or "<root>", values, "must be a mapping")
    if not prefix and "policy" in values:
        values = _round_alias(values)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value, f"{prefix}{key}.")
        else:
            into[key] = value
    return into


def _round_alias(values: dict[str, Any]) -> dict[str, Any]:
    """Accept the ``policy`` section as the ``round`` section (its earlier name), with a warning."""
    values = dict(values)
    alias = values.pop("policy")
    warnings.warn("config section 'policy' is deprecated: write 'round' (policy.X= -> round.X=)",
                  FutureWarning, stacklevel=4)
    if not isinstance(alias, dict):
        raise key_error(SOURCE, "policy", alias, "must be a mapping")
    merged = dict(values.get("round") or {})
    for key, value in alias.items():
        if key in merged:
            raise ConfigError(f"config keys 'policy.{key}' and 'round.{key}' are the same key; give one")
        merged[key] = value
    values["round"] = merged
    return values


def build_config(
    file: str | Path | None = None,
    values: list[dict[str, Any]] | None = None,
    overrides: list[str] | None = None,
) -> ExperimentConfig:
    """Defaults, then ``file``, then nested ``values`` dicts, then ``key=value`` overrides,
    merged as data and validated once."""
    data: dict[str, Any] = {}
    if file is not None:
        merge(data, load_yaml(file))
    for nested in values or []:
        merge(data, nested)
    for text in overrides or []:
        merge(data, parse_override(text))
    return from_data(data)


def from_data(data: dict[str, Any]) -> ExperimentConfig:
    """The validated config of plain nested data (unset keys take their defaults)."""
    cfg = check(ExperimentConfig, data, SOURCE)
    validate(cfg)
    cfg.transfer.kind = resolve_transfer(cfg)
    _check_feedback_state(cfg)
    _check_per_site(cfg)
    return cfg


def typed_only(data: dict[str, Any]) -> ExperimentConfig:
    """The typed config of plain data, each key checked on its own but nothing across keys and no
    file opened (a run directory copied elsewhere, whose site or topology files moved)."""
    return check(ExperimentConfig, merge({}, data), SOURCE)


def with_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """A new validated config: ``cfg`` with ``key=value`` overrides applied."""
    data = cfg.to_dict()
    for text in overrides:
        merge(data, parse_override(text))
    return from_data(data)


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config that continues the run directory ``run_dir``: its own config.yaml, its injected
    faults dropped (they happened), then ``overrides``.

    Raises:
        ConfigError: no config.yaml there.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"resume {run_dir}: no config.yaml there; give the directory of a run")
    values = load_yaml(run_dir / "config.yaml")
    values.pop("faults", None)
    values["out"] = str(run_dir)
    return build_config(values=[values], overrides=overrides)


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


def parse_slots(value: int | str) -> int | str:
    """``slots`` as the config holds it: ``auto``, ``per_client`` or a positive integer."""
    return check(Slots, value, SOURCE)  # type: ignore[arg-type]  # a type alias, not a class


# --- checks across keys -------------------------------------------------------------


def _fail(key: str, value: Any, problem: str) -> ConfigError:
    return key_error(SOURCE, key, value, problem)


def _known(key: str, kind: str, value: str, names: Any) -> None:
    if value not in names:
        raise _fail(key, value, f"unknown {kind}; valid names: {', '.join(sorted(names))}")


def validate(cfg: ExperimentConfig) -> None:
    """Check what single types do not: registry names, and keys that must fit together."""
    from flight_parsl.core.model_spec import model_names
    from flight_parsl.data import dataset_names
    from flight_parsl.fl.strategies import strategy_mode, strategy_modes, strategy_names
    from flight_parsl.transfer import TRANSFER_KINDS

    _known("data.dataset", "dataset", cfg.data.dataset, dataset_names())
    _known("model.name", "model", cfg.model.name, model_names())
    for name in cfg.peer.private_models:
        _known("peer.private_models", "model", name, model_names())
    _known("strategy.name", "strategy", cfg.strategy.name, strategy_names())
    _known("transfer.kind", "transfer", cfg.transfer.kind, (*TRANSFER_KINDS, "auto"))
    if cfg.transfer.redis is not None:
        from flight_parsl.transfer.redis_server import RedisAddress

        try:
            RedisAddress.parse(cfg.transfer.redis)
        except ConfigError as exc:
            raise _fail("transfer.redis", cfg.transfer.redis, str(exc)) from None
    if cfg.data.dataset == "synthetic":
        from flight_parsl.data.synthetic import SyntheticSpec

        SyntheticSpec(cfg.data.alpha, cfg.data.beta, cfg.data.iid, cfg.workers, cfg.seed)
    s = cfg.strategy
    if cfg.mode not in strategy_modes(s.name):
        raise _fail("mode", cfg.mode, f"strategy {s.name!r} runs in mode {strategy_mode(s.name)!r} "
                    f"(--mode {strategy_mode(s.name)})")
    _validate_layout(cfg)
    _validate_faults(cfg)
    _validate_codecs(cfg)
    if s.aimd and cfg.mode != "sync":
        raise _fail("strategy.aimd", s.aimd, "AIMD epochs need synchronous rounds (mode sync)")
    if s.aimd_max and s.aimd_max < s.aimd_start:
        raise _fail("strategy.aimd_max", s.aimd_max, f"must be 0 (no cap) or >= strategy.aimd_start ({s.aimd_start})")
    if cfg.train.keep_momentum and cfg.train.momentum == 0:
        raise _fail("train.keep_momentum", True, "needs train.momentum > 0")
    if cfg.mode == "decentralized":
        if cfg.train.mode != "local":
            raise _fail("train.mode", cfg.train.mode, "mode 'decentralized' trains (train.mode=local)")
        if cfg.workers < 2:
            raise _fail("workers", cfg.workers, "mode 'decentralized' needs at least 2 clients")


def _validate_layout(cfg: ExperimentConfig) -> None:
    """Topology, sites and mode must fit together."""
    if cfg.sites.files and cfg.backend != "parsl":
        raise _fail("sites.files", cfg.sites.files, f"several sites need backend parsl, got {cfg.backend!r}")
    if cfg.sites.files and cfg.mode != "sync":
        raise _fail("sites.files", cfg.sites.files, f"several sites run in mode sync, got {cfg.mode!r}")
    if cfg.topology != "flat" and not re.fullmatch(r"tree:\d+", cfg.topology) and not Path(cfg.topology).is_file():
        raise _fail("topology", cfg.topology, "is not flat, tree:HEIGHT or an existing YAML file")
    if cfg.mode == "async" and cfg.topology != "flat":
        raise _fail("topology", cfg.topology, "mode 'async' runs on a flat topology")
    if cfg.mode == "decentralized" and cfg.topology != "flat":
        raise _fail("topology", cfg.topology, "mode 'decentralized' uses its own peer graph")


def _validate_codecs(cfg: ExperimentConfig) -> None:
    """Codecs must exist, take their argument, and fit the mode and the strategy."""
    from flight_parsl.fl.strategies import SYNC_STRATEGIES
    from flight_parsl.transfer.codecs import make_codec

    t = cfg.transfer
    codecs = {}
    for key, spec in (("transfer.codec", t.codec), ("transfer.codec_down", t.codec_down)):
        try:
            codecs[key] = make_codec(spec, t.codec_block)
        except ValueError as exc:
            raise _fail(key, spec, str(exc)) from None
    if codecs["transfer.codec_down"].sparse:
        raise _fail("transfer.codec_down", t.codec_down, "a sparse codec keeps part of an update; the broadcast is a "
                    "whole model: use none, fp16 or int8")
    if t.error_feedback and t.codec == "none":
        raise _fail("transfer.error_feedback", True, "error feedback keeps what a lossy transfer.codec left out; "
                    "set transfer.codec (e.g. topk:0.1)")
    if cfg.mode == "decentralized":  # peers exchange whole models: a dense codec on each, nothing fed back
        if codecs["transfer.codec"].sparse:
            raise _fail("transfer.codec", t.codec, "peers of mode 'decentralized' exchange whole proxy models, not "
                        "updates: a sparse codec would drop most of a model; use fp16 or int8")
        if t.codec_down != "none":
            raise _fail("transfer.codec_down", t.codec_down, "mode 'decentralized' has no broadcast: transfer.codec "
                        "encodes every model peers exchange (and FedAvg / FML's mean)")
        if t.error_feedback:
            raise _fail("transfer.error_feedback", True, "peers of mode 'decentralized' exchange whole proxy models; "
                        "a model's encode error is not an update left out for later")
    for key, spec in (("transfer.codec", t.codec), ("transfer.codec_down", t.codec_down)):
        if spec == "none":
            continue
        strategy = SYNC_STRATEGIES.get(cfg.strategy.name)
        if key == "transfer.codec" and strategy is not None and not strategy.linear:
            raise _fail(key, spec, f"a codec sends updates (deltas) folded as a weighted mean; strategy "
                        f"{cfg.strategy.name!r} is not linear and cannot use them")


def _check_feedback_state(cfg: ExperimentConfig) -> None:
    """Error feedback needs a client state every slot reaches (after ``transfer.kind`` is resolved)."""
    t = cfg.transfer
    if t.error_feedback and t.kind == "parsl" and t.file_dir is None:
        raise _fail("transfer.error_feedback", True, "error feedback keeps each client's residual in the run's client "
                    "state, which transfer.kind=parsl keeps in this host's temp dir: give transfer.file_dir (a "
                    "directory every slot sees) or use transfer.kind=redis")


def _check_per_site(cfg: ExperimentConfig) -> None:
    """A store per site needs several sites (hence mode sync) and managed Redis servers."""
    t = cfg.transfer
    if not t.per_site:
        return
    if len(cfg.sites.files) < 2:
        raise _fail("transfer.per_site", True, "a store per site needs several sites: set sites.files (two or "
                    "more site files, each on a virtual_host)")
    if t.kind != "redis":
        raise _fail("transfer.per_site", True, f"a store per site is a managed redis-server in each site's "
                    f"namespace: needs transfer.kind=redis, got {t.kind!r}")
    if t.redis is not None:
        raise _fail("transfer.per_site", True, f"each site gets a managed redis-server of its own: leave "
                    f"transfer.redis (--redis) unset, got {t.redis!r}")


def _validate_faults(cfg: ExperimentConfig) -> None:
    """Faults need what they act on: processes to kill, a managed Redis to stop, training to slow."""
    f = cfg.faults
    if f.kill and cfg.backend == "thread":
        raise _fail("faults.kill", [str(k) for k in f.kill], "a slot that kills itself needs its own process (backend parsl)")
    if f.kill_slots and cfg.backend != "parsl":
        raise _fail("faults.kill_slots", [str(k) for k in f.kill_slots], "killing worker processes needs backend parsl")
    stops = [s.shown for s in f.redis_stop]
    if f.redis_stop and (cfg.transfer.kind != "redis" or cfg.transfer.redis):
        raise _fail(
            "faults.redis_stop", stops,
            "stopping Redis needs transfer.kind=redis with the run's own managed server (transfer.redis unset), "
            f"got transfer.kind={cfg.transfer.kind!r}, transfer.redis={cfg.transfer.redis!r}",
        )
    named = sorted({s.site for s in f.redis_stop if s.site is not None})
    if named and not cfg.transfer.per_site:
        raise _fail("faults.redis_stop", stops, f"SITE@ROUND stops one site's own redis-server, which only "
                    f"transfer.per_site=true runs (a store per site); give the round alone to stop the run's one "
                    f"server (site(s) named: {', '.join(named)})")
    for client in f.slow:
        if client >= cfg.workers:
            raise _fail("faults.slow", f.slow, f"client {client} is not a client id in 0..{cfg.workers - 1}")
    if f.slow and cfg.train.mode == "none":
        raise _fail("faults.slow", f.slow, "slowing clients stretches their training; needs train.mode=local")


def dataset_key(cfg: ExperimentConfig) -> str:
    """The dataset name the workload carries: ``data.dataset``, or for ``synthetic`` the
    name of its whole spec (alpha, beta, iid, one device per client, the run's seed)."""
    if cfg.data.dataset != "synthetic":
        return cfg.data.dataset
    from flight_parsl.data.synthetic import SyntheticSpec

    return SyntheticSpec(cfg.data.alpha, cfg.data.beta, cfg.data.iid, cfg.workers, cfg.seed).name()


#: Keys that say where a run writes or finds things, not what it runs: left out of config_hash,
#: so a sweep resumed in a new job (another head node's Redis, other scratch paths) finds its cells.
LOCATION_KEYS = ("out", "data.root", "transfer.redis", "transfer.file_dir")


def config_hash(cfg: ExperimentConfig) -> str:
    """A stable 16-hex-digit hash of the resolved config, without :data:`LOCATION_KEYS`.

    Two configs have the same hash exactly when they run the same experiment (workers,
    rounds, seed, model, data, training, strategy, topology, transfer kind, site...);
    the sweep's results table keys its resume on it.
    """
    values = _hash_compatible(cfg.to_dict())
    for key in LOCATION_KEYS:
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node[part]
        node.pop(leaf)
    values["parsl_config"] = _site_identity(values.get("parsl_config"))
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: List keys, as the config held them before they were typed lists: a comma string (empty: its
#: default). Hashes keep that text, so results tables written before resume their cells.
_TEXT_LISTS = {"sites.files": None, "peer.private_models": "", "faults.kill": "", "faults.hang": "",
               "faults.kill_slots": "", "faults.redis_stop": "", "faults.slow": ""}
#: Keys added since hashes were first written, left out of the hash while at these defaults.
_ADDED_KEYS = {"round.first_deadline_s": 300.0, "round.per_client_s": 5.0, "round.min_deadline_s": 60.0,
               "round.slack": 5.0, "transfer.codec": "none", "transfer.codec_down": "none",
               "transfer.codec_block": 256, "transfer.error_feedback": False, "transfer.redis_tls": "auto",
               "transfer.per_site": False}


def _hash_compatible(values: dict[str, Any]) -> dict[str, Any]:
    """The config's data as :func:`config_hash` has always seen it (see :data:`_TEXT_LISTS`)."""
    for key, empty in _TEXT_LISTS.items():
        section, leaf = key.split(".")
        items = values[section][leaf]
        values[section][leaf] = ",".join(str(i) for i in items) if items else empty
    for key, default in _ADDED_KEYS.items():
        section, leaf = key.split(".")
        if values[section][leaf] == default:
            values[section].pop(leaf)
    values["slots"] = str(values["slots"])
    return values


def checkpoint_hash(cfg: ExperimentConfig) -> str:
    """The config hash a checkpoint is tied to: the experiment without its injected faults
    (a resumed run does not inject again what already happened)."""
    return config_hash(dataclasses.replace(cfg, faults=FaultsConfig()))


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
