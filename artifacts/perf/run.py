"""flight_parsl's performance targets on one machine, beside Flower's simulation engine, in one invocation.

Every run is a fresh subprocess: ``python -m flight_parsl.scale ...`` (default local
site) or ``python -m flight_parsl.baselines.flower --mode simulation ...`` on the same
no-training workload (clients return the weights they got; one real-training cell has
no Flower counterpart). For each run the script measures

- whole run: process launch (taken here, just before ``Popen``) to the last aggregate
  being ready (the run's own ``end`` timestamp in summary.json), so interpreter
  start-up, imports, executor / Ray start-up and the rounds all count;
- first round and warm round (mean of the rounds after the first), from the run's
  own per-round makespans;
- peak machine memory: ``MemTotal - MemAvailable`` from /proc/meminfo, sampled every
  ~50 ms while the subprocess runs, peak minus the value just before launch;
- the coordinator's peak RSS (flight_parsl's ``peak_rss_mb_coordinator``, Flower's
  driver ``peak_rss_mb``),

then prints one table per cell with the ratios flight_parsl / Flower (against
Flower's best variant), flight_parsl's best against Flower's best, and every
target figure as PASS or MISS. A run that fails (an unknown config key, a crash,
a time-out) is reported with its one-line error and the script goes on.

    python artifacts/perf/run.py                      # every target cell
    python artifacts/perf/run.py --quick              # small smoke cells, 2 rounds
    python artifacts/perf/run.py --cells tiny-64,resnet18-64 --rounds 3 --out runs/perf
    python artifacts/perf/run.py --list               # the cells, their rows and targets

Writes ``OUT/results.csv`` (one row per framework variant and cell), ``OUT/table.md``
(the printed tables) and each run's directory under ``OUT/<cell>/<row>/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MEMINFO = "/proc/meminfo"
SAMPLE_S = 0.05
SCAN_S = 0.5  # how often the processes of a run are recorded
RUN_MARK = "FLIGHT_PARSL_PERF_RUN"  # environment mark of a run's processes
GB = 1e9  # memory figures and targets are in GB = 10^9 bytes
DEFAULT_ROUNDS = 3
DEFAULT_TIMEOUT_S = 900.0
KILL_GRACE_S = 5.0
LEFTOVER_GRACE_S = 10.0

FLIGHT = "flight_parsl"
FLOWER = "flower"


# ---------------------------------------------------------------------------
# Cells, rows and targets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A figure a row must reach: ``metric <= limit``.

    Metrics: ``whole_s``, ``first_s``, ``warm_s`` (seconds), ``mem_gb`` (peak machine
    memory, GB), ``whole_vs_flower`` (whole run / Flower's best whole run),
    ``coord_vs_ref_mb`` (coordinator peak RSS minus the same row's in the cell
    ``ref``, MB).
    """

    metric: str
    limit: float
    ref: str | None = None  # the reference cell of coord_vs_ref_mb


