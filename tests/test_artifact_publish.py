"""An artifact re-run with ``--out`` elsewhere leaves the artifact's committed files alone.

artifacts/fedprox/run.py writes its table, CSVs and figure into ``--out``; only ``--publish``
copies them into artifacts/fedprox/. The sweeps are replaced by nothing and the analysis by a
stand-in that writes the same file names, so this takes well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FEDPROX = ROOT / "artifacts" / "fedprox"


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its content hash and mtime."""
    return {str(p.relative_to(folder)): f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}"
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture
def fedprox(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, list[list[str]], tuple[str, ...]]:
    """artifacts/fedprox/run.py with no sweeps and a stand-in analysis; the sweep commands it issued."""
    writes = _load(FEDPROX / "analyze.py", "fedprox_analyze_real").WRITES
    calls: list[list[str]] = []

    def fake_analyze(argv: list[str]) -> None:
        out = Path(argv[argv.index("--out") + 1])
        for name in writes:
            (out / name).write_text(f"made from {argv[0]}\n")

    monkeypatch.setitem(sys.modules, "analyze", types.SimpleNamespace(WRITES=writes, main=fake_analyze))
    monkeypatch.setattr(sys, "path", list(sys.path))  # run.py puts its folder first
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    return _load(FEDPROX / "run.py", "fedprox_run_under_test"), calls, writes


def test_fedprox_out_elsewhere_leaves_the_artifact_untouched(fedprox, tmp_path: Path) -> None:
    run, calls, writes = fedprox
    before = _snapshot(FEDPROX)
    out = tmp_path / "x"
    assert run.main(["--out", str(out), "--datasets", "synthetic", "--seeds", "0..0"]) == 0
    assert len(calls) == 3 and all(str(out) in " ".join(c) for c in calls)  # one sweep per arm, into --out
    assert _snapshot(FEDPROX) == before
    for name in writes:
        assert (out / name).read_text() == f"made from {out / 'results.csv'}\n"


def test_fedprox_publish_copies_into_the_artifact_folder(fedprox, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run, _, writes = fedprox
    published = tmp_path / "artifact"
    published.mkdir()
    monkeypatch.setattr(run, "HERE", published)  # stands for artifacts/fedprox
    out = tmp_path / "x"
    assert run.main(["--out", str(out), "--datasets", "synthetic", "--seeds", "0..0", "--publish"]) == 0
    for name in writes:
        assert (published / name).read_bytes() == (out / name).read_bytes()


def test_fedprox_dry_runs_say_where_they_write(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "artifacts/fedprox/run.py", "--out", str(tmp_path / "x"), "--datasets", "synthetic",
            "--seeds", "0..0", "--dry-run"]
    plain = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert plain.returncode == 0 and "untouched: no --publish" in plain.stdout, plain.stdout + plain.stderr
    publish = subprocess.run(base + ["--publish"], capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert publish.returncode == 0 and f"then copy them into {FEDPROX}" in publish.stdout, publish.stdout
    # analyze.py writes beside its results table unless --out names another folder
    results = tmp_path / "x" / "results.csv"
    done = subprocess.run([sys.executable, "artifacts/fedprox/analyze.py", str(results), "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert done.returncode == 0 and f"write {results.parent / 'curves.csv'}" in done.stdout, done.stdout
    assert str(FEDPROX) not in done.stdout
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("folder", ["mnist5k", "synthetic-200r"])
def test_fedprox_committed_raw_files_give_the_committed_table(folder: str, tmp_path: Path) -> None:
    """A folder's raw rounds.csv (every round of every run) and results.csv give its table, runs.csv and
    curves.csv again, byte for byte, without the run folders."""
    committed = FEDPROX / folder
    if not (committed / "rounds.csv").is_file():
        pytest.skip(f"{folder} has no raw rounds.csv")
    out = tmp_path / "again"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "artifacts/fedprox/analyze.py", str(committed / "rounds.csv"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("table.md", "runs.csv", "curves.csv", "rounds.csv", "results.csv"):
        assert (out / name).read_bytes() == (committed / name).read_bytes(), name
