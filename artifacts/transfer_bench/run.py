"""Benchmark the model channels in no-training ("debug") rounds and print a table.

Each cell is one fresh ``python -m flight_parsl.scale --train none`` run (its own
DataFlowKernel and workers), so cells do not share warm state. Ratios compare
transfers measured in this one invocation; absolute seconds depend on the machine.

``--workers`` counts clients. By default every cell runs with ``slots=per_client``
(one worker process per client, each task carrying one client's model both ways, as
Flight's weak-scaling artifact ran); ``--slots auto`` (or a number) packs the clients
onto fewer slots, each task folding its clients into one partial: fewer tasks, and
one model in and one out per task instead of per client. The ``slots`` column
records the slots each cell used.

    python artifacts/transfer_bench/run.py --workers 8,32 --models smallnet,resnet18 \
        --transfers parsl,redis,file --rounds 2 --out runs/transfer_bench
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

COLUMNS = (
    "model", "workers", "slots", "transfer", "rounds", "prime2end_s", "start2end_s", "round_s",
    "bytes_moved", "peak_rss_coordinator_mb", "peak_rss_worker_mb", "ratio_to_parsl", "status",
)


def cell_command(
    model: str, workers: int, transfer: str, rounds: int, out: Path, extra: list[str], slots: str = "per_client"
) -> list[str]:
    """One cell's command line."""
    return [
        sys.executable, "-m", "flight_parsl.scale", "--quiet", "--train", "none", "--model", model,
        "--workers", str(workers), "--rounds", str(rounds), "--transfer", transfer, "--out", str(out),
        f"slots={slots}", *extra,
    ]


def run_cell(
    model: str, workers: int, transfer: str, rounds: int, out: Path, extra: list[str], slots: str = "per_client"
) -> dict[str, object]:
    """Run one cell and read its summary.json and rounds.csv."""
    cmd = cell_command(model, workers, transfer, rounds, out, extra, slots)
    done = subprocess.run(cmd, capture_output=True, text=True)
    row: dict[str, object] = {"model": model, "workers": workers, "transfer": transfer, "rounds": rounds}
    if done.returncode != 0:
        row["status"] = "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
        return row
    summary = json.loads((out / "summary.json").read_text())
    with (out / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    row.update(
        slots=summary.get("slots", ""),
        prime2end_s=summary["prime2end"],
        start2end_s=summary["start2end"],
        round_s=sum(float(r["makespan_s"]) for r in rows) / len(rows),
        bytes_moved=sum(int(r["bytes_moved"]) for r in rows),
        peak_rss_coordinator_mb=summary["peak_rss_mb_coordinator"],
        peak_rss_worker_mb=summary["peak_rss_mb_worker"],
        status="ok",
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="8,32", help="comma-separated worker counts")
    p.add_argument("--models", default="smallnet,resnet18", help="comma-separated model names")
    p.add_argument("--transfers", default="parsl,redis,file", help="comma-separated transfer kinds")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--slots", default="per_client",
                   help="worker processes per cell: per_client (default, one per client), auto or a number")
    p.add_argument("--out", default=f"runs/transfer_bench-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print each cell's command and exit "
                   "(starts nothing)")
    p.add_argument("extra", nargs="*", help="extra arguments for flight_parsl.scale (key=value overrides)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not all(w.strip().isdigit() and int(w) > 0 for w in args.workers.split(",")):
        p.error(f"--workers {args.workers!r}: expected a comma list of positive integers")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.dry_run:
        import shlex

        cells = [cell_command(m, int(w), t, args.rounds, out / f"{m}-n{w}-{t}", args.extra, args.slots)
                 for m in args.models.split(",") for w in args.workers.split(",") for t in args.transfers.split(",")]
        for cmd in cells:
            print(shlex.join(cmd))
        print(f"dry run: {len(cells)} cells, one fresh run each; nothing started")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, object]] = []
    for model in args.models.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            base = None
            for transfer in args.transfers.split(","):
                cell = out / f"{model}-n{workers}-{transfer}"
                row = run_cell(model, workers, transfer, args.rounds, cell, args.extra, args.slots)
                if transfer == "parsl" and row["status"] == "ok":
                    base = float(row["prime2end_s"])  # type: ignore[arg-type]
                if base and row["status"] == "ok":
                    row["ratio_to_parsl"] = float(row["prime2end_s"]) / base  # type: ignore[arg-type]
                results.append(row)
                print(_fmt_row(row), flush=True)
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(results)
    print(f"\n{_markdown(results)}\nresults: {out / 'results.csv'}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


def _fmt_row(row: dict[str, object]) -> str:
    return "  ".join(f"{k}={_fmt(row.get(k))}" for k in COLUMNS if k in row)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.1f}"
    return "" if value is None else str(value)


def _markdown(rows: list[dict[str, object]]) -> str:
    cols = ("model", "workers", "slots", "transfer", "prime2end_s", "round_s", "start2end_s", "bytes_moved",
            "peak_rss_coordinator_mb", "peak_rss_worker_mb", "ratio_to_parsl", "status")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
