"""The public Python API: run an experiment, a sweep, or several runs on one executor.

What notebooks, artifacts/ and analysis/ import (the engine, execution, worker and
transfer packages are internal)::

    import flight_parsl

    result = flight_parsl.run({"workers": 4, "rounds": 2, "backend": "thread"}, "train.mode=none")
    result.rounds["test_acc"]            # pandas frames of rounds.csv, tasks.csv, faults.csv
    result.summary["prime2end"]          # summary.json
    again = flight_parsl.load_run(result.run_dir)

    with flight_parsl.Pool({"backend": "parsl", "workers": 4}) as pool:   # one DataFlowKernel ...
        a = flight_parsl.run(cfg_a, pool=pool)                            # ... for several runs
        b = flight_parsl.run(cfg_b, pool=pool)                            # b.summary["dfk_reused"]

    table = flight_parsl.sweep(base, {"workers": [2, 8], "transfer.kind": ["parsl", "redis"]}, trials=2,
                               out="runs/sweep")

A *config* is a path to an experiment YAML, a dict of config values (nested like the
YAML), or an :class:`~flight_parsl.config.experiment.ExperimentConfig`; *overrides* are
``key.sub=value`` strings applied after it, as on the command line. Everything here
raises the package's own errors (:class:`ConfigError` for a bad config, exit status 2 on
the command line; :class:`RoundError` when a round cannot stand; ...), all subclasses of
:class:`FlightParslError`. A run that fails still leaves its run directory, with every
finished row and a summary.json that says ``failed``: :func:`load_run` reads it.
"""

from __future__ import annotations

import copy
import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Union

from flight_parsl.core.errors import (
    ConfigError, DataError, ExecutorError, FlightParslError, RoundError, TaskError, TransferError,
)

if TYPE_CHECKING:
    import pandas as pd

    from flight_parsl.config.experiment import ExperimentConfig

__all__ = [
    "ConfigError", "DataError", "ExecutorError", "FlightParslError", "Pool", "RoundError", "RunResult",
    "TaskError", "TransferError", "check", "client_slowdowns", "describe", "initial_metrics",
    "initial_model", "link_arg", "load_config", "load_run", "run", "shaped_sites", "sweep", "two_site_topology",
]

#: What ``config`` may be: a YAML path, a dict of values, or a typed config.
ConfigLike = Union[str, "os.PathLike[str]", dict, "ExperimentConfig"]

#: The keys :func:`describe` shows by default: what tells two runs apart at a glance.
DESCRIBE_KEYS = (
    "workers", "rounds", "mode", "model.name", "data.dataset", "strategy.name", "topology", "backend", "slots",
    "transfer.kind", "train.mode", "seed", "out",
)


# --------------------------------------------------------------------------- sites over shaped links


def link_arg(text: str) -> dict[str, str]:
    """A command line's link, as a site's ``link:`` mapping: ``RATE,DELAY`` (``100mbit,20ms``) or
    ``RATE``; ``unshaped`` (or nothing) gives ``{}``. The site loader checks the units.

    Raises:
        ValueError: not one or two comma-separated words.
    """
    if text in ("", "unshaped"):
        return {}
    parts = [t.strip() for t in text.split(",")]
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"link {text!r}: expected unshaped, RATE or RATE,DELAY such as 100mbit,20ms")
    return dict(zip(("rate", "delay"), parts))


def shaped_sites(files: list[Path], link: dict[str, str], where: Path, **changes: Any) -> list[Path]:
    """Copies of the site YAML ``files`` in ``where``: each site on a virtual host given ``link``
    (none when it is empty) and every site the keys in ``changes``; their paths, in order."""
    import yaml

    where.mkdir(parents=True, exist_ok=True)
    out = []
    for src in map(Path, files):
        site = yaml.safe_load(src.read_text()) | changes
        if link and site.get("virtual_host"):
            site["link"] = dict(link)
        dst = where / src.name
        dst.write_text(yaml.safe_dump(site, sort_keys=False))
        out.append(dst)
    return out


