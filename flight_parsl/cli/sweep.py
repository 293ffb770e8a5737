"""Sweeps: every combination of worker counts x models x transfers x trials x a grid.

The grid is any number of config keys with several values each (``strategy.mu=0,2
seed=0..4``, see :mod:`flight_parsl.cli.grid`); each cell's row in the results
table names its grid values in the ``cell`` column. One DataFlowKernel serves all
the runs of a worker count (its workers, site and backend are the same; only the
model, the channel or the grid's values change between runs; a grid over
``backend``, ``slots`` or ``parsl_config`` starts one executor per value), so the
start-up cost is paid once per worker count and later runs record ``dfk_reused``.
A run that fails is recorded with its reason and the executor is restarted for the
next run, since the failure may have left it broken. Each run appends one row to
the results table (see :mod:`flight_parsl.results.table`), with the slots it ran
on; running the same sweep again skips the cells already there with status ``ok``
and the same resolved config (its ``config_hash``), so a sweep with other rounds,
training, seed or slots runs anew.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flight_parsl.cli.grid import Grid, assignments, describe
from flight_parsl.config.experiment import ExperimentConfig, config_hash, with_overrides
from flight_parsl.core.errors import FlightParslError
from flight_parsl.execution.backends import Backend, open_backend, resolve_slots
from flight_parsl.engine.progress import Progress
from flight_parsl.processes.batch_job import JOB_FIELDS
from flight_parsl.results.table import CellKey, append_row, done_configs
from flight_parsl.engine.context import workload
from flight_parsl.engine.runner import run_experiment, warm_modules


@dataclass(frozen=True)
class SweepSpec:
    """The axes of a sweep."""

    workers: tuple[int, ...]
    models: tuple[str, ...]
    transfers: tuple[str, ...]
    trials: int = 1
    grid: Grid = ()

    def cells(self, workers: int) -> Iterator[tuple[str, str, int, tuple[tuple[str, str], ...]]]:
        """(model, transfer, trial, grid values) for one worker count, in sweep order."""
        for model in self.models:
            for transfer in self.transfers:
                for assignment in assignments(self.grid):
                    for trial in range(self.trials):
                        yield model, transfer, trial, assignment

    @property
    def size(self) -> int:
        """Number of runs in the whole sweep."""
        return len(self.workers) * len(self.models) * len(self.transfers) * self.trials * len(assignments(self.grid))


def cell_dir(model: str, workers: int, transfer: str, trial: int, assignment: tuple[tuple[str, str], ...] = ()) -> str:
    """A cell's run directory name: ``<model>-n<workers>-<transfer>-t<trial>[-key=value...]``."""
    name = f"{model}-n{workers}-{transfer}-t{trial}" + "".join(f"-{k}={v}" for k, v in assignment)
    return re.sub(r"[^A-Za-z0-9_.=@+-]", "_", name)


def cell_config(
    base: ExperimentConfig,
    out_root: Path,
    workers: int,
    model: str,
    transfer: str,
    trial: int,
    assignment: tuple[tuple[str, str], ...] = (),
) -> ExperimentConfig:
    """The config of one sweep cell: its grid values applied; each trial gets its own seed."""
    seed = base.seed + trial
    cell = [f"workers={workers}", f"model.name={model}", f"transfer.kind={transfer}",
            f"out={out_root / cell_dir(model, workers, transfer, trial, assignment)}"]
    grid = [f"{key}={value}" for key, value in assignment]
    if any(key == "seed" for key, _ in assignment):
        grid.append(f"seed={int(dict(assignment)['seed']) + trial}")
    return with_overrides(base, [f"seed={seed}", *cell, *grid])


def unused_dir(path: Path) -> Path:
    """``path`` if it is missing or empty, else the first free ``path-2``, ``path-3``, ...

    A cell that runs again (it failed before, or the config changed) must not overwrite
    the run directory an earlier row of the results table points to.
    """
    candidate, i = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    return candidate


