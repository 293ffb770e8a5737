"""The command line: ``python -m flight_parsl.baselines.flower --workers N --model M --mode MODE``.

Exit status: 0 when the run is ``ok``, 1 when it failed (the row says why),
2 for a bad argument or a missing flower extra (one line on stderr).

The first argument ``server``, ``client`` or ``simulate`` runs one of the child
processes instead (see :mod:`flight_parsl.baselines.flower.app`); the runner
starts those itself.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, NoReturn

from flight_parsl.core.errors import ConfigError

ROLES = ("server", "client", "simulate")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m flight_parsl.baselines.flower",
        description="Flower's side of the comparison: N clients, FedAvg; no training (each client "
        "returns the parameters it received) or, with --train local, flight_parsl's training workload.",
    )
    parser.add_argument("--workers", type=int, required=True, help="clients (N)")
    parser.add_argument("--model", required=True, help="a flight_parsl model name, built at its reference size")
    parser.add_argument("--mode", required=True, choices=("simulation", "grpc"),
                        help="simulation: Flower's Simulation Runtime (Ray); grpc: a server and N client processes")
    parser.add_argument("--out", default=None, help="run directory (default runs/<timestamp>-flower-...)")
    parser.add_argument("--rounds", type=int, default=1, help="FedAvg rounds (default 1)")
    parser.add_argument("--trial", type=int, default=0, help="trial number recorded in the row (default 0)")
    parser.add_argument("--results", default=None, help="append the row to this results table (CSV)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before the run is stopped (default 600)")
    parser.add_argument("--mem-limit-gb", type=float, default=18.0,
                        help="stop the run when the machine's memory in use exceeds this (GiB, default 18; 0: off)")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="server threads sending fit instructions (clients in flight at once); "
                        "default: Flower's own, min(32, cpus + 4)")
    parser.add_argument("--client-cpus", type=_client_cpus, default=None, metavar="matched|default|X",
                        help="simulation: Ray resources per client. matched (default): N logical CPUs, "
                        "1 per client, one actor per client; default: Flower's own settings (2 of the "
                        "machine's CPUs per client, so cpus // 2 actors); X: X of the machine's CPUs per client")
    parser.add_argument("--train", choices=("none", "local"), default="none",
                        help="none (default): the debug round, each client returns what it got; local: "
                        "real training, the workload of 'python -m flight_parsl.scale' for the same flags "
                        "(its data split, model, SGD settings; simulation mode only)")
    parser.add_argument("--dataset", default=None,
                        help="--train local: the dataset (default: flight_parsl's, digits)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="--train local: local epochs (default: flight_parsl's train.epochs)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="--train local: batch size (default: flight_parsl's train.batch_size)")
    parser.add_argument("--lr", type=float, default=None,
                        help="--train local: SGD learning rate (default: flight_parsl's train.lr)")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments, print the run, start nothing")
    parser.add_argument("--save-params", action="store_true",
                        help="write the final aggregated parameters to OUT/final_parameters.npz")
    return parser


def _client_cpus(text: str) -> str | float:
    """``--client-cpus`` as an argparse type."""
    from flight_parsl.baselines.flower.runner import parse_client_cpus

    try:
        return parse_client_cpus(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _line(row: dict[str, Any]) -> str:
    def fmt(key: str) -> str:
        value = row.get(key)
        return f"{value:.3f}" if isinstance(value, float) else "-"

    accuracy = ""
    if row.get("train") == "local":  # the test accuracy lives in summary.json, not in the results row
        import json
        from pathlib import Path

        try:
            acc = json.loads((Path(row["run_dir"]) / "summary.json").read_text()).get("test_acc")
        except (OSError, ValueError):
            acc = None
        accuracy = f"test acc {acc:.4f}, " if isinstance(acc, float) else "test acc -, "
    return (
        f"{row['framework']} {row['model']} n={row['num_workers']}: {row['status']}; {accuracy}"
        f"prime2end {fmt('prime2end')} s, round {fmt('round_makespan_s')} s, start2end {fmt('start2end')} s, "
        f"server peak {fmt('peak_rss_mb')} MB, clients peak {fmt('peak_rss_workers_mb')} MB "
        f"-> {row['run_dir']}/summary.json"
    )


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _training(args: argparse.Namespace) -> dict[str, Any] | None:
    """The training flags checked together (ConfigError names a bad combination or value)."""
    from flight_parsl.baselines.flower.runner import check_training_inputs

    return check_training_inputs(args.workers, args.model, args.mode, args.rounds, args.train,
                                 args.dataset, args.epochs, args.batch_size, args.lr)


def _dry_run(args: argparse.Namespace) -> int:
    """Check what a run needs without starting it: the model name, the counts, Flower's extra."""
    import importlib.util

    from flight_parsl.core.model_spec import model_names

    try:
        if args.model not in model_names():
            raise ConfigError(f"--model {args.model!r}: unknown model; valid names: {', '.join(sorted(model_names()))}")
        if args.workers < 1 or args.rounds < 1:
            raise ConfigError(f"--workers {args.workers} / --rounds {args.rounds}: both must be >= 1")
        training = _training(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flwr = "installed" if importlib.util.find_spec("flwr") else "not installed (pip install -e \".[flower]\")"
    work = "no training"
    if training is not None:
        work = (f"training on {training['dataset']} ({training['partition']['kind']} split, seed {training['seed']}), "
                f"SGD lr {training['lr']:g} momentum {training['momentum']:g}, {training['epochs']} epoch(s), "
                f"batch {training['batch_size']}")
    print(f"flower {args.mode}: {args.workers} clients, model {args.model}, {args.rounds} round(s), {work}, "
          f"results {args.results or '-'}; flwr {flwr}")
    print("dry run: 1 run")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ROLES:
        from flight_parsl.baselines.flower import app

        role = {"server": app.server_main, "client": app.client_main, "simulate": app.simulate_main}
        return role[argv[0]](argv[1:])

    from flight_parsl.baselines.flower.runner import run_flower

    args = build_parser().parse_args(argv)
    if args.dry_run:
        return _dry_run(args)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        row = run_flower(
            args.workers, args.model, args.mode, args.out, rounds=args.rounds, trial=args.trial,
            timeout=args.timeout, results=args.results, save_params=args.save_params,
            mem_limit_gb=args.mem_limit_gb or None, server_threads=args.server_threads,
            client_cpus=args.client_cpus, train=args.train, dataset=args.dataset, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every process of the run was stopped", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(_line(row))
    return 0 if row["status"] == "ok" else 1
