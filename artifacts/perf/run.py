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
  ~50 ms while the subprocess runs, peak minus the least in use over the second before launch
  (the run's /dev/shm files count: shmem is not available memory);
- the run's processes' summed PSS (/proc/PID/smaps_rollup: shared pages split between
  the processes that map them) plus the run's /dev/shm files none of them maps, at its
  peak; read every 0.5 s, or less often where the reads would take more than
  ``PSS_CPU_SHARE`` of a CPU (one process that imported torch costs ~2 ms); the summed
  RSS (every 0.5 s, shared pages once per process) beside it. A machine figure more
  than 2x off the PSS figure either way is flagged;
- the coordinator's peak RSS (flight_parsl's ``peak_rss_mb_coordinator``, Flower's
  driver ``peak_rss_mb``),

then prints one table per cell with the ratios flight_parsl / Flower (against
Flower's best variant), flight_parsl's best against Flower's best (for the rows that
pre-aggregate in the slot and for those that move one message per client, like
Flower), and every target figure as PASS or MISS. Each run launches once the machine
is settled (1-min load below ``--settle-load``, no Parsl / Ray process alive; else
after ``--settle-max-wait`` it is marked unsettled); each cell row runs ``--repeats``
times (default 3) and the tables give the median (min-max), verdicts on the medians.
A run that fails (an unknown config key, a crash, a time-out) is reported with its
one-line error and the script goes on.

    python artifacts/perf/run.py                      # every target cell
    python artifacts/perf/run.py --quick              # small smoke cells, 2 rounds
    python artifacts/perf/run.py --cells tiny-64,resnet18-64 --rounds 3 --out runs/perf
    python artifacts/perf/run.py --list               # the cells, their rows and targets

Writes ``OUT/results.csv`` (every run), ``OUT/medians.csv`` (one row per framework
variant and cell), ``OUT/table.md`` (the printed tables) and each run's directory under
``OUT/<cell>/<row>/r<K>/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import signal
import stat
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
SCAN_S = 0.5  # how often the processes of a run are recorded (and their RSS read: /proc/PID/statm)
# PSS (/proc/PID/smaps_rollup) walks every mapping's page tables: ~2 ms for one process that imported
# torch against ~0.01 ms for statm. So the PSS scans run at most every SCAN_S and then as seldom as
# keeps their CPU below this share of one CPU (the interval stretches to the last scan's cost / share).
PSS_CPU_SHARE = 0.03
SHM_DIR = "/dev/shm"  # the file store's results and published models live here (shmem: no process's PSS
# unless mapped)
RUN_MARK = "FLIGHT_PARSL_PERF_RUN"  # environment mark of a run's processes
GB = 1e9  # memory figures and targets are in GB = 10^9 bytes
DEFAULT_ROUNDS = 3
DEFAULT_TIMEOUT_S = 900.0
KILL_GRACE_S = 5.0
LEFTOVER_GRACE_S = 10.0
DEFAULT_REPEATS = 3
DEFAULT_SETTLE_LOAD = 0.5 * (os.cpu_count() or 2)  # 1.0 on 2 cores
DEFAULT_SETTLE_MAX_S = 240.0
SETTLE_POLL_S = 2.0
BASELINE_WINDOW_S = 1.0  # machine memory baseline: the least in use over this window before launch
MEM_DISAGREE = 2.0  # machine figure vs procs PSS (+ the run's unmapped /dev/shm): flagged beyond this factor
# Processes of a Parsl or Ray run: none may be alive (this script's or anyone's) when a run launches.
STRAY_NAMES = ("process_worker_pool", "interchange", "raylet", "gcs_server")

FLIGHT = "flight_parsl"
FLOWER = "flower"


