"""Fault tolerance: the coordinator/worker system's two evaluations, with real faults.

Three studies, each a set of flight_parsl runs under one output directory:

``accuracy``  FedAvg over 1, 2, 4, 8 workers (clients), each holding a random subset of
              varied size (``partition.kind=power_law``), under the seed system's rules:
              quorum 0.75 (``round.quorum=0.75 round.min_fraction=0.75``), AIMD local
              epochs from 4, clients missing more than 2 rounds removed. Published on MNIST:
              97.76 / 97.39 / 96.94 / 95.02 %. Writes ``accuracy.csv``.
``kills``     44 clients; in round 2, ``kills`` of them lose their worker process to a real
              SIGKILL from the coordinator mid-round (``faults.kill_slots``), without retries,
              as the seed system's killed workers never answered. The clients are packed
              ``--per-slot`` per slot (44 / per-slot HTEX worker processes that train an MLP;
              2 by default: 22 processes, what this shared 2-core machine starts, with the
              longer start_timeout of site.yaml), and killing one slot kills its clients' task:
              0, 4, 8, 12 and 14 clients killed are 0, 2, 4, 6 and 7 slots. Rounds close at
              quorum 0.75 and stand at ``round.min_fraction=0.7`` (31 of 44): 12 killed leaves
              32 (the round stands but cannot close early), 14 leaves 30 (the run stops with
              one message). Published
              round times with 0 / 4 / 8 / 12 of 44 killed: 133.8 / 136.8 / 124.9 / 183.6 s, no
              quorum at 14. Writes ``kills.csv``.
``overhead``  no fault: the same run with ``round.quorum=1.0`` (every client, as before
              quorum existed) and ``round.quorum=0.75``, interleaved ``--trials`` times on one
              executor. Writes ``overhead.csv``.

Every run directory (rounds.csv, tasks.csv, faults.csv, summary.json) stays under
``--out``. Defaults fit a shared 2-core machine in minutes with the offline digits
dataset; ``--dataset mnist --data-root DIR`` runs on MNIST where it was downloaded::

    python artifacts/fault_tolerance/run.py --out runs/fault_tolerance
    python artifacts/fault_tolerance/run.py --study kills --out runs/fault_tolerance

Exit status 0 on success, 1 when a run that should finish failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the checkout's flight_parsl
    sys.path.insert(0, str(ROOT))

import flight_parsl
from flight_parsl import FlightParslError, RoundError
from flight_parsl.config.experiment import ExperimentConfig, build_config

SEED_RULES = ["round.quorum=0.75", "round.min_fraction=0.75", "round.max_missed=2", "strategy.aimd=true",
              "strategy.aimd_start=4"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def base_values(args: argparse.Namespace) -> dict[str, Any]:
    return {"backend": args.backend, "seed": args.seed, "model": {"name": args.model},
            "data": {"dataset": args.dataset, "root": args.data_root}}


def accuracy_config(args: argparse.Namespace, out: Path, workers: int) -> ExperimentConfig:
    """One run of the accuracy study: ``workers`` clients on power-law subsets, the seed system's rules."""
    return build_config(values=[base_values(args), {"workers": workers, "rounds": args.rounds,
                                                    "out": str(out / f"accuracy-n{workers}")}],
                        overrides=[*SEED_RULES, "partition.kind=power_law", f"train.lr={args.lr}", *args.overrides])


