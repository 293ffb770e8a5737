"""Command line: ``python -m flight_parsl.scale --workers N [options] [key.sub=value ...]``.

Runs one federated experiment (by default on Parsl HTEX with the local site file)
and writes its run directory. Flags are shortcuts for config keys; any key can be
set with ``key.sub=value`` (see ``flight_parsl.config.experiment``). Precedence: defaults <
``--config`` YAML < flags < ``key=value`` overrides.

SIGTERM (what Slurm and PBS send at walltime and on ``scancel``) stops a run like
Ctrl-C: every finished row stays, summary.json says ``interrupted``, the executor,
a managed Redis and the file channel's directory are cleaned up, and the exit
status is 143 (Ctrl-C: 130). Repeated signals do not cut the clean-up short. A clean-up
still running :data:`STOP_REPORT_S` seconds after the stop signal writes every thread's stack
to stderr (it should take seconds), and SIGUSR1 does the same at any time: a run that hangs
says where.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from flight_parsl.core import stopping
from flight_parsl.core.errors import ConfigError, FlightParslError, Terminated

if TYPE_CHECKING:
    from pathlib import Path

    from flight_parsl.cli.grid import Grid
    from flight_parsl.cli.sweep import SweepSpec
    from flight_parsl.config.experiment import ExperimentConfig
    from flight_parsl.engine.progress import Progress

#: Seconds after a stop signal at which a clean-up still running writes every thread's stack to stderr.
STOP_REPORT_S = 20.0

# flag dest -> config key
FLAG_KEYS = {
    "workers": "workers",
    "rounds": "rounds",
    "seed": "seed",
    "backend": "backend",
    "parsl_config": "parsl_config",
    "out": "out",
    "round_timeout": "round.deadline_s",
    "model": "model.name",
    "dataset": "data.dataset",
    "data_root": "data.root",
    "partition": "partition.kind",
    "train": "train.mode",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "strategy": "strategy.name",
    "transfer": "transfer.kind",
    "topology": "topology",
    "mode": "mode",
    "redis": "transfer.redis",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags default to None: unset flags leave the config alone)."""
    p = argparse.ArgumentParser(
        prog="python -m flight_parsl.scale",
        description="Run a federated-learning experiment on Parsl (or a local pool) and write a run directory.",
    )
    p.add_argument("--workers", "--clients", "-n", help="number of FL clients (default 4); a comma list sweeps")
    p.add_argument("--rounds", "-r", type=int, help="synchronous rounds (default 3)")
    p.add_argument("--model", help="model name (default mlp), e.g. tiny, smallnet, resnet18; a comma list sweeps")
    p.add_argument("--dataset", help="digits (offline, default), mnist5k (offline, the mnist5k extra), mnist, fashion_mnist, synthetic")
    p.add_argument("--data-root", help="directory that download_data.py filled")
    p.add_argument("--partition", help="iid (default), dirichlet, labels, power_law, majority")
    p.add_argument("--train", choices=["local", "none"], help="local training, or none (debug mode: no training)")
    p.add_argument("--epochs", type=int, help="local epochs per round")
    p.add_argument("--batch-size", type=int, help="local batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--strategy", help="fedavg (default), fedsgd, fedprox, or fedasync (with --mode async)")
    p.add_argument(
        "--mode", choices=["sync", "async", "decentralized"],
        help="synchronous rounds (default), asynchronous updates, or decentralized (proxyfl and its baselines)",
    )
    p.add_argument("--topology", help="flat (default), tree:HEIGHT (balanced, --workers leaves) or a topology YAML")
    p.add_argument("--transfer", help="model channel: auto (default: file on this host, else parsl), parsl, redis, file; a comma list sweeps")
    p.add_argument("--trials", type=int, help="repeat each sweep cell this many times (sweep)")
    p.add_argument("--results", help="results table to append to (sweep; default <out>/results.csv)")
    p.add_argument("--redis", metavar="HOST:PORT", help="use this Redis server (default: start one on loopback)")
    p.add_argument("--seed", type=int, help="seed for model init, partition and shuffling")
    p.add_argument("--backend", choices=["parsl", "thread", "process"], help="executor (default parsl)")
    p.add_argument("--parsl-config", help="Parsl site YAML (default configs/parsl/local.yaml)")
    p.add_argument("--round-timeout", type=float, help="seconds a round may take (round.deadline_s); work still out then counts as failed")
    p.add_argument("--inject", action="append", metavar="KEY=VALUE",
                   help="inject a real fault: faults.KEY=VALUE, e.g. kill_slots=0.25@2, redis_stop=2, slow=1,3 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped run from its checkpoint, with its config.yaml (overrides may follow)")
    p.add_argument("--config", help="experiment YAML file")
    p.add_argument("--preset", help="a named experiment from configs/experiments/ (e.g. fedprox-mnist); flags and key=value override it")
    p.add_argument("--out", help="run directory (default runs/<timestamp>-...)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config (a sweep: every cell) and the plan; start nothing")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, anywhere on the command line")
    return p


SWEEP_FLAGS = ("workers", "model", "transfer")