# ---------------------------------------------------------------------------
# Cells, rows and targets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A figure a row must reach: ``metric <= limit``.

    Metrics: ``whole_s``, ``first_s``, ``warm_s`` (seconds), ``mem_gb`` (peak machine
    memory, GB), ``whole_vs_flower`` / ``warm_vs_flower`` (whole run / warm round over
    Flower's best in the cell), ``coord_mb`` (coordinator peak RSS, MB), ``coord_vs_ref_mb`` (coordinator peak RSS minus the same row's in the cell
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
    moves: str = ""  # what crosses from the clients to the aggregator (PREAGG / ONE_MSG)


PREAGG = "pre-aggregated in the slot"
ONE_MSG = "one message per client, like Flower"
FLOWER_MOVES = "one message per client"


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
    bare: bool = False  # flight_parsl rows run with the CLI's defaults: only --workers and --rounds

    def rounds_for(self, default: int) -> int:
        return self.rounds if self.rounds is not None else default

    def refs(self) -> set[str]:
        return {t.ref for r in self.rows for t in r.targets if t.ref}


def fp(label: str = "", flags: Sequence[str] = (), overrides: Sequence[str] = (),
       targets: Sequence[Target] = (), note: str = "", moves: str = "") -> Row:
    if not moves:  # one slot per client or no folding: every client's result travels on its own
        moves = ONE_MSG if any(o in ("plan.preaggregate=false", "slots=per_client") for o in overrides) else PREAGG
    return Row(FLIGHT + (f" {label}" if label else ""), FLIGHT, tuple(flags), tuple(overrides), tuple(targets), note,
               moves)


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
    return Row(f"flower-sim {variant}", FLOWER, ("--client-cpus", cpus), (), (), note, FLOWER_MOVES)


ALL_FLOWER = tuple(flower(v) for v in FLOWER_VARIANTS)
FEW_FLOWER = (flower("default"), flower("1cpu"))  # N actors do not fit in memory


def _variants(*kinds: tuple[str, tuple[str, ...], tuple[str, ...], str],
              targets: Sequence[Sequence[Target]] = ()) -> tuple[Row, ...]:
    """flight_parsl variant rows; ``targets[i]`` (if given) are the i-th kind's targets."""
    return tuple(fp(label, flags, overrides, targets=tuple(targets[i]) if i < len(targets) else (), note=note)
                 for i, (label, flags, overrides, note) in enumerate(kinds))


def _targets(**limits: float) -> tuple[Target, ...]:
    return tuple(Target(metric, limit) for metric, limit in limits.items())


R18_64 = _targets(whole_s=15, whole_vs_flower=1 / 3, warm_s=1.5, mem_gb=4)
R18_64_ONE_MSG = _targets(warm_vs_flower=0.1)  # issue 22: "one message per client" warm round <= 0.1x Flower's
R18_64_PER_CLIENT = _targets(whole_s=30, mem_gb=6)  # issue 22 item 1 (start-up)
TINY_64 = _targets(whole_s=6, warm_s=0.1)  # whole run: issue 22 item 1 (tiny x64 on HTEX)
TINY_64_PROCESS = _targets(whole_s=3.5)
DIGITS_3 = _targets(whole_s=30, mem_gb=3, whole_vs_flower=0.4)
DIGITS_100 = _targets(whole_vs_flower=0.1)
TINY_1M = _targets(warm_s=1, coord_mb=500)

CELLS: tuple[Cell, ...] = (
    Cell("quickstart", "mlp", 4, (fp(targets=_targets(whole_s=8)),), rounds=3, train="local", bare=True,
         note="the quick start as the README gives it: python -m flight_parsl.scale --workers 4 --rounds 3"),
    Cell("resnet18-64", "resnet18", 64,
         (fp(targets=R18_64), *_variants(NO_PREAGG, PER_CLIENT, targets=(R18_64_ONE_MSG, R18_64_PER_CLIENT)),
          *ALL_FLOWER)),
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
    Cell("tiny-1m", "tiny", 1_000_000, (fp(targets=TINY_1M), *_variants(NO_PREAGG)),
         overrides=("strategy.clients_per_round=1000",),
         note="1,000 of 1,000,000 clients sampled per round; no Flower row (the baseline does not sample clients)"),
    Cell("digits-mlp-64", "mlp", 64, (fp(targets=DIGITS_3), *_variants(NO_PREAGG), *FEW_FLOWER),
         rounds=3, train="local", dataset="digits",
         note="real training, 3 rounds, both frameworks (Flower: --train local); no flower-sim matched (64 actors "
              "start for minutes)"),
    Cell("digits-mlp-64-r100", "mlp", 64, (fp(targets=DIGITS_100), *_variants(NO_PREAGG), *FEW_FLOWER),
         rounds=100, train="local", dataset="digits",
         note="real training, 100 rounds, both frameworks (Flower: --train local)"),
    # Smoke cells: small versions that carry the x64 cells' targets only to exercise the checks.
    Cell("smoke-tiny-8", "tiny", 8,
         (fp(targets=TINY_64), fp(PROCESS[0], PROCESS[1], targets=TINY_64_PROCESS, note=PROCESS[3]),
          *_variants(NO_PREAGG), *ALL_FLOWER), smoke=True, note="smoke cell; targets are tiny-64's"),
    Cell("smoke-smallnet-8", "smallnet", 8, (fp(), *_variants(NO_PREAGG), *ALL_FLOWER), smoke=True,
         note="smoke cell"),
    Cell("smoke-resnet18-8", "resnet18", 8,
         (fp(targets=R18_64), *_variants(NO_PREAGG, PER_CLIENT, targets=(R18_64_ONE_MSG, R18_64_PER_CLIENT)),
          *ALL_FLOWER), smoke=True, note="smoke cell; targets are resnet18-64's"),
    Cell("smoke-digits-8", "mlp", 8, (fp(targets=DIGITS_3), flower("default")), rounds=2, train="local",
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
    "warm_vs_flower": ("warm round / Flower's best", "x"),
    "coord_mb": ("coordinator peak RSS", "MB"),
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

    def start(self, window_s: float = 0.0, sleep: Callable[[float], None] = time.sleep) -> None:
        """Take the baseline (call just before launching): the least in use over ``window_s``.

        One reading just before launch is high when memory an earlier run (or other work)
        held is still being given back, and the run's rise then reads near zero; the least
        over a window is the floor the run starts from.
        """
        reads = [self.read_kib()]
        for _ in range(int(window_s / SAMPLE_S)):
            sleep(SAMPLE_S)
            reads.append(self.read_kib())
        self.baseline_kib = min(reads)
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
# A settled machine before each run
# ---------------------------------------------------------------------------


def stray_processes(names: Sequence[str] = STRAY_NAMES) -> list[str]:
    """``"pid name"`` of every process whose command line names a Parsl / Ray service (anyone's)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        hit = next((n for n in names if n in cmdline), None)
        if hit:
            found.append(f"{entry} {hit}")
    return found


@dataclass
class Settle:
    """How the machine stood when a run launched."""

    settled: bool
    load: float  # the 1-minute load average at the last check
    waited_s: float
    strays: list[str]

    def why(self) -> str:
        """Why it is not settled ('' if it is)."""
        if self.settled:
            return ""
        parts = [f"load {self.load:.2f}"] if self.load is not None else []
        if self.strays:
            parts.append(f"{len(self.strays)} stray process(es): {', '.join(self.strays[:3])}")
        return "; ".join(parts)


def settle(threshold: float, max_wait_s: float, read_load: Callable[[], float] = lambda: os.getloadavg()[0],
           find_strays: Callable[[], list[str]] = stray_processes, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic, poll_s: float = SETTLE_POLL_S) -> Settle:
    """Wait until the 1-min load is below ``threshold`` and no Parsl / Ray process is alive.

    After ``max_wait_s`` it gives up and says so (``settled=False``): the run goes on and
    its row is marked unsettled.
    """
    start = clock()
    while True:
        load, strays = read_load(), find_strays()
        waited = clock() - start
        if load < threshold and not strays:
            return Settle(True, load, waited, [])
        if waited >= max_wait_s:
            return Settle(False, load, waited, strays)
        sleep(min(poll_s, max_wait_s - waited))


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


ROLLUP_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")


def rollup_kib(text: str) -> dict[str, int]:
    """The KiB fields of a /proc/PID/smaps_rollup text that :data:`ROLLUP_FIELDS` names (those present)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if sep and name in ROLLUP_FIELDS:
            try:
                fields[name] = int(rest.split()[0])
            except (IndexError, ValueError):
                pass
    return fields


DELETED = " (deleted)"


def shm_mappings(maps_text: str, prefix: str = SHM_DIR + "/") -> tuple[set[int], set[str]]:
    """(inodes, top-level entry names) of the files under ``prefix`` a /proc/PID/maps text maps.

    A deleted file's inode is there too; its name ends in `` (deleted)``, which is dropped.
    """
    inodes, entries = set(), set()
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith(prefix):
            try:
                inodes.add(int(parts[4]))
            except ValueError:
                continue
            entries.add(parts[5][len(prefix):].removesuffix(DELETED).split("/", 1)[0])
    return inodes, entries


class ShmFiles:
    """The run's files in /dev/shm: those under the entries that appeared after launch and that a
    process of the run has mapped a file from.

    Created just before launch, it remembers what /dev/shm held. :meth:`claim` takes the
    entries a scan saw the run's processes map (flight_parsl's file store directory: every
    worker maps the published model from it; the named semaphores); once claimed, an entry
    stays the run's, and :meth:`files` lists the regular files under it with their allocated
    bytes: the results written there that no one maps yet, the pooled files. New entries
    no process of the run maps (another run's, started meanwhile by someone else) are not
    counted; nor is a run's directory none of its processes ever maps.
    """

    def __init__(self, root: str | Path = SHM_DIR) -> None:
        self.root = Path(root)
        self.before = self._entries()
        self.owned: set[str] = set()

    def _entries(self) -> set[tuple[str, int]]:
        try:
            with os.scandir(self.root) as it:
                return {(e.name, e.inode()) for e in it}
        except OSError:
            return set()

    def claim(self, entries: Iterable[str]) -> None:
        """Make the named top-level entries the run's, those that were not there at launch."""
        old = {name for name, _ in self.before}
        self.owned.update(name for name in entries if name and name not in old)

    def files(self) -> dict[int, int]:
        """inode -> allocated bytes (st_blocks x 512) of every regular file under the run's entries."""
        found: dict[int, int] = {}
        stack = [self.root / name for name in self.owned]
        while stack:
            path = stack.pop()
            try:
                st = path.lstat()
            except OSError:
                continue  # gone meanwhile
            if stat.S_ISDIR(st.st_mode):
                try:
                    stack.extend(path.iterdir())
                except OSError:
                    pass
            elif stat.S_ISREG(st.st_mode):
                found[st.st_ino] = st.st_blocks * 512
        return found


@dataclass
class MemScan:
    """One PSS scan of a run's processes (bytes)."""

    pss: int = 0  # summed PSS: a page shared by k processes counts 1/k in each
    pss_anon: int = 0
    pss_file: int = 0  # file-backed pages (libraries, mapped files): page cache, which MemAvailable counts free
    pss_shmem: int = 0  # shmem mapped (the /dev/shm files the processes map, shared anonymous memory)
    rss: int = 0  # summed RSS of the same processes: shared pages once per process
    shm: int = 0  # the run's /dev/shm files that no process of the run maps (in no one's PSS)
    shm_all: int = 0  # all of the run's /dev/shm files, mapped or not
    procs: int = 0  # processes read

    @property
    def total(self) -> int:
        """What the run's processes hold: their PSS plus the run's /dev/shm files no one of them maps."""
        return self.pss + self.shm


def pss_scan(pids: Iterable[int], shm: ShmFiles | None = None, proc: str | Path = "/proc") -> MemScan:
    """Sum /proc/PID/smaps_rollup over ``pids`` and add the run's unmapped /dev/shm files.

    A /dev/shm file some process of the run maps is in that process's PSS (Pss_Shmem, split
    between its mappers), so only the run's files (:class:`ShmFiles`) none maps (a result
    written and not read yet, a pooled file) are added, at their allocated size. A process
    that has exited is skipped.
    """
    out = MemScan()
    mapped: set[int] = set()
    entries: set[str] = set()
    prefix = os.path.realpath(shm.root) + "/" if shm is not None else ""  # maps gives resolved paths
    for pid in pids:
        base = Path(proc) / str(pid)
        try:
            fields = rollup_kib((base / "smaps_rollup").read_text())
            maps = (base / "maps").read_text() if shm is not None else ""
        except OSError:
            continue
        if "Pss" not in fields:
            continue
        out.procs += 1
        out.pss += fields["Pss"] * 1024
        out.pss_anon += fields.get("Pss_Anon", 0) * 1024
        out.pss_file += fields.get("Pss_File", 0) * 1024
        out.pss_shmem += fields.get("Pss_Shmem", 0) * 1024
        out.rss += fields.get("Rss", 0) * 1024
        if shm is not None:
            inodes, names = shm_mappings(maps, prefix)
            mapped |= inodes
            entries |= names
    if shm is not None:
        shm.claim(entries)
        files = shm.files()
        out.shm_all = sum(files.values())
        out.shm = sum(size for inode, size in files.items() if inode not in mapped)
    return out


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
    tree_pss_gb: float | None = None  # peak over the PSS scans of MemScan.total: PSS + unmapped /dev/shm
    shm_gb: float | None = None  # of which the run's unmapped /dev/shm files (at that peak)
    pss_file_gb: float | None = None  # of which file-backed pages (at that peak)
    pss_shmem_gb: float | None = None  # of which mapped shmem: /dev/shm files, shared anonymous memory (at that peak)
    pss_scans: int = 0
    sampler_cpu: float | None = None  # this script's CPU seconds per second of the run while it watched it
    killed_leftovers: int = 0
    stderr_path: Path | None = None
    stdout_path: Path | None = None


def run_process(argv: Sequence[str], env: dict[str, str], timeout: float, logs: Path,
                sampler: MemSampler | None = None, baseline_window_s: float = 0.0) -> Launch:
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
        sampler.start(baseline_window_s)
        shm = ShmFiles()
        cpu0 = time.process_time()
        out.launch = time.time()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                env={**env, RUN_MARK: token}, cwd=str(REPO), start_new_session=True)
        procs = RunProcesses(proc.pid, token)
        tracked = procs.found
        next_scan = next_pss = 0.0
        try:
            while proc.poll() is None:
                sampler.sample()
                now = time.time()
                if now >= next_scan:
                    pids = procs.scan()
                    rss = rss_bytes(pids) / GB
                    out.tree_rss_gb = max(out.tree_rss_gb or 0.0, rss)
                    next_scan = now + SCAN_S
                    if now >= next_pss:  # PSS as often as PSS_CPU_SHARE allows
                        cost = time.process_time()
                        scan = pss_scan(pids, shm)
                        cost = time.process_time() - cost
                        out.pss_scans += 1
                        if scan.procs and scan.total / GB > (out.tree_pss_gb or 0.0):
                            out.tree_pss_gb, out.shm_gb = scan.total / GB, scan.shm / GB
                            out.pss_file_gb, out.pss_shmem_gb = scan.pss_file / GB, scan.pss_shmem / GB
                        next_pss = now + max(SCAN_S, cost / PSS_CPU_SHARE)
                if now - out.launch > timeout:
                    out.timed_out = True
                    break
                time.sleep(SAMPLE_S)
        finally:
            watched = time.time() - out.launch
            if watched > 0:
                out.sampler_cpu = (time.process_time() - cpu0) / watched
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
    argv = [sys.executable, "-m", "flight_parsl.scale", "--workers", str(cell.workers)]
    if cell.bare:  # the CLI's own defaults (the quick start)
        return [*argv, "--rounds", str(rounds), "--out", str(out), "-q", *row.flags, *row.overrides]
    argv += ["--model", cell.model]
    if cell.train == "none":
        argv += ["--train", "none"]
    if cell.dataset:
        argv += ["--dataset", cell.dataset]
    argv += ["--rounds", str(rounds), "--out", str(out), "-q", *row.flags, *cell.overrides, *row.overrides]
    return argv


def flower_argv(cell: Cell, row: Row, rounds: int, out: Path, timeout: float) -> list[str]:
    argv = [sys.executable, "-m", "flight_parsl.baselines.flower", "--workers", str(cell.workers),
            "--model", cell.model]
    if cell.train != "none":  # the same workload as flight_parsl's row: real local training
        argv += ["--dataset", cell.dataset or "digits", "--train", cell.train]
    return argv + ["--mode", "simulation", "--rounds", str(rounds), "--out", str(out),
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
            "status": summary.get("status"), "acc": summary.get("final_test_acc")}


ACC_KEYS = ("final_test_acc", "final_acc", "test_acc", "accuracy")


def final_acc(summary: dict[str, Any]) -> float | None:
    """The final test accuracy a summary gives (its top level, else its last round's), or None."""
    for source in (summary, (summary.get("rounds_detail") or [{}])[-1]):
        for key in ACC_KEYS:
            value = _num(source.get(key)) if isinstance(source, dict) else None
            if value is not None:
                return value
    return None


def read_flower(out: Path) -> dict[str, Any]:
    """summary.json of a Flower baseline run directory."""
    summary = json.loads((out / "summary.json").read_text())
    makespans = [r["makespan_s"] for r in summary.get("rounds_detail", []) if "makespan_s" in r]
    first, warm = round_figures(makespans)
    return {"summary": summary, "first_s": first, "warm_s": warm, "end": summary.get("end"),
            "coord_mb": summary.get("peak_rss_mb"), "own_start2end_s": summary.get("start2end"),
            "actors": summary.get("num_actors"), "status": summary.get("status"), "acc": final_acc(summary)}


def run_row(cell: Cell, row: Row, rounds: int, out_dir: Path, timeout: float, repeat: int = 1,
            settled: Settle | None = None) -> dict[str, Any]:
    """Run one row of a cell once; return its results row (status ok or failed: <one line>).

    ``repeat`` numbers the run (its directory is ``OUT/<cell>/<row>/r<repeat>``);
    ``settled`` is how the machine stood at launch (:func:`settle`).
    """
    run_dir = out_dir / cell.name / slug(row.label) / f"r{repeat}"
    if FLOWER == row.framework:
        # The baseline's own limit stops its processes first; ours is the backstop.
        argv = flower_argv(cell, row, rounds, run_dir, max(timeout - 30, timeout * 0.9))
    else:
        argv = flight_argv(cell, row, rounds, run_dir)
    result: dict[str, Any] = {
        "cell": cell.name, "row": row.label, "framework": row.framework, "model": cell.model,
        "workers": cell.workers, "rounds": rounds, "train": cell.train,
        "args": " ".join([*row.flags, *(cell.overrides if row.framework == FLIGHT else ()), *row.overrides]),
        "run_dir": str(run_dir), "repeat": repeat, "moves": row.moves,
    }
    if settled is not None:
        result.update(settled="yes" if settled.settled else "no", settle_wait_s=settled.waited_s,
                      unsettled_why=settled.why())
    for stale in ("summary.json", "rounds.csv"):  # from an earlier invocation with the same --out
        (run_dir / stale).unlink(missing_ok=True)
    result["load_1m"] = os.getloadavg()[0]  # other work on the machine skews the timings
    launch = run_process(argv, child_env(), timeout, run_dir / "logs", baseline_window_s=BASELINE_WINDOW_S)
    result.update(launch=launch.launch, wall_s=launch.exited - launch.launch, peak_mem_gb=launch.mem_gb,
                  baseline_mem_gb=launch.baseline_gb, tree_rss_gb=launch.tree_rss_gb,
                  tree_pss_gb=launch.tree_pss_gb, shm_gb=launch.shm_gb, pss_file_gb=launch.pss_file_gb,
                  pss_shmem_gb=launch.pss_shmem_gb,
                  pss_scans=launch.pss_scans, sampler_cpu=launch.sampler_cpu,
                  mem_flag="disagree" if mem_disagrees(launch.mem_gb, launch.tree_pss_gb) else "")
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
        own_start2end_s=figures["own_start2end_s"], actors=figures.get("actors"), acc=figures.get("acc"),
    )
    return result


def mem_disagrees(machine_gb: float | None, procs_gb: float | None, factor: float = MEM_DISAGREE) -> bool:
    """Whether the machine figure and the processes' figure differ by more than ``factor`` either way.

    The processes' figure is their summed PSS plus the run's unmapped /dev/shm files
    (:class:`MemScan`), which counts a shared page once in all. The machine figure counts
    whatever else on the machine took or gave back memory during the run (it read 0.002 GB
    for a run whose processes held 1.57 GB of RSS). Either missing: no flag.
    """
    if machine_gb is None or procs_gb is None:
        return False
    low, high = sorted((max(machine_gb, 0.0), max(procs_gb, 0.0)))
    if high == 0:
        return False
    return low * factor < high


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


def is_ok(row: dict[str, Any]) -> bool:
    """Whether a row has figures: a run that finished, or a cell-row with at least one run that did."""
    return str(row.get("status", "")).startswith("ok")


def best(rows: Sequence[dict[str, Any]], framework: str, metric: str,
         moves: str | None = None) -> tuple[float, str] | None:
    """(smallest value, its row label) of ``metric`` over the ok rows of ``framework`` (and ``moves``)."""
    found = [(v, r["row"]) for r in rows if r.get("framework") == framework and is_ok(r)
             and (moves is None or r.get("moves") == moves) and (v := _num(r.get(metric))) is not None]
    return min(found) if found else None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each ok flight_parsl row gets ``<metric>_vs_flower`` = its value / Flower's best (one cell's rows)."""
    for metric in RATIO_METRICS:
        ref = best(rows, FLOWER, metric)
        for r in rows:
            if r.get("framework") != FLIGHT:
                continue
            value = _num(r.get(metric)) if is_ok(r) else None
            r[f"{metric}_vs_flower"] = value / ref[0] if value is not None and ref and ref[0] > 0 else None


def best_vs_best(rows: Sequence[dict[str, Any]], moves: str | None = None) -> list[dict[str, Any]]:
    """Per metric: flight_parsl's best (of the rows that move ``moves``), Flower's best and their ratio."""
    out = []
    for metric in RATIO_METRICS:
        mine, theirs = best(rows, FLIGHT, metric, moves), best(rows, FLOWER, metric)
        if mine and theirs:
            out.append({"metric": metric, "flight": mine, "flower": theirs,
                        "ratio": mine[0] / theirs[0] if theirs[0] > 0 else None})
    return out


def target_value(target: Target, row: dict[str, Any], cell_rows: Sequence[dict[str, Any]],
                 all_rows: Sequence[dict[str, Any]]) -> tuple[float | None, str]:
    """The figure a target checks (medians, in aggregated rows), or (None, why it cannot be checked)."""
    if not is_ok(row):
        return None, "run failed"
    if target.metric == "mem_gb":
        value = _num(row.get("peak_mem_gb"))
    elif target.metric in ("whole_vs_flower", "warm_vs_flower"):
        metric = "whole_s" if target.metric == "whole_vs_flower" else "warm_s"
        ref = best(cell_rows, FLOWER, metric)
        if ref is None:
            return None, "no Flower figure"
        mine = _num(row.get(metric))
        value = mine / ref[0] if mine is not None and ref[0] > 0 else None
    elif target.metric == "coord_vs_ref_mb":
        ref_rows = [r for r in all_rows if r.get("cell") == target.ref and r.get("row") == row.get("row")]
        if not ref_rows or not is_ok(ref_rows[0]):
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
            if target.metric == "mem_gb" and value is not None and row.get("mem_flags"):
                why = f"{MEM_MARK} the machine figure disagrees with procs PSS in {row['mem_flags']} run(s)"
            verdicts.append({"row": spec.label, "target": target_text(target), "value": value, "why": why,
                             "metric": target.metric, "verdict": verdict})
    return verdicts


def target_text(target: Target) -> str:
    name, unit = METRIC_TEXT[target.metric]
    name = name.format(ref=target.ref)
    limit = "1/3" if math.isclose(target.limit, 1 / 3) else f"{target.limit:g}"
    return f"{name} <= {limit}" + ("" if unit == "x" else f" {unit}")


# ---------------------------------------------------------------------------
# Repeats: median with min-max (pure)
# ---------------------------------------------------------------------------

AGG_FIGURES = ("whole_s", "first_s", "warm_s", "peak_mem_gb", "tree_pss_gb", "shm_gb", "tree_rss_gb", "coord_mb",
               "acc", "wall_s", "own_start2end_s", "baseline_mem_gb", "pss_file_gb", "pss_shmem_gb", "sampler_cpu")
KEEP = ("cell", "row", "framework", "model", "workers", "rounds", "train", "args", "moves")


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell and row (first-seen order) from its repeated runs.

    Each figure is the median over the runs that finished ok, with ``<figure>_min`` and
    ``<figure>_max``; ``load_min`` / ``load_max`` span every run's load at launch;
    ``unsettled`` and ``mem_flags`` count the runs launched on an unsettled machine and
    the ok runs whose memory figures disagree. Status: ``ok`` (every run finished),
    ``ok K/N; <first failure>`` (some did), or the failure (none did).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["cell"], r["row"]), []).append(r)
    out = []
    for rs in groups.values():
        ok = [r for r in rs if r.get("status") == "ok"]
        agg: dict[str, Any] = {k: rs[0].get(k) for k in KEEP}
        agg.update(runs=len(rs), ok_runs=len(ok))
        for fig in AGG_FIGURES:
            values = [v for r in ok if (v := _num(r.get(fig))) is not None]
            agg[fig] = median(values) if values else None
            agg[f"{fig}_min"] = min(values) if values else None
            agg[f"{fig}_max"] = max(values) if values else None
        loads = [v for r in rs if (v := _num(r.get("load_1m"))) is not None]
        agg["load_min"], agg["load_max"] = (min(loads), max(loads)) if loads else (None, None)
        agg["actors"] = next((r.get("actors") for r in ok if r.get("actors") not in (None, "")), None)
        agg["unsettled"] = sum(r.get("settled") == "no" for r in rs)
        agg["mem_flags"] = sum(r.get("mem_flag") == "disagree" for r in ok)
        failures = [str(r.get("status")) for r in rs if r.get("status") != "ok"]
        if not failures:
            agg["status"] = "ok"
        elif ok:
            agg["status"] = f"ok {len(ok)}/{len(rs)}; {failures[0]}"
        else:
            agg["status"] = failures[0] if len(rs) == 1 else f"{failures[0]} ({len(failures)}/{len(rs)} runs failed)"
        notes = [str(r["note"]) for r in rs if r.get("note")]
        agg["note"] = notes[0] if notes else ""
        out.append(agg)
    return out


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for the table: 3 significant digits below 1, then 2, 1 and 0 decimals."""
    number = _num(value)
    if number is None:
        return "-" if value in (None, "") else str(value)
    size = abs(round(number, 1))  # 99.96 prints as 100, not 100.0
    if size >= 100:
        return f"{number:.0f}"
    if size >= 10:
        return f"{number:.1f}"
    if size >= 1:
        return f"{number:.2f}"
    return f"{number:.{digits}g}"


