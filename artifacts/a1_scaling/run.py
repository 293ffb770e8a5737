"""Artifact 1 on one machine: flight_parsl's weak scaling next to Flower, in one results table.

Runs, for every worker count and model, a no-training round on flight_parsl with each
transfer, then the same workload on Flower's simulation engine and on one Flower server
with N gRPC client processes. Every flight_parsl run is a process of its own (one
``flight_parsl.scale`` command per cell: worker count x model x transfer x trial), so
each run starts its own executor and its ``start2end`` is that run's whole run, measured,
as each Flower run's is; ``<out>/processes.csv`` also records each process's wall time
from launch to exit.
flight_parsl runs with ``slots=per_client``: one worker process per client, as Flight's
weak-scaling artifact ran (``--workers`` counts clients). With ``--packed`` a second
flight_parsl run of each cell runs the engine's default packing (``slots=auto``: about one slot per
core, each task training several clients), shown as ``flight_parsl/<transfer>+packed``.
Every run appends one row to the results table, with the slots it ran on; cells already
there with status ok are skipped, so an interrupted run resumes. Finally it prints the
comparison table (round makespan, whole run, peak memory, Flower / flight_parsl ratios
against flight_parsl's one-slot-per-client rows) and draws the figure with analysis/.

    python artifacts/a1_scaling/run.py --workers 2,8,32,64 --models tiny,smallnet,resnet18 --out runs/a1

Trailing ``key.sub=value`` arguments go to every flight_parsl run (e.g. ``backend=thread``
for a quick check without Parsl).

``--cluster SITE`` runs the flight_parsl runs on a multi-node Slurm site instead (for example
``configs/parsl/slurm-cluster.yaml`` on ``jobs/local_slurm/start.sh --nodes 3``), and no Flower:
one slot per client is a copy of the site per worker count N whose blocks start
``ceil(N / nodes_per_block)`` workers on each node; the packed layout is the site as it is (its
own slots, each task folding several clients). Rows go to ``<out>/results.csv`` as before.

    python artifacts/a1_scaling/run.py --cluster configs/parsl/slurm-cluster.yaml --workers 2,8,16 --models tiny --packed --out runs/a1-cluster
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from flight_parsl.results.table import done_cells, read_rows, rows_to_frame  # noqa: E402

FLOWER_MODES = {"simulation": ("flower-simulation", "ray"), "grpc": ("flower-grpc", "grpc")}
PACKED = "+packed"  # system suffix of flight_parsl rows packed onto fewer slots than clients


def flight_parsl_command(
    args: argparse.Namespace, results: Path, packed: bool = False, workers: str | None = None, site: Path | None = None,
    model: str | None = None, transfer: str | None = None, trials: int | None = None,
) -> list[str]:
    """A flight_parsl sweep's command line (``workers``, ``model``, ``transfer``: one cell's; ``trials``: the
    trials 0..trials-1, of which the finished ones are skipped; ``site``: a cluster run's site)."""
    return [
        sys.executable, "-m", "flight_parsl.scale", "--train", "none", "--rounds", str(args.rounds),
        "--workers", workers or args.workers, "--model", model or args.models, "--transfer", transfer or args.transfers,
        "--trials", str(trials or args.trials),
        "--out", str(Path(args.out) / ("flight_parsl-packed" if packed else "flight_parsl")),
        "--results", str(results), f"slots={'auto' if packed else 'per_client'}",
        *(["--parsl-config", str(site)] if site is not None else []), *args.overrides,
    ]


def per_run_commands(
    args: argparse.Namespace, results: Path, packed: bool = False, counts: list[str] | None = None,
    site: Path | None = None, sites: dict[str, Path] | None = None,
) -> list[list[str]]:
    """One command per run: worker count x model x transfer x trial. Trial k's command asks for trials
    0..k (the sweep skips the finished ones), so each process runs one run on an executor of its own."""
    return [
        flight_parsl_command(args, results, packed, n, (sites or {}).get(n, site), model, transfer, trial + 1)
        for n in counts or [w.strip() for w in args.workers.split(",")]
        for model in args.models.split(",")
        for transfer in args.transfers.split(",")
        for trial in range(args.trials)
    ]


def cluster_site(site: Path, workers: int, out: Path, write: bool = True) -> Path:
    """A copy of the cluster ``site`` whose blocks start one slot per client for ``workers`` clients:
    ``ceil(workers / nodes_per_block)`` workers on each node (``write=False``: only its path)."""
    data = yaml.safe_load(site.read_text())
    nodes = int((data.get("provider") or {}).get("nodes_per_block", 1))
    data["max_workers_per_node"] = math.ceil(workers / nodes)
    path = out / "sites" / f"{site.stem}-n{workers}.yaml"
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def site_slots(site: Path) -> int:
    """The slots a cluster site starts as it is (workers per node x nodes per block x initial blocks)."""
    data = yaml.safe_load(site.read_text())
    provider = data.get("provider") or {}
    return int(data["max_workers_per_node"]) * int(provider.get("nodes_per_block", 1)) * max(
        int(provider.get("init_blocks", 1)), 1)