def two_site_topology(where: Path, clients: int, first: int, sites: tuple[str, str] = ("site-a", "site-b")) -> Path:
    """A flat topology file in ``where``: ``clients`` workers straight under the coordinator, the first
    ``first`` of them at ``sites[0]``, the rest at ``sites[1]``; its path."""
    import yaml

    topo = {"description": "two sites straight under the coordinator", "nodes": [
        {"name": "coordinator", "kind": "coordinator", "children": [f"w{i}" for i in range(clients)]},
        *({"name": f"w{i}", "kind": "worker", "site": sites[0] if i < first else sites[1]} for i in range(clients))]}
    path = where / "two-sites.yaml"
    path.write_text(yaml.safe_dump(topo, sort_keys=False))
    return path


# --------------------------------------------------------------------------- configs


def load_config(source: ConfigLike, *overrides: str) -> ExperimentConfig:
    """The validated experiment config of ``source`` with ``overrides`` applied.

    ``source``: a path to an experiment YAML, a dict of config values, or an
    ExperimentConfig (copied, never changed). A path to a run directory means the
    config.yaml inside it.

    Raises:
        ConfigError: a missing file, an unknown key, a bad value.
    """
    from flight_parsl.config.experiment import ExperimentConfig, build_config

    if isinstance(source, ExperimentConfig):
        if not overrides:
            return copy.deepcopy(source)
        return build_config(values=[source.to_dict()], overrides=list(overrides))
    if isinstance(source, dict):
        return build_config(values=[copy.deepcopy(source)], overrides=list(overrides))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / "config.yaml"
        return build_config(path, overrides=list(overrides))
    raise ConfigError(f"config: expected a YAML path, a dict or an ExperimentConfig, got {type(source).__name__}")


def _get(cfg: Any, key: str) -> Any:
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def describe(cfg: ExperimentConfig, keys: tuple[str, ...] = DESCRIBE_KEYS) -> str:
    """One line of ``key=value`` for ``keys`` of ``cfg`` (what a ``--dry-run`` prints per run)."""
    return " ".join(f"{key}={_get(cfg, key)}" for key in keys)


def check(cfg: ExperimentConfig, build: bool = False) -> None:
    """Fail now, before any executor starts, if ``cfg`` cannot run here: its site file(s)
    load, its data is present and the split possible; with ``build`` also the model,
    the strategy and the evaluator are built (this imports torch when training).

    Raises:
        ConfigError: a bad site file or value. DataError: missing data, impossible split.
    """
    from flight_parsl.engine.context import prepare, workload

    if cfg.backend == "parsl":
        if cfg.sites.files:
            from flight_parsl.execution.sites import load_sites

            load_sites(cfg.sites.files)
        else:
            from flight_parsl.execution.site import load_site

            load_site(cfg.parsl_config)
    work = workload(cfg)
    if build:
        prepare(cfg, work)


def client_slowdowns(cfg: ExperimentConfig) -> list[float] | None:
    """Each client's injected slowdown factor (uniform in [1, ``train.slowdown_max``], fixed
    by the seed), as the run applies it; None when ``train.slowdown_max`` is 1 (no slowdown)."""
    from flight_parsl.engine.context import slowdowns

    return slowdowns(cfg)


def initial_model(cfg: ExperimentConfig) -> Any:
    """The torch module a run of ``cfg`` starts from (its model, seeded with ``cfg.seed``)."""
    from flight_parsl.engine.context import model_spec
    from flight_parsl.models import seeded_model

    return seeded_model(model_spec(cfg), cfg.seed)