def fmt_range(row: dict[str, Any], fig: str, floor: float = 0.0) -> str:
    """``median (min-max)``, or the one figure when the runs agree (or there is one); a figure above
    0 and below ``floor`` prints as ``<floor``."""
    def f(value: Any) -> str:
        number = _num(value)
        return f"<{floor:g}" if number is not None and 0 < number < floor else fmt(value)

    mid, low, high = row.get(fig), row.get(f"{fig}_min"), row.get(f"{fig}_max")
    if _num(mid) is None:
        return "-"
    if _num(low) is None or _num(high) is None or f(low) == f(high):
        return f(mid)
    return f"{f(mid)} ({f(low)}-{f(high)})"


def fmt_ratio(value: Any) -> str:
    number = _num(value)
    return "-" if number is None else f"{number:.2f}x"


def fmt_load(row: dict[str, Any]) -> str:
    low, high = _num(row.get("load_min")), _num(row.get("load_max"))
    if low is None or high is None:
        return "-"
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


SHM_FLOOR_GB = 0.001  # the table's shm column: less (a model of KBs, named semaphores) prints as <0.001
STATUS_WIDTH = 140  # the table's status column; results.csv keeps the whole line
MEM_MARK = "!"  # after a peak mem figure: machine figure and procs PSS disagree by > MEM_DISAGREE
TABLE_HEAD = ("row", "moves", "whole run s", "first round s", "warm round s", "peak mem GB", "procs PSS GB",
              "shm GB", "procs RSS GB", "coord MB", "whole / Fl", "warm / Fl", "mem / Fl", "load at launch", "status")


