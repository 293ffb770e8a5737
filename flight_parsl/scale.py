"""Command line: ``python -m flight_parsl.scale --workers N [options] [key.sub=value ...]``.

Runs one federated experiment (by default on Parsl HTEX with the local site file)
and writes its run directory. Flags are shortcuts for config keys; any key can be
set with ``key.sub=value`` (see ``flight_parsl.config``). Precedence: defaults <
``--config`` YAML < flags < ``key=value`` overrides.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from flight_parsl.errors import FlightParslError

# flag dest -> config key
FLAG_KEYS = {
    "workers": "workers",
    "rounds": "rounds",
    "seed": "seed",
    "backend": "backend",
    "parsl_config": "parsl_config",
    "out": "out",
    "round_timeout": "round_timeout",
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
    "redis": "transfer.redis",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags default to None: unset flags leave the config alone)."""
    p = argparse.ArgumentParser(
        prog="python -m flight_parsl.scale",
        description="Run a federated-learning experiment on Parsl (or a local pool) and write a run directory.",
    )
    p.add_argument("--workers", "-n", type=int, help="number of FL workers (default 4)")
    p.add_argument("--rounds", "-r", type=int, help="synchronous rounds (default 3)")
    p.add_argument("--model", help="model name (default mlp), e.g. tiny, smallnet, resnet18")
    p.add_argument("--dataset", help="digits (offline, default), mnist, fashion_mnist")
    p.add_argument("--data-root", help="directory that download_data.py filled")
    p.add_argument("--partition", help="iid (default), dirichlet, labels, power_law")
    p.add_argument("--train", choices=["local", "none"], help="local training, or none (debug mode: no training)")
    p.add_argument("--epochs", type=int, help="local epochs per round")
    p.add_argument("--batch-size", type=int, help="local batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--strategy", help="fedavg (default) or fedsgd")
    p.add_argument("--transfer", choices=["parsl", "redis", "file"], help="model channel (default parsl)")
    p.add_argument("--redis", metavar="HOST:PORT", help="use this Redis server (default: start one on loopback)")
    p.add_argument("--seed", type=int, help="seed for model init, partition and shuffling")
    p.add_argument("--backend", choices=["parsl", "thread", "process"], help="executor (default parsl)")
    p.add_argument("--parsl-config", help="Parsl site YAML (default configs/parsl/local.yaml)")
    p.add_argument("--round-timeout", type=float, help="seconds a round may take before the run stops")
    p.add_argument("--config", help="experiment YAML file")
    p.add_argument("--out", help="run directory (default runs/<timestamp>-...)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p


def flags_to_values(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, as a nested config dict."""
    nested: dict[str, Any] = {}
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    # Parsl sets its own loggers to DEBUG (its log files); the terminal gets warnings only.
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # Parsl warns for every task argument over 1 MiB; model payloads are that big by design.
    handler.addFilter(lambda record: not record.getMessage().startswith("Serialized object exceeds buffer threshold"))
    logging.getLogger().addHandler(handler)
    from flight_parsl.config import build_config
    from flight_parsl.progress import Progress
    from flight_parsl.runner import run_experiment

    try:
        cfg = build_config(args.config, [flags_to_values(args)], args.overrides)
        run_experiment(cfg, Progress(cfg.rounds, enabled=not args.quiet))
    except FlightParslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished rows are in the run directory", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
