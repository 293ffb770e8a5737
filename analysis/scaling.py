"""Scaling figures from the shared results table (flight_parsl/results/table.py).

    python -m analysis.scaling results/scaling.csv --out scaling.png
    python -m analysis.scaling results/scaling.csv --out makespan.png --metric round_makespan_s \
        --ratio-out ratio.png

Only rows with status ``ok`` count. Trials of one cell (framework, transfer, model, workers) are
averaged; error bars are the standard deviation over trials (0 with a single trial).

One line per framework and transfer. flight_parsl rows whose clients were packed onto fewer slots
than clients (the table's ``slots`` column below ``num_workers``: ``slots=auto`` packs once the
clients outnumber the cores) stay on their transfer's line, drawn with a hollow marker: a default
2-and-8-worker sweep on a 2-core machine draws one line per transfer, packed at 8. Only a table that
holds both a packed and a one-slot-per-client run of the same cell (``artifacts/a1_scaling --packed``
compares them) splits the packed runs off into a series of their own, ``<transfer>+packed``
(``flight_parsl/file+packed``), drawn dotted. Rows without ``slots`` (written before the column
existed) ran one worker process per client. The ratio table compares Flower with flight_parsl's
one-slot-per-client points unless asked to include the packed ones.

Figures are drawn on matplotlib's Agg canvas (``matplotlib.figure.Figure``, never pyplot), so
nothing needs a display and the global backend is left alone.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatter, NullLocator

from flight_parsl.results.table import read_rows, rows_to_frame

GROUP_KEYS = ["framework", "transfer", "model", "num_workers"]
METRICS = ["prime2end", "round_makespan_s", "start2end", "peak_rss_mb", "peak_rss_workers_mb"]
# Metrics the CLI plots (times, in seconds); plot_scaling also takes the two memory metrics.
TIME_METRICS = ["prime2end", "round_makespan_s", "start2end"]
METRIC_LABELS = {
    "prime2end": "prime2end: measured rounds (s)",
    "round_makespan_s": "mean round makespan (s)",
    "start2end": "start2end: whole run (s)",
    "peak_rss_mb": "coordinator peak RSS (MB)",
    "peak_rss_workers_mb": "workers' summed peak RSS (MB)",
}
MODEL_ORDER = ["tiny", "smallnet", "squeezenet1_0", "resnet18", "resnet50", "resnet152"]
FRAMEWORK_ORDER = ["flight_parsl", "flower-simulation", "flower-grpc"]
TRANSFER_ORDER = ["parsl", "redis", "file"]
MARKERS = {"parsl": "o", "redis": "s", "file": "^", "ray": "D", "grpc": "v"}
OTHER_MARKERS = ["P", "X", "*", "h", "<", ">", "p"]
PRIMARY = "flight_parsl"
PACKED = "+packed"  # transfer suffix of flight_parsl rows packed onto fewer slots than clients


# --------------------------------------------------------------------------- loading, summary


def load_results(path: str | Path) -> pd.DataFrame:
    """The ``ok`` rows of a results table, numeric columns converted.

    Raises ValueError naming the path when the file is missing or has no ``ok`` row.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"results table not found: {p}")
    rows = read_rows(p)
    frame = rows_to_frame(rows)
    ok = frame[frame["status"].map(lambda s: isinstance(s, str) and s.strip() == "ok")].copy()
    ok = ok.dropna(subset=["num_workers"])
    if ok.empty:
        raise ValueError(f"no rows with status 'ok' in {p} ({len(rows)} rows in all)")
    for col in ("framework", "transfer", "model"):
        ok[col] = ok[col].fillna("").astype(str)
    ok["num_workers"] = ok["num_workers"].astype(int)
    packed = (ok["framework"] == PRIMARY) & ok["slots"].notna() & (ok["slots"] < ok["num_workers"])
    ok["packed"] = packed
    # a cell run both ways (packed and one slot per client) compares them: the packed runs are a series
    cell = packed.groupby([ok[c] for c in GROUP_KEYS])
    mixed = cell.transform("any") & ~cell.transform("all")
    ok.loc[packed & mixed, "transfer"] = ok.loc[packed & mixed, "transfer"] + PACKED
    return ok.reset_index(drop=True)