@dataclass(frozen=True)
class Row:
    """One framework variant run in a cell."""

    label: str
    framework: str  # FLIGHT or FLOWER
    flags: tuple[str, ...] = ()  # flight_parsl flags / Flower baseline flags
    overrides: tuple[str, ...] = ()  # flight_parsl key=value overrides
    targets: tuple[Target, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Cell:
    name: str
    model: str
    workers: int
    rows: tuple[Row, ...]
    rounds: int | None = None  # pinned; None: --rounds
    train: str = "none"  # none (debug: clients return what they got) or local (real training)
    dataset: str | None = None
    overrides: tuple[str, ...] = ()  # for every flight_parsl row of the cell
    smoke: bool = False
    note: str = ""

    def rounds_for(self, default: int) -> int:
        return self.rounds if self.rounds is not None else default

    def refs(self) -> set[str]:
        return {t.ref for r in self.rows for t in r.targets if t.ref}


def fp(label: str = "", flags: Sequence[str] = (), overrides: Sequence[str] = (),
       targets: Sequence[Target] = (), note: str = "") -> Row:
    return Row(FLIGHT + (f" {label}" if label else ""), FLIGHT, tuple(flags), tuple(overrides), tuple(targets), note)


NO_PREAGG = ("no-preagg", (), ("plan.preaggregate=false",), "every client's result returned to the coordinator")
PER_CLIENT = ("per-client", (), ("slots=per_client",), "one worker process per client (Flight's weak-scaling artifact)")
PROCESS = ("process", ("--backend", "process"), (), "a local process pool instead of Parsl HTEX")

FLOWER_VARIANTS = {
    # label suffix -> (--client-cpus value, note)
    "default": ("default", "Flower's own resources: 2 CPUs per client on the machine's CPUs (1 actor on 2 cores)"),
    "1cpu": ("1", "1 of the machine's CPUs per client: one actor per core (legacy start_simulation's default)"),
    "matched": ("matched", "one actor per client (N logical CPUs, 1 per client)"),
}


def flower(variant: str) -> Row:
    cpus, note = FLOWER_VARIANTS[variant]
    return Row(f"flower-sim {variant}", FLOWER, ("--client-cpus", cpus), (), (), note)


ALL_FLOWER = tuple(flower(v) for v in FLOWER_VARIANTS)
FEW_FLOWER = (flower("default"), flower("1cpu"))  # N actors do not fit in memory


def _variants(*kinds: tuple[str, tuple[str, ...], tuple[str, ...], str]) -> tuple[Row, ...]:
    return tuple(fp(label, flags, overrides, note=note) for label, flags, overrides, note in kinds)


def _targets(**limits: float) -> tuple[Target, ...]:
    return tuple(Target(metric, limit) for metric, limit in limits.items())


R18_64 = _targets(whole_s=15, whole_vs_flower=1 / 3, warm_s=1.5, mem_gb=4)
TINY_64 = _targets(whole_s=8, warm_s=0.1)
TINY_64_PROCESS = _targets(whole_s=3.5)

CELLS: tuple[Cell, ...] = (
    Cell("resnet18-64", "resnet18", 64,
         (fp(targets=R18_64), *_variants(NO_PREAGG, PER_CLIENT), *ALL_FLOWER)),
    Cell("tiny-64", "tiny", 64,
         (fp(targets=TINY_64), fp(PROCESS[0], PROCESS[1], targets=TINY_64_PROCESS, note=PROCESS[3]),
          *_variants(NO_PREAGG), *ALL_FLOWER)),
    Cell("resnet18-128", "resnet18", 128,
         (fp(targets=_targets(warm_s=3, mem_gb=5)), *_variants(NO_PREAGG), *FEW_FLOWER),
         note="no flower-sim matched: 128 ResNet-18 actors need more memory than the machine has"),
    Cell("tiny-2048", "tiny", 2048,
         (fp(targets=_targets(warm_s=1)), *_variants(NO_PREAGG), *FEW_FLOWER), rounds=2,
         note="rounds=2; the target is the warm (second) round; no flower-sim matched (2048 actors)"),
    Cell("tiny-1k", "tiny", 1000, (fp(), *_variants(NO_PREAGG)),
         overrides=("strategy.clients_per_round=1000",),
         note="the reference for tiny-100k's coordinator memory"),
    Cell("tiny-100k", "tiny", 100_000,
         (fp(targets=(Target("warm_s", 2), Target("coord_vs_ref_mb", 100, ref="tiny-1k"))), *_variants(NO_PREAGG)),
         overrides=("strategy.clients_per_round=1000",),
         note="1,000 of 100,000 clients sampled per round; no Flower row (the baseline does not sample clients)"),
    Cell("digits-mlp-64", "mlp", 64,
         (fp(targets=_targets(whole_s=30, mem_gb=3)), *_variants(NO_PREAGG)),
         rounds=3, train="local", dataset="digits", note="real training, 3 rounds; no Flower counterpart"),
    # Smoke cells (work on today's engine; the no-preagg / per-client rows use overrides the
    # engine rewrite adds, so they show how a failed run is reported). The smoke cells carry the
    # x64 cells' targets only to exercise the checks.
    Cell("smoke-tiny-8", "tiny", 8,
         (fp(targets=TINY_64), fp(PROCESS[0], PROCESS[1], targets=TINY_64_PROCESS, note=PROCESS[3]),
          *_variants(NO_PREAGG), *ALL_FLOWER), smoke=True, note="smoke cell; targets are tiny-64's"),
    Cell("smoke-smallnet-8", "smallnet", 8, (fp(), *_variants(NO_PREAGG), *ALL_FLOWER), smoke=True,
         note="smoke cell"),
    Cell("smoke-resnet18-8", "resnet18", 8,
         (fp(targets=R18_64), *_variants(NO_PREAGG, PER_CLIENT), *ALL_FLOWER), smoke=True,
         note="smoke cell; targets are resnet18-64's"),
    Cell("smoke-digits-8", "mlp", 8, (fp(targets=_targets(whole_s=30, mem_gb=3)),), rounds=2, train="local",
         dataset="digits", smoke=True, note="smoke cell: real training, 2 rounds; targets are digits-mlp-64's"),
)
CELLS_BY_NAME = {c.name: c for c in CELLS}
TARGET_CELLS = tuple(c.name for c in CELLS if not c.smoke)
SMOKE_CELLS = tuple(c.name for c in CELLS if c.smoke)

METRIC_TEXT = {
    "whole_s": ("whole run", "s"),
    "first_s": ("first round", "s"),
    "warm_s": ("warm round", "s"),
    "mem_gb": ("peak machine memory", "GB"),
    "whole_vs_flower": ("whole run / Flower's best", "x"),
    "coord_vs_ref_mb": ("coordinator peak RSS minus {ref}'s", "MB"),
}


def select_cells(names: Iterable[str]) -> list[Cell]:
    """The named cells in table order, with the reference cells their targets need (ValueError if unknown)."""
    wanted: set[str] = set()
    for name in names:
        if name in ("all", "targets"):
            wanted.update(TARGET_CELLS)
        elif name == "smoke":
            wanted.update(SMOKE_CELLS)
        elif name in CELLS_BY_NAME:
            wanted.add(name)
        else:
            raise ValueError(f"unknown cell {name!r}; cells: {', '.join(CELLS_BY_NAME)} (or all, smoke)")
    for name in list(wanted):
        wanted.update(CELLS_BY_NAME[name].refs())
    return [c for c in CELLS if c.name in wanted]


# ---------------------------------------------------------------------------
# Machine memory
# ---------------------------------------------------------------------------


def meminfo_used_kib(text: str) -> int:
    """``MemTotal - MemAvailable`` (KiB) from /proc/meminfo's text (ValueError if either is missing)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+):\s+(\d+)", line)
        if match:
            fields[match.group(1)] = int(match.group(2))
    try:
        return fields["MemTotal"] - fields["MemAvailable"]
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]} line in meminfo") from None


class MemSampler:
    """The machine's memory in use while a run goes: baseline before launch, then the peak."""

    def __init__(self, path: str | Path = MEMINFO) -> None:
        self.path = Path(path)
        self.baseline_kib: int | None = None
        self.peak_kib: int | None = None
        self.samples = 0

    def read_kib(self) -> int:
        return meminfo_used_kib(self.path.read_text())

    def start(self) -> None:
        """Take the baseline (call just before launching)."""
        self.baseline_kib = self.read_kib()
        self.peak_kib = self.baseline_kib
        self.samples = 0

    def sample(self) -> None:
        used = self.read_kib()
        self.samples += 1
        if self.peak_kib is None or used > self.peak_kib:
            self.peak_kib = used

    @property
    def peak_delta_gb(self) -> float | None:
        """Peak minus baseline, GB (10^9 bytes)."""
        if self.baseline_kib is None or self.peak_kib is None:
            return None
        return (self.peak_kib - self.baseline_kib) * 1024 / GB

    @property
    def baseline_gb(self) -> float | None:
        return None if self.baseline_kib is None else self.baseline_kib * 1024 / GB


# ---------------------------------------------------------------------------
# Processes: launch, watch, time out, leave nothing behind
# ---------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, start time in clock ticks) for every process in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(rest[1]), int(rest[19]))
    return table


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """pid -> start time of every process under ``root`` (not root itself)."""
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                stack.append(child)
    return found


def rss_bytes(pids: Iterable[int]) -> int:
    """Sum of the resident set sizes of ``pids`` (shared pages count once per process)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


class RunProcesses:
    """Finds every process of one run: those under it, and those carrying its environment mark.

    Parsl's LocalProvider starts the worker pool from a shell that exits (so the pool is
    re-parented away from the run), and Ray's processes start sessions of their own; all
    inherit the environment, so the run's children get ``RUN_MARK=<token>`` and every
    new process's /proc/PID/environ is checked once.
    """

    def __init__(self, root: int, token: str) -> None:
        self.root = root
        self.needle = f"{RUN_MARK}={token}".encode()
        self.seen: dict[tuple[int, int], bool] = {}  # (pid, start) -> carries the mark
        self.found: dict[int, int] = {}  # pid -> start time, every process of the run seen so far

    def scan(self) -> dict[int, int]:
        """Record and return the run's processes running now (pid -> start time), root included."""
        table = _proc_table()
        now = descendants(self.root, table)
        if self.root in table:
            now[self.root] = table[self.root][1]
        for pid, (_, start) in table.items():
            key = (pid, start)
            if key not in self.seen:
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    environ = b""
                self.seen[key] = self.needle in environ.split(b"\0")
            if self.seen[key]:
                now[pid] = start
        self.found.update(now)
        return now