def study_accuracy(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Test accuracy after ``--rounds`` rounds for 1, 2, 4, 8 workers on power-law subsets."""
    rows = []
    for workers in args.workers:
        cfg = accuracy_config(args, out, workers)
        run_dir = flight_parsl.run(cfg, progress=not args.quiet).run_dir
        rounds = read_rows(run_dir / "rounds.csv")
        accs = [float(r["test_acc"]) for r in rounds]
        sizes = sorted(int(t["samples"]) for t in read_rows(run_dir / "tasks.csv") if t["round"] == "1" and t["samples"])
        rows.append({
            "workers": workers, "final_test_acc": accs[-1], "best_test_acc": max(accs), "rounds": len(rounds),
            "smallest_subset": sizes[0], "largest_subset": sizes[-1],
            "mean_round_s": statistics.fmean(float(r["makespan_s"]) for r in rounds), "run_dir": str(run_dir),
        })
    write_rows(out / "accuracy.csv", rows)
    return rows


def kills_config(args: argparse.Namespace, out: Path, killed: int) -> ExperimentConfig:
    """One run of the kill study: ``killed`` clients' slots SIGKILLed in round 2."""
    slots = args.clients // args.per_slot
    overrides = [
        "round.quorum=0.75", "round.min_fraction=0.7", "round.retries=0", f"slots={slots}",
        f"plan.clients_per_task={args.per_slot}", f"train.epochs={args.kill_epochs}", "transfer.kind=file",
        f"faults.kill_after_s={args.kill_after_s}", *args.overrides,
    ]
    if killed:
        overrides.append(f"faults.kill_slots={killed // args.per_slot}@2")
    return build_config(values=[{**base_values(args), "backend": "parsl", "parsl_config": args.site},
                                {"workers": args.clients, "rounds": 3,
                                                    "out": str(out / f"kills-{killed:02d}")}], overrides=overrides)


def kill_row(killed: int, run_dir: Path, status: str, message: str) -> dict[str, Any]:
    """kills.csv row of one run: round 2 (the kills) beside round 1 of the same run.

    Round 1 is the baseline of the run (the machine's load moves between runs); round 3
    includes the restarted worker processes' first task (imports, data).
    """
    rounds = read_rows(run_dir / "rounds.csv")
    faults = read_rows(run_dir / "faults.csv") if (run_dir / "faults.csv").exists() else []
    times = [float(r["makespan_s"]) for r in rounds]
    second = rounds[1] if len(rounds) > 1 else {}
    return {
        "clients_killed": killed,
        "slots_killed": sum(f["action"] == "kill_slot" and bool(f["target"]) for f in faults),
        "status": status,
        "round1_s": times[0],
        "kill_round_s": times[1] if len(times) > 1 else float("nan"),
        "kill_vs_round1": times[1] / times[0] if len(times) > 1 else float("nan"),
        "round3_s": times[2] if len(times) > 2 else float("nan"),
        "reported": second.get("reported", ""),
        "sampled": second.get("sampled", ""),
        "lost": sum(t["status"] == "lost" for t in read_rows(run_dir / "tasks.csv") if t["round"] == "2"),
        "rounds_done": len(rounds),
        "message": message,
        "run_dir": str(run_dir),
    }


def study_kills(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Round time with ``--kills`` clients' worker processes SIGKILLed in round 2; one executor."""
    rows = []
    first = kills_config(args, out, 0)
    slots = args.clients // args.per_slot
    with flight_parsl.Pool(first, slots=slots, run_dir=out / "executor") as pool:
        for killed in args.kills:
            cfg = kills_config(args, out, killed)
            status, message = "completed", ""
            try:
                flight_parsl.run(cfg, progress=not args.quiet, pool=pool)
            except RoundError as exc:
                status, message = "stopped", str(exc)
            rows.append(kill_row(killed, Path(cfg.out), status, message))
    write_rows(out / "kills.csv", rows)
    return rows


def overhead_configs(args: argparse.Namespace, out: Path) -> tuple[ExperimentConfig, list[tuple[int, float, ExperimentConfig]]]:
    """The overhead study's base config (its executor's) and its runs: (trial, quorum, config), interleaved."""
    workers = max(args.workers)
    base = build_config(values=[base_values(args), {"workers": workers, "rounds": args.rounds}],
                        overrides=["transfer.kind=file", *args.overrides])
    runs = []
    for trial in range(args.trials):
        for quorum in (1.0, 0.75):
            cfg = replace(build_config(values=[base.to_dict()], overrides=[f"round.quorum={quorum}",
                                                                             "round.min_fraction=0.5"]),
                          out=str(out / f"overhead-q{quorum}-t{trial}"))
            runs.append((trial, quorum, cfg))
    return base, runs


def study_overhead(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """No fault: quorum 1.0 vs 0.75, interleaved on one executor; mean round time per run."""
    rows = []
    base, runs = overhead_configs(args, out)
    with flight_parsl.Pool(base, slots="auto", run_dir=out / "executor-overhead") as pool:
        for trial, quorum, cfg in runs:
            run_dir = flight_parsl.run(cfg, progress=not args.quiet, pool=pool).run_dir
            rounds = read_rows(run_dir / "rounds.csv")
            rows.append({"quorum": quorum, "trial": trial,
                         "mean_round_s": statistics.fmean(float(r["makespan_s"]) for r in rounds[1:]),
                         "reported": statistics.fmean(int(r["reported"]) for r in rounds),
                         "final_test_acc": float(rounds[-1]["test_acc"] or "nan"), "run_dir": str(run_dir)})
    write_rows(out / "overhead.csv", rows)
    return rows


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", choices=["accuracy", "kills", "overhead", "all"], default="all")
    p.add_argument("--out", default="runs/fault_tolerance")
    p.add_argument("--workers", default="1,2,4,8", help="accuracy: worker counts")
    p.add_argument("--rounds", type=int, default=20, help="accuracy / overhead: rounds per run")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--clients", type=int, default=44, help="kills: clients")
    p.add_argument("--per-slot", type=int, default=2, help="kills: clients per slot (one task per slot)")
    p.add_argument("--kills", default="0,4,8,12,14", help="kills: clients whose worker process is killed")
    p.add_argument("--site", default=str(Path(__file__).with_name("site.yaml")), help="kills: Parsl site YAML")
    p.add_argument("--kill-epochs", type=int, default=60, help="kills: local epochs (keeps the slots busy mid-round)")
    p.add_argument("--kill-after-s", type=float, default=0.5, help="kills: seconds into round 2 of the SIGKILLs")
    p.add_argument("--trials", type=int, default=3, help="overhead: interleaved pairs")
    p.add_argument("--backend", default="parsl", choices=["parsl", "thread"],
                   help="executor of the accuracy and overhead studies (kills always runs on parsl)")
    p.add_argument("--model", default="mlp")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="check the arguments and every run's config, print the runs and exit (starts nothing)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.kills = [int(k) for k in args.kills.split(",")]
    if any(k % args.per_slot for k in args.kills) or args.clients % args.per_slot:
        p.error(f"--kills and --clients must be multiples of --per-slot ({args.per_slot})")
    return args


def dry_run(args: argparse.Namespace, out: Path) -> None:
    """Print every run the selected studies would make (each config built and validated)."""
    runs: list[tuple[str, ExperimentConfig]] = []
    if args.study in ("accuracy", "all"):
        runs += [(f"accuracy n={w}", accuracy_config(args, out, w)) for w in args.workers]
    if args.study in ("kills", "all"):
        runs += [(f"kills {k} killed", kills_config(args, out, k)) for k in args.kills]
    if args.study in ("overhead", "all"):
        runs += [(f"overhead quorum {q} trial {t}", cfg) for t, q, cfg in overhead_configs(args, out)[1]]
    for label, cfg in runs:
        print(f"{label}: {flight_parsl.describe(cfg)} round.quorum={cfg.round.quorum} "
              f"faults.kill_slots={cfg.faults.kill_slots}")
    print(f"dry run: {len(runs)} runs, nothing started")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.dry_run:
        try:
            dry_run(args, out)
        except FlightParslError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.study in ("accuracy", "all"):
            rows = study_accuracy(args, out)
            print(table(rows, ["workers", "final_test_acc", "best_test_acc", "smallest_subset", "largest_subset",
                               "mean_round_s"]))
        if args.study in ("kills", "all"):
            rows = study_kills(args, out)
            print(table(rows, ["clients_killed", "slots_killed", "status", "round1_s", "kill_round_s",
                               "kill_vs_round1", "round3_s", "reported", "lost", "rounds_done"]))
            for r in rows:
                if r["message"]:
                    print(f"{r['clients_killed']} killed: {r['message']}")
        if args.study in ("overhead", "all"):
            rows = study_overhead(args, out)
            print(table(rows, ["quorum", "trial", "mean_round_s", "reported", "final_test_acc"]))
            full = [r["mean_round_s"] for r in rows if r["quorum"] == 1.0]
            part = [r["mean_round_s"] for r in rows if r["quorum"] == 0.75]
            print(f"round time quorum 0.75 / quorum 1.0: {statistics.fmean(part) / statistics.fmean(full):.3f}")
    except FlightParslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