def result_row(
    cfg: ExperimentConfig, trial: int, run_dir: Path, status: str, assignment: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    """One results-table row from a run directory's summary.json."""
    summary: dict[str, Any] = {}
    path = run_dir / "summary.json"
    if path.exists():
        summary = json.loads(path.read_text())
    rounds_path = run_dir / "rounds.csv"
    bytes_moved = 0
    if rounds_path.exists():
        import csv

        with rounds_path.open() as f:
            bytes_moved = sum(int(r["bytes_moved"]) for r in csv.DictReader(f))
    return {
        "framework": "flight_parsl",
        "model": cfg.model.name,
        "num_workers": cfg.workers,
        "slots": summary.get("slots", ""),
        "transfer": cfg.transfer.kind,
        "trial": trial,
        "train": cfg.train.mode,
        "rounds": cfg.rounds,
        **{k: summary.get(k, "") for k in ("start", "dfk_start_done", "priming_done", "end", "start2end", "prime2end")},
        "round_makespan_s": summary.get("round_makespan_s", ""),
        "bytes_moved": bytes_moved,
        "peak_rss_mb": summary.get("peak_rss_mb_coordinator", ""),
        "peak_rss_workers_mb": summary.get("peak_rss_mb_workers_total", ""),
        "peak_machine_mb": summary.get("peak_machine_mb", ""),
        "status": status,
        "run_dir": str(run_dir),
        "config_hash": config_hash(cfg),
        **{k: summary.get(k, "") for k in JOB_FIELDS},
        "cell": describe(assignment),
    }


def _fixed_slots(base: ExperimentConfig) -> int | None:
    """The slots of a Parsl site that fixes its workers (the run's ``slots`` then do not count)."""
    if base.backend != "parsl":
        return None
    from flight_parsl.execution.site import load_site, site_fixed_slots

    return site_fixed_slots(load_site(base.parsl_config))


def run_sweep(
    base: ExperimentConfig, spec: SweepSpec, results: Path, out_root: Path, progress: Progress
) -> list[dict[str, Any]]:
    """Run every cell not yet in ``results``; returns the rows appended."""
    done: set[tuple[CellKey, str]] = done_configs(results)
    rows: list[dict[str, Any]] = []
    index = 0
    for workers in spec.workers:
        todo = []
        for model, transfer, trial, assignment in spec.cells(workers):
            index += 1
            cfg = cell_config(base, out_root, workers, model, transfer, trial, assignment)
            # a site that fixes its workers decides for itself
            slots = _fixed_slots(cfg) or resolve_slots(cfg.slots, workers)
            label = f"{model} n={workers} {transfer} trial {trial}" + (f" {describe(assignment)}" if assignment else "")
            if (("flight_parsl", model, workers, cfg.transfer.kind, trial, slots < workers), config_hash(cfg)) in done:
                progress.say(f"[{index}/{spec.size}] {label}: already done")
                continue
            todo.append((index, cfg, trial, assignment, slots, label))
        # one executor per (backend, slots, site): the cells that share one run one after the other
        todo.sort(key=lambda item: (item[1].backend, item[4], str(item[1].parsl_config)))
        with ExitStack() as stack:
            backend: Backend | None = None
            opened: tuple[str, int, str] | None = None
            for i, cfg, trial, assignment, slots, label in todo:
                key = (cfg.backend, slots, str(cfg.parsl_config))
                if backend is not None and key != opened:
                    stack.close()
                    backend = None
                progress.say(f"[{i}/{spec.size}] {label}")
                if backend is None:
                    executor_dir = out_root / (f"executor-n{workers}" if opened is None else f"executor-n{workers}-{i}")
                    # a site with a strategy primes its late blocks' workers for this cell's workload
                    try:
                        prime: tuple[tuple[str, ...], Any] | None = (warm_modules(cfg), workload(cfg)[0])
                    except FlightParslError:
                        prime = None  # bad data: the cell's run fails with its own message
                    backend = stack.enter_context(
                        open_backend(cfg.backend, slots, executor_dir, cfg.parsl_config, prime=prime)
                    )
                    opened = key
                run_dir = unused_dir(Path(cfg.out or ""))
                cfg = replace(cfg, out=str(run_dir))
                try:
                    run_experiment(cfg, progress, backend)
                    status = "ok"
                except FlightParslError as exc:
                    status = f"failed: {exc}"
                    progress.say(f"  {status}")
                    stack.close()  # the executor may be broken: start a fresh one for the next cell
                    backend = None
                row = result_row(cfg, trial, run_dir, status, assignment)
                append_row(results, row)
                rows.append(row)
    return rows