def _alive(tracked: dict[int, int]) -> list[int]:
    """The tracked pids still running as the same process (start time unchanged), zombies excluded."""
    alive = []
    for pid, start in tracked.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[19]) == start and rest[0] != "Z":
            alive.append(pid)
    return alive


def _signal_all(pgid: int | None, pids: Iterable[int], sig: int) -> None:
    if pgid is not None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class Launch:
    """What one subprocess did: launch time, exit status, memory, time-out, leftovers."""

    launch: float = 0.0
    exited: float = 0.0
    rc: int | None = None
    timed_out: bool = False
    mem_gb: float | None = None
    baseline_gb: float | None = None
    tree_rss_gb: float | None = None  # peak over the scans of the run's processes' summed RSS
    killed_leftovers: int = 0
    stderr_path: Path | None = None
    stdout_path: Path | None = None


def run_process(argv: Sequence[str], env: dict[str, str], timeout: float, logs: Path,
                sampler: MemSampler | None = None) -> Launch:
    """Run ``argv`` in its own session, sampling memory, killing it and all its processes on time-out.

    Every process of the run seen (:class:`RunProcesses`: Parsl's worker pool and Ray
    start their own process groups) is remembered and, if still running once it exits
    (or times out), stopped.
    """
    sampler = sampler or MemSampler()
    logs.mkdir(parents=True, exist_ok=True)
    out = Launch(stdout_path=logs / "stdout.log", stderr_path=logs / "stderr.log")
    token = f"{os.getpid()}-{time.time_ns()}"
    with out.stdout_path.open("wb") as so, out.stderr_path.open("wb") as se:
        sampler.start()
        out.launch = time.time()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                env={**env, RUN_MARK: token}, cwd=str(REPO), start_new_session=True)
        procs = RunProcesses(proc.pid, token)
        tracked = procs.found
        next_scan = 0.0
        try:
            while proc.poll() is None:
                sampler.sample()
                now = time.time()
                if now >= next_scan:
                    rss = rss_bytes(procs.scan()) / GB
                    out.tree_rss_gb = max(out.tree_rss_gb or 0.0, rss)
                    next_scan = now + SCAN_S
                if now - out.launch > timeout:
                    out.timed_out = True
                    break
                time.sleep(SAMPLE_S)
        finally:
            if proc.poll() is None:  # timed out or interrupted: stop the group and everything seen under it
                procs.scan()
                _signal_all(proc.pid, _alive(tracked), signal.SIGTERM)
                try:
                    proc.wait(KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
                _signal_all(proc.pid, _alive(tracked), signal.SIGKILL)
                proc.wait()
            out.exited = time.time()
            out.rc = proc.returncode
            out.mem_gb, out.baseline_gb = sampler.peak_delta_gb, sampler.baseline_gb
            # Whatever of it is left gets a moment to exit by itself, then is stopped.
            procs.scan()
            deadline = time.time() + (0 if out.timed_out else LEFTOVER_GRACE_S)
            while _alive(tracked) and time.time() < deadline:
                time.sleep(0.2)
            left = _alive(tracked)
            if left:
                out.killed_leftovers = len(left)
                _signal_all(None, left, signal.SIGTERM)
                deadline = time.time() + KILL_GRACE_S
                while _alive(tracked) and time.time() < deadline:
                    time.sleep(0.05)
                _signal_all(None, _alive(tracked), signal.SIGKILL)
    return out


def last_error_line(text: str) -> str:
    """The one line that says why a run failed: the last ``error:`` line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^(error|.*Error):", line):
            return line
    return lines[-1] if lines else "no error output"


# ---------------------------------------------------------------------------
# One run of each framework
# ---------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """This checkout first on PYTHONPATH (the package may be installed from another one), no telemetry."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def flight_argv(cell: Cell, row: Row, rounds: int, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "flight_parsl.scale", "--workers", str(cell.workers), "--model", cell.model]
    if cell.train == "none":
        argv += ["--train", "none"]
    if cell.dataset:
        argv += ["--dataset", cell.dataset]
    argv += ["--rounds", str(rounds), "--out", str(out), "-q", *row.flags, *cell.overrides, *row.overrides]
    return argv


def flower_argv(cell: Cell, row: Row, rounds: int, out: Path, timeout: float) -> list[str]:
    return [sys.executable, "-m", "flight_parsl.baselines.flower", "--workers", str(cell.workers),
            "--model", cell.model, "--mode", "simulation", "--rounds", str(rounds), "--out", str(out),
            "--timeout", f"{timeout:g}", *row.flags]


def round_figures(makespans: Sequence[float]) -> tuple[float | None, float | None]:
    """(first round, mean of the rounds after the first) in seconds."""
    first = makespans[0] if makespans else None
    warm = sum(makespans[1:]) / (len(makespans) - 1) if len(makespans) > 1 else None
    return first, warm


def read_flight(out: Path) -> dict[str, Any]:
    """summary.json and rounds.csv of a flight_parsl run directory."""
    summary = json.loads((out / "summary.json").read_text())
    with (out / "rounds.csv").open() as f:
        makespans = [float(r["makespan_s"]) for r in csv.DictReader(f)]
    first, warm = round_figures(makespans)
    return {"summary": summary, "first_s": first, "warm_s": warm, "end": summary.get("end"),
            "coord_mb": summary.get("peak_rss_mb_coordinator"), "own_start2end_s": summary.get("start2end"),
            "status": summary.get("status")}


def read_flower(out: Path) -> dict[str, Any]:
    """summary.json of a Flower baseline run directory."""
    summary = json.loads((out / "summary.json").read_text())
    makespans = [r["makespan_s"] for r in summary.get("rounds_detail", []) if "makespan_s" in r]
    first, warm = round_figures(makespans)
    return {"summary": summary, "first_s": first, "warm_s": warm, "end": summary.get("end"),
            "coord_mb": summary.get("peak_rss_mb"), "own_start2end_s": summary.get("start2end"),
            "actors": summary.get("num_actors"), "status": summary.get("status")}


def run_row(cell: Cell, row: Row, rounds: int, out_dir: Path, timeout: float) -> dict[str, Any]:
    """Run one row of a cell; return its results row (status ok or failed: <one line>)."""
    run_dir = out_dir / cell.name / slug(row.label)
    if FLOWER == row.framework:
        # The baseline's own limit stops its processes first; ours is the backstop.
        argv = flower_argv(cell, row, rounds, run_dir, max(timeout - 30, timeout * 0.9))
    else:
        argv = flight_argv(cell, row, rounds, run_dir)
    result: dict[str, Any] = {
        "cell": cell.name, "row": row.label, "framework": row.framework, "model": cell.model,
        "workers": cell.workers, "rounds": rounds, "train": cell.train,
        "args": " ".join([*row.flags, *(cell.overrides if row.framework == FLIGHT else ()), *row.overrides]),
        "run_dir": str(run_dir),
    }
    for stale in ("summary.json", "rounds.csv"):  # from an earlier invocation with the same --out
        (run_dir / stale).unlink(missing_ok=True)
    result["load_1m"] = os.getloadavg()[0]  # other work on the machine skews the timings
    launch = run_process(argv, child_env(), timeout, run_dir / "logs")
    result.update(launch=launch.launch, wall_s=launch.exited - launch.launch, peak_mem_gb=launch.mem_gb,
                  baseline_mem_gb=launch.baseline_gb, tree_rss_gb=launch.tree_rss_gb)
    if launch.killed_leftovers:
        result["note"] = f"stopped {launch.killed_leftovers} processes left running after it exited"
    if launch.timed_out:
        result["status"] = f"failed: timeout after {timeout:g} s (its processes were killed)"
        return result
    stderr = launch.stderr_path.read_text(errors="replace") if launch.stderr_path else ""
    stdout = launch.stdout_path.read_text(errors="replace") if launch.stdout_path else ""
    try:
        figures = read_flower(run_dir) if row.framework == FLOWER else read_flight(run_dir)
    except (OSError, ValueError, KeyError) as exc:
        figures = {"error": f"{type(exc).__name__}: {exc}"}
    own_status = figures.get("status")
    if launch.rc != 0:
        if isinstance(own_status, str) and own_status.startswith("failed"):
            reason = own_status.removeprefix("failed: ")
        else:
            reason = last_error_line(stderr or stdout)
        result["status"] = f"failed: exit {launch.rc}: {reason}"[:500]
        return result
    if "error" in figures:
        result["status"] = f"failed: unreadable results: {figures['error']}"
        return result
    if own_status not in ("ok", "completed"):
        result["status"] = f"failed: run status {own_status!r}"
        return result
    result.update(
        status="ok",
        whole_s=figures["end"] - launch.launch if figures.get("end") else None,
        first_s=figures["first_s"], warm_s=figures["warm_s"], coord_mb=figures["coord_mb"],
        own_start2end_s=figures["own_start2end_s"], actors=figures.get("actors"),
    )
    return result


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


# ---------------------------------------------------------------------------
# Ratios, best figures, targets (pure)
# ---------------------------------------------------------------------------

RATIO_METRICS = ("whole_s", "first_s", "warm_s", "peak_mem_gb")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def best(rows: Sequence[dict[str, Any]], framework: str, metric: str) -> tuple[float, str] | None:
    """(smallest value, its row label) of ``metric`` over the ok rows of ``framework``."""
    found = [(v, r["row"]) for r in rows if r.get("framework") == framework and r.get("status") == "ok"
             and (v := _num(r.get(metric))) is not None]
    return min(found) if found else None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each ok flight_parsl row gets ``<metric>_vs_flower`` = its value / Flower's best (one cell's rows)."""
    for metric in RATIO_METRICS:
        ref = best(rows, FLOWER, metric)
        for r in rows:
            if r.get("framework") != FLIGHT:
                continue
            value = _num(r.get(metric)) if r.get("status") == "ok" else None
            r[f"{metric}_vs_flower"] = value / ref[0] if value is not None and ref and ref[0] > 0 else None


def best_vs_best(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: flight_parsl's best, Flower's best and their ratio (metrics where both ran)."""
    out = []
    for metric in RATIO_METRICS:
        mine, theirs = best(rows, FLIGHT, metric), best(rows, FLOWER, metric)
        if mine and theirs:
            out.append({"metric": metric, "flight": mine, "flower": theirs,
                        "ratio": mine[0] / theirs[0] if theirs[0] > 0 else None})
    return out


