"""Table and figure of the FedProx artifact, from its results table (or its saved raw rounds).

    python artifacts/fedprox/analyze.py runs/fedprox/results.csv                           # into runs/fedprox
    python artifacts/fedprox/analyze.py runs/fedprox/results.csv --out artifacts/fedprox   # publish
    python artifacts/fedprox/analyze.py artifacts/fedprox/mnist5k/rounds.csv --out /tmp/x  # again, from the raw files

Writes ``curves.csv`` (mean and std over seeds of each arm x straggler level x round),
``runs.csv`` (one row per run: the figures the table averages),
``table.md`` (final test accuracy and training-loss stability, mean +- std over seeds)
and ``fedprox.png`` (training loss and test accuracy against rounds, as the paper
plots them: one column per straggler level, one row per dataset and metric), and the raw
results they are computed from: ``rounds.csv`` (every round of every run: its config keys and
rounds.csv metrics) and ``results.csv`` (the sweeps' table: one row per run, its status and times).
Given a ``rounds.csv`` instead of a results table, it reads the runs from it (and the
``results.csv`` beside it), so the committed raw files reproduce the table without the run folders.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

KEYS = ["data.dataset", "strategy.name", "strategy.mu", "strategy.drop_stragglers", "strategy.stragglers", "seed"]
ARM_ORDER = ["FedAvg (drop)", "FedProx mu=0", "FedProx mu>0"]
COLORS = {"FedAvg (drop)": "tab:red", "FedProx mu=0": "tab:blue", "FedProx mu>0": "tab:green"}


def arm(row: Any) -> str:
    """The arm of a run: FedAvg dropping stragglers, FedProx with mu = 0 or mu > 0."""
    if row["strategy.name"] == "fedavg":
        return "FedAvg (drop)"
    return "FedProx mu=0" if float(row["strategy.mu"]) == 0 else "FedProx mu>0"


def load_runs(results: str | Path) -> pd.DataFrame:
    """One row per (run, round) with its dataset, arm, straggler level and seed."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from flight_parsl.results.curves import collect_rounds

    frame = collect_rounds(results, keys=KEYS)
    frame = frame.loc[:, ~frame.columns.duplicated(keep="last")]
    frame["arm"] = frame.apply(arm, axis=1)
    frame["stragglers"] = frame["strategy.stragglers"].astype(float)
    frame["dataset"] = frame["data.dataset"]
    frame["seed"] = frame["seed"].astype(int)
    return frame


def per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: final test accuracy, and how much its training loss moves from round to round."""

    def one(run: pd.DataFrame) -> pd.Series:
        run = run.sort_values("round")
        loss = run["global_train_loss"].to_numpy(dtype=float)
        half = loss[len(loss) // 2 :]
        return pd.Series(
            {
                "final_acc": float(run["test_acc"].iloc[-1]),
                "last5_acc": float(run["test_acc"].iloc[-5:].mean()),
                "final_loss": float(loss[-1]),
                "loss_std_2nd_half": float(np.std(half)),
                "loss_mean_abs_step": float(np.mean(np.abs(np.diff(loss)))) if len(loss) > 1 else np.nan,
                "rounds": len(run),
                "tasks_per_round": float(run["tasks"].mean()),
                "clients_per_round": float(run["participants"].mean()),
            }
        )

    return frame.groupby(["dataset", "arm", "stragglers", "seed"]).apply(one).reset_index()


def curves(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the training loss and test accuracy per round."""
    grouped = frame.groupby(["dataset", "arm", "stragglers", "round"])
    out = grouped.agg(
        train_loss_mean=("global_train_loss", "mean"),
        train_loss_std=("global_train_loss", "std"),
        test_acc_mean=("test_acc", "mean"),
        test_acc_std=("test_acc", "std"),
        seeds=("seed", "nunique"),
    )
    return out.reset_index()