def render_cell(cell: Cell, cell_rows: Sequence[dict[str, Any]], verdicts: Sequence[dict[str, Any]],
                rounds: int) -> str:
    """A cell's markdown from its aggregated rows: heading, the table, best vs best, the targets."""
    train = "no training" if cell.train == "none" else "local training"
    head = f"### {cell.name}: {cell.model}, {cell.workers} clients, {rounds} rounds, {train}"
    if cell.overrides:
        head += f" ({' '.join(cell.overrides)})"
    lines = [head]
    if cell.note:
        lines.append(f"_{cell.note}_")
    with_acc = cell.train != "none"
    cols = list(TABLE_HEAD)
    if with_acc:
        cols.insert(cols.index("whole / Fl"), "final acc")
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    flagged = []
    for r in cell_rows:
        actors = _num(r.get("actors"))
        label = r["row"] + ("" if actors is None else f" ({actors:g} actor{'' if actors == 1 else 's'})")
        status = str(r.get("status", ""))
        if len(status) > STATUS_WIDTH:
            status = status[:STATUS_WIDTH - 3] + "..."
        runs = int(_num(r.get("runs")) or 1)
        if r.get("unsettled"):
            status += f"; unsettled {r['unsettled']}/{runs}"
        if r.get("note"):
            status += f"; {r['note']}"
        ok = is_ok(r)  # a failed run's partial figures stay in results.csv only
        mem = fmt_range(r, "peak_mem_gb") if ok else "-"
        if ok and r.get("mem_flags"):
            mem += f" {MEM_MARK}"
            flagged.append(f"{r['row']} ({r['mem_flags']}/{r.get('ok_runs', runs)} runs)")
        cells = [label, str(r.get("moves") or "-"), fmt_range(r, "whole_s"), fmt_range(r, "first_s"),
                 fmt_range(r, "warm_s"), mem, *(fmt_range(r, f, floor) if ok else "-" for f, floor in (
                     ("tree_pss_gb", 0.0), ("shm_gb", SHM_FLOOR_GB), ("tree_rss_gb", 0.0))),
                 fmt_range(r, "coord_mb")]
        if with_acc:
            cells.append(fmt_range(r, "acc"))
        cells += [fmt_ratio(r.get("whole_s_vs_flower")), fmt_ratio(r.get("warm_s_vs_flower")),
                  fmt_ratio(r.get("peak_mem_gb_vs_flower")), fmt_load(r), status.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    if flagged:
        lines += ["", f"{MEM_MARK} peak machine memory and the processes' PSS (with the run's /dev/shm) differ by "
                  "more than "
                  f"{MEM_DISAGREE:g}x: {', '.join(flagged)}; do not trust that peak mem figure."]
    has_flower = any(r.get("framework") == FLOWER for r in cell_rows)
    for moves in (PREAGG, ONE_MSG):
        if not any(r.get("moves") == moves for r in cell_rows if r.get("framework") == FLIGHT):
            continue
        bvb = best_vs_best(cell_rows, moves)
        if bvb:
            lines += ["", f"flight_parsl best ({moves}) / Flower best: " + "; ".join(
                f"{METRIC_NAMES[b['metric']]} {fmt(b['flight'][0])} ({b['flight'][1]}) / {fmt(b['flower'][0])} "
                f"({b['flower'][1]}) = {fmt_ratio(b['ratio'])}" for b in bvb)]
        elif has_flower:
            lines += ["", f"flight_parsl best ({moves}) / Flower best: - (one side has no ok run)"]
    if verdicts:
        lines += ["", "| target (on the median) | row | value | verdict |", "|---|---|---|---|"]
        for v in verdicts:
            value = fmt(v["value"]) if v["value"] is not None else f"- ({v['why']})"
            if v["value"] is not None and v["why"]:
                value += f" ({v['why']})"
            lines.append(f"| {v['target']} | {v['row']} | {value} | {v['verdict']} |")
    return "\n".join(lines)


METRIC_NAMES = {"whole_s": "whole run s", "first_s": "first round s", "warm_s": "warm round s",
                "peak_mem_gb": "peak mem GB"}

CSV_COLUMNS = (  # results.csv: every run
    "cell", "row", "repeat", "framework", "moves", "model", "workers", "rounds", "train", "args", "status",
    "whole_s", "first_s", "warm_s", "peak_mem_gb", "baseline_mem_gb", "tree_pss_gb", "shm_gb", "pss_file_gb",
    "pss_shmem_gb", "tree_rss_gb", "mem_flag", "pss_scans", "sampler_cpu", "coord_mb", "acc",
    "wall_s", "own_start2end_s", "actors", "load_1m", "settled", "settle_wait_s", "unsettled_why", "launch", "note",
    "run_dir",
)
MEDIAN_COLUMNS = (  # medians.csv: one row per cell and row, the figures table.md shows
    *KEEP, "runs", "ok_runs", "status",
    *(f"{f}{suffix}" for f in AGG_FIGURES for suffix in ("", "_min", "_max")),
    "whole_s_vs_flower", "first_s_vs_flower", "warm_s_vs_flower", "peak_mem_gb_vs_flower",
    "load_min", "load_max", "unsettled", "mem_flags", "actors", "note", "targets",
)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


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
        what = "the CLI's defaults (mlp, digits)" if cell.bare else cell.model
        lines.append(f"{cell.name}: {what} x{cell.workers}, rounds {rounds}, train {cell.train}{extra}"
                     + (" (smoke)" if cell.smoke else ""))
        for row in cell.rows:
            args = " ".join([*row.flags, *row.overrides])
            targets = ", ".join(target_text(t) for t in row.targets)
            lines.append(f"    {row.label:24s} {row.moves:37s} {args:26s} {targets}")
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
    p.add_argument("--skip", default="",
                   help="comma list of rows to leave out: a row label ('flower-sim matched') in every cell, or "
                        "'CELL:LABEL' in one cell")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                   help=f"runs of every cell row (default {DEFAULT_REPEATS}); the table gives median (min-max)")
    p.add_argument("--settle-load", type=float, default=DEFAULT_SETTLE_LOAD,
                   help="before each run wait until the 1-min load average is below this and no Parsl / Ray "
                        f"process is alive (default {DEFAULT_SETTLE_LOAD:g}: half the CPUs)")
    p.add_argument("--settle-max-wait", type=float, default=DEFAULT_SETTLE_MAX_S,
                   help=f"seconds to wait for that before launching anyway, the row marked unsettled "
                        f"(default {DEFAULT_SETTLE_MAX_S:g}; 0: check once, never wait)")
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
    if rounds < 1 or args.timeout <= 0 or args.repeats < 1:
        print("error: --rounds, --timeout and --repeats must be positive", file=sys.stderr)
        return 2
    if args.settle_max_wait < 0:
        print("error: --settle-max-wait must not be negative", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/perf-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    labels = {r.label for c in cells for r in c.rows} | {f"{c.name}:{r.label}" for c in cells for r in c.rows}
    if skip - labels:
        print(f"error: --skip names no row: {', '.join(sorted(skip - labels))} (see --list)", file=sys.stderr)
        return 2

    def wanted(cell: Cell, row: Row) -> bool:
        return row.framework in frameworks and not {row.label, f"{cell.name}:{row.label}"} & skip

    plan = [(c, r) for c in cells for r in c.rows if wanted(c, r)]
    if args.dry_run:
        import shlex

        for cell, row in plan:
            n = cell.rounds_for(rounds)
            run_out = out / cell.name / slug(row.label) / "r1"  # r2, r3, ... for the repeats
            argv_ = (flight_argv(cell, row, n, run_out) if row.framework == FLIGHT
                     else flower_argv(cell, row, n, run_out, max(args.timeout - 30, args.timeout * 0.9)))
            say(f"{cell.name} | {row.label}: {shlex.join(argv_)}")
        say(f"dry run: {len(plan)} rows x {args.repeats} repeats = {len(plan) * args.repeats} runs in "
            f"{len(cells)} cells; nothing started")
        return 0
    out.mkdir(parents=True, exist_ok=True)

    say(f"perf: {len(plan)} rows x {args.repeats} repeats in {len(cells)} cells -> {out} (settle: load < "
        f"{args.settle_load:g}, no Parsl / Ray process, up to {args.settle_max_wait:g} s)")
    # Repeats go round a cell's rows (A B C, A B C, ...) so slow drifts of the machine hit every row alike.
    schedule = [(cell, row, rep) for cell in cells for rep in range(1, args.repeats + 1)
                for row in cell.rows if wanted(cell, row)]
    runs: list[dict[str, Any]] = []
    interrupted = False
    try:
        for i, (cell, row, rep) in enumerate(schedule, 1):
            n = cell.rounds_for(rounds)
            tag = f"[{i}/{len(schedule)}] {cell.name} | {row.label} | run {rep}/{args.repeats}"
            state = settle(args.settle_load, args.settle_max_wait)
            how = (f"settled after {state.waited_s:.0f} s" if state.settled
                   else f"UNSETTLED after {state.waited_s:.0f} s ({state.why()})")
            say(f"{tag}: start ({cell.model} x{cell.workers}, {n} rounds; load {state.load:.2f}, {how})")
            result = run_row(cell, row, n, out, args.timeout, repeat=rep, settled=state)
            runs.append(result)
            if result["status"] == "ok":
                say(f"{tag}: ok in {fmt(result.get('wall_s'))} s: whole {fmt(result.get('whole_s'))} s, first "
                    f"{fmt(result.get('first_s'))} s, warm {fmt(result.get('warm_s'))} s, "
                    f"mem {fmt(result.get('peak_mem_gb'))} GB, procs PSS {fmt(result.get('tree_pss_gb'))} GB "
                    f"(shm {fmt(result.get('shm_gb'))}), RSS {fmt(result.get('tree_rss_gb'))} GB"
                    + (" (machine and PSS disagree)" if result.get("mem_flag") else "")
                    + f"; sampler {fmt(result.get('sampler_cpu'))} CPU s/s, {result.get('pss_scans', 0)} PSS scans")
            else:
                say(f"{tag}: {result['status']}")
            time.sleep(1.0)  # let the machine's memory settle before the next baseline
    except KeyboardInterrupt:  # the run in flight was stopped (run_process); report what finished
        interrupted = True
        say("interrupted: the run in flight was stopped; the table has the finished runs")

    rows = aggregate(runs)
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
              f"Every row: the median (min-max) of {args.repeats} run(s); each run launched once the 1-min load "
              f"average was below {args.settle_load:g} and no Parsl / Ray process was alive (else the row says "
              f"'unsettled K/N'; load at launch: the range over its runs). Verdicts are on the medians. "
              "moves: what crosses from the clients' slots to the aggregator. "
              "whole run: process launch to the last aggregate ready; warm round: mean of rounds after the "
              "first; peak mem: machine memory in use (MemTotal - MemAvailable) at its peak minus the least in use over "
              f"{BASELINE_WINDOW_S:g} s before "
              "launch, GB = 10^9 bytes (it includes the run's /dev/shm files: shmem is not available memory); "
              "procs PSS: peak of the run's processes' summed PSS (a page k processes share counts 1/k in each) "
              "plus the run's /dev/shm files that none of them maps (shm GB, at that peak: the file store's results "
              "not read yet, its pooled files; a mapped file is in its mappers' PSS), read every "
              f"{SCAN_S:g} s or, when the reads cost more, as often as keeps them under {PSS_CPU_SHARE:.0%} of a CPU: "
              f"the cross-check that other work on the machine does not move ({MEM_MARK}: the two differ by more "
              f"than {MEM_DISAGREE:g}x); procs RSS: peak summed RSS (shared pages once per process); coord MB: "
              "coordinator / Flower driver peak RSS; x / Fl: the row's figure over Flower's best variant in the cell.")
    report = "\n\n".join([header, *sections, summarize(verdicts)]) + "\n"
    say("\n" + report)
    (out / "table.md").write_text(report)
    write_csv(out / "results.csv", runs)
    write_csv(out / "medians.csv", rows, MEDIAN_COLUMNS)
    say(f"results: {out / 'results.csv'} (every run), {out / 'medians.csv'}, table: {out / 'table.md'}")
    if interrupted:
        return 130
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
