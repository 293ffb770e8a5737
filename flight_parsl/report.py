"""``python -m flight_parsl.report RUN_DIR [--out FILE] [--dry-run]``: see a run at a glance.

Writes one self-contained HTML file (its charts inlined as base64 PNGs, no network
request) and the same PNGs beside it: test accuracy against wall time and round, round
makespans, every slot's tasks as a Gantt chart (idle time visible), bytes per round per
edge or site link, failures and retries marked, and the summary. Given a sweep's
results table (``results.csv``, or the folder that holds it) it draws the scaling
curves. ``--dry-run`` says what it would read and write and draws nothing. See
:mod:`flight_parsl.results.report`. Exit status 0, or 2 for an input it cannot read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flight_parsl.core.errors import FlightParslError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flight_parsl.report",
        description="Draw a run directory (or a sweep's results.csv) into one self-contained HTML file and PNGs.",
    )
    p.add_argument("source", metavar="RUN_DIR", help="a run directory, a sweep's results.csv, or the folder holding it")
    p.add_argument("--out", metavar="FILE", help="the HTML file (default RUN_DIR/report.html; for X.csv, X-report.html "
                   "beside it); the PNGs go beside it as <stem>-<chart>.png")
    p.add_argument("--dry-run", action="store_true", help="say what would be read and written; draw nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from flight_parsl.results.report import plan_report, write_report

    try:
        if args.dry_run:
            if not Path(args.source).exists():
                print(f"would read {args.source} (not there yet: write it first) and write "
                      f"{args.out or 'report.html beside it'} with its PNGs")
                print("dry run: nothing drawn")
                return 0
            plan = plan_report(args.source, args.out)
            print(f"would read the {plan['kind']} {plan['input']} and write {plan['html']}")
            for png in plan["pngs"]:
                print(f"  and {png}")
            print("dry run: nothing drawn")
            return 0
        html_path, pngs = write_report(args.source, args.out)
    except FlightParslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {html_path} ({len(pngs)} charts: {', '.join(p.name for p in pngs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
