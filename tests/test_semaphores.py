"""Orphaned multiprocessing semaphores: found by what no process maps, and only those removed."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

import pytest

from flight_parsl.execution.semaphores import SHM, main, mapped_inodes, orphaned, remove_orphaned

pytestmark = pytest.mark.skipif(not SHM.is_dir() or not Path("/proc/self/maps").is_file(), reason="needs Linux /dev/shm")


def test_a_semaphore_in_use_is_kept_and_an_unmapped_one_removed(capsys: pytest.CaptureFixture[str]) -> None:
    queue = multiprocessing.get_context("spawn").Queue()  # named semaphores this process maps
    live = {p for p in SHM.glob("sem.mp-*") if p.stat().st_ino in mapped_inodes()}
    assert live, "a spawn-context queue maps its semaphores"
    stray = SHM / f"sem.mp-fptest{uuid.uuid4().hex[:8]}"
    stray.write_bytes(b"\0" * 32)  # what a killed pool leaves: a file nothing maps
    try:
        found = orphaned()
        assert stray in found and not live & set(found)
        assert main(["--dry-run"]) == 0 and stray.name in capsys.readouterr().out and stray.exists()
        removed = remove_orphaned()
        assert stray in removed and not stray.exists()
        assert all(p.exists() for p in live)
    finally:
        stray.unlink(missing_ok=True)
        queue.close()