def initial_metrics(cfg: ExperimentConfig) -> tuple[float, float]:
    """Test loss and accuracy of the initial model of ``cfg`` (before round 1), measured as the
    run measures its rounds. Raises ConfigError without training (``train.mode=none``)."""
    from flight_parsl.engine.context import prepare

    exp = prepare(cfg)
    if exp.evaluate is None:
        raise ConfigError("initial_metrics needs training (train.mode=local): without it nothing is evaluated")
    return exp.evaluate(exp.initial)


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """A finished (or failed) run: its directory and what it wrote there.

    ``rounds``, ``tasks`` and ``faults`` are rounds.csv, tasks.csv and faults.csv as
    pandas DataFrames (empty when the file is not there: no round finished, no fault
    injected); ``summary`` is summary.json; ``config`` the run's resolved config.
    """

    run_dir: Path
    config: ExperimentConfig
    summary: dict[str, Any]
    rounds: pd.DataFrame
    tasks: pd.DataFrame
    faults: pd.DataFrame = field(repr=False)

    @property
    def status(self) -> str:
        """summary.json's status: ``completed``, ``failed``, ``interrupted`` (``unknown`` without one)."""
        return str(self.summary.get("status", "unknown"))

    def __repr__(self) -> str:
        return (f"RunResult(run_dir={str(self.run_dir)!r}, status={self.status!r}, rounds={len(self.rounds)}, "
                f"tasks={len(self.tasks)}, faults={len(self.faults)})")


def _frame(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_csv(path)


def load_run(run_dir: str | os.PathLike[str]) -> RunResult:
    """Read a run directory (any run: finished, failed, interrupted, resumed).

    Raises:
        ConfigError: ``run_dir`` holds no config.yaml (it is not a run directory).
    """
    from flight_parsl.config.experiment import build_config, load_yaml, typed_only

    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path}: no config.yaml there; give the directory of a run")
    values = load_yaml(path / "config.yaml")
    try:
        cfg = build_config(values=[values])
    except ConfigError:  # a file it names moved (a run directory copied elsewhere): read it as written
        cfg = typed_only(values)
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return RunResult(path, cfg, summary, _frame(path / "rounds.csv"), _frame(path / "tasks.csv"),
                     _frame(path / "faults.csv"))


# --------------------------------------------------------------------------- executors


