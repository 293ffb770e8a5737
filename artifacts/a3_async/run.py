"""Flight Artifact 3: asynchronous FedAsync vs synchronous FedAvg, worker idle time.

Runs synchronous FedAvg, then asynchronous FedAsync, on the same Dirichlet split
(labels alpha 1, samples alpha 10), the same seed and the same injected per-client
slowdowns, sharing one executor. Both modes run with ``slots=per_client``: one
slot (worker process; a thread on the thread backend) per client, as the
published artifact's 12 workers, so a synchronous round gives every slot one
client and an asynchronous run keeps one update out per slot. Slots are not
pinned to clients: HTEX hands a task to any free slot, so a client may run on a
different slot each time. Both modes do ``rounds x workers`` local trainings.
Before them, an untimed warm-up run (``--warmup-rounds``, sync, no slowdown)
trains once on the slots, so first-use costs of the training path fall outside the
measured runs (the engine's priming already loads the data on every slot). Then
it writes

    <out>/warmup/                 the warm-up run directory
    <out>/sync/, <out>/async/     the two run directories (rounds.csv, tasks.csv, summary.json, ...)
    <out>/results.csv             one row per mode (columns: RESULT_COLUMNS)
    <out>/idle_per_slot.csv       one row per mode and slot (columns: IDLE_COLUMNS)
    <out>/per_client.csv          one row per mode and client (columns: CLIENT_COLUMNS)

and prints a markdown table. Idle time is per slot, as flight_parsl's summary
measures it (``SlotClock``): a slot is identified by (host, pid, thread) in
tasks.csv. A slot's slowdown is not defined (its clients change); the injected
slowdown is a client's, and per_client.csv shows what it does to each client
(its updates, its training time). Defaults finish in a few minutes on a 2-core
machine with the offline ``digits`` dataset::

    python artifacts/a3_async/run.py --out runs/a3
    python artifacts/a3_async/run.py --published --data-root data --out runs/a3-published

Defaults: 12 workers (clients, on 12 slots), 20 rounds, alpha 1/12, slowdown_max 4,
digits, mlp, 40 local epochs (see DIGITS_EPOCHS), parsl backend, seed 0.
``--published`` sets the published study: FashionMNIST (needs --data-root, see
download_data.py), the fedprox_cnn model, 1 local epoch, 12 workers, 20 rounds,
alpha 1/12, slowdown_max 4; flags given explicitly still win. ``key.sub=value``
arguments after the flags override config keys of both modes (e.g.
``train.batch_size=32``, or ``slots=auto`` to pack the clients onto fewer slots).

Exit status: 0 on success; 1 when a run fails; 2 for bad arguments, config values
or missing data (all checked before the executor starts). Errors are one line on
stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the checkout's flight_parsl
    sys.path.insert(0, str(ROOT))

PROG = "a3"
MODES = ("sync", "async")
RESULT_COLUMNS = (
    "mode", "strategy", "workers", "slots", "rounds", "updates", "idle_pct_mean", "idle_pct_std", "final_test_acc",
    "wall_s", "acc_at_equal_wall", "equal_wall_s", "task_s_median", "gap_s_median", "alpha", "slowdown_max",
    "dataset", "model", "epochs", "backend", "seed", "run_dir",
)
IDLE_COLUMNS = (
    "mode", "slot", "host", "pid", "thread", "tasks", "clients", "busy_s", "idle_s", "idle_pct", "task_s_median",
    "return_s", "coordinator_s", "dispatch_s",
)
CLIENT_COLUMNS = (
    "mode", "client", "slowdown", "samples", "updates", "slots", "client_s_median", "client_s_total",
)
DEFAULTS: dict[str, Any] = {
    "workers": 12, "rounds": 20, "alpha": 1 / 12, "slowdown_max": 4.0, "dataset": "digits", "model": "mlp",
    "epochs": None, "backend": "parsl", "out": "runs/a3", "seed": 0,
}
# Local epochs when --epochs is not given: a digits shard holds ~120 samples (1,438 training images over
# 12 workers), so one epoch is ~8 SGD steps (~10 ms), shorter than a task's round trip through HTEX;
# 40 epochs (~300 steps at batch 16) match one epoch over a 5,000-sample FashionMNIST shard (60,000 / 12).
DIGITS_EPOCHS = 40
# What --published changes (flags given on the command line still win).
PUBLISHED: dict[str, Any] = {
    "workers": 12, "rounds": 20, "alpha": 1 / 12, "slowdown_max": 4.0, "dataset": "fashion_mnist",
    "model": "fedprox_cnn", "epochs": 1,
}


class UsageError(Exception):
    """Bad command-line arguments (exit status 2)."""


def fraction(text: str) -> float:
    """A float, or a fraction such as 1/12."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # one line, status 2
            self.exit(2, f"{PROG}: error: {message}\n")

    p = Parser(prog="run.py", description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, help=f"FL workers: clients, one slot each (default {DEFAULTS['workers']})")
    p.add_argument("--rounds", type=int, help=f"rounds; async: rounds x workers updates (default {DEFAULTS['rounds']})")
    p.add_argument("--alpha", type=fraction, help="FedAsync mixing weight, float or fraction (default 1/12)")
    p.add_argument("--slowdown-max", type=float, help="per-client slowdown factor uniform in [1, K] (default 4)")
    p.add_argument("--dataset", help=f"digits, mnist, fashion_mnist (default {DEFAULTS['dataset']})")
    p.add_argument("--data-root", help="directory filled by download_data.py (mnist, fashion_mnist)")
    p.add_argument("--model", help=f"model name (default {DEFAULTS['model']})")
    p.add_argument("--epochs", type=int, help=f"local epochs per task (default {DIGITS_EPOCHS} on digits, else 1)")
    p.add_argument("--backend", choices=("parsl", "thread", "process"), help="executor (default parsl)")
    p.add_argument("--parsl-config", help="Parsl site YAML (default: configs/parsl/local.yaml's built-in twin)")
    p.add_argument("--out", help=f"output directory (default {DEFAULTS['out']})")
    p.add_argument("--published", action="store_true", help="the published settings: " + ", ".join(
        f"{k}={v if k != 'alpha' else '1/12'}" for k, v in PUBLISHED.items()) + " (needs --data-root)")
    p.add_argument("--seed", type=int, help="seed of the model, split, shuffling and slowdowns (default 0)")
    p.add_argument("--warmup-rounds", type=int, default=1, help="untimed sync rounds (no slowdown) before the "
                   "measured runs, so every slot has loaded the data once (default 1; 0: none)")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    p.add_argument("--dry-run", action="store_true",
                   help="check the arguments and both modes' configs, print the runs and exit (starts nothing)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="extra config overrides for both modes")
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    settings = dict(DEFAULTS)
    if args.published:
        settings.update(PUBLISHED)
    for key in DEFAULTS:
        if key in given:
            settings[key] = given[key]
    if settings["epochs"] is None:
        settings["epochs"] = DIGITS_EPOCHS if settings["dataset"] == "digits" else 1
    for key, value in settings.items():
        setattr(args, key, value)
    root_override = any(o.replace(" ", "").startswith("data.root=") for o in args.overrides)
    if args.dataset != "digits" and not args.data_root and not root_override:
        why = "--published uses FashionMNIST" if args.published else f"--dataset {args.dataset}"
        raise UsageError(f"{why}: give --data-root DIR (python download_data.py --root DIR --dataset {args.dataset})")
    if args.workers < 1 or args.rounds < 1 or args.epochs < 1:
        raise UsageError("--workers, --rounds and --epochs must be >= 1")
    if args.warmup_rounds < 0:
        raise UsageError("--warmup-rounds must be >= 0")
    return args


def mode_config(args: argparse.Namespace, mode: str, out: Path, warmup: bool = False) -> Any:
    """The experiment config of one mode; everything but mode and strategy is shared.

    ``warmup``: the untimed warm-up run (``warmup_rounds`` sync rounds, no slowdown) into ``<out>/warmup``.
    """
    from flight_parsl.config.experiment import build_config

    values: dict[str, Any] = {
        "workers": args.workers,
        "slots": "per_client",  # one slot per client, as the published artifact's workers
        "rounds": args.warmup_rounds if warmup else args.rounds,
        "seed": args.seed,
        "mode": mode,
        "topology": "flat",
        "backend": args.backend,
        "parsl_config": args.parsl_config,
        "out": str(out / ("warmup" if warmup else mode)),
        "data": {"dataset": args.dataset, "root": args.data_root},
        "partition": {"kind": "dirichlet", "labels_alpha": 1.0, "samples_alpha": 10.0},
        "model": {"name": args.model},
        "train": {"epochs": args.epochs, "slowdown_max": 1.0 if warmup else args.slowdown_max},
        "strategy": {"name": "fedasync" if mode == "async" else "fedavg", "alpha": args.alpha},
    }
    return build_config(values=[values], overrides=list(args.overrides))


# --------------------------------------------------------------------------- reading a run


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


TASK_KEYS = ("submitted", "started", "finished", "received", "idle_s")  # tasks.csv: task_<key>


def train_rows(run_dir: Path) -> list[dict[str, str]]:
    """The ok train rows of tasks.csv: one per client per task attempt."""
    return [r for r in read_csv(run_dir / "tasks.csv") if r["kind"] == "train" and r["status"] == "ok"]


def train_tasks(run_dir: Path) -> list[dict[str, Any]]:
    """One entry per ok train task (its task-level columns once), with its slot and its clients."""
    tasks: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in train_rows(run_dir):
        key = (row["round"], row["task"], row["attempt"])
        if key not in tasks:
            tasks[key] = {
                "slot": (row["host"], int(row["pid"]), int(row["thread"])),
                "clients": [],
                **{k: _float(row[f"task_{k}"]) for k in TASK_KEYS},
            }
        tasks[key]["clients"].append(int(row["client"]))
    return list(tasks.values())


def idle_per_slot(run_dir: Path) -> list[dict[str, Any]]:
    """Per-slot busy/idle seconds and idle %, from tasks.csv (counted as flight_parsl's SlotClock does).

    A slot is (host, pid, thread); its tasks are counted once however many clients they ran. Each
    gap between a slot's consecutive tasks is split by the coordinator's timestamps into ``return_s``
    (task finished on the slot -> result received by the coordinator), ``coordinator_s`` (received
    -> the slot's next task submitted: in sync mode the wait for the round's stragglers and the
    evaluation) and ``dispatch_s`` (submitted -> started on the slot). Rows come in (host, pid,
    thread) order; :func:`summarize` numbers the slots.
    """
    by_slot: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for task in train_tasks(run_dir):
        by_slot.setdefault(task["slot"], []).append(task)
    out = []
    for slot in sorted(by_slot):
        tasks = sorted(by_slot[slot], key=lambda t: t["started"])
        busy = sum(t["finished"] - t["started"] for t in tasks)
        idle = sum(max(t["idle_s"], 0.0) for t in tasks if not math.isnan(t["idle_s"]))
        ret = sum(a["received"] - a["finished"] for a in tasks[:-1])
        coord = sum(b["submitted"] - a["received"] for a, b in zip(tasks, tasks[1:]))
        disp = sum(b["started"] - b["submitted"] for b in tasks[1:])
        total = busy + idle
        out.append({
            "host": slot[0],
            "pid": slot[1],
            "thread": slot[2],
            "tasks": len(tasks),
            "clients": len({c for t in tasks for c in t["clients"]}),
            "busy_s": busy,
            "idle_s": idle,
            "idle_pct": 100.0 * idle / total if total > 0 else 0.0,
            "task_s_median": statistics.median(t["finished"] - t["started"] for t in tasks),
            "return_s": ret,
            "coordinator_s": coord,
            "dispatch_s": disp,
        })
    return out


def per_client(run_dir: Path, slowdowns: list[float] | None, workers: int) -> list[dict[str, Any]]:
    """Per-client updates, slots used and training seconds (``client_s``: the client's own part of
    its task, slowdown included), next to the client's injected slowdown factor."""
    by_client: dict[int, list[dict[str, str]]] = {c: [] for c in range(workers)}
    for row in train_rows(run_dir):
        by_client.setdefault(int(row["client"]), []).append(row)
    out = []
    for client in sorted(by_client):
        rows = by_client[client]
        seconds = [_float(r["client_s"]) for r in rows]
        seconds = [v for v in seconds if not math.isnan(v)]
        out.append({
            "client": client,
            "slowdown": slowdowns[client] if slowdowns and client < len(slowdowns) else 1.0,
            "samples": rows[0]["samples"] if rows else "",
            "updates": len(rows),
            "slots": len({(r["host"], r["pid"], r["thread"]) for r in rows}),
            "client_s_median": statistics.median(seconds) if seconds else math.nan,
            "client_s_total": sum(seconds),
        })
    return out


def median_of(values: Any) -> float:
    """Median of ``values``, NaNs left out (NaN if none)."""
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def acc_at(rounds: list[dict[str, str]], summary: dict[str, Any], horizon: float) -> float:
    """Test accuracy of the last rounds.csv row with ``end - priming_done <= horizon`` (NaN if none).

    A row's time is capped at the run's prime2end: the async engine marks ``end`` just before it
    writes its last row, so that row's ``end`` is a moment past the run's end; capped, the shorter
    run's last row always counts at T.
    """
    acc = math.nan
    for row in rounds:
        if min(_float(row["end"]) - summary["priming_done"], summary["prime2end"]) <= horizon:
            acc = _float(row["test_acc"])
    return acc


def summarize(
    args: argparse.Namespace, dirs: dict[str, Path], slowdowns: list[float] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """results.csv, idle_per_slot.csv and per_client.csv rows from the two run directories.

    Slots are numbered 0.. in (host, pid, thread) order over both modes: on a shared executor the
    same slot has the same number in both.
    """
    info = {}
    for mode, run_dir in dirs.items():
        summary = json.loads((run_dir / "summary.json").read_text())
        info[mode] = (summary, read_csv(run_dir / "rounds.csv"), idle_per_slot(run_dir), train_tasks(run_dir))
    horizon = min(s["prime2end"] for s, *_ in info.values())
    numbers = {
        slot: i for i, slot in enumerate(sorted({(r["host"], r["pid"], r["thread"]) for *_, per, _ in info.values()
                                                 for r in per}))
    }
    results, idle_rows, client_rows = [], [], []
    for mode, run_dir in dirs.items():
        summary, rounds, per_slot, tasks = info[mode]
        for row in per_slot:
            idle_rows.append({"mode": mode, "slot": numbers[row["host"], row["pid"], row["thread"]], **row})
        clients = per_client(run_dir, slowdowns, args.workers)
        client_rows += [{"mode": mode, **row} for row in clients]
        results.append({
            "mode": mode,
            "strategy": "fedasync" if mode == "async" else "fedavg",
            "workers": args.workers,
            "slots": summary.get("slots", len(per_slot)),
            "rounds": args.rounds,
            "updates": sum(r["updates"] for r in clients),
            "idle_pct_mean": summary.get("idle_pct_mean", math.nan),
            "idle_pct_std": summary.get("idle_pct_std", math.nan),
            "final_test_acc": summary.get("final_test_acc", math.nan),
            "wall_s": summary["prime2end"],
            "acc_at_equal_wall": acc_at(rounds, summary, horizon),
            "equal_wall_s": horizon,
            "task_s_median": median_of(t["finished"] - t["started"] for t in tasks),
            "gap_s_median": median_of(t["idle_s"] for t in tasks),
            "alpha": args.alpha if mode == "async" else "",
            "slowdown_max": args.slowdown_max,
            "dataset": args.dataset,
            "model": args.model,
            "epochs": args.epochs,
            "backend": args.backend,
            "seed": args.seed,
            "run_dir": str(run_dir),
        })
    return results, idle_rows, client_rows


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value: Any, spec: str) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown_table(results: list[dict[str, Any]]) -> str:
    header = (
        "mode", "strategy", "workers", "slots", "rounds", "updates", "idle % mean", "idle % std", "final test acc",
        "wall s (prime2end)", "acc at equal wall",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = (
            r["mode"], r["strategy"], r["workers"], r["slots"], r["rounds"], r["updates"], _fmt(r["idle_pct_mean"], ".3f"),
            _fmt(r["idle_pct_std"], ".3f"), _fmt(r["final_test_acc"], ".4f"), _fmt(r["wall_s"], ".1f"),
            _fmt(r["acc_at_equal_wall"], ".4f"),
        )
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def dry_run(args: argparse.Namespace) -> None:
    """Print the runs (warm-up, sync, async) and their configs' key values; nothing starts."""
    import flight_parsl

    out = Path(args.out)
    runs = ([("warm-up", mode_config(args, "sync", out, warmup=True))] if args.warmup_rounds > 0 else []) + [
        (mode, mode_config(args, mode, out)) for mode in MODES
    ]
    for label, cfg in runs:
        print(f"{label}: {flight_parsl.describe(cfg)} strategy.alpha={cfg.strategy.alpha:.4g} "
              f"train.epochs={cfg.train.epochs} train.slowdown_max={cfg.train.slowdown_max:g}")
    print(f"dry run: {len(runs)} runs on one executor, nothing started")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import flight_parsl

    out = Path(args.out)
    configs = {mode: mode_config(args, mode, out) for mode in MODES}  # both validated before anything starts
    # dataset present, split possible, model buildable: fail before the executor starts
    flight_parsl.check(configs["sync"], build=True)
    out.mkdir(parents=True, exist_ok=True)
    factors = flight_parsl.client_slowdowns(configs["sync"])
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    say(f"slowdowns: {', '.join(f'{f:.2f}' for f in factors or [])}")
    dirs: dict[str, Path] = {}
    first = configs["sync"]
    with flight_parsl.Pool(first, run_dir=out) as pool:
        slots = pool.slots
        if args.warmup_rounds > 0:
            warm = mode_config(args, "sync", out, warmup=True)
            say(f"== warm-up: {warm.rounds} sync round(s) without slowdown -> {warm.out}")
            warm_dir = flight_parsl.run(warm, progress=not args.quiet, pool=pool).run_dir
            seen = {(r["host"], r["pid"], r["thread"]) for r in train_rows(warm_dir)}
            say(f"== warm-up ran on {len(seen)} of {slots} slot(s)")
        for mode in MODES:
            cfg = configs[mode]
            say(f"== {mode}: {cfg.strategy.name}" + (f" alpha={cfg.strategy.alpha:.4g}" if mode == "async" else ""))
            t0 = time.perf_counter()
            dirs[mode] = flight_parsl.run(cfg, progress=not args.quiet, pool=pool).run_dir
            say(f"== {mode} took {time.perf_counter() - t0:.1f} s")
    results, idle_rows, client_rows = summarize(args, dirs, factors)
    write_csv(out / "results.csv", RESULT_COLUMNS, results)
    write_csv(out / "idle_per_slot.csv", IDLE_COLUMNS, idle_rows)
    write_csv(out / "per_client.csv", CLIENT_COLUMNS, client_rows)
    return results


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            dry_run(args)
            return 0
        results = run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; the run directories keep the details
        from flight_parsl import ConfigError, DataError

        detail = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, (ConfigError, DataError)):
            print(f"{PROG}: error: {detail}", file=sys.stderr)
            return 2
        print(f"{PROG}: failed: {type(exc).__name__}: {detail}", file=sys.stderr)
        return 1
    print(markdown_table(results))
    out = Path(args.out)
    print(f"\nwrote {out / 'results.csv'}, {out / 'idle_per_slot.csv'} and {out / 'per_client.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