def target_value(target: Target, row: dict[str, Any], cell_rows: Sequence[dict[str, Any]],
                 all_rows: Sequence[dict[str, Any]]) -> tuple[float | None, str]:
    """The figure a target checks, or (None, why it cannot be checked)."""
    if row.get("status") != "ok":
        return None, "run failed"
    if target.metric == "mem_gb":
        value = _num(row.get("peak_mem_gb"))
    elif target.metric == "whole_vs_flower":
        ref = best(cell_rows, FLOWER, "whole_s")
        if ref is None:
            return None, "no Flower figure"
        whole = _num(row.get("whole_s"))
        value = whole / ref[0] if whole is not None and ref[0] > 0 else None
    elif target.metric == "coord_vs_ref_mb":
        ref_rows = [r for r in all_rows if r.get("cell") == target.ref and r.get("row") == row.get("row")]
        if not ref_rows or ref_rows[0].get("status") != "ok":
            return None, f"no {target.ref} figure"
        mine, theirs = _num(row.get("coord_mb")), _num(ref_rows[0].get("coord_mb"))
        value = mine - theirs if mine is not None and theirs is not None else None
    else:
        value = _num(row.get(target.metric))
    return (value, "") if value is not None else (None, "not measured")


def check_targets(cell: Cell, cell_rows: Sequence[dict[str, Any]],
                  all_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per target of the cell's rows: PASS, MISS, or MISS with why it could not be checked."""
    verdicts = []
    for spec in cell.rows:
        for target in spec.targets:
            row = next((r for r in cell_rows if r.get("row") == spec.label), {"status": "not run"})
            value, why = target_value(target, row, cell_rows, all_rows)
            if value is None:
                verdict = "n/a" if why.startswith("no ") else "MISS"
            else:
                verdict = "PASS" if value <= target.limit else "MISS"
            verdicts.append({"row": spec.label, "target": target_text(target), "value": value, "why": why,
                             "metric": target.metric, "verdict": verdict})
    return verdicts


def target_text(target: Target) -> str:
    name, unit = METRIC_TEXT[target.metric]
    name = name.format(ref=target.ref)
    limit = "1/3" if math.isclose(target.limit, 1 / 3) else f"{target.limit:g}"
    return f"{name} <= {limit}" + ("" if unit == "x" else f" {unit}")


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for the table: 3 significant digits below 1, then 2, 1 and 0 decimals."""
    number = _num(value)
    if number is None:
        return "-" if value in (None, "") else str(value)
    size = abs(number)
    if size >= 100:
        return f"{number:.0f}"
    if size >= 10:
        return f"{number:.1f}"
    if size >= 1:
        return f"{number:.2f}"
    return f"{number:.{digits}g}"


def fmt_ratio(value: Any) -> str:
    number = _num(value)
    return "-" if number is None else f"{number:.2f}x"


STATUS_WIDTH = 140  # the table's status column; results.csv keeps the whole line
TABLE_HEAD = ("row", "whole run s", "first round s", "warm round s", "peak mem GB", "procs RSS GB", "coord MB",
              "whole / Fl", "warm / Fl", "mem / Fl", "status")


def render_cell(cell: Cell, cell_rows: Sequence[dict[str, Any]], verdicts: Sequence[dict[str, Any]],
                rounds: int) -> str:
    """A cell's markdown: heading, the table, best vs best, the targets."""
    train = "no training" if cell.train == "none" else "local training"
    head = f"### {cell.name}: {cell.model}, {cell.workers} clients, {rounds} rounds, {train}"
    if cell.overrides:
        head += f" ({' '.join(cell.overrides)})"
    lines = [head]
    if cell.note:
        lines.append(f"_{cell.note}_")
    lines += ["", "| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    for r in cell_rows:
        actors = _num(r.get("actors"))
        label = r["row"] + ("" if actors is None else f" ({actors:g} actor{'' if actors == 1 else 's'})")
        status = r.get("status", "")
        if len(status) > STATUS_WIDTH:
            status = status[:STATUS_WIDTH - 3] + "..."
        if r.get("note"):
            status += f"; {r['note']}"
        ok = status.startswith("ok")  # a failed run's partial figures stay in results.csv only
        cells = [label, fmt(r.get("whole_s")), fmt(r.get("first_s")), fmt(r.get("warm_s")),
                 fmt(r.get("peak_mem_gb") if ok else None), fmt(r.get("tree_rss_gb") if ok else None),
                 fmt(r.get("coord_mb")), fmt_ratio(r.get("whole_s_vs_flower")),
                 fmt_ratio(r.get("warm_s_vs_flower")), fmt_ratio(r.get("peak_mem_gb_vs_flower")),
                 status.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    bvb = best_vs_best(cell_rows)
    if bvb:
        lines += ["", "flight_parsl best / Flower best: " + "; ".join(
            f"{METRIC_NAMES[b['metric']]} {fmt(b['flight'][0])} ({b['flight'][1]}) / {fmt(b['flower'][0])} "
            f"({b['flower'][1]}) = {fmt_ratio(b['ratio'])}" for b in bvb)]
    elif any(r.get("framework") == FLOWER for r in cell_rows):
        lines += ["", "flight_parsl best / Flower best: - (one side has no ok run)"]
    if verdicts:
        lines += ["", "| target | row | value | verdict |", "|---|---|---|---|"]
        for v in verdicts:
            value = fmt(v["value"]) if v["value"] is not None else f"- ({v['why']})"
            lines.append(f"| {v['target']} | {v['row']} | {value} | {v['verdict']} |")
    return "\n".join(lines)


METRIC_NAMES = {"whole_s": "whole run s", "first_s": "first round s", "warm_s": "warm round s",
                "peak_mem_gb": "peak mem GB"}

CSV_COLUMNS = (
    "cell", "row", "framework", "model", "workers", "rounds", "train", "args", "status", "whole_s", "first_s",
    "warm_s", "peak_mem_gb", "baseline_mem_gb", "tree_rss_gb", "coord_mb", "whole_s_vs_flower", "first_s_vs_flower",
    "warm_s_vs_flower", "peak_mem_gb_vs_flower", "wall_s", "own_start2end_s", "actors", "load_1m", "launch", "note",
    "targets",
    "run_dir",
)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})


def summarize(verdicts: Sequence[dict[str, Any]]) -> str:
    counts = {k: sum(v["verdict"] == k for v in verdicts) for k in ("PASS", "MISS", "n/a")}
    return f"targets: {counts['PASS']} PASS, {counts['MISS']} MISS, {counts['n/a']} n/a"


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def describe_cells(cells: Sequence[Cell]) -> str:
    lines = []
    for cell in cells:
        rounds = "--rounds" if cell.rounds is None else str(cell.rounds)
        extra = f" [{' '.join(cell.overrides)}]" if cell.overrides else ""
        lines.append(f"{cell.name}: {cell.model} x{cell.workers}, rounds {rounds}, train {cell.train}{extra}"
                     + (" (smoke)" if cell.smoke else ""))
        for row in cell.rows:
            args = " ".join([*row.flags, *row.overrides])
            targets = ", ".join(target_text(t) for t in row.targets)
            lines.append(f"    {row.label:28s} {args:28s} {targets}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default=None,
                   help="comma list of cell names, 'all' (the target cells, default) or 'smoke'; --list shows them")
    p.add_argument("--quick", action="store_true", help="the smoke cells with 2 rounds (unless --cells/--rounds)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"rounds of the cells that do not pin theirs (default {DEFAULT_ROUNDS}; 2 with --quick)")
    p.add_argument("--out", default=None, help="output directory (default runs/perf-<timestamp>)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds per run before its process group is killed (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--frameworks", default="flight_parsl,flower", help="comma list: flight_parsl, flower")
    p.add_argument("--list", action="store_true", help="print the cells, their rows and targets, and exit")
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print every run's command and exit "
                   "(starts nothing)")
    return p


def main(argv: list[str] | None = None, say: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    cell_names = args.cells.split(",") if args.cells else ["smoke" if args.quick else "all"]
    try:
        cells = select_cells(n.strip() for n in cell_names if n.strip())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        say(describe_cells(cells))
        return 0
    frameworks = {f.strip() for f in args.frameworks.split(",") if f.strip()}
    if not frameworks or frameworks - {FLIGHT, FLOWER}:
        print(f"error: --frameworks takes flight_parsl and/or flower, got {args.frameworks!r}", file=sys.stderr)
        return 2
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else DEFAULT_ROUNDS)
    if rounds < 1 or args.timeout <= 0:
        print("error: --rounds and --timeout must be positive", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/perf-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    plan = [(c, r) for c in cells for r in c.rows if r.framework in frameworks]
    if args.dry_run:
        import shlex

        for cell, row in plan:
            n = cell.rounds_for(rounds)
            run_out = out / cell.name / slug(row.label)
            argv_ = (flight_argv(cell, row, n, run_out) if row.framework == FLIGHT
                     else flower_argv(cell, row, n, run_out, max(args.timeout - 30, args.timeout * 0.9)))
            say(f"{cell.name} | {row.label}: {shlex.join(argv_)}")
        say(f"dry run: {len(plan)} runs in {len(cells)} cells; nothing started")
        return 0
    out.mkdir(parents=True, exist_ok=True)

    say(f"perf: {len(plan)} runs in {len(cells)} cells -> {out}")
    rows: list[dict[str, Any]] = []
    interrupted = False
    try:
        for i, (cell, row) in enumerate(plan, 1):
            n = cell.rounds_for(rounds)
            tag = f"[{i}/{len(plan)}] {cell.name} | {row.label}"
            say(f"{tag}: start ({cell.model} x{cell.workers}, {n} rounds)")
            result = run_row(cell, row, n, out, args.timeout)
            rows.append(result)
            if result["status"] == "ok":
                say(f"{tag}: ok in {result['wall_s']:.1f} s: whole {fmt(result['whole_s'])} s, first "
                    f"{fmt(result['first_s'])} s, warm {fmt(result['warm_s'])} s, "
                    f"mem {fmt(result['peak_mem_gb'])} GB")
            else:
                say(f"{tag}: {result['status']}")
            time.sleep(1.0)  # let the machine's memory settle before the next baseline
    except KeyboardInterrupt:  # the run in flight was stopped (run_process); report what finished
        interrupted = True
        say("interrupted: the run in flight was stopped; the table has the finished runs")

    sections, verdicts = [], []
    for cell in cells:
        cell_rows = [r for r in rows if r["cell"] == cell.name]
        if not cell_rows:
            continue
        add_ratios(cell_rows)
        cell_verdicts = check_targets(cell, cell_rows, rows) if FLIGHT in frameworks else []
        for r in cell_rows:
            r["targets"] = "; ".join(f"{v['target']}: {v['verdict']}" for v in cell_verdicts if v["row"] == r["row"])
        verdicts += cell_verdicts
        sections.append(render_cell(cell, cell_rows, cell_verdicts, cell.rounds_for(rounds)))
    header = (f"## flight_parsl vs Flower simulation ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n"
              "whole run: process launch to the last aggregate ready; warm round: mean of rounds after the "
              "first; peak mem: machine memory in use (MemTotal - MemAvailable) at its peak minus just before "
              "launch, GB = 10^9 bytes; procs RSS: peak of the summed RSS of the run's processes (a cross-check "
              "that other work on the machine does not move; shared pages count per process); coord MB: "
              "coordinator / Flower driver peak RSS; x / Fl: the row's figure over Flower's best variant in the cell.")
    report = "\n\n".join([header, *sections, summarize(verdicts)]) + "\n"
    say("\n" + report)
    (out / "table.md").write_text(report)
    write_csv(out / "results.csv", rows)
    say(f"results: {out / 'results.csv'}, table: {out / 'table.md'}")
    if interrupted:
        return 130
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
