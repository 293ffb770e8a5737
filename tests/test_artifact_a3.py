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

    with (out / "idle_per_worker.csv").open() as f:
        idle = list(csv.DictReader(f))
    assert len(idle) == 2 * WORKERS
    for mode in ("sync", "async"):
        mine = [float(r["idle_pct"]) for r in idle if r["mode"] == mode]
        assert math.isclose(sum(mine) / len(mine), float(rows[mode]["idle_pct_mean"]), rel_tol=1e-6, abs_tol=1e-9)

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
