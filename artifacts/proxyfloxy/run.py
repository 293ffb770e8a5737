"""The ProxyFloxy model-size study: model transfer with and without ProxyStore.

FLoX with ProxyStore ("ProxyFloxy") trained a CNN with k extra Conv64 + BatchNorm blocks
on a controller and several endpoints, for each transfer mode (no store: the model
rides inside the task; ProxyStore: the task carries a proxy and the model goes through
a store) x model size x trial; 5 rounds, 100 samples per endpoint, 1 local epoch.

Here the controller is the coordinator and there are three endpoints, each one FL client
at its own site (``endpoints.yaml``, ``sites/``): ``local`` on the coordinator's host
(loopback) and ``remote-a`` / ``remote-b`` on two virtual hosts (network namespaces the
run makes; their worker pools connect over TCP with HTEX encryption on). Modes:
``store=none`` is ``--transfer parsl`` (the model is pickled into every task and the
result rides back in the task's result); ``store=redis`` is ``--transfer redis`` (ProxyStore
over a Redis server on the run's bridge address: one proxy per round, workers put their
results in Redis). All runs share one virtual network and one DataFlowKernel; within a
model size and trial the two modes run back to back.

``transfer_time`` of an endpoint in a round is the time its model spent moving, measured
by timers that contain no training and no sleep: the round's publish (serializing the
global model, and for redis storing it) + the task's round trip (submitted on the
coordinator to its result back) - its training time on the slot (``compute_s``, measured
there) + the coordinator's collect of its result. ``data_transfer_size`` is the bytes
the endpoint's task read and wrote (the model in, its result out). ``train_loss`` /
``train_accuracy`` are the endpoint's own local training figures; ``test_loss`` /
``test_accuracy`` are the global model's after the round.

    python artifacts/proxyfloxy/run.py --out runs/proxyfloxy                # k in 1,10,50,100, 3 trials
    python artifacts/proxyfloxy/run.py --blocks 1,2,5 --trials 1 --out runs/pf-small
    python artifacts/proxyfloxy/run.py --link 100mbit,20ms --trials 1 --out runs/proxyfloxy-wan

``--link RATE,DELAY`` shapes the links of the two remote endpoints' virtual hosts (rate and one-way
delay, both directions; see docs/sites-and-clusters.md "Shaped links"): their tasks and their Redis
traffic cross it; ``local`` stays on loopback. The shaped site files are written to ``<out>/sites``.

Writes ``<out>/proxyfloxy.csv`` (ProxyFloxy's columns, then trial, num_parameters,
round_trip_s, compute_s, run_dir), ``<out>/runs.csv`` (one row per run) and prints the mean
transfer time per mode and model size with the ratio redis / none. Needs root.

Exit status: 0 on success, 1 when a run fails, 2 for bad arguments or config.
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the checkout's flight_parsl
    sys.path.insert(0, str(ROOT))

from flight_parsl.api import link_arg as parse_link, shaped_sites  # noqa: E402

HERE = Path(__file__).resolve().parent
SITES = [HERE / "sites" / "local.yaml", HERE / "sites" / "remote-a.yaml", HERE / "sites" / "remote-b.yaml"]
MODES = {"none": "parsl", "redis": "redis"}  # store column -> transfer kind
COLUMNS = (
    "round", "endpoint_name", "transfer_time", "data_transfer_size", "model_param_size", "model_arch_size",
    "local", "test_accuracy", "test_loss", "train_accuracy", "train_loss", "num_hidden_blocks", "store",
    "trial", "num_parameters", "round_trip_s", "compute_s", "run_dir",
)  # fmt: skip
RUN_COLUMNS = ("num_hidden_blocks", "store", "trial", "status", "start2end", "prime2end", "round_makespan_s", "run_dir")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/proxyfloxy")
    p.add_argument("--blocks", default="1,10,50,100", help="comma list of k (extra Conv64+BN blocks), 1..100")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--first-trial", type=int, default=0, help="number of the first trial (its seed); trials run "
                   "from it, so a study can be extended by more trials into another --out")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=100, help="training samples per endpoint")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--link", default="", help="RATE,DELAY (e.g. 100mbit,20ms): shape the remote endpoints' links "
                   "(rate and one-way delay, both directions; needs root)")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and every run's config, print the "
                   "runs and exit (starts nothing)")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = p.parse_args(argv)
    try:
        args.blocks = [int(k) for k in args.blocks.split(",") if k.strip()]
    except ValueError:
        p.error(f"--blocks {args.blocks!r}: expected a comma list of integers")
    if not args.blocks or any(not 1 <= k <= 100 for k in args.blocks):
        p.error("--blocks: every k must be in 1..100")
    if args.trials < 1:
        p.error("--trials must be >= 1")
    if args.first_trial < 0:
        p.error("--first-trial must be >= 0")
    try:
        args.link = parse_link(args.link) if args.link else {}
    except ValueError as exc:
        p.error(str(exc))
    return args


def write_sites(where: Path, link: dict[str, str]) -> list[Path]:
    """The three endpoint sites, the remote ones (those on a virtual host) given ``link``; their paths."""
    return shaped_sites(list(SITES), link, where)


def config(args: argparse.Namespace, out: Path, k: int, store: str, trial: int, sites: list[Path] = SITES) -> Any:
    from flight_parsl.config.experiment import build_config

    values = {
        "workers": 3,
        "rounds": args.rounds,
        "seed": trial,
        "backend": "parsl",
        "topology": str(HERE / "endpoints.yaml"),
        "out": str(out / "runs" / f"k{k:03d}-{store}-t{trial}"),
        "data": {"dataset": args.dataset, "root": args.data_root},
        "partition": {"max_samples": args.samples},
        "model": {"name": "cnn_blocks", "extra_blocks": k},
        "train": {"epochs": args.epochs},
        "strategy": {"name": "fedavg"},
        "transfer": {"kind": MODES[store]},
        "plan": {"clients_per_task": 1},
        "sites": {"files": ",".join(str(s) for s in sites)},
    }
    return build_config(values=[values], overrides=list(args.overrides))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _f(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def arch_size(cfg: Any) -> int:
    """Bytes of the pickled torch module (architecture and weights: what FLoX shipped)."""
    import flight_parsl

    return len(pickle.dumps(flight_parsl.initial_model(cfg)))


def rows_of(run: Path, k: int, store: str, trial: int, arch: int) -> list[dict[str, Any]]:
    """ProxyFloxy rows of one run: one per endpoint per round."""
    summary = json.loads((run / "summary.json").read_text())
    rounds = {int(r["round"]): r for r in read_csv(run / "rounds.csv")}
    out = []
    for t in read_csv(run / "tasks.csv"):
        if t["kind"] != "train" or t["status"] != "ok":
            continue
        r = rounds[int(t["round"])]
        round_trip = _f(t["task_received"]) - _f(t["task_submitted"])
        collect = _f(t["task_collect_s"]) if t["task_collect_s"] else 0.0
        out.append(
            {
                "round": int(t["round"]),
                "endpoint_name": t["site"],
                "transfer_time": _f(r["publish_s"]) + round_trip - _f(t["task_compute_s"]) + collect,
                "data_transfer_size": int(_f(t["task_bytes_in"]) + _f(t["task_bytes_out"])),
                "model_param_size": summary["model_bytes"],
                "model_arch_size": arch,
                "local": summary["sites"][t["site"]]["virtual_host"] is None,
                "test_accuracy": _f(r["test_acc"]),
                "test_loss": _f(r["test_loss"]),
                "train_accuracy": _f(t["train_acc"]),
                "train_loss": _f(t["train_loss"]),
                "num_hidden_blocks": k,
                "store": store,
                "trial": trial,
                "num_parameters": summary["num_parameters"],
                "round_trip_s": round_trip,
                "compute_s": _f(t["task_compute_s"]),
                "run_dir": str(run),
            }
        )
    return out


class Appender:
    """A CSV written row by row (flushed), so an interrupted study keeps what it measured."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=columns)
        self.writer.writeheader()

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.writer.writerows(rows)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def report(rows: list[dict[str, Any]]) -> str:
    """Mean transfer time per model size and mode, and the ratio redis / none."""
    lines = ["| k | params | model MB | none: mean transfer s | redis: mean transfer s | redis / none |",
             "|---|---|---|---|---|---|"]
    ks = sorted({r["num_hidden_blocks"] for r in rows})
    all_none, all_redis = [], []
    for k in ks:
        mine = [r for r in rows if r["num_hidden_blocks"] == k]
        none = [r["transfer_time"] for r in mine if r["store"] == "none"]
        red = [r["transfer_time"] for r in mine if r["store"] == "redis"]
        all_none += none
        all_redis += red
        if none and red:
            n, m = statistics.fmean(none), statistics.fmean(red)
            lines.append(
                f"| {k} | {mine[0]['num_parameters']:,} | {mine[0]['model_param_size'] / 1e6:.2f} | {n:.4f} | {m:.4f} | {m / n:.3f} |"
            )
    if all_none and all_redis:
        n, m = statistics.fmean(all_none), statistics.fmean(all_redis)
        lines.append(f"| all | | | {n:.4f} | {m:.4f} | {m / n:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import flight_parsl
    from flight_parsl import ConfigError, FlightParslError

    args = parse_args(argv)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:  # every config is checked before anything starts or is written
        sites = write_sites(Path(tmp), args.link) if args.link else SITES
        try:
            for s in MODES:
                flight_parsl.check(config(args, out, args.blocks[0], s, 0, sites))
        except ConfigError as exc:
            print(f"error: {str(exc).replace(f'{tmp}/', '')}", file=sys.stderr)
            return 2
    sites = write_sites(out / "sites", args.link) if args.link and not args.dry_run else SITES
    try:
        trials = range(args.first_trial, args.first_trial + args.trials)
        cells = [(k, t, s, config(args, out, k, s, t, sites)) for k in args.blocks for t in trials for s in MODES]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for i, (k, trial, store, cfg) in enumerate(cells, 1):
            print(f"[{i}/{len(cells)}] k={k} store={store} trial={trial}: {flight_parsl.describe(cfg)} "
                  f"model.extra_blocks={cfg.model.extra_blocks}")
        print(f"sites: {cells[0][3].sites.files}" + (f"; remote endpoints' links {args.link}" if args.link else ""))
        print(f"dry run: {len(cells)} runs on one DataFlowKernel over the sites, nothing started")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    table = Appender(out / "proxyfloxy.csv", COLUMNS)
    runs = Appender(out / "runs.csv", RUN_COLUMNS)
    rows: list[dict[str, Any]] = []
    status = 0
    try:
        redis_cfg = next(c for _, _, s, c in cells if s == "redis")  # the network gets a Redis server
        with flight_parsl.Pool(redis_cfg, run_dir=out / "executor") as pool:
            arch: dict[int, int] = {}
            for i, (k, trial, store, cfg) in enumerate(cells, 1):
                print(f"[{i}/{len(cells)}] k={k} store={store} trial={trial}", flush=True)
                arch.setdefault(k, arch_size(cfg))
                t0 = time.time()
                try:
                    run = flight_parsl.run(cfg, pool=pool).run_dir
                except FlightParslError as exc:
                    print(f"  failed: {exc}", file=sys.stderr)
                    runs.write([{"num_hidden_blocks": k, "store": store, "trial": trial, "status": f"failed: {exc}",
                                 "run_dir": cfg.out}])
                    status = 1
                    continue
                summary = json.loads((run / "summary.json").read_text())
                new = rows_of(run, k, store, trial, arch[k])
                rows += new
                table.write(new)
                runs.write([{"num_hidden_blocks": k, "store": store, "trial": trial, "status": "ok",
                             "start2end": summary["start2end"], "prime2end": summary["prime2end"],
                             "round_makespan_s": summary["round_makespan_s"], "run_dir": str(run)}])
                mean = statistics.fmean(r["transfer_time"] for r in new)
                print(f"  {time.time() - t0:.1f} s, mean transfer {mean:.4f} s, "
                      f"test acc {new[-1]['test_accuracy']:.3f}", flush=True)
    finally:
        table.close()
        runs.close()
    print()
    print(report(rows))
    return status


if __name__ == "__main__":
    sys.exit(main())
