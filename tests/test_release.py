"""Runs on a reused executor: each slot lets go of a run's store when the run ends.

Three ``file`` runs of ResNet-18 (a 45 MiB payload) on the same two HTEX worker
processes, as a sweep runs them. Before, every run left its store registered in
each worker with the last round's model in its cache: a worker grew by a model per
run and kept the deleted /dev/shm file of each run mapped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import read_csv, read_summary
from flight_parsl.engine.progress import Progress
from flight_parsl.engine.runner import run_experiment
from flight_parsl.execution.backends import open_backend, release
from flight_parsl.worker.release import release_task

pytestmark = pytest.mark.timeout(300)

MODEL_MB = 11_689_512 * 4 / 2**20


def vm_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def deleted_run_files(pid: int) -> list[str]:
    """The deleted flight_parsl files process ``pid`` still maps."""
    with open(f"/proc/{pid}/maps") as f:
        return [line.split(None, 5)[-1].strip() for line in f if "flight_parsl-" in line and "(deleted)" in line]


def test_slots_of_a_reused_executor_let_go_of_each_runs_store(make_config, tmp_path) -> None:
    rss: dict[int, list[float]] = {}
    with open_backend("parsl", 2, tmp_path / "executor") as backend:
        for run in range(3):
            cfg = make_config("train.mode=none", "model.name=resnet18", "transfer.kind=file", "transfer.cache_size=1",
                              workers=2, rounds=2, backend="parsl", out=str(tmp_path / f"run{run}"))
            out = run_experiment(cfg, Progress(cfg.rounds, enabled=False), backend)
            summary = read_summary(out)
            pids = {int(t["pid"]) for t in read_csv(out / "tasks.csv")}
            assert summary["dfk_reused"] is (run > 0) and summary["released_slots"] == 2
            assert {int(k.rsplit(":", 1)[1]) for k in summary["released_rss_mb"]} == pids and len(pids) == 2
            for pid in pids:
                assert deleted_run_files(pid) == [], pid
                rss.setdefault(pid, []).append(vm_rss_mb(pid))
            assert not any(Path(out).parent.glob("flight_parsl-*"))
        # one release task reached each slot; a store no slot holds is nothing to let go of
        again = release(backend, 2, "flight-parsl-no-such-store")
        assert sorted(r.pid for r in again) == sorted(pids) and not any(r.store for r in again)
    for pid, figures in rss.items():  # one run's cached model is MODEL_MB: the slots do not keep them
        assert len(figures) == 3 and max(figures) - figures[0] < MODEL_MB / 4, (pid, figures)


def test_releasing_a_store_this_process_does_not_hold_is_a_no_op() -> None:
    released = release_task("flight-parsl-nothing-here")
    assert released.pid == os.getpid() and released.store is False and released.rss_mb > 0


def test_a_store_per_site_releases_each_site_store_the_slot_holds(tmp_path) -> None:
    """A store per site names every site's store, comma-separated; a slot lets go of each it holds."""
    from proxystore.store import Store, get_store

    from flight_parsl.transfer.proxy import MappedFileConnector

    held = Store("flight-parsl-site-b-test", MappedFileConnector(str(tmp_path / "b")), register=True)
    try:
        released = release_task("flight-parsl-site-a-test,flight-parsl-site-b-test")
        assert released.store is True and get_store("flight-parsl-site-b-test") is None
        assert release_task("flight-parsl-site-a-test,flight-parsl-site-b-test").store is False
    finally:
        held.close()