def cluster_commands(args: argparse.Namespace, results: Path, write: bool = True) -> list[list[str]]:
    """The cluster runs, one process each: one slot per client (a copy of the site per worker count),
    then (``--packed``) the site as it is for the counts above its slots."""
    site, out = Path(args.cluster), Path(args.out)
    counts = [w.strip() for w in args.workers.split(",")]
    sites = {n: cluster_site(site, int(n), out, write) for n in counts}
    commands = per_run_commands(args, results, False, counts, sites=sites)
    packed = [n for n in counts if int(n) > site_slots(site)]
    if args.packed and packed:
        commands += per_run_commands(args, results, True, packed, site)
    return commands


def local_commands(args: argparse.Namespace, results: Path) -> list[list[str]]:
    """The local flight_parsl runs, one process each: one slot per client, then (``--packed``) packed."""
    return per_run_commands(args, results) + (per_run_commands(args, results, True) if args.packed else [])


def timed(cmd: list[str], log: Path, label: str) -> None:
    """Run one process and append its wall time, launch to exit, to ``log`` (processes.csv)."""
    t0 = time.time()
    done = subprocess.run(cmd, check=False)
    new = not log.exists()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["label", "launch", "wall_s", "returncode"])
        writer.writerow([label, f"{t0:.3f}", f"{time.time() - t0:.3f}", done.returncode])


