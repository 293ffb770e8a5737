"""ProxyFL and its paper's baselines on digits: accuracy, epsilon, bytes per client.

Runs the six decentralized-mode methods (regular, joint, fedavg, avgpush, fml,
proxyfl) for several seeds on K = 8 clients with 1000 samples each, non-IID (each
client's majority class makes 80% of its data; digits has 1,438 training images,
so a client's samples are drawn with replacement), all on one Parsl HTEX executor
with 2 slots (the clients are packed 4 to a task), then ProxyFL for a few rounds
at K = 4, 8, 16 to measure the bytes each client reads and writes per round.
Writes

    <out>/runs/<method>-s<seed>/   each run directory (rounds.csv, tasks.csv, summary.json)
    <out>/runs/bytes-k<K>/         the byte measurement runs
    <out>/curves.csv               method, seed, round, private_acc, proxy_acc, epsilon
    <out>/bytes.csv                K, round, client bytes in / out (mean, min, max over clients)

and prints the table (mean +- std over seeds of the final private / proxy accuracy,
final epsilon). A run directory whose summary says ``completed`` is not run again.

    python artifacts/proxyfl/run.py --out artifacts/proxyfl/results
    python artifacts/proxyfl/run.py --out artifacts/proxyfl/results --rounds 300 --seeds 5   # the paper's length

Settings: ProxyFL's (Adam, expected batch 250, one local epoch per round, DML
weights 0.5, DP-SGD on the shared model with C = 1, noise 1, delta = 1/n) except
the learning rate (0.01 instead of 0.001, because the runs are 15 rounds, not 300)
and the models (private: mlp; shared / proxy: logreg, to keep per-example
gradients cheap on 2 cores). ``key=value`` arguments override config keys of
every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("regular", "joint", "fedavg", "avgpush", "fml", "proxyfl")
LABELS = {"regular": "Regular", "joint": "Joint", "fedavg": "FedAvg", "avgpush": "AvgPush", "fml": "FML",
          "proxyfl": "ProxyFL"}


def base_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "partition.kind=majority", f"partition.samples_per_client={args.samples}", f"model.name={args.proxy_model}",
        f"peer.private_models={args.private_model}", f"peer.lr={args.lr}", "plan.clients_per_task=4",
        "slots=2", "transfer.kind=file", *args.overrides,
    ]


def run_config(name: str, args: argparse.Namespace, **values: object) -> Any:
    """The validated config of one run (its directory ``<out>/runs/<name>``)."""
    from flight_parsl.config.experiment import build_config

    out = Path(args.out) / "runs" / name
    return build_config(values=[{"out": str(out), "mode": "decentralized", "backend": "parsl", **values}],
                        overrides=base_overrides(args))


def planned(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """Every run, in order: (name, config values): the methods x seeds, then the byte measurement."""
    runs = [(f"{m}-s{seed}", {"workers": args.workers, "rounds": args.rounds, "seed": seed, "strategy": {"name": m}})
            for seed in range(args.seeds) for m in args.methods.split(",")]
    runs += [(f"bytes-k{k}", {"workers": int(k), "rounds": args.bytes_rounds, "seed": 0,
                              "strategy": {"name": "proxyfl"}}) for k in filter(None, args.bytes_k.split(","))]
    return runs


def run_one(name: str, args: argparse.Namespace, pool: Any, **values: object) -> Path:
    import flight_parsl

    out = Path(args.out) / "runs" / name
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
        return out
    cfg = run_config(name, args, **values)
    print(f"{name}: running", flush=True)
    return flight_parsl.run(cfg, pool=pool).run_dir


def collect(out: Path) -> None:
    """curves.csv and bytes.csv from the run directories under ``out/runs``."""
    rows = []
    for run in sorted((out / "runs").glob("*-s*")):
        method, seed = run.name.rsplit("-s", 1)
        summary = run / "summary.json"
        if method not in METHODS or not summary.exists() or json.loads(summary.read_text())["status"] != "completed":
            continue  # not run yet, still running, or failed
        with (run / "rounds.csv").open() as f:
            for r in csv.DictReader(f):
                rows.append({"method": method, "seed": seed, "round": int(r["round"]),
                             "private_acc": r["test_acc"], "proxy_acc": r["proxy_test_acc"], "epsilon": r["epsilon"]})
    with (out / "curves.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "seed", "round", "private_acc", "proxy_acc", "epsilon"])
        w.writeheader()
        w.writerows(rows)
    brows = []
    for run in sorted((out / "runs").glob("bytes-k*")):
        k = int(run.name.removeprefix("bytes-k"))
        with (run / "tasks.csv").open() as f:
            tasks = list(csv.DictReader(f))
        with (run / "rounds.csv").open() as f:
            proxies_read = {int(r["round"]): int(r["bytes_to_workers"]) for r in csv.DictReader(f)}
        for rnd in sorted({int(t["round"]) for t in tasks}):
            ins = [int(t["client_bytes_in"]) for t in tasks if int(t["round"]) == rnd]
            outs = [int(t["client_bytes_out"]) for t in tasks if int(t["round"]) == rnd]
            brows.append({"K": k, "round": rnd, "clients": len(ins), "bytes_in_mean": statistics.fmean(ins),
                          "bytes_in_min": min(ins), "bytes_in_max": max(ins), "bytes_out_mean": statistics.fmean(outs),
                          "bytes_out_min": min(outs), "bytes_out_max": max(outs),
                          "proxy_bytes_in_mean": proxies_read[rnd] / len(ins)})
    if brows:
        with (out / "bytes.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(brows[0]))
            w.writeheader()
            w.writerows(brows)


def table(out: Path) -> str:
    """Markdown: final private / proxy accuracy (mean +- std over seeds) and final epsilon per method."""
    with (out / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    lines = ["| method | seeds | rounds | private acc | proxy acc | epsilon |", "|---|---|---|---|---|---|"]

    def ms(values: list[float]) -> str:
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} +- {sd:.3f}"

    for m in METHODS:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        last = max(int(r["round"]) for r in mine)
        final = [r for r in mine if int(r["round"]) == last]
        eps = [float(r["epsilon"]) for r in final if r["epsilon"]]
        lines.append(
            f"| {LABELS[m]} | {len(final)} | {last} | {ms([float(r['private_acc']) for r in final])} | "
            f"{ms([float(r['proxy_acc']) for r in final if r['proxy_acc']])} | "
            + (f"{statistics.fmean(eps):.2f} |" if eps else "- |")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="artifacts/proxyfl/results")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--private-model", default="mlp")
    p.add_argument("--proxy-model", default="logreg")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--bytes-k", default="4,8,16", help="client counts of the byte measurement ('' skips it)")
    p.add_argument("--bytes-rounds", type=int, default=3)
    p.add_argument("--collect-only", action="store_true", help="only rebuild the csv files and the table")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and every run's config, print the "
                   "runs and exit (starts nothing)")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.dry_run:
        import flight_parsl

        try:
            runs = [(name, run_config(name, args, **values)) for name, values in planned(args)]
        except flight_parsl.FlightParslError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for name, cfg in runs:
            print(f"{name}: {flight_parsl.describe(cfg)} peer.private_models={cfg.peer.private_models}")
        print(f"dry run: {len(runs)} runs on one parsl executor with 2 slots"
              + (" (collect only: none would run)" if args.collect_only else "") + ", nothing started")
        return 0
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if not args.collect_only:
        import flight_parsl

        with flight_parsl.Pool(backend="parsl", slots=2, run_dir=out / "parsl") as pool:
            for seed in range(args.seeds):
                for m in args.methods.split(","):
                    run_one(f"{m}-s{seed}", args, pool, workers=args.workers, rounds=args.rounds, seed=seed,
                            strategy={"name": m})
                collect(out)
            for k in filter(None, args.bytes_k.split(",")):
                run_one(f"bytes-k{k}", args, pool, workers=int(k), rounds=args.bytes_rounds, seed=0,
                        strategy={"name": "proxyfl"})
    collect(out)
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
