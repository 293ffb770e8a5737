"""``python -m flight_parsl.cleanup RUN_DIR [--dry-run]``: remove what a killed run left.

A run whose coordinator was killed without unwinding (SIGKILL, the OOM killer, a lost
node, ``scancel`` after Slurm's KillWait) leaves its HTEX interchange, worker pools and
workers, its managed redis-server and its file channel's directory behind; its
``leftovers.json`` lists them (:mod:`flight_parsl.processes.leftovers`). ``--resume``
removes them before it continues the run; this command does the same for a run you do
not want to continue. ``--dry-run`` lists what it would stop and remove and touches
nothing. Exit status 0 when there was nothing to do or everything was removed; 2 for a
directory that is not a run directory, or a run whose coordinator still runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flight_parsl.core.errors import FlightParslError
from flight_parsl.processes import leftovers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flight_parsl.cleanup",
        description="Stop the processes and remove the directories a killed flight_parsl run left "
                    "(what --resume removes before it continues).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (its leftovers.json lists what it left)")
    p.add_argument("--dry-run", action="store_true", help="list what would be stopped and removed; touch nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        if not run_dir.exists():
            print(f"nothing to clean: {run_dir} does not exist")
            return 0
        is_run = any((run_dir / name).is_file() for name in ("config.yaml", "summary.json", leftovers.FILENAME))
        if not run_dir.is_dir() or not is_run:
            print(f"error: {run_dir} is not a flight_parsl run directory (no config.yaml, summary.json or "
                  f"{leftovers.FILENAME})", file=sys.stderr)
            return 2
        found = leftovers.left(run_dir)
        if not (run_dir / leftovers.FILENAME).is_file():
            print(f"nothing to clean: {run_dir} has no {leftovers.FILENAME} (its run stopped in an orderly way, "
                  "or was cleaned up already)")
            return 0
        if args.dry_run:
            print(f"would stop or remove {len(found)} leftover(s) of {run_dir}" + (":" if found else ""))
            for item in found:
                print(f"  {item}")
            return 0
        done = leftovers.clean(run_dir)
        print(f"removed {len(done)} leftover(s) of {run_dir}" + (":" if done else ""))
        for item in done:
            print(f"  {item}")
        return 0
    except FlightParslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
