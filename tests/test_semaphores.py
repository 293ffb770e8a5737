"""Orphaned multiprocessing semaphores: found by what no process maps, and only those removed."""

from __future__ import annotations

import mmap
import uuid
from pathlib import Path

import pytest

from flight_parsl.execution.semaphores import SHM, main, mapped_inodes, orphaned, remove_orphaned

pytestmark = pytest.mark.skipif(not SHM.is_dir() or not Path("/proc/self/maps").is_file(), reason="needs Linux /dev/shm")


def test_a_mapped_semaphore_is_kept_and_an_unmapped_one_removed(capsys: pytest.CaptureFixture[str]) -> None:
    tag = uuid.uuid4().hex[:8]
    live, stray = SHM / f"sem.mp-fplive{tag}", SHM / f"sem.mp-fpstray{tag}"
    for path in (live, stray):
        path.write_bytes(b"\0" * mmap.PAGESIZE)
    try:
        with live.open("r+b") as f, mmap.mmap(f.fileno(), mmap.PAGESIZE) as held:  # in use, as sem_open maps it
            assert live.stat().st_ino in mapped_inodes() and stray.stat().st_ino not in mapped_inodes()
            found = orphaned()
            assert stray in found and live not in found
            assert main(["--dry-run"]) == 0 and stray.name in capsys.readouterr().out and stray.exists()
            removed = remove_orphaned()
            assert stray in removed and not stray.exists()
            assert live.exists() and held[0] == 0
    finally:
        live.unlink(missing_ok=True)
        stray.unlink(missing_ok=True)
