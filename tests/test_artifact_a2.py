"""Artifact 2 (artifacts/a2_hierarchy): run.py on a tiny tree sweep, its results table, its notebook."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "artifacts" / "a2_hierarchy" / "run.py"
NOTEBOOK = ROOT / "artifacts" / "a2_hierarchy" / "a2.ipynb"


@pytest.fixture(scope="module")
def a2_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("a2")
    cmd = [
        sys.executable, str(RUN), "--leaves", "16", "--heights", "1,2,4", "--strategies", "fedavg,fedsgd",
        "--rounds", "2", "--participation", "0.25", "--backend", "thread", "--out", str(out), "--quiet",
        "transfer.cache_size=0",  # every task reads its model over its edge (the thread pool is one process)
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| height | branching | strategy |" in done.stdout  # the markdown table
    return out


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_results_table(a2_out: Path) -> None:
    table = rows(a2_out)
    assert len(table) == 6
    assert {(r["height"], r["branching"], r["strategy"]) for r in table} == {
        (h, b, s) for h, b in (("1", "16"), ("2", "4"), ("4", "2")) for s in ("fedavg", "fedsgd")
    }
    # one model payload: at height 1 every one of the 4 participants' 2 edges x 2 rounds carries one
    flat = next(r for r in table if r["height"] == "1")
    size = int(flat["measured_edge_bytes"]) // (2 * 4 * 2)
    assert size * 2 * 4 * 2 == int(flat["measured_edge_bytes"])
    for r in table:
        assert r["rounds"] == "2" and float(r["participants"]) == 4
        assert r["clients_per_task"] == "1"  # one model per tree edge, as the cost model assumes
        # broadcast tree: the measured edge bytes are the modeled hierarchical bytes
        assert float(r["measured_reduction_pct"]) == pytest.approx(float(r["modeled_reduction_pct"]), abs=1.0)
        assert int(r["measured_edge_bytes"]) == int(r["modeled_hierarchical_bytes"])
        # the coordinator receives one payload per child with a result: each participant at height 1,
        # at most one partial per root child above
        root_in = int(r["root_in_bytes"])
        assert root_in % size == 0
        if r["height"] == "1":
            assert root_in == 4 * 2 * size
        else:
            assert 2 * size <= root_in <= min(4, int(r["branching"])) * 2 * size
        if r["height"] == "1":
            assert float(r["modeled_reduction_pct"]) == 0.0 and float(r["measured_reduction_pct"]) == 0.0
            assert float(r["reduction_vs_flat_measured_pct"]) == 0.0
        else:
            assert float(r["modeled_reduction_pct"]) >= 0.0
        assert (a2_out / r["run"] / "rounds.csv").is_file()
    full = {r["height"]: float(r["full_tree_reduction_pct"]) for r in table}
    assert full["1"] == 0.0 and full["2"] == pytest.approx(100 * (1 - 40 / 52), abs=0.05)
    # same seed, same participants, exact linear aggregation: the same model at every height
    for strategy in ("fedavg", "fedsgd"):
        mine = [r for r in table if r["strategy"] == strategy]
        for r in mine[1:]:
            for col in ("final_test_acc", "mean_test_acc_last3"):
                assert float(r[col]) == pytest.approx(float(mine[0][col]), rel=1e-4)


def test_notebook_draws_the_figure(a2_out: Path) -> None:
    png = a2_out / "a2.png"
    cmd = [
        sys.executable, str(ROOT / "analysis" / "run_notebook.py"), str(NOTEBOOK),
        "--param", f"results={a2_out / 'results.csv'}", "--param", f"rounds_dir={a2_out}", "--param", f"out={png}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (a2_out / "a2.executed.ipynb").is_file()


def test_bad_height_fails_with_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, str(RUN), "--leaves", "16", "--heights", "3", "--backend", "thread", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "height 3" in lines[0] and not (tmp_path / "results.csv").exists()


def test_packed_clients_send_fewer_bytes_than_the_model(tmp_path: Path) -> None:
    """--clients-per-task 0 lets the engine pack an aggregator's leaves into one task (one slot here):
    the task folds them and sends one partial, so fewer bytes cross the edges than the cost model
    counts, and the model is the same up to float rounding."""
    out = tmp_path / "packed"
    cmd = [
        sys.executable, str(RUN), "--leaves", "16", "--heights", "1,2", "--strategies", "fedavg", "--rounds", "1",
        "--participation", "0.25", "--backend", "thread", "--clients-per-task", "0", "--out", str(out), "--quiet",
        "slots=1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    table = {r["height"]: r for r in rows(out)}
    assert {r["clients_per_task"] for r in table.values()} == {"packed"}
    flat = table["1"]
    # height 1: the 4 participants report to the root and share one task: one model down, one partial up
    assert float(flat["tasks"]) == 1
    assert 4 * int(flat["measured_edge_bytes"]) == int(flat["modeled_hierarchical_bytes"])
    assert 2 * int(flat["root_in_bytes"]) == int(flat["measured_edge_bytes"])
    assert int(table["2"]["measured_edge_bytes"]) <= int(table["2"]["modeled_hierarchical_bytes"])
    assert float(table["2"]["final_test_acc"]) == pytest.approx(float(flat["final_test_acc"]), rel=1e-4)
