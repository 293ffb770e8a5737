"""Flight Artifact 4: FedAvg across remote sites (one coordinator, 2 aggregators, 8 workers).

Runs the published shape on three hosts of one machine: the coordinator's host (the
root network namespace, where the HTEX interchanges and a Redis server listen on a
private bridge address) and two virtual hosts, ``host-a`` and ``host-b`` (Linux network
namespaces made for the run, with their own addresses and host names). Each virtual host
is a site: an HTEX whose worker pool runs inside the namespace and connects to its
interchange over TCP with CurveZMQ encryption on. ``topology.yaml`` puts aggregator
``agg-a`` and workers w0-w3 on site-a, ``agg-b`` and w4-w7 on site-b; every client is its
own task (``plan.clients_per_task=1``), aggregators fold their site's clients at their
site, and model weights travel through Redis (ProxyStore). Needs root (CI runs as root).

    python artifacts/a4_remote/run.py --out runs/a4
    python artifacts/a4_remote/run.py --dataset fashion_mnist --data-root data --model fedprox_cnn --out runs/a4-fm
    python artifacts/a4_remote/run.py --link 100mbit,20ms --out runs/a4-wan

``--link RATE,DELAY`` shapes both virtual hosts' links to the coordinator's host (rate and one-way
delay, both directions; docs/sites-and-clusters.md "Shaped links"); the shaped site files are
written to ``<out>/sites`` and results.json records the links asked and measured.

It writes ``<out>/run/`` (the run directory), ``<out>/accuracy.csv`` (round, test_acc,
test_loss, train_acc, makespan_s), ``<out>/links.csv`` (per site: tasks, payload bytes to
and from the site as measured by the tasks, and the bytes the kernel counted on the
site's link, both ways) and ``<out>/results.json``, and prints a markdown table.

Exit status: 0 on success, 1 when the run fails, 2 for bad arguments or config.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the checkout's flight_parsl
    sys.path.insert(0, str(ROOT))

from flight_parsl.api import link_arg as parse_link, shaped_sites  # noqa: E402

HERE = Path(__file__).resolve().parent
SITES = [ROOT / "configs" / "parsl" / "netns" / "site-a.yaml", ROOT / "configs" / "parsl" / "netns" / "site-b.yaml"]
PUBLISHED = {"first": 0.10, "last": 0.86, "dataset": "fashion_mnist", "rounds": 10}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/a4", help="output directory")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--model", default="mlp")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--transfer", default="redis", choices=["redis", "parsl", "file"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--link", default="", help="RATE,DELAY (e.g. 100mbit,20ms): shape both sites' links (rate and "
                   "one-way delay, both directions; needs root)")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and the config, print the run and "
                   "exit (starts nothing)")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = p.parse_args(argv)
    try:
        args.link = parse_link(args.link) if args.link else {}
    except ValueError as exc:
        p.error(str(exc))
    return args


def write_sites(where: Path, link: dict[str, str]) -> list[Path]:
    """site-a and site-b, each given ``link``; their paths."""
    return shaped_sites(list(SITES), link, where)


def config(args: argparse.Namespace, out: Path, sites: list[Path] = SITES) -> Any:
    from flight_parsl.config.experiment import build_config

    values = {
        "workers": 8,
        "rounds": args.rounds,
        "seed": args.seed,
        "backend": "parsl",
        "topology": str(HERE / "topology.yaml"),
        "out": str(out / "run"),
        "data": {"dataset": args.dataset, "root": args.data_root},
        "model": {"name": args.model},
        "train": {"epochs": args.epochs},
        "strategy": {"name": "fedavg"},
        "transfer": {"kind": args.transfer},
        "plan": {"clients_per_task": 1},
        "sites": {"files": ",".join(str(s) for s in sites)},
    }
    return build_config(values=[values], overrides=list(args.overrides))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _num(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def links(run: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per site: tasks, payload bytes the tasks read and wrote, and the kernel's link counters."""
    rows = read_csv(run / "tasks.csv")
    out = []
    for label, info in summary["sites"].items():
        mine = [r for r in rows if r["site"] == label]
        tasks = {(r["round"], r["kind"], r["task"], r["attempt"]) for r in mine}
        per_task = {(r["round"], r["kind"], r["task"], r["attempt"]): r for r in mine}  # task columns repeat per client
        link = summary.get("site_links", {}).get(info["virtual_host"] or "", {})
        out.append(
            {
                "site": label,
                "host": info["virtual_host"],
                "host_address": info["host_address"],
                "tasks": len(tasks),
                "train_tasks": sum(1 for k in tasks if k[1] == "train"),
                "aggregate_tasks": sum(1 for k in tasks if k[1] == "aggregate"),
                "hosts_seen": ";".join(sorted({r["host"] for r in mine})),
                "payload_to_site": int(sum(_num(r["task_bytes_in"]) for r in per_task.values())),
                "payload_from_site": int(sum(_num(r["task_bytes_out"]) for r in per_task.values())),
                "link_to_host": link.get("to_host", ""),
                "link_from_host": link.get("from_host", ""),
            }
        )
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    import flight_parsl
    from flight_parsl import ConfigError, FlightParslError

    args = parse_args(argv)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:  # the config is checked before anything starts or is written
        try:
            cfg = config(args, out, write_sites(Path(tmp), args.link) if args.link else SITES)
            if args.link:
                flight_parsl.check(cfg)
        except ConfigError as exc:
            print(f"error: {str(exc).replace(f'{tmp}/', '')}", file=sys.stderr)
            return 2
        if args.dry_run:
            print(f"run: {flight_parsl.describe(cfg)} plan.clients_per_task={cfg.plan.clients_per_task}")
            print(f"sites: {', '.join(Path(s).name for s in SITES)}"
                  + (f"; each site's link {args.link}" if args.link else " (links unshaped)"))
            print("dry run: 1 run, nothing started")
            return 0
    out.mkdir(parents=True, exist_ok=True)
    if args.link:
        cfg = config(args, out, write_sites(out / "sites", args.link))
    load_before = os.getloadavg()
    try:
        run = flight_parsl.run(cfg, progress=True).run_dir
    except FlightParslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = json.loads((run / "summary.json").read_text())
    # the same seed builds the run's initial model: its accuracy before round 1
    initial_loss, initial_acc = flight_parsl.initial_metrics(cfg)
    rounds = read_csv(run / "rounds.csv")
    accuracy = [
        {k: r[k] for k in ("round", "test_acc", "test_loss", "train_acc", "makespan_s", "edge_bytes")} for r in rounds
    ]
    write_csv(out / "accuracy.csv", accuracy)
    link_rows = links(run, summary)
    write_csv(out / "links.csv", link_rows)
    results = {
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "rounds": cfg.rounds,
        "transfer": cfg.transfer.kind,
        "first_test_acc": _num(rounds[0]["test_acc"]),
        "final_test_acc": _num(rounds[-1]["test_acc"]),
        "published": PUBLISHED,
        "initial_test_acc": initial_acc,
        "initial_test_loss": initial_loss,
        "start2end_s": summary["start2end"],
        "prime2end_s": summary["prime2end"],
        "sites": summary["sites"],
        "site_links": summary.get("site_links", {}),
        "links": summary.get("links", {}),
        "load_avg_before": list(load_before),
        "load_avg_after": list(os.getloadavg()),
        "run_dir": str(run),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| round | test acc | test loss | makespan s |\n|---|---|---|---|")
    print(f"| 0 (initial model) | {initial_acc:.3f} | {initial_loss:.3f} | |")
    for r in accuracy:
        print(f"| {int(r['round'])} | {_num(r['test_acc']):.3f} | {_num(r['test_loss']):.3f} | {_num(r['makespan_s']):.2f} |")
    print("\n| site | host | tasks (train/aggregate) | payload to / from site (MB) | link to / from host (MB) |")
    print("|---|---|---|---|---|")
    for r in link_rows:
        mb = lambda v: f"{v / 1e6:.2f}" if v != "" else "-"
        print(
            f"| {r['site']} | {r['host']} ({r['host_address']}) | {r['tasks']} ({r['train_tasks']}/{r['aggregate_tasks']}) "
            f"| {mb(r['payload_to_site'])} / {mb(r['payload_from_site'])} | {mb(r['link_to_host'])} / {mb(r['link_from_host'])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