def _rank(value: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def base_transfer(transfer: str) -> str:
    """The transfer without the packed suffix."""
    return transfer[: -len(PACKED)] if transfer.endswith(PACKED) else transfer


def _transfer_rank(transfer: str) -> tuple[tuple[int, str], bool]:
    """Transfers in TRANSFER_ORDER, each one's packed series right after it."""
    return _rank(base_transfer(transfer), TRANSFER_ORDER), transfer.endswith(PACKED)


def model_order(models: Iterable[str]) -> list[str]:
    """Models in figure order: tiny ... resnet152, then the others alphabetically."""
    return sorted(set(models), key=lambda m: _rank(m, MODEL_ORDER))


def _series_order(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted(set(pairs), key=lambda ft: (_rank(ft[0], FRAMEWORK_ORDER), _transfer_rank(ft[1])))


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over trials per (framework, transfer, model, num_workers), and the trial count.

    Columns: the four keys, ``<metric>_mean`` and ``<metric>_std`` for each of METRICS, ``trials``,
    ``packed`` (some run of the cell packed its clients onto fewer slots). std is the sample
    standard deviation (NaN with one trial). Rows come in figure order.
    """
    if frame.empty:
        raise ValueError("no rows to summarize")
    data = frame.copy()
    for m in METRICS:
        data[m] = pd.to_numeric(data[m], errors="coerce").astype(float)
    if "packed" not in data.columns:
        data["packed"] = False
    data["packed"] = data["packed"].fillna(False).astype(bool)
    grouped = data.groupby(GROUP_KEYS, sort=False, dropna=False)
    stats = grouped[METRICS].agg(["mean", "std"])
    stats.columns = [f"{m}_{stat}" for m, stat in stats.columns]
    stats["trials"] = grouped.size()
    stats["packed"] = grouped["packed"].any()
    out = stats.reset_index()
    out["num_workers"] = out["num_workers"].astype(int)
    out["trials"] = out["trials"].astype(int)
    order = out.apply(
        lambda r: (
            _rank(r["framework"], FRAMEWORK_ORDER),
            _transfer_rank(r["transfer"]),
            _rank(r["model"], MODEL_ORDER),
            r["num_workers"],
        ),
        axis=1,
    )
    out = out.iloc[sorted(range(len(out)), key=lambda i: order.iloc[i])]
    return out.reset_index(drop=True)


def _as_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Accept either the loaded rows or a summarize() result."""
    if "trials" in frame.columns and f"{METRICS[0]}_mean" in frame.columns:
        return frame
    return summarize(frame)


def series_labels(summary: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Legend label per (framework, transfer): ``flight_parsl/redis``, ``flower-simulation``.

    flight_parsl always shows its transfer; another framework shows it only when the table
    holds that framework with more than one transfer.
    """
    pairs = _series_order(zip(summary["framework"], summary["transfer"]))
    per_framework: dict[str, int] = {}
    for fw, _ in pairs:
        per_framework[fw] = per_framework.get(fw, 0) + 1
    labels = {}
    for fw, tr in pairs:
        show = (fw == PRIMARY or per_framework[fw] > 1) and tr != ""
        labels[(fw, tr)] = f"{fw}/{tr}" if show else fw
    return labels


def _check_metric(metric: str, allowed: Sequence[str] = METRICS) -> None:
    if metric not in allowed:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(allowed)}")


# --------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _log2_workers_axis(ax: Any, workers: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(workers)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = min(workers), max(workers)
    pad = 2 ** 0.3
    ax.set_xlim(lo / pad, hi * pad)


def _subtitle(frame: pd.DataFrame) -> str:
    parts = []
    for col, fmt in (("train", "train={}"), ("rounds", "{} rounds")):
        if col in frame.columns:
            values = frame[col].dropna().unique()
            if len(values) == 1:
                v = values[0]
                parts.append(fmt.format(int(v) if isinstance(v, float) and v.is_integer() else v))
    return f" ({', '.join(parts)})" if parts else ""


def _save(fig: Figure, out: str | Path | None) -> None:
    if out is not None:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=150, bbox_inches="tight")


def plot_scaling(frame: pd.DataFrame, metric: str = "prime2end", out: str | Path | None = None) -> Figure:
    """The Flight Artifact-1 figure: metric against workers, one panel per model.

    x: workers (log2, ticks at the worker counts present); y: the metric's mean over trials
    (log scale) with std error bars; one line per (framework, transfer), a hollow marker where the
    clients were packed onto fewer slots than clients. ``frame`` is what
    load_results returns (or a summarize() result). Saved as PNG (dpi 150) when ``out`` is given.
    """
    _check_metric(metric)
    summary = _as_summary(frame)
    mean, std = f"{metric}_mean", f"{metric}_std"
    summary = summary[summary[mean].notna() & (summary[mean] > 0)]
    if summary.empty:
        raise ValueError(f"no positive values of {metric} to plot")
    models = model_order(summary["model"])
    workers = sorted(summary["num_workers"].unique().tolist())
    labels = series_labels(summary)
    styles = _series_styles(labels)
    hollow = False  # some point is a packed run drawn on its transfer's line

    ncols = min(len(models), 3)
    nrows = math.ceil(len(models) / ncols)
    fig = _new_figure(4.3 * ncols, 3.4 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(models):]:
        fig.delaxes(ax)

    for i, (ax, model) in enumerate(zip(axes, models)):
        cells = summary[summary["model"] == model]
        for key, label in labels.items():
            s = cells[(cells["framework"] == key[0]) & (cells["transfer"] == key[1])].sort_values("num_workers")
            if s.empty:
                continue
            y = s[mean].to_numpy(dtype=float)
            err = s[std].fillna(0.0).to_numpy(dtype=float)
            x = s["num_workers"].to_numpy()
            ax.errorbar(x, y, yerr=err, label=label, capsize=3, markersize=5, linewidth=1.5, **styles[label])
            packed = s["packed"].to_numpy(dtype=bool) if "packed" in s.columns else None
            if packed is not None and packed.any() and not key[1].endswith(PACKED):
                hollow = True
                ax.plot(x[packed], y[packed], linestyle="none", marker=styles[label]["marker"], markersize=5,
                        markerfacecolor="white", markeredgecolor=styles[label]["color"], zorder=3)
        ax.set_yscale("log", nonpositive="clip")
        _log2_workers_axis(ax, workers)
        ax.set_title(model)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", axis="y", alpha=0.1)
        if i % ncols == 0:
            ax.set_ylabel(METRIC_LABELS[metric])
        if i + ncols >= len(models):  # lowest panel in its column
            ax.set_xlabel("workers")

    handles = [Line2D([], [], **styles[label], label=label) for label in labels.values()]
    if hollow:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                              label="hollow: clients packed onto fewer slots"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), frameon=False)
    fig.suptitle(f"{METRIC_LABELS[metric].split(' (')[0]} vs workers{_subtitle(frame)}")
    _save(fig, out)
    return fig


def _series_styles(labels: dict[tuple[str, str], str]) -> dict[str, dict[str, Any]]:
    colors = [f"C{i}" for i in range(10)]
    styles: dict[str, dict[str, Any]] = {}
    spare = iter(OTHER_MARKERS * 3)
    for i, ((fw, tr), label) in enumerate(labels.items()):
        styles[label] = {
            "color": colors[i % len(colors)],
            "marker": MARKERS.get(base_transfer(tr)) or next(spare),
            "linestyle": (":" if tr.endswith(PACKED) else "-") if fw == PRIMARY else "--",
        }
    return styles


def ratio_table(
    frame: pd.DataFrame, baseline: str = "flower-simulation", metric: str = "prime2end", packed: bool = False
) -> pd.DataFrame:
    """baseline / flight_parsl per (model, workers), flight_parsl taking its best transfer per cell.

    Columns: model, num_workers, baseline (its mean; its best transfer if it has several),
    flight_parsl (best mean), best_transfer, ratio (> 1: flight_parsl is faster). flight_parsl's
    packed runs (fewer slots than clients) are candidates only with ``packed=True``.
    """
    _check_metric(metric)
    summary = _as_summary(frame)
    mean = f"{metric}_mean"
    summary = summary[summary[mean].notna() & (summary[mean] > 0)]
    if not packed:
        is_packed = summary["transfer"].str.endswith(PACKED)
        if "packed" in summary.columns:
            is_packed |= summary["packed"].astype(bool)
        summary = summary[~((summary["framework"] == PRIMARY) & is_packed)]
    frameworks = set(summary["framework"])
    for fw in (baseline, PRIMARY):
        if fw not in frameworks:
            raise ValueError(f"no ok rows of {fw!r} with {metric} (frameworks: {', '.join(sorted(frameworks))})")

    def best(fw: str) -> pd.DataFrame:
        s = summary[summary["framework"] == fw]
        idx = s.groupby(["model", "num_workers"])[mean].idxmin()
        return s.loc[idx, ["model", "num_workers", "transfer", mean]]

    b = best(baseline).rename(columns={mean: "baseline"}).drop(columns="transfer")
    f = best(PRIMARY).rename(columns={mean: PRIMARY, "transfer": "best_transfer"})
    both = b.merge(f, on=["model", "num_workers"], how="inner")
    if both.empty:
        raise ValueError(f"no (model, workers) cell has ok rows of both {baseline!r} and {PRIMARY!r}")
    both["ratio"] = both["baseline"] / both[PRIMARY]
    order = model_order(both["model"])
    both["_m"] = both["model"].map(order.index)
    both = both.sort_values(["_m", "num_workers"]).drop(columns="_m").reset_index(drop=True)
    return both[["model", "num_workers", "baseline", PRIMARY, "best_transfer", "ratio"]]


def plot_ratio(
    frame: pd.DataFrame, baseline: str = "flower-simulation", metric: str = "prime2end", out: str | Path | None = None
) -> Figure:
    """baseline / flight_parsl (best transfer per cell) against workers, one line per model.

    The marker says which flight_parsl transfer was best in that cell; the dashed line is parity
    (above it flight_parsl is faster).
    """
    table = ratio_table(frame, baseline=baseline, metric=metric)
    workers = sorted(table["num_workers"].unique().tolist())
    fig = _new_figure(7.5, 5.2)
    ax = fig.subplots()
    model_handles = []
    for i, model in enumerate(model_order(table["model"])):
        s = table[table["model"] == model].sort_values("num_workers")
        color = f"C{i % 10}"
        ax.plot(s["num_workers"], s["ratio"], color=color, linewidth=1.5)
        for tr, part in s.groupby("best_transfer"):
            ax.scatter(part["num_workers"], part["ratio"], color=color, marker=MARKERS.get(base_transfer(tr), "P"),
                       s=40, zorder=3)
        model_handles.append(Line2D([], [], color=color, linewidth=1.5, label=model))
    ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
    _log2_workers_axis(ax, workers)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("workers")
    ax.set_ylabel(f"{baseline} / {PRIMARY} ({metric})")
    fig.suptitle(f"{metric}: {baseline} / {PRIMARY}, best transfer per cell{_subtitle(frame)}\nabove 1: {PRIMARY} is faster")
    transfer_handles = [
        Line2D([], [], color="0.3", marker=MARKERS.get(base_transfer(tr), "P"), linestyle="none", label=f"best: {tr}")
        for tr in sorted(set(table["best_transfer"]), key=_transfer_rank)
    ]
    handles = model_handles + transfer_handles
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    _save(fig, out)
    return fig


# --------------------------------------------------------------------------- CLI


def format_table(table: pd.DataFrame) -> str:
    """Markdown when tabulate is installed, else DataFrame.to_string."""
    try:
        return table.to_markdown(index=False, floatfmt=".4g")
    except ImportError:
        return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m analysis.scaling", description="Scaling figure(s) and summary from a results table.")
    p.add_argument("results", help="results table (CSV written by flight_parsl.results.table)")
    p.add_argument("--out", required=True, help="PNG for the scaling figure")
    p.add_argument("--metric", default="prime2end", help=f"one of {', '.join(TIME_METRICS)} (default prime2end)")
    p.add_argument("--ratio-out", help="also write the baseline/flight_parsl ratio figure here")
    p.add_argument("--baseline", default="flower-simulation", help="baseline framework of the ratio figure")
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print what would be drawn and exit "
                   "(writes nothing; a results table not there yet is reported, not an error)")
    args = p.parse_args(argv)
    if args.dry_run:
        try:
            _check_metric(args.metric, TIME_METRICS)
        except ValueError as exc:
            print(f"{p.prog}: error: {exc}", file=sys.stderr)
            return 2
        there = "" if Path(args.results).is_file() else " (not there yet)"
        print(f"read {args.results}{there}; draw {args.metric} vs workers -> {args.out}"
              + (f"; {args.baseline} / flight_parsl ratio -> {args.ratio_out}" if args.ratio_out else ""))
        print("dry run: nothing written")
        return 0
    try:
        _check_metric(args.metric, TIME_METRICS)
        frame = load_results(args.results)
        summary = summarize(frame)
        plot_scaling(frame, metric=args.metric, out=args.out)
        ratios = None
        if args.ratio_out:
            ratios = ratio_table(frame, baseline=args.baseline, metric=args.metric)
            plot_ratio(frame, baseline=args.baseline, metric=args.metric, out=args.ratio_out)
    except (ValueError, OSError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(summary))
    if ratios is not None:
        print()
        print(format_table(ratios))
    print(f"\nwrote {args.out}" + (f" and {args.ratio_out}" if args.ratio_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
