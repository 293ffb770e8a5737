"""Flight Artifact 2: hierarchical aggregation on balanced trees, bytes and accuracy per height.

Runs every (height x strategy) cell on one shared executor: 256 worker leaves (``--leaves``)
arranged as balanced trees of height 1, 2, 4, 8 (branching 256, 16, 4, 2), FedAvg / FedProx /
FedSGD, a fraction ``--participation`` of the leaves per round (1/32: 8 workers). Every cell uses
the same seed, so every cell draws the same participants in every round. Each cell writes a run
directory ``<out>/h<H>-<strategy>/`` (rounds.csv, tasks.csv, summary.json); then one row per cell
goes to ``<out>/results.csv`` and the table is printed as markdown.

    python artifacts/a2_hierarchy/run.py                      # reduced: digits, logreg, 10 rounds
    python artifacts/a2_hierarchy/run.py --published --data-root data   # fashion_mnist, 100 rounds
    python artifacts/a2_hierarchy/run.py --leaves 16 --heights 1,2,4 --rounds 2 --backend thread

Defaults (reduced, for a laptop): 256 leaves, heights 1,2,4,8, all three strategies, 10 rounds,
participation 1/32, the offline ``digits`` dataset (about 5-6 training samples per leaf), model
``logreg``, 5 local epochs, lr 0.05 (FedSGD: 0.5, since it takes a single step per round), Parsl
HTEX with ``artifacts/a2_hierarchy/site.yaml`` (8 worker processes, the slots, serve the 256 leaf
clients), ``broadcast=tree``, one client per task (``--clients-per-task 1``).

One client per task (``plan.clients_per_task=1``) is what the cost model assumes: every leaf sends
its own model up its edge. With ``--clients-per-task 0`` the engine packs the sampled children of
an aggregator into about one task per slot and folds them in the slot (linear strategies), so a
task sends one partial for several leaves and the measured edge bytes fall below the model.

``--published`` sets the published sizes: ``fashion_mnist`` (needs ``--data-root``, fill it with
``python download_data.py --root data --dataset fashion_mnist``), 100 rounds, model
``fedprox_cnn`` (the FedProx paper's 2-conv CNN for 28x28 images), 2 local epochs (the library
default), FedSGD lr 0.1; leaves, heights, strategies and participation keep the published values above. Any flag given explicitly wins over
what ``--published`` sets. Extra ``key.sub=value`` arguments are passed to every cell's config.

Columns of results.csv: see COLUMNS below and README.md. Exit status: 0 when every cell ran,
1 when a cell failed (its run directory says why), 2 for bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import flight_parsl  # noqa: E402
from flight_parsl import ConfigError, FlightParslError  # noqa: E402

PROG = "artifacts/a2_hierarchy/run.py"
SITE = HERE / "site.yaml"

COLUMNS = (
    "height", "branching", "strategy", "rounds", "participants", "clients_per_task", "tasks", "final_test_acc",
    "mean_test_acc_last3",
    "modeled_two_tier_bytes", "modeled_hierarchical_bytes", "measured_edge_bytes", "root_in_bytes",
    "modeled_reduction_pct", "measured_reduction_pct", "reduction_vs_flat_measured_pct",
    "full_tree_reduction_pct", "wall_s", "run",
)

#: Values of the reduced default and of --published; explicit flags override both.
REDUCED = {
    "leaves": 256, "heights": "1,2,4,8", "strategies": "fedavg,fedprox,fedsgd", "rounds": 10,
    "participation": 1 / 32, "dataset": "digits", "model": "logreg", "epochs": 5, "lr": 0.05, "fedsgd_lr": 0.5,
}
PUBLISHED = {
    **REDUCED, "rounds": 100, "dataset": "fashion_mnist", "model": "fedprox_cnn", "epochs": 2, "fedsgd_lr": 0.1,
}


class Failure(Exception):
    """A problem reported as one line; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--leaves", type=int, help="worker leaves of every tree (default 256)")
    a("--heights", help="comma list of tree heights (default 1,2,4,8); each needs branching**height == leaves")
    a("--strategies", help="comma list of fedavg, fedprox, fedsgd (default all three)")
    a("--rounds", type=int, help="rounds per cell (default 10; --published: 100)")
    a("--participation", type=float, help="fraction of leaves per round (default 0.03125 = 1/32)")
    a("--dataset", help="digits, mnist, fashion_mnist (default digits; --published: fashion_mnist)")
    a("--data-root", help="directory holding mnist / fashion_mnist (download_data.py)")
    a("--model", help="model name (default logreg; --published: fedprox_cnn)")
    a("--epochs", type=int, help="local epochs (default 5; --published: 2)")
    a("--lr", type=float, help="local learning rate of fedavg and fedprox (default 0.05)")
    a("--fedsgd-lr", type=float, help="learning rate of FedSGD's single full-batch step (default 0.5; --published: 0.1)")
    a("--seed", type=int, default=0, help="one seed for every cell (default 0)")
    a("--backend", default="parsl", help="parsl, thread or process (default parsl)")
    a("--parsl-config", help=f"Parsl site YAML (default {SITE.relative_to(ROOT)} with the parsl backend)")
    a("--broadcast", default="tree", help="tree (aggregators relay the model down) or direct (default tree)")
    a("--clients-per-task", type=int, default=1, help="leaf clients per train task (default 1: one model per tree "
      "edge, as the cost model assumes; 0: the engine packs an aggregator's sampled leaves onto the slots)")
    a("--out", default="runs/a2", help="output directory (default runs/a2)")
    a("--published", action="store_true", help="published sizes: fashion_mnist, 100 rounds, fedprox_cnn")
    a("--quiet", action="store_true", help="no per-round lines")
    a("--dry-run", action="store_true", help="check the arguments and every cell's config, print the cells and exit "
      "(starts nothing)")
    a("overrides", nargs="*", metavar="key.sub=value", help="config overrides for every cell")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags from the reduced defaults or --published; check what argparse cannot."""
    base = PUBLISHED if args.published else REDUCED
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dataset in ("mnist", "fashion_mnist") and not args.data_root:
        raise Failure(
            f"dataset {args.dataset!r} needs --data-root DIR "
            f"(fill it with: python download_data.py --root data --dataset {args.dataset})", 2
        )
    try:
        args.height_list = [int(h) for h in args.heights.split(",") if h.strip()]
    except ValueError:
        raise Failure(f"--heights wants a comma list of integers, got {args.heights!r}", 2) from None
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not args.height_list or not args.strategy_list:
        raise Failure("--heights and --strategies need at least one value each", 2)
    for flag, values in (("--heights", args.height_list), ("--strategies", args.strategy_list)):
        if len(set(values)) != len(values):
            raise Failure(f"{flag} lists a value twice: {values}", 2)
    for s in args.strategy_list:
        if s not in ("fedavg", "fedprox", "fedsgd"):
            raise Failure(f"unknown strategy {s!r} in --strategies; valid: fedavg, fedprox, fedsgd", 2)
    if args.clients_per_task < 0:
        raise Failure(f"--clients-per-task must be >= 0, got {args.clients_per_task}", 2)
    if args.parsl_config is None and args.backend == "parsl":
        args.parsl_config = str(SITE)
    return args


def cell_config(args: argparse.Namespace, height: int, strategy: str, out: Path) -> Any:
    """The validated ExperimentConfig of one cell (same seed in every cell)."""
    from flight_parsl.config.experiment import build_config

    values = {
        "workers": args.leaves,
        "rounds": args.rounds,
        "seed": args.seed,
        "topology": f"tree:{height}",
        "broadcast": args.broadcast,
        "backend": args.backend,
        "parsl_config": args.parsl_config,
        "out": str(out / run_name(height, strategy)),
        "data": {"dataset": args.dataset, "root": args.data_root},
        "model": {"name": args.model},
        "train": {"epochs": args.epochs, "lr": args.fedsgd_lr if strategy == "fedsgd" else args.lr},
        "strategy": {"name": strategy, "participation": args.participation},
        "plan": {"clients_per_task": args.clients_per_task},
        # every task fetches its model: a slot's cache would skip edges the cost model counts
        "transfer": {"cache_size": 0},
    }
    return build_config(values=[values], overrides=list(args.overrides))


def run_name(height: int, strategy: str) -> str:
    return f"h{height}-{strategy}"


def read_rounds(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "rounds.csv").open() as f:
        return list(csv.DictReader(f))


def root_in_bytes(run_dir: Path, tree: Any) -> int:
    """Payload bytes the coordinator received over all rounds: results of its children (tasks.csv).

    Those are the train tasks that report to the root (their ``node`` is the root) and the
    aggregate tasks of the root's children (their ``node`` is the aggregator). tasks.csv has one
    row per client per task, the task's ``task_bytes_out`` on each, so each task counts once.
    """
    root = tree.root.name
    total = 0
    seen: set[tuple[str, str, str]] = set()
    with (run_dir / "tasks.csv").open() as f:
        for t in csv.DictReader(f):
            key = (t["round"], t["task"], t["attempt"])
            if t["status"] != "ok" or key in seen:
                continue
            to_root = t["node"] == root if t["kind"] == "train" else (
                t["kind"] == "aggregate" and tree.parent(t["node"]) == root
            )
            if to_root:
                seen.add(key)
                total += int(t["task_bytes_out"])
    return total


def cell_row(
    height: int, tree: Any, strategy: str, run_dir: Path, wall_s: float, clients_per_task: int = 1
) -> dict[str, Any]:
    """One results.csv row from a finished run directory (flat-relative column filled later)."""
    from flight_parsl.topology.tree import reduction

    rounds = read_rounds(run_dir)
    accs = [float(r["test_acc"]) for r in rounds]
    two_tier = sum(int(r["modeled_two_tier_bytes"]) for r in rounds)
    hier = sum(int(r["modeled_hierarchical_bytes"]) for r in rounds)
    measured = sum(int(r["edge_bytes"]) for r in rounds)
    return {
        "height": height,
        "branching": len(tree.children(tree.root.name)),
        "strategy": strategy,
        "rounds": len(rounds),
        "participants": statistics.fmean(int(r["participants"]) for r in rounds),
        "clients_per_task": clients_per_task if clients_per_task > 0 else "packed",
        "tasks": statistics.fmean(int(r["tasks"]) for r in rounds),
        "final_test_acc": accs[-1],
        "mean_test_acc_last3": statistics.fmean(accs[-3:]),
        "modeled_two_tier_bytes": two_tier,
        "modeled_hierarchical_bytes": hier,
        "measured_edge_bytes": measured,
        "root_in_bytes": root_in_bytes(run_dir, tree),
        "modeled_reduction_pct": 100.0 * (1.0 - hier / two_tier),
        "measured_reduction_pct": 100.0 * (1.0 - measured / two_tier),
        "reduction_vs_flat_measured_pct": math.nan,
        "full_tree_reduction_pct": 100.0 * reduction(tree),
        "wall_s": wall_s,
        "run": run_dir.name,
    }


def add_flat_reduction(rows: list[dict[str, Any]]) -> None:
    """reduction_vs_flat_measured_pct: measured bytes vs the height-1 cell of the same strategy."""
    flat = {r["strategy"]: r["measured_edge_bytes"] for r in rows if r["height"] == 1}
    for r in rows:
        base = flat.get(r["strategy"])
        if base:
            r["reduction_vs_flat_measured_pct"] = 100.0 * (1.0 - r["measured_edge_bytes"] / base)


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value: Any, column: str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if column.endswith("_pct"):
            return f"{value:.1f}"
        if column.endswith("_acc") or "acc" in column:
            return f"{value:.4f}"
        return f"{value:.1f}" if column == "wall_s" else f"{value:g}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if c != "run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c], c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def quiet_logging() -> None:
    """Warnings only on the terminal; Parsl keeps writing its own log files."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda record: not record.getMessage().startswith("Serialized object exceeds buffer threshold"))
    logging.getLogger().addHandler(handler)