def label_of(cmd: list[str]) -> str:
    """A flight_parsl process's label: ``flight_parsl[+packed] <model> n=<N> <transfer> trials <T>``."""
    def get(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    packed = PACKED if "slots=auto" in cmd else ""
    return f"flight_parsl{packed} {get('--model')} n={get('--workers')} {get('--transfer')} trials {get('--trials')}"


def flower_commands(args: argparse.Namespace, results: Path) -> list[tuple[str, list[str]]]:
    """(label, command) of every Flower run not yet in ``results``."""
    done = done_cells(results)
    commands = []
    for mode in args.flower.split(","):
        framework, transfer = FLOWER_MODES[mode]
        for workers in (int(w) for w in args.workers.split(",")):
            for model in args.models.split(","):
                for trial in range(args.trials):
                    if (framework, model, workers, transfer, trial, False) in done:
                        continue
                    out = Path(args.out) / framework / f"{model}-n{workers}-t{trial}"
                    commands.append((f"{framework} {model} n={workers} trial {trial}", [
                        sys.executable, "-m", "flight_parsl.baselines.flower", "--mode", mode, "--workers", str(workers),
                        "--model", model, "--rounds", str(args.rounds), "--trial", str(trial), "--out", str(out),
                        "--results", str(results), "--timeout", str(args.flower_timeout),
                    ]))
    return commands


def run_flower(args: argparse.Namespace, results: Path) -> None:
    """Flower runs, one process each, skipping finished cells."""
    for label, cmd in flower_commands(args, results):
        print(label, flush=True)
        timed(cmd, Path(args.out) / "processes.csv", label)


def comparison(results: Path) -> str:
    """Markdown table: one row per model x workers with each system's makespan, whole run, memory, ratios.

    flight_parsl rows on fewer slots than clients are the system ``flight_parsl/<transfer>+packed``;
    rows without ``slots`` (written before the column existed) ran one process per client. The
    Flower ratios are against the fastest one-slot-per-client flight_parsl system of the cell.
    """
    frame = rows_to_frame(read_rows(results))
    frame = frame[frame["status"] == "ok"].copy()
    ours = frame["framework"] == "flight_parsl"
    packed = ours & frame["slots"].notna() & (frame["slots"] < frame["num_workers"])
    frame["system"] = frame["framework"].where(~ours, "flight_parsl/" + frame["transfer"])
    frame.loc[packed, "system"] += PACKED
    frame["memory_mb"] = frame["peak_rss_mb"].fillna(0) + frame["peak_rss_workers_mb"].fillna(0)
    # The whole run is each row's own start2end, nothing added: run.py starts every flight_parsl run as a
    # process of its own, so the run started its own executor (its start is the executor's start).
    # A row of a sweep that shared one executor between runs (tables written before) keeps its own
    # start2end too, which for every run but the first of an executor leaves out the start-up.
    cells = frame.groupby(["model", "num_workers", "system"])[
        ["slots", "round_makespan_s", "start2end", "memory_mb"]
    ].mean()
    lines = [
        "| model | N | system | slots | round makespan s | whole run s | peak memory MB (server + workers) "
        "| simulation / best flight_parsl (makespan, whole) | gRPC / best flight_parsl (makespan, whole) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, workers), cell in cells.groupby(level=[0, 1]):
        cell = cell.droplevel([0, 1])
        ours = cell[cell.index.str.startswith("flight_parsl/") & ~cell.index.str.endswith(PACKED)]
        best = ours.loc[ours["round_makespan_s"].idxmin()] if len(ours) else None
        for system, row in cell.iterrows():
            ratio = {}
            for flower in ("flower-simulation", "flower-grpc"):
                if system == flower and best is not None:
                    ratio[flower] = (
                        f"{row['round_makespan_s'] / best['round_makespan_s']:.2f}x, "
                        f"{row['start2end'] / best['start2end']:.2f}x"
                    )
            slots = "" if row["slots"] != row["slots"] else f"{row['slots']:.0f}"  # NaN: not recorded
            lines.append(
                f"| {model} | {int(workers)} | {system} | {slots} | {row['round_makespan_s']:.3f} | {row['start2end']:.2f} "
                f"| {row['memory_mb']:.0f} | {ratio.get('flower-simulation', '')} | {ratio.get('flower-grpc', '')} |"
            )
    return "\n".join(lines)


def dry_run(p: argparse.ArgumentParser, args: argparse.Namespace, results: Path) -> int:
    """Check the lists, print the flight_parsl and Flower commands; nothing starts."""
    import shlex

    workers = [w.strip() for w in args.workers.split(",")]
    if not all(w.isdigit() and int(w) > 0 for w in workers):
        p.error(f"--workers {args.workers!r}: expected a comma list of positive integers")
    unknown = set(filter(None, args.flower.split(","))) - set(FLOWER_MODES)
    if unknown:
        p.error(f"--flower: unknown mode(s) {sorted(unknown)}; valid: {', '.join(FLOWER_MODES)}")
    figure = args.figure or Path(args.out) / "scaling.png"
    if args.cluster:
        if not Path(args.cluster).is_file():
            p.error(f"--cluster {args.cluster!r}: no such site file")
        runs = cluster_commands(args, results, write=False)
        for cmd in runs:
            print(shlex.join(cmd))
        print(f"dry run: {len(runs)} flight_parsl runs, one process each, on {args.cluster}, no Flower, "
              f"then the figure {figure}; nothing started")
        return 0
    ours = local_commands(args, results)
    flower = [cmd for _, cmd in flower_commands(args, results)] if args.flower else []
    for cmd in ours + flower:
        print(shlex.join(cmd))
    print(f"dry run: {len(ours)} flight_parsl runs, one process each, {len(flower)} Flower runs, "
          f"then the figure {figure}; nothing started")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="2,8,32,64")
    p.add_argument("--models", default="tiny,smallnet,resnet18")
    p.add_argument("--transfers", default="parsl,redis,file")
    p.add_argument("--flower", default="simulation,grpc", help="Flower modes to run ('' for none)")
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--flower-timeout", type=int, default=900)
    p.add_argument("--out", default="runs/a1")
    p.add_argument("--figure", default=None, help="PNG to write (default <out>/scaling.png)")
    p.add_argument("--packed", action="store_true", help="also run flight_parsl with the engine's default packing "
                   "(slots=auto), as the systems flight_parsl/<transfer>+packed")
    p.add_argument("--cluster", default=None, metavar="SITE", help="run the flight_parsl runs on this multi-node "
                   "Slurm site file (one slot per client: a copy per worker count; packed: the site as it is); no Flower")
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print the commands it would run "
                   "and exit (starts nothing)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides for every flight_parsl run")
    args = p.parse_args(argv)
    results = Path(args.out) / "results.csv"
    if args.dry_run:
        return dry_run(p, args, results)
    log = Path(args.out) / "processes.csv"
    for cmd in cluster_commands(args, results) if args.cluster else local_commands(args, results):
        timed(cmd, log, label_of(cmd))
    if args.flower and not args.cluster:
        run_flower(args, results)
    if not results.exists():
        print(f"error: no results were written to {results}", file=sys.stderr)
        return 1
    print(comparison(results))
    figure = Path(args.figure or Path(args.out) / "scaling.png").resolve()
    subprocess.run(
        [sys.executable, "-m", "analysis.scaling", str(results.resolve()), "--out", str(figure)], cwd=REPO, check=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
