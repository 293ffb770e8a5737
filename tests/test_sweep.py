"""Sweeps: every combination, one executor per worker count, resumable results table."""

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

from flight_parsl.execution.backends import resolve_slots
from flight_parsl.results.table import COLUMNS, append_row, done_cells, read_rows


def sweep(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "flight_parsl.scale", "--train", "none", "--rounds", "1", "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_sweep_runs_every_cell_once_and_resumes(tmp_path) -> None:
    out = tmp_path / "sweep"
    args = ["--backend", "thread", "--workers", "2,3", "--model", "tiny,smallnet", "--transfer", "parsl,file", "--trials", "2"]
    done = sweep(out, *args)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out / "results.csv")
    assert len(rows) == 16 and all(r["status"] == "ok" for r in rows)
    assert list(rows[0]) == list(COLUMNS)
    cells = {(r["model"], r["num_workers"], r["transfer"], r["trial"]) for r in rows}
    assert len(cells) == 16
    for r in rows:
        assert r["framework"] == "flight_parsl" and r["train"] == "none"
        assert float(r["prime2end"]) > 0 and float(r["start2end"]) >= float(r["prime2end"])
        # slots=auto (the default): about the cores, never more than the clients; the summary's slots
        assert int(r["slots"]) == resolve_slots("auto", int(r["num_workers"]))
        assert int(r["slots"]) == json.loads((Path(r["run_dir"]) / "summary.json").read_text())["slots"]
        # each task receives the model once and returns one (folded) result
        with (Path(r["run_dir"]) / "rounds.csv").open() as f:
            tasks = sum(int(x["tasks"]) for x in csv.DictReader(f))
        assert int(r["bytes_moved"]) % (2 * tasks) == 0
    # one executor per worker count: only its first run paid for starting it
    reused = {}
    for r in rows:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        reused.setdefault(r["num_workers"], []).append(summary["dfk_reused"])
    assert reused == {"2": [False] + [True] * 7, "3": [False] + [True] * 7}
    # trials get their own seeds
    assert json.loads((out / "tiny-n2-parsl-t1" / "summary.json").read_text())["status"] == "completed"

    again = sweep(out, *args)
    assert again.returncode == 0, again.stderr
    assert len(read_rows(out / "results.csv")) == 16
    assert again.stderr.count("already done") == 16


def test_only_missing_cells_run_again(tmp_path) -> None:
    results = tmp_path / "table.csv"
    append_row(results, {"framework": "flight_parsl", "model": "tiny", "num_workers": 2, "transfer": "parsl", "trial": 0, "status": "ok"})
    append_row(results, {"framework": "flight_parsl", "model": "tiny", "num_workers": 2, "transfer": "file", "trial": 0, "status": "failed: x"})
    done = sweep(tmp_path / "s", "--backend", "thread", "--workers", "2", "--model", "tiny", "--transfer", "parsl,file", "--results", str(results))
    assert done.returncode == 0, done.stderr
    rows = read_rows(results)
    assert [(r["transfer"], r["status"]) for r in rows] == [("parsl", "ok"), ("file", "failed: x"), ("file", "ok")]
    assert done_cells(results) == {
        ("flight_parsl", "tiny", 2, "parsl", 0, False), ("flight_parsl", "tiny", 2, "file", 0, False)
    }


def test_packed_and_per_client_are_different_cells(tmp_path) -> None:
    """The same cell on fewer slots than clients (packed) and on one slot per client are two rows
    of one table; each resumes on its own."""
    results = tmp_path / "table.csv"
    cell = ["--backend", "thread", "--workers", "3", "--model", "tiny", "--transfer", "parsl", "--results", str(results)]
    packed = sweep(tmp_path / "packed", *cell, "slots=1")
    assert packed.returncode == 0, packed.stderr
    per_client = sweep(tmp_path / "per_client", *cell, "slots=per_client")
    assert per_client.returncode == 0, per_client.stderr
    rows = read_rows(results)
    assert [(r["num_workers"], r["slots"]) for r in rows] == [("3", "1"), ("3", "3")]
    assert done_cells(results) == {("flight_parsl", "tiny", 3, "parsl", 0, True), ("flight_parsl", "tiny", 3, "parsl", 0, False)}
    again = sweep(tmp_path / "packed", *cell, "slots=1")
    assert again.returncode == 0 and "already done" in again.stderr
    assert len(read_rows(results)) == 2


def test_a_table_with_older_columns_is_upgraded_on_append(tmp_path) -> None:
    results = tmp_path / "table.csv"
    old = [c for c in COLUMNS if c != "slots"]
    with results.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old)
        writer.writeheader()
        writer.writerow({"framework": "flight_parsl", "model": "tiny", "num_workers": 2, "transfer": "parsl", "trial": 0,
                         "status": "ok", "run_dir": "old"})
    append_row(results, {"framework": "flight_parsl", "model": "tiny", "num_workers": 4, "slots": 2, "transfer": "file",
                         "trial": 0, "status": "ok", "run_dir": "new"})
    with results.open() as f:
        assert next(csv.reader(f)) == list(COLUMNS)
    rows = read_rows(results)
    assert [(r["run_dir"], r["slots"], r["status"]) for r in rows] == [("old", "", "ok"), ("new", "2", "ok")]
    # a row without slots (written before the column) counts as one slot per client
    assert done_cells(results) == {("flight_parsl", "tiny", 2, "parsl", 0, False), ("flight_parsl", "tiny", 4, "file", 0, True)}


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "s"
    done = sweep(out, "--backend", "thread", "--workers", "2", "--model", "tiny", "--transfer", "redis,parsl", "--redis", f"127.0.0.1:{port}")
    assert done.returncode == 1
    rows = read_rows(out / "results.csv")
    assert rows[0]["transfer"] == "redis" and rows[0]["status"] == f"failed: Redis at 127.0.0.1:{port} is unreachable: connection refused"
    assert rows[1]["transfer"] == "parsl" and rows[1]["status"] == "ok"


def test_bad_sweep_lists_fail_before_anything_runs(tmp_path) -> None:
    for args, needle in [
        (["--workers", "2,x"], "--workers: 'x' is not a positive integer"),
        (["--workers", "2,,4"], "has an empty item"),
        (["--model", "tiny,resnet19"], "unknown model 'resnet19'"),
        (["--transfer", "parsl,ftp"], "unknown transfer 'ftp'"),
        (["--trials", "0"], "--trials must be >= 1"),
    ]:
        done = sweep(tmp_path / "s", "--backend", "thread", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert needle in done.stderr, (args, done.stderr)
        assert not (tmp_path / "s" / "results.csv").exists()