def split_list(flag: str, text: str | None) -> list[str]:
    """Split a comma list flag value; empty items are an error."""
    if text is None:
        return []
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ConfigError(f"--{flag} {text!r} has an empty item")
    return items


def parse_workers(text: str | None) -> list[int]:
    """``--workers`` as a list of positive integers."""
    values = []
    for item in split_list("workers", text):
        if not item.isdigit() or int(item) < 1:
            raise ConfigError(f"--workers: {item!r} is not a positive integer")
        values.append(int(item))
    return values


def is_sweep(args: argparse.Namespace, grid: tuple = ()) -> bool:
    """A sweep: a comma list on a sweep flag, a grid override, --trials or --results."""
    listed = any("," in (getattr(args, flag) or "") for flag in SWEEP_FLAGS)
    return listed or bool(grid) or args.trials is not None or args.results is not None


def flags_to_values(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, as a nested config dict (a sweep flag's first item)."""
    nested: dict[str, Any] = {}
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if dest == "workers":
            value = parse_workers(value)[0]
        elif dest in SWEEP_FLAGS:
            value = split_list(dest, value)[0]
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


@contextmanager
def sigterm_stops_the_run() -> Iterator[None]:
    """While open, SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt`` in the
    main thread; the handlers are restored on exit.

    Only the first stop signal raises: later ones (``scancel`` may repeat SIGTERM, a user
    presses Ctrl-C twice) are ignored so that the clean-up the first one started can finish;
    SIGKILL stays the hard stop. One that arrives while the run starts or stops a process
    waits for that step to end (:mod:`flight_parsl.core.stopping`). A clean-up still running
    :data:`STOP_REPORT_S` after the first one writes every thread's stack to stderr, as SIGUSR1
    does at any time while open. Outside the main thread (where handlers cannot be installed)
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        report_stacks_later()  # a clean-up that hangs says where
        stopping.stop(signum)

    stopping.reset()
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    err = _stderr_with_fd()
    if err is not None:
        faulthandler.register(signal.SIGUSR1, file=err, all_threads=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if err is not None:
            faulthandler.unregister(signal.SIGUSR1)
        for signum, old in previous.items():
            signal.signal(signum, old)
        stopping.reset()


def report_stacks_later() -> None:
    """If this process still runs :data:`STOP_REPORT_S` from now, write every thread's stack to stderr."""
    err = _stderr_with_fd()
    if err is not None:
        faulthandler.dump_traceback_later(STOP_REPORT_S, file=err)


def _stderr_with_fd() -> TextIO | None:
    """The process's stderr where it has a file descriptor (faulthandler writes to one), else None."""
    err = sys.__stderr__
    try:
        return err if err is not None and err.fileno() >= 0 else None
    except (OSError, ValueError):  # closed, or not a file
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (143 after SIGTERM, 130 after Ctrl-C)."""
    try:
        with sigterm_stops_the_run():
            return _main(argv)
    except KeyboardInterrupt as exc:  # a stop signal that came after the run had ended
        return 128 + getattr(exc, "signum", signal.SIGINT)


def run_and_exit() -> NoReturn:
    """The process's entry (``python -m flight_parsl.scale``, ``flight-parsl-scale``): :func:`main`,
    then exit with its status. After a stop signal an exit that hangs (a thread never joined)
    writes every thread's stack to stderr :data:`STOP_REPORT_S` later, as a hung clean-up does."""
    status = main()
    if status in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        report_stacks_later()
    sys.exit(status)


def _main(argv: list[str] | None) -> int:
    """The command line itself, run with SIGTERM turned into :class:`Terminated`."""
    # key=value overrides may stand anywhere, between flags too (as Hydra takes them)
    args = build_parser().parse_intermixed_args(argv)
    # Parsl sets its own loggers to DEBUG (its log files); the terminal gets warnings only.
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # Parsl warns for every task argument over 1 MiB; model payloads are that big by design.
    handler.addFilter(lambda record: not record.getMessage().startswith("Serialized object exceeds buffer threshold"))
    # A failed task is an outcome the engine records (tasks.csv, the round line): no traceback here.
    handler.addFilter(lambda record: not (record.name == "parsl.dataflow.dflow" and "failed after" in record.getMessage()))
    logging.getLogger().addHandler(handler)
    try:
        cfg, grid = configure(args)
        if args.dry_run:
            return dry_run(args, cfg, grid, resume=bool(args.resume))
        from flight_parsl.engine import startup
        from flight_parsl.engine.progress import Progress
        from flight_parsl.engine.runner import run_experiment

        startup.count_process_start()  # the first run reports this process's interpreter and imports

        progress = Progress(cfg.rounds, enabled=not args.quiet)
        if args.resume:
            run_experiment(cfg, progress, resume=True)
        elif is_sweep(args, grid):
            return _sweep(args, cfg, progress, grid)
        else:
            run_experiment(cfg, progress)
    except FlightParslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _resume_hint(locals().get("cfg"))
        return 2
    except Terminated as exc:
        print(f"{exc}; stopped the run, finished rows are in the run directory", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted; finished rows are in the run directory", file=sys.stderr)
        return 130
    return 0


def configure(args: argparse.Namespace) -> "tuple[ExperimentConfig, Grid]":
    """The command's validated config (a sweep's base config) and its grid; starts nothing.

    Precedence: defaults < ``--preset`` < ``--config`` < flags < ``key=value`` (and ``--inject``).
    """
    from flight_parsl.cli.grid import split_overrides
    from flight_parsl.cli.presets import preset_values
    from flight_parsl.config.experiment import build_config, load_yaml

    overrides = [f"faults.{spec.removeprefix('faults.')}" for spec in args.inject or []] + args.overrides
    plain, grid = split_overrides(overrides)
    if args.resume:
        return resume_config(args, plain), grid
    files = [preset_values(args.preset)] if args.preset else []
    if args.config:
        files.append(load_yaml(args.config))
    return build_config(None, [*files, flags_to_values(args)], plain), grid


def _resume_hint(cfg: "ExperimentConfig | None") -> None:
    """After a failed run with a checkpoint: the one command that continues it."""
    from pathlib import Path

    if cfg is None or not cfg.out or not (Path(cfg.out) / "checkpoint.pkl").is_file():
        return
    print(f"continue it with: python -m flight_parsl.scale --resume {cfg.out}", file=sys.stderr)


def resume_config(args: argparse.Namespace, overrides: list[str]) -> "ExperimentConfig":
    """The config of the run directory ``args.resume``, its injected faults dropped (they happened),
    then ``overrides``; other flags are refused (the experiment is the directory's)."""
    from flight_parsl.config.experiment import resume_config as continuing

    given = [f"--{dest.replace('_', '-')}" for dest in FLAG_KEYS if getattr(args, dest) is not None]
    if given or args.config:
        raise ConfigError(f"--resume takes the run's own config; drop {', '.join(given or ['--config'])} "
                          "(key=value overrides are allowed)")
    return continuing(args.resume, overrides)


def sweep_plan(args: argparse.Namespace, cfg: "ExperimentConfig", grid: tuple = ()) -> tuple["SweepSpec", "Path", "Path"]:
    """The sweep a command asks for: its axes, its output root and its results table; every
    cell is validated before anything starts."""
    import time
    from pathlib import Path

    from flight_parsl.cli.sweep import SweepSpec, cell_config

    axes = dict(grid)  # the keys the flags sweep are taken from the grid too
    for flag, key in (("workers", "workers"), ("model", "model.name"), ("transfer", "transfer.kind")):
        if key in axes and getattr(args, flag) is not None and "," in getattr(args, flag):
            raise ConfigError(f"{key} is swept twice: by --{flag} and by {key}=...")
    workers = parse_workers(",".join(axes.pop("workers"))) if "workers" in axes else parse_workers(args.workers)
    spec = SweepSpec(
        workers=tuple(workers or [cfg.workers]),
        models=tuple(axes.pop("model.name", None) or split_list("model", args.model) or [cfg.model.name]),
        transfers=tuple(axes.pop("transfer.kind", None) or split_list("transfer", args.transfer) or [cfg.transfer.kind]),
        trials=1 if args.trials is None else args.trials,
        grid=tuple(axes.items()),
    )
    if spec.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {spec.trials}")
    out_root = Path(args.out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    for n in spec.workers:
        for model, transfer, trial, assignment in spec.cells(n):
            cell_config(cfg, out_root, n, model, transfer, trial, assignment)
    return spec, out_root, Path(args.results) if args.results else out_root / "results.csv"


def dry_run(args: argparse.Namespace, cfg: "ExperimentConfig", grid: tuple = (), resume: bool = False) -> int:
    """``--dry-run``: print the resolved config and plan (a sweep: every cell); start nothing."""
    from flight_parsl.cli.dry_run import print_run, print_sweep

    if resume or not is_sweep(args, grid):
        print_run(cfg, resume=resume)
        return 0
    from flight_parsl.cli.grid import describe
    from flight_parsl.cli.sweep import cell_config

    spec, out_root, results = sweep_plan(args, cfg, grid)
    cells = (
        (f"workers={n} model={m} transfer={t} trial={trial} {describe(a)}".rstrip(),
         cell_config(cfg, out_root, n, m, t, trial, a))
        for n in spec.workers for m, t, trial, a in spec.cells(n)
    )
    print_sweep(cells, str(results))
    return 0


def _sweep(args: argparse.Namespace, cfg: "ExperimentConfig", progress: "Progress", grid: tuple = ()) -> int:
    """Run a sweep; exit status 1 if any cell failed."""
    from flight_parsl.cli.sweep import run_sweep

    spec, out_root, results = sweep_plan(args, cfg, grid)
    progress.say(f"sweep: {spec.size} runs -> {results}")
    rows = run_sweep(cfg, spec, results, out_root, progress)
    failed = [r for r in rows if r["status"] != "ok"]
    progress.say(f"sweep done: {len(rows) - len(failed)} ok, {len(failed)} failed, results in {results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
