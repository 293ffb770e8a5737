"""Artifact 3 (artifacts/a3_async): run.py end to end on a thread pool, then its notebook."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "artifacts" / "a3_async" / "run.py"
NOTEBOOK = ROOT / "artifacts" / "a3_async" / "a3.ipynb"
WORKERS, ROUNDS = 4, 3


def test_a3_sync_vs_async_and_notebook(tmp_path: Path) -> None:
    out = tmp_path / "a3"
    cmd = [
        sys.executable, str(RUN), "--workers", str(WORKERS), "--rounds", str(ROUNDS), "--slowdown-max", "5",
        "--backend", "thread", "--model", "logreg", "--epochs", "10", "--out", str(out), "--quiet",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| sync | fedavg |" in done.stdout and "| async | fedasync |" in done.stdout

    with (out / "results.csv").open() as f:
        rows = {r["mode"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"sync", "async"}
    for r in rows.values():
        assert int(r["updates"]) == WORKERS * ROUNDS
        assert float(r["final_test_acc"]) > 0.3
        assert float(r["wall_s"]) > 0
    assert float(rows["async"]["idle_pct_mean"]) < float(rows["sync"]["idle_pct_mean"])
    # T is the shorter wall time: the shorter run has an accuracy at T, and it is its final one
    shorter = min(rows.values(), key=lambda r: float(r["wall_s"]))
    assert float(shorter["acc_at_equal_wall"]) == float(shorter["final_test_acc"])
    assert all(math.isclose(float(r["equal_wall_s"]), float(shorter["wall_s"])) for r in rows.values())

    for r in rows.values():  # slots=per_client: one slot per client, as the artifact's workers
        assert int(r["slots"]) == WORKERS

    # idle time is per slot (host, pid, thread): the mean over slots is the summary's
    with (out / "idle_per_slot.csv").open() as f:
        idle = list(csv.DictReader(f))
    for mode in ("sync", "async"):
        mine = [r for r in idle if r["mode"] == mode]
        assert 1 <= len(mine) <= WORKERS
        pct = [float(r["idle_pct"]) for r in mine]
        assert math.isclose(sum(pct) / len(pct), float(rows[mode]["idle_pct_mean"]), rel_tol=1e-6, abs_tol=1e-9)
        # one client per task with a slot per client: the slots' tasks are the mode's updates
        assert sum(int(r["tasks"]) for r in mine) == int(rows[mode]["updates"])
        for r in mine:
            assert int(r["clients"]) >= 1 and float(r["busy_s"]) > 0 and 0 <= float(r["idle_pct"]) < 100
            # a slot's idle seconds split into the result's way back, the coordinator and the dispatch
            split = float(r["return_s"]) + float(r["coordinator_s"]) + float(r["dispatch_s"])
            assert math.isclose(split, float(r["idle_s"]), abs_tol=1e-3)
    # one shared executor: both modes ran on the same WORKERS slots, numbered once
    assert len({(r["host"], r["pid"], r["thread"]) for r in idle}) == len({r["slot"] for r in idle}) <= WORKERS

    # per client: the injected slowdown is a client's; sync trains every client once per round,
    # async folds as many updates in all, more of them from faster clients
    with (out / "per_client.csv").open() as f:
        clients = list(csv.DictReader(f))
    assert len(clients) == 2 * WORKERS
    by_mode = {m: {int(r["client"]): r for r in clients if r["mode"] == m} for m in ("sync", "async")}
    assert set(by_mode["sync"]) == set(by_mode["async"]) == set(range(WORKERS))
    for c in range(WORKERS):
        assert by_mode["sync"][c]["slowdown"] == by_mode["async"][c]["slowdown"]
        assert 1.0 <= float(by_mode["sync"][c]["slowdown"]) <= 5.0
        assert int(by_mode["sync"][c]["updates"]) == ROUNDS
        assert float(by_mode["sync"][c]["client_s_median"]) > 0
    assert sum(int(r["updates"]) for r in by_mode["async"].values()) == WORKERS * ROUNDS
    fastest = min(by_mode["async"].values(), key=lambda r: float(r["slowdown"]))
    slowest = max(by_mode["async"].values(), key=lambda r: float(r["slowdown"]))
    assert int(fastest["updates"]) >= int(slowest["updates"])

    png = tmp_path / "fig" / "a3.png"
    nb = subprocess.run(
        [
            sys.executable, str(ROOT / "analysis" / "run_notebook.py"), str(NOTEBOOK),
            "--param", f"results={out / 'results.csv'}", "--param", f"runs_dir={out}", "--param", f"out={png}",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert nb.returncode == 0, nb.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a3_published_needs_data_root(tmp_path: Path) -> None:
    cmd = [sys.executable, str(RUN), "--published", "--out", str(tmp_path / "a3")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--data-root" in lines[0]