def table(runs: pd.DataFrame) -> str:
    """A markdown table: per dataset, arm and straggler level, mean +- std over seeds."""
    lines = [
        "| dataset | stragglers | arm | final test acc | test acc, last 5 rounds | final train loss | train-loss std (2nd half) | mean abs round-to-round loss change | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = runs.assign(_a=runs["arm"].map(ARM_ORDER.index)).sort_values(["dataset", "stragglers", "_a"])
    for (dataset, level, name), g in order.groupby(["dataset", "stragglers", "arm"], sort=False):
        def ms(col: str, digits: int = 3) -> str:
            if len(g) == 1:  # one seed: no spread to give
                return f"{g[col].iloc[0]:.{digits}f}"
            return f"{g[col].mean():.{digits}f} +- {g[col].std(ddof=1):.{digits}f}"

        lines.append(
            f"| {dataset} | {level:.0%} | {name} | {ms('final_acc')} | {ms('last5_acc')} | {ms('final_loss')} | "
            f"{ms('loss_std_2nd_half')} | {ms('loss_mean_abs_step')} | {len(g)} |"
        )
    return "\n".join(lines)


def figure(curve: pd.DataFrame, path: str | Path) -> None:
    """Training loss and test accuracy against rounds, mean and +-1 std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(curve["dataset"].unique())
    levels = sorted(curve["stragglers"].unique())
    rows = [(d, m) for d in datasets for m in ("train_loss", "test_acc")]
    fig, axes = plt.subplots(len(rows), len(levels), figsize=(4 * len(levels), 2.8 * len(rows)), squeeze=False)
    for i, (dataset, metric) in enumerate(rows):
        for j, level in enumerate(levels):
            ax = axes[i][j]
            for name in ARM_ORDER:
                c = curve[(curve["dataset"] == dataset) & (curve["stragglers"] == level) & (curve["arm"] == name)]
                if c.empty:
                    continue
                x = c["round"]
                mean, std = c[f"{metric}_mean"], c[f"{metric}_std"].fillna(0)
                ax.plot(x, mean, color=COLORS[name], label=name)
                ax.fill_between(x, mean - std, mean + std, color=COLORS[name], alpha=0.15)
            ax.set_title(f"{dataset}, {level:.0%} stragglers", fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylabel("training loss" if metric == "train_loss" else "test accuracy")
            ax.grid(alpha=0.3)
    for ax in axes[0]:  # each column may hold other arms (a level some arms did not run)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: What main writes under --out.
WRITES = ("curves.csv", "runs.csv", "table.md", "fedprox.png", "rounds.csv", "results.csv")

#: The columns of the raw ``rounds.csv``: the run, its keys, and the rounds.csv metrics the analysis uses.
RAW_COLUMNS = ["run", "cell", *KEYS, "round", "start", "end", "makespan_s", "sampled", "participants", "failed",
               "tasks", "test_loss", "test_acc", "train_loss", "train_acc", "global_train_loss", "global_train_acc"]


def raw_rounds(frame: pd.DataFrame) -> pd.DataFrame:
    """Every round of every run, trimmed to RAW_COLUMNS; ``run`` is the run folder's name."""
    raw = frame.assign(run=frame["run_dir"].map(lambda d: Path(d).name))
    return raw[[c for c in RAW_COLUMNS if c in raw.columns]]


def load_raw(path: str | Path) -> pd.DataFrame:
    """A raw ``rounds.csv`` (written by :func:`raw_rounds`) as :func:`load_runs` returns its frame."""
    frame = pd.read_csv(path)
    frame["run_dir"] = frame["run"]
    frame["arm"] = frame.apply(arm, axis=1)
    frame["stragglers"] = frame["strategy.stragglers"].astype(float)
    frame["dataset"] = frame["data.dataset"]
    frame["seed"] = frame["seed"].astype(int)
    return frame


def main(argv: list[str] | None = None) -> None:
    """Write curves.csv, runs.csv, table.md and fedprox.png under --out; print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="the sweeps' results table (runs/fedprox/results.csv), or a raw rounds.csv "
                   "this script wrote (the results.csv beside it gives the run times)")
    p.add_argument("--out", help="folder to write into (default: the results table's folder; the artifact's "
                   "own folder only when named)")
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print what would be written and exit")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.results).parent
    if args.dry_run:
        there = "" if Path(args.results).is_file() else " (not there yet)"
        print(f"read {args.results}{there}; write {', '.join(str(out / n) for n in WRITES)}")
        print("dry run: nothing written")
        return
    header = pd.read_csv(args.results, nrows=0).columns
    from_raw = "round" in header
    frame = load_raw(args.results) if from_raw else load_runs(args.results)
    results_path = Path(args.results).parent / "results.csv" if from_raw else Path(args.results)
    results = pd.read_csv(results_path)
    runs = per_run(frame)
    curve = curves(frame)
    out.mkdir(parents=True, exist_ok=True)
    curve.to_csv(out / "curves.csv", index=False)
    runs.to_csv(out / "runs.csv", index=False)
    if not from_raw:
        raw_rounds(frame).to_csv(out / "rounds.csv", index=False)
    elif not (out / "rounds.csv").exists() or not (out / "rounds.csv").samefile(args.results):
        shutil.copyfile(args.results, out / "rounds.csv")
    if not (out / "results.csv").exists() or not (out / "results.csv").samefile(results_path):
        results.to_csv(out / "results.csv", index=False)
    text = table(runs)
    ok = results[results["status"] == "ok"]
    text += (
        f"\n\n{len(ok)} runs ok of {len(results)}; run time (start2end) {ok['start2end'].sum():.0f} s in all, "
        f"{ok['start2end'].median():.1f} s median per run; {int(ok['slots'].max())} slots; "
        f"{runs['tasks_per_round'].mean():.2f} tasks per round for {runs['clients_per_round'].mean():.2f} clients per round"
    )
    (out / "table.md").write_text(text + "\n")
    figure(curve, out / "fedprox.png")
    print(text)


if __name__ == "__main__":
    main()
