"""artifacts/perf/run.py: the processes' memory figure is their summed PSS plus the run's unmapped /dev/shm files.

Real processes (a Python child that forks) share a real mapping; the /dev/shm stand-in is a
private directory (in /dev/shm where it can be), so that other work creating /dev/shm entries
meanwhile cannot move it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import perf_script

perf = perf_script()

pytestmark = pytest.mark.timeout(60)

MB = 1 << 20
SHARED = 64 * MB

# A parent maps SHARED bytes (shared anonymous memory, or a file given as argv[2]), writes every
# page, forks a child that reads every page, and both wait: every page is resident in both.
TWO_MAPPERS = """
import mmap, os, sys, time
size = int(sys.argv[1])
if len(sys.argv) > 2:
    fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    m = mmap.mmap(fd, size)
else:
    m = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
for off in range(0, size, 4096):
    m[off] = 1
pid = os.fork()
if pid == 0:
    total = sum(m[off] for off in range(0, size, 4096))
    print(os.getpid(), total, flush=True)
    time.sleep(60)
    os._exit(0)
print(os.getpid(), flush=True)
time.sleep(60)
"""


def _two_mappers(*args: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", TWO_MAPPERS, str(SHARED), *args], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    pids = sorted({int(proc.stdout.readline().split()[0]) for _ in range(2)})  # both have touched every page
    return proc, pids


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait(10)


def test_pss_counts_a_shared_mapping_once_rss_twice() -> None:
    proc, pids = _two_mappers()
    try:
        scan = perf.pss_scan(pids)
    finally:
        _stop(proc)
    assert scan.procs == 2
    # RSS counts the 64 MB in both processes; PSS gives each half of it: one copy in all
    assert scan.rss >= 2 * SHARED
    assert 0.95 * SHARED <= scan.pss_shmem <= 1.05 * SHARED
    assert scan.rss - scan.pss >= 0.95 * SHARED
    assert scan.pss < 1.5 * SHARED + 64 * MB  # one copy plus two small interpreters (not two copies)
    assert scan.total == scan.pss and scan.shm == 0  # no /dev/shm to add without ShmFiles


@pytest.fixture
def shm_root(tmp_path: Path) -> Iterator[Path]:
    """A private directory standing in for /dev/shm: in /dev/shm (tmpfs) where it can be, else in tmp_path."""
    if os.access("/dev/shm", os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="flight_parsl-test-pss-", dir="/dev/shm"))
        try:
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path / "shm"


def test_run_shm_files_count_unless_mapped(shm_root: Path, tmp_path: Path) -> None:
    (shm_root / "earlier").mkdir(parents=True, exist_ok=True)
    (shm_root / "earlier" / "old").write_bytes(b"x" * (4 * MB))  # there before launch: never the run's
    shm = perf.ShmFiles(shm_root)
    store = shm_root / "flight_parsl-run"
    store.mkdir()
    (store / "result-1").write_bytes(b"y" * (8 * MB))  # written, not read: in no process's PSS
    (store / ".pool").mkdir()
    (store / ".pool" / "f").write_bytes(b"z" * (2 * MB))
    (shm_root / "flight_parsl-other").mkdir()  # new, but another run's: none of this run's processes maps it
    (shm_root / "flight_parsl-other" / "r").write_bytes(b"o" * (16 * MB))
    assert shm.files() == {}  # nothing claimed yet
    shm.claim(["earlier"])
    assert shm.owned == set()
    proc, pids = _two_mappers(str(store / "model"))  # a published model both processes map
    try:
        scan = perf.pss_scan(pids, shm)
        maps = {pid: [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "model" in line]
                for pid in pids}
    finally:
        _stop(proc)
    assert shm.owned == {"flight_parsl-run"}, (scan, shm.root, maps)
    # allocated sizes (a file system may allocate a little more than it was given): within 1 MB
    assert scan.shm_all == pytest.approx(10 * MB + SHARED, abs=MB)  # every file of the run's directory, model too
    assert scan.shm == pytest.approx(10 * MB, abs=MB)  # the mapped model is in its mappers' PSS; the other run's not
    assert scan.pss_shmem + scan.pss_file >= 0.95 * SHARED  # shmem on tmpfs (/dev/shm), file pages elsewhere
    assert scan.total == scan.pss + scan.shm
    assert perf.ShmFiles(tmp_path / "no-such-dir").files() == {}


def test_rollup_and_maps_parsing() -> None:
    rollup = ("55e1a6604000-7ffc6ab31000 ---p 00000000 00:00 0                          [rollup]\n"
              "Rss:                1668 kB\nPss:                 203 kB\nPss_Dirty:           112 kB\n"
              "Pss_Anon:            112 kB\nPss_File:             91 kB\nPss_Shmem:             0 kB\n"
              "Shared_Clean:       1520 kB\n")
    assert perf.rollup_kib(rollup) == {"Rss": 1668, "Pss": 203, "Pss_Anon": 112, "Pss_File": 91, "Pss_Shmem": 0}
    maps = ("7f00-7f10 r--s 00000000 00:1a 4242                       /dev/shm/flight_parsl-ab/model\n"
            "7f10-7f20 r--s 00000000 00:1a 4343                       /dev/shm/flight_parsl-ab/r-1 (deleted)\n"
            "7f20-7f30 r-xp 00000000 08:01 99                         /usr/lib/libc.so.6\n"
            "7f30-7f40 rw-p 00000000 00:00 0 \n")
    assert perf.shm_mappings(maps) == ({4242, 4343}, {"flight_parsl-ab"})
    assert perf.shm_mappings("7f-8f r--s 0 00:1a 7 /dev/shm/sem.mp-q1 (deleted)\n") == ({7}, {"sem.mp-q1"})
    assert perf.shm_mappings(maps, "/elsewhere/") == (set(), set())


def test_pss_reads_are_spaced_to_their_cpu_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = "sleep 1.6"
    monkeypatch.setattr(perf, "PSS_CPU_SHARE", 1.0)  # any cost fits: a PSS scan at every 0.5 s scan
    out = perf.run_process(["sh", "-c", script], dict(os.environ), 20, tmp_path / "a")
    assert out.pss_scans >= 3 and out.tree_pss_gb is not None and 0 < out.tree_pss_gb <= out.tree_rss_gb
    assert out.sampler_cpu is not None and 0 < out.sampler_cpu < 0.5
    monkeypatch.setattr(perf, "PSS_CPU_SHARE", 1e-7)  # the first scan's cost / share: far beyond the run
    out = perf.run_process(["sh", "-c", script], dict(os.environ), 20, tmp_path / "b")
    assert out.pss_scans == 1 and out.tree_pss_gb is not None


def test_run_row_flags_against_pss_not_rss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cell = perf.CELLS_BY_NAME["smoke-tiny-8"]
    launch = perf.Launch(launch=time.time(), exited=time.time() + 1, rc=0, mem_gb=0.5, baseline_gb=3.0,
                         tree_rss_gb=2.0, tree_pss_gb=0.6, shm_gb=0.05, pss_scans=4, sampler_cpu=0.01)
    monkeypatch.setattr(perf, "run_process", lambda *a, **k: launch)
    result = perf.run_row(cell, cell.rows[0], 2, tmp_path, 30)
    # RSS (2.0) is 4x the machine figure, PSS (0.6) agrees with it: not flagged
    assert result["mem_flag"] == "" and result["tree_pss_gb"] == 0.6 and result["shm_gb"] == 0.05
    assert result["sampler_cpu"] == 0.01 and result["pss_scans"] == 4
    launch.tree_pss_gb = 1.2  # PSS 2.4x the machine figure: flagged
    assert perf.run_row(cell, cell.rows[0], 2, tmp_path, 30)["mem_flag"] == "disagree"
    launch.tree_pss_gb = None  # no PSS read: no flag (RSS is not the cross-check)
    assert perf.run_row(cell, cell.rows[0], 2, tmp_path, 30)["mem_flag"] == ""