def say(text: str) -> None:
    """One line on stderr (cell headers, even with --quiet)."""
    print(text, file=sys.stderr, flush=True)


def plan(args: argparse.Namespace, out: Path) -> tuple[dict[int, Any], list[tuple[int, str, Any]]]:
    """The trees and every cell's validated config: (height, strategy, config)."""
    from flight_parsl.topology.tree import balanced_tree

    trees = {h: balanced_tree(args.leaves, h) for h in args.height_list}
    cells = [(h, s, cell_config(args, h, s, out)) for h in args.height_list for s in args.strategy_list]
    return trees, cells


def headline(args: argparse.Namespace, out: Path) -> str:
    return (
        f"A2: {args.leaves} leaves, heights {args.heights}, strategies {args.strategies}, {args.rounds} rounds, "
        f"participation {args.participation:g}, {args.dataset}/{args.model}, backend {args.backend}, "
        f"broadcast {args.broadcast}, clients per task {args.clients_per_task or 'packed'}, seed {args.seed} -> {out}"
    )


def dry_run(args: argparse.Namespace) -> None:
    """Print the cells and their configs' key values; nothing starts."""
    out = Path(args.out)
    trees, cells = plan(args, out)
    print(headline(args, out))
    for i, (h, strategy, cfg) in enumerate(cells, 1):
        print(f"[{i}/{len(cells)}] height {h}, {strategy}: {trees[h].describe()}")
        print(f"    {flight_parsl.describe(cfg)} strategy.participation={cfg.strategy.participation:g} "
              f"plan.clients_per_task={cfg.plan.clients_per_task}")
    print(f"dry run: {len(cells)} cells on one executor, nothing started")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Validate every cell, open one executor, run the cells, return the results rows."""
    out = Path(args.out)
    # Everything that can be checked fails here, before the executor starts.
    trees, cells = plan(args, out)
    flight_parsl.check(cells[0][2])  # the site file, the data and its split
    out.mkdir(parents=True, exist_ok=True)
    say(headline(args, out))
    rows: list[dict[str, Any]] = []
    first = cells[0][2]
    # the first cell's slots for its workers (a site that fixes its workers decides)
    with flight_parsl.Pool(first, run_dir=out) as pool:
        say(pool.description)
        for i, (h, strategy, cfg) in enumerate(cells, 1):
            tree = trees[h]
            branching = len(tree.children(tree.root.name))
            say(f"[{i}/{len(cells)}] height {h} (branching {branching}), {strategy}: {tree.describe()}")
            t0 = time.perf_counter()
            try:
                run_dir = flight_parsl.run(cfg, progress=not args.quiet, pool=pool).run_dir
            except FlightParslError as exc:
                raise Failure(f"cell h{h}-{strategy} failed: {exc} (run directory {cfg.out})") from exc
            except Exception as exc:
                detail = " ".join(str(exc).split())
                raise Failure(f"cell h{h}-{strategy} failed: {type(exc).__name__}: {detail} (run directory {cfg.out})") from exc
            wall = time.perf_counter() - t0
            rows.append(cell_row(h, tree, strategy, run_dir, wall, args.clients_per_task))
    add_flat_reduction(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_logging()
    try:
        resolve(args)
        if args.dry_run:
            dry_run(args)
            return 0
        rows = run(args)
    except Failure as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.status
    except FlightParslError as exc:  # found before any cell ran: configuration (2) or executor start (1)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished cells keep their run directories under {args.out}", file=sys.stderr)
        return 130
    results = Path(args.out) / "results.csv"
    write_results(rows, results)
    print()
    print(markdown(rows))
    print(f"\nresults: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
