"""artifacts/fault_tolerance: run.py's accuracy and overhead studies on a thread pool, then its
notebook (the kill study runs on HTEX; tests/test_fault_injection.py covers its mechanism)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "artifacts" / "fault_tolerance" / "run.py"
NOTEBOOK = ROOT / "artifacts" / "fault_tolerance" / "fault_tolerance.ipynb"


def test_accuracy_and_overhead_studies_and_notebook(tmp_path: Path) -> None:
    out = tmp_path / "ft"
    cmd = [sys.executable, str(RUN), "--study", "accuracy", "--workers", "1,4", "--rounds", "2", "--backend", "thread",
           "--model", "logreg", "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=170)
    assert done.returncode == 0, done.stderr[-2000:]
    with (out / "accuracy.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["workers"] for r in rows] == ["1", "4"] and all(float(r["final_test_acc"]) > 0.8 for r in rows)
    assert int(rows[1]["smallest_subset"]) < int(rows[1]["largest_subset"])  # subsets of varied size
    tasks = list(csv.DictReader((out / "accuracy-n4" / "tasks.csv").open()))
    assert {t["epochs"] for t in tasks if t["round"] == "1"} == {"4"}  # AIMD starts every client at 4 epochs
    assert "| workers | final_test_acc |" in done.stdout
    png = tmp_path / "fig" / "ft.png"
    nb = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "run_notebook.py"), str(NOTEBOOK),
         "--param", f"runs_dir={out}", "--param", f"out={png}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert nb.returncode == 0, nb.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