class Pool:
    """One executor that several :func:`run` calls share (``run(cfg, pool=pool)``).

    Opened as a context manager; closed (the DataFlowKernel cleaned up, worker processes
    stopped) when the block ends. Runs on a shared Parsl executor skip its start-up:
    summary.json says ``dfk_reused`` from the second run on. Where the executor comes from:

    * ``Pool(cfg)``: what a run of ``cfg`` (a config as :func:`run` takes it) would open:
      its ``backend``, its ``slots`` resolved for its ``workers``, its site file
      (``parsl_config``); with ``sites.files``, one DataFlowKernel over all its sites, their
      virtual network and (``transfer.kind=redis``) a Redis server on it, for runs over
      the same sites.
    * ``Pool(backend=..., slots=..., site=...)``: an executor of this kind and size
      (``slots``: a number, ``auto`` for about the machine's cores); the keywords also
      override what a ``cfg`` says.

    ``run_dir`` is where Parsl writes its logs (``<run_dir>/parsl``; default
    ``runs/pool-<timestamp>``).
    """

    def __init__(
        self,
        config: ConfigLike | None = None,
        *overrides: str,
        backend: str | None = None,
        slots: int | str | None = None,
        site: str | os.PathLike[str] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = load_config(config, *overrides) if config is not None else None
        cfg = self.config
        self.kind = backend or (cfg.backend if cfg else "parsl")
        if self.kind not in ("parsl", "thread", "process"):
            raise ConfigError(f"Pool: unknown backend {self.kind!r}; valid: parsl, process, thread")
        self.site = str(site) if site is not None else (cfg.parsl_config if cfg else None)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(f"runs/pool-{time.strftime('%Y%m%d-%H%M%S')}")
        self.requested_slots = slots if slots is not None else (cfg.slots if cfg else "auto")
        self.sites: Any = None  # several sites: engine.multisite.RunSites
        self.backend: Any = None  # execution.backends.Backend while open
        self._stack: ExitStack | None = None
        self._asked: int | None = None  # the slots asked of a one-site executor

    def _slot_count(self) -> int:
        from flight_parsl.config.experiment import parse_slots
        from flight_parsl.execution.backends import resolve_slots

        setting = parse_slots(str(self.requested_slots))
        if self.config is not None:
            return resolve_slots(setting, self.config.workers)
        if setting == "per_client":
            raise ConfigError("Pool: slots=per_client needs a config (its workers are the clients)")
        return setting if isinstance(setting, int) else resolve_slots(setting, os.cpu_count() or 1)

    def open(self) -> Pool:
        """Start the executor (what ``with`` does); returns the pool."""
        if self._stack is not None:
            return self
        from flight_parsl.execution.backends import open_backend

        stack = ExitStack()
        try:
            cfg = self.config
            if cfg is not None and cfg.sites.files and self.kind == "parsl":
                from flight_parsl.processes.multisite import open_run_sites
                from flight_parsl.execution.sites import open_sites_backend

                self.sites = stack.enter_context(open_run_sites(cfg))
                self.backend = stack.enter_context(
                    open_sites_backend(self.sites.sites, self.sites.slots, self.run_dir, self.sites.network)
                )
            else:
                self._asked = self._slot_count()
                self.backend = stack.enter_context(open_backend(self.kind, self._asked, self.run_dir, self.site))
        except BaseException:
            stack.close()
            self.sites = self.backend = None
            raise
        self._stack = stack
        return self

    def close(self) -> None:
        """Stop the executor (idempotent)."""
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                stack.close()
        finally:
            self.backend = None
            self.sites = None

    def __enter__(self) -> Pool:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self.backend is not None

    @property
    def description(self) -> str:
        """What the executor is (``parsl HTEX ... with 8 slots``); empty while closed."""
        return self.backend.description if self.backend is not None else ""

    @property
    def slots(self) -> int | None:
        """The executor's worker processes (threads) once open: what it started, else what it was asked for."""
        if self.backend is None:
            return None
        return self.backend.slots if self.backend.slots is not None else self._asked

    @property
    def runs(self) -> int:
        """Runs that used the executor so far."""
        return self.backend.runs if self.backend is not None else 0

    def run(self, config: ConfigLike, *overrides: str, progress: bool = False, resume: bool = False) -> RunResult:
        """``flight_parsl.run(config, *overrides, pool=self, ...)``."""
        return run(config, *overrides, progress=progress, pool=self, resume=resume)

    def _check(self, cfg: ExperimentConfig) -> None:
        if not self.is_open:
            raise ConfigError("the Pool is not open: use it in a `with flight_parsl.Pool(...) as pool:` block")
        if cfg.backend != self.kind:
            raise ConfigError(f"config key 'backend' is {cfg.backend!r} but the pool runs {self.kind!r}")
        if bool(cfg.sites.files) != (self.sites is not None):
            raise ConfigError(
                "config key 'sites.files' and the pool disagree: a run over several sites needs a Pool opened with "
                "a config that names them (Pool(cfg)), and a Pool over several sites runs only such runs"
            )


# --------------------------------------------------------------------------- running


def _progress(enabled: Any, rounds: int) -> Any:
    from flight_parsl.engine.progress import Progress

    if enabled is True or enabled is False or enabled is None:
        return Progress(rounds, enabled=bool(enabled))
    return enabled  # an object with Progress's methods


def run(
    config: ConfigLike,
    *overrides: str,
    progress: bool = False,
    pool: Pool | None = None,
    resume: bool = False,
) -> RunResult:
    """Run one experiment; return its :class:`RunResult`.

    ``config``: a YAML path, a dict of config values or an ExperimentConfig; ``overrides``:
    ``key.sub=value`` strings applied after it. ``progress``: print what the command line
    prints (to stderr). ``pool``: an open :class:`Pool` whose executor the run uses instead
    of starting its own. ``resume``: continue the stopped run in the config's ``out``
    directory (or ``config`` given as that run directory) from its checkpoint; its
    injected faults are dropped (they happened).

    Raises:
        ConfigError: a bad config. FlightParslError: the run failed; its directory
        (``config.out``) keeps every finished row and a summary.json that says why.
    """
    from flight_parsl.engine.runner import run_experiment

    cfg = _resume_config(config, overrides) if resume else load_config(config, *overrides)
    if pool is not None:
        pool._check(cfg)
    out = run_experiment(
        cfg,
        _progress(progress, cfg.rounds),
        backend=pool.backend if pool is not None else None,
        sites=pool.sites if pool is not None else None,
        resume=resume,
    )
    result = load_run(out)
    result.config = cfg
    return result


def _resume_config(source: ConfigLike, overrides: tuple[str, ...]) -> ExperimentConfig:
    """The config that continues a run: a run directory's own config.yaml, faults dropped, or
    ``source`` with its ``out`` naming the run directory."""
    from flight_parsl.config.experiment import resume_config

    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        cfg = resume_config(source, list(overrides))
    else:
        cfg = load_config(source, *overrides)
        if not cfg.out:
            raise ConfigError("resume: the config names no run directory (config key 'out')")
    return cfg


def _grid_text(value: Any) -> str:
    """A grid value as an override's value text (lists as YAML flow lists)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sweep(
    config: ConfigLike,
    grid: dict[str, list[Any]] | None = None,
    *overrides: str,
    trials: int = 1,
    results: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run every combination of ``grid``'s values (x ``trials``) on ``config``; return the results table.

    ``grid`` maps config keys to their values (``{"workers": [2, 8], "strategy.mu": [0, 1]}``);
    an override with a grid value (``"seed=0..4"``, ``"strategy.mu=0,1"``) adds an axis too,
    as on the command line. This is ``python -m flight_parsl.scale``'s sweep: one executor per
    (backend, slots, site), shared by the cells that agree on them; cells already in the
    ``results`` table with status ``ok`` and the same config (its ``config_hash``) are not
    run again; a failed cell is a row whose status says why. Run directories go under
    ``out`` (default ``runs/sweep-<timestamp>``), the table to ``results`` (default
    ``<out>/results.csv``). Returns the whole table (earlier rows included) as a DataFrame
    (columns: :mod:`flight_parsl.results.table`).

    Raises:
        ConfigError: a bad config, grid key or value (every cell is checked before any runs).
    """
    from flight_parsl.cli.grid import split_overrides
    from flight_parsl.cli.sweep import SweepSpec, cell_config, run_sweep
    from flight_parsl.results.table import read_rows, rows_to_frame

    plain, extra = split_overrides(list(overrides))
    cfg = load_config(config, *plain)
    axes: dict[str, tuple[str, ...]] = {}
    for key, values in (grid or {}).items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ConfigError(f"sweep grid key {key!r}: expected a list of values, got {values!r}")
        axes[key] = tuple(_grid_text(v) for v in values)
        if not axes[key]:
            raise ConfigError(f"sweep grid key {key!r} has no values")
    for key, values in extra:
        if key in axes:
            raise ConfigError(f"{key} is swept twice: in the grid and by an override")
        axes[key] = tuple(values)
    if trials < 1:
        raise ConfigError(f"sweep: trials must be >= 1, got {trials}")
    workers = []
    for text in axes.pop("workers", (str(cfg.workers),)):
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"sweep grid key 'workers': {text!r} is not a positive integer")
        workers.append(int(text))
    spec = SweepSpec(
        workers=tuple(workers),
        models=axes.pop("model.name", (cfg.model.name,)),
        transfers=axes.pop("transfer.kind", (cfg.transfer.kind,)),
        trials=trials,
        grid=tuple(axes.items()),
    )
    out_root = Path(out) if out is not None else Path(f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    for n in spec.workers:  # every cell is validated before anything starts
        for model, transfer, trial, assignment in spec.cells(n):
            cell_config(cfg, out_root, n, model, transfer, trial, assignment)
    table = Path(results) if results is not None else out_root / "results.csv"
    say = _progress(progress, cfg.rounds)
    say.say(f"sweep: {spec.size} runs -> {table}")
    run_sweep(cfg, spec, table, out_root, say)
    return rows_to_frame(read_rows(table))
