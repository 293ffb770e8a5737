"""Sweeps: every combination, one executor per worker count, resumable results table."""

import json
import socket
import subprocess
import sys
from pathlib import Path

from conftest import read_csv
from flight_parsl.cli.scale import main
from flight_parsl.execution.backends import resolve_slots
from flight_parsl.config.experiment import build_config, config_hash
from flight_parsl.results.table import COLUMNS, append_row, done_cells, done_configs, read_rows


def payload_bytes(model: str) -> int:
    """Bytes of one payload of ``model``'s weights: what a task reads or returns."""
    from flight_parsl.core.weights import FlatWeights
    from flight_parsl.engine.context import model_spec
    from flight_parsl.models import build_model

    cfg = build_config(values=[{"backend": "thread"}], overrides=[f"model.name={model}", "train.mode=none"])
    return len(FlatWeights.from_model(build_model(model_spec(cfg))).to_bytes())


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
        # one round: about one task per slot, each returning one partial; parsl tasks each carry the
        # model, through file the thread pool's one process reads it once
        tasks = resolve_slots("auto", int(r["num_workers"]))
        (round_row,) = read_csv(Path(r["run_dir"]) / "rounds.csv")
        assert int(round_row["tasks"]) == tasks
        reads = tasks if r["transfer"] == "parsl" else 1
        assert int(r["bytes_moved"]) == (reads + tasks) * payload_bytes(r["model"])
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


def test_only_missing_cells_run_again(tmp_path, capsys) -> None:
    results = tmp_path / "table.csv"
    args = ["--backend", "thread", "--train", "none", "--rounds", "1", "--workers", "2", "--model", "tiny", "--results", str(results)]
    assert main([*args, "--transfer", "parsl", "--out", str(tmp_path / "s")]) == 0
    (done,) = read_rows(results)
    append_row(results, {**done, "transfer": "file", "status": "failed: x", "config_hash": ""})
    assert main([*args, "--transfer", "parsl,file", "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().err.count("already done") == 1
    rows = read_rows(results)
    assert [(r["transfer"], r["status"]) for r in rows] == [("parsl", "ok"), ("file", "failed: x"), ("file", "ok")]
    assert done_cells(results) == {("flight_parsl", "tiny", 2, "parsl", 0, False), ("flight_parsl", "tiny", 2, "file", 0, False)}


def test_resume_matches_the_whole_cell_config(tmp_path, capsys) -> None:
    results = tmp_path / "results.csv"
    out = tmp_path / "s"
    args = ["--backend", "thread", "--train", "none", "--workers", "2", "--model", "tiny", "--out", str(out), "--results", str(results)]

    def run(*extra: str) -> int:
        """Run the sweep; the number of cells it skipped as already done."""
        assert main([*args, *extra]) == 0
        return capsys.readouterr().err.count("already done")

    assert run("--rounds", "1") == 0
    assert run("--rounds", "1") == 1  # the identical cell is done
    assert run("--rounds", "2") == 0  # other rounds: another cell
    assert run("--rounds", "1", "train.epochs=3") == 0  # another training setting: another cell
    assert run("--rounds", "2") == 1
    assert run("--rounds", "1", "--seed", "1") == 0
    rows = read_rows(results)
    assert [r["rounds"] for r in rows] == ["1", "2", "1", "1"]
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:  # the machine's memory rise during the run sits beside the per-process peaks
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert float(r["peak_machine_mb"]) == summary["peak_machine_mb"] >= 0
        assert float(r["peak_rss_mb"]) == summary["peak_rss_mb_coordinator"] > 0
    hashes = [r["config_hash"] for r in rows]
    assert len(set(hashes)) == 4 and all(len(h) == 16 for h in hashes)
    # each run kept its own directory: a cell that runs again does not overwrite an earlier one
    dirs = [Path(r["run_dir"]) for r in rows]
    assert [d.name for d in dirs] == ["tiny-n2-file-t0", "tiny-n2-file-t0-2", "tiny-n2-file-t0-3", "tiny-n2-file-t0-4"]
    assert [json.loads((d / "summary.json").read_text())["rounds_completed"] for d in dirs] == [1, 2, 1, 1]


def test_a_table_without_config_hash_is_read_and_upgraded(tmp_path, capsys) -> None:
    results = tmp_path / "old.csv"
    old_columns = [c for c in COLUMNS if c != "config_hash"]
    old_row = {c: "" for c in old_columns} | {
        "framework": "flight_parsl", "model": "tiny", "num_workers": "2", "transfer": "parsl", "trial": "0",
        "train": "none", "rounds": "1", "status": "ok", "run_dir": "elsewhere",
    }
    results.write_text(",".join(old_columns) + "\n" + ",".join(old_row[c] for c in old_columns) + "\n")
    assert done_cells(results) == {("flight_parsl", "tiny", 2, "parsl", 0, False)}
    assert done_configs(results) == set()  # no hash: it never matches a sweep cell
    args = ["--backend", "thread", "--train", "none", "--rounds", "1", "--workers", "2", "--model", "tiny"]
    assert main([*args, "--out", str(tmp_path / "s"), "--results", str(results)]) == 0
    assert "already done" not in capsys.readouterr().err
    assert results.read_text().splitlines()[0] == ",".join(COLUMNS)
    old, new = read_rows(results)
    assert old == old_row | {"config_hash": ""}
    assert new["status"] == "ok" and len(new["config_hash"]) == 16


def test_config_hash_ignores_where_a_run_writes_only() -> None:
    base = build_config(values=[{"out": "a", "backend": "thread"}])
    same = build_config(values=[{"out": "b", "backend": "thread"}], overrides=["transfer.file_dir=/x", "transfer.redis=h:1"])
    assert config_hash(base) == config_hash(same)
    for override in ("rounds=2", "train.epochs=3", "topology=tree:1", "strategy.name=fedprox", "seed=1", "train.mode=none"):
        assert config_hash(build_config(values=[{"out": "a", "backend": "thread"}], overrides=[override])) != config_hash(base), override


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
        (["--model", "tiny,resnet19"], "key 'model.name' = 'resnet19': unknown model"),
        (["--transfer", "parsl,ftp"], "key 'transfer.kind' = 'ftp': unknown transfer"),
        (["--trials", "0"], "--trials must be >= 1"),
    ]:
        done = sweep(tmp_path / "s", "--backend", "thread", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert needle in done.stderr, (args, done.stderr)
        assert not (tmp_path / "s" / "results.csv").exists()


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
