"""The public API (flight_parsl.run / sweep / load_run / Pool / RunResult), and that artifacts/ and
analysis/ use only it and the public modules."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import flight_parsl
from flight_parsl.config.experiment import build_config

ROOT = Path(__file__).resolve().parents[1]
#: Subpackages of flight_parsl that artifacts/ and analysis/ must not import.
INTERNAL = ("engine", "execution", "worker", "transfer", "cli", "fl", "core")
#: What a tiny, torch-free run sets: no training, the tiny model, the thread backend.
TINY = {"workers": 4, "rounds": 2, "backend": "thread", "train": {"mode": "none"}, "model": {"name": "tiny"}}


# --------------------------------------------------------------------------- the house rule


def internal_imports(source: str, label: str) -> list[str]:
    """``label:line module`` for each import of an internal flight_parsl module in Python source, in line order."""
    tree = ast.parse(source, filename=label)
    found = []
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))),
                       key=lambda n: n.lineno):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "flight_parsl" and len(parts) > 1 and parts[1] in INTERNAL:
                found.append(f"{label}:{node.lineno} {name}")
                break
    return found


def notebook_sources(path: Path) -> list[tuple[str, str]]:
    """(label, code) of each code cell of a notebook."""
    nb = json.loads(path.read_text())
    return [(f"{path.relative_to(ROOT)}[{i}]", "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def test_internal_imports_are_found() -> None:
    """The check itself: it sees plain, from- and nested imports of internal modules, not public ones."""
    source = (
        "import flight_parsl\nfrom flight_parsl import run\nfrom flight_parsl.config.experiment import build_config\n"
        "def f():\n    from flight_parsl.engine.runner import run_experiment\n"
        "import flight_parsl.execution.backends as b\nfrom flight_parsl import core\nfrom . import engine\n"
    )
    assert internal_imports(source, "probe") == [
        "probe:5 flight_parsl.engine.runner", "probe:6 flight_parsl.execution.backends", "probe:7 flight_parsl.core",
    ]


def test_artifacts_and_analysis_import_only_public_modules() -> None:
    files = sorted((ROOT / "artifacts").rglob("*.py")) + sorted((ROOT / "analysis").rglob("*.py"))
    assert len(files) >= 12
    found = [hit for f in files for hit in internal_imports(f.read_text(), str(f.relative_to(ROOT)))]
    notebooks = sorted((ROOT / "artifacts").rglob("*.ipynb")) + sorted((ROOT / "analysis").rglob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        for label, code in notebook_sources(nb):
            code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
            found += internal_imports(code, label)
    assert found == [], "artifacts/analysis import internal modules:\n" + "\n".join(found)


def test_import_flight_parsl_stays_light() -> None:
    code = ("import flight_parsl, sys; assert 'torch' not in sys.modules and 'parsl' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('torch', 'parsl'))); "
            "assert callable(flight_parsl.run) and 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flight_parsl.nope  # noqa: B018


# --------------------------------------------------------------------------- run, load_run


def test_run_from_a_dict_with_overrides(tmp_path: Path) -> None:
    result = flight_parsl.run({**TINY, "out": str(tmp_path / "a")}, "workers=6", "rounds=3")
    assert isinstance(result, flight_parsl.RunResult)
    assert result.status == "completed" and result.run_dir == tmp_path / "a"
    assert result.config.workers == 6 and result.config.rounds == 3
    assert result.rounds.shape[0] == 3 and list(result.rounds["participants"]) == [6, 6, 6]
    assert list(result.rounds["failed"]) == [0, 0, 0]
    train = result.tasks[result.tasks["kind"] == "train"]
    assert len(train) == 3 * 6 and set(train["status"]) == {"ok"}
    assert sorted(train.groupby("round")["client"].apply(sorted).iloc[0]) == [0, 1, 2, 3, 4, 5]
    assert result.faults.empty
    assert result.summary["status"] == "completed" and result.summary["workers"] == 6
    assert result.summary["num_parameters"] > 0 and not result.summary.get("dfk_reused")


def test_run_from_a_yaml_file_and_a_typed_config(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("workers: 3\nrounds: 1\nbackend: thread\ntrain: {mode: none}\nmodel: {name: tiny}\n")
    a = flight_parsl.run(path, f"out={tmp_path / 'y'}")
    assert a.config.workers == 3 and len(a.rounds) == 1 and a.rounds["participants"].tolist() == [3]
    cfg = build_config(values=[TINY], overrides=[f"out={tmp_path / 't'}", "rounds=1"])
    b = flight_parsl.run(cfg, "workers=2")
    assert b.config.workers == 2 and cfg.workers == 4  # the given config is not changed
    assert b.rounds["participants"].tolist() == [2]


def test_run_with_training_learns(tmp_path: Path) -> None:
    result = flight_parsl.run({**TINY, "train": {"mode": "local"}, "model": {"name": "logreg"},
                               "out": str(tmp_path / "t")}, "rounds=3")
    acc = result.rounds["test_acc"].tolist()
    assert len(acc) == 3 and all(0.0 <= a <= 1.0 for a in acc) and acc[-1] > 0.5
    assert result.summary["final_test_acc"] == pytest.approx(acc[-1])
    loss, initial = flight_parsl.initial_metrics(result.config)
    assert initial < acc[-1] and loss > result.rounds["test_loss"].iloc[-1]


def test_bad_config_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(flight_parsl.ConfigError, match="workers"):
        flight_parsl.run({**TINY, "out": str(tmp_path / "x")}, "workers=0")
    with pytest.raises(flight_parsl.ConfigError, match="config file not found"):
        flight_parsl.run(tmp_path / "missing.yaml")
    with pytest.raises(flight_parsl.ConfigError, match="expected a YAML path"):
        flight_parsl.run(42)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_load_run_reads_what_run_returned(tmp_path: Path) -> None:
    result = flight_parsl.run({**TINY, "out": str(tmp_path / "r")})
    again = flight_parsl.load_run(tmp_path / "r")
    assert again.summary == result.summary and again.status == "completed"
    assert again.rounds.equals(result.rounds) and again.tasks.shape == result.tasks.shape
    assert again.config.to_dict() == result.config.to_dict()
    assert "rounds=2" in repr(again) and "completed" in repr(again)
    with pytest.raises(flight_parsl.ConfigError, match="no config.yaml"):
        flight_parsl.load_run(tmp_path)


def test_failed_run_raises_and_its_directory_says_why(tmp_path: Path) -> None:
    out = tmp_path / "f"
    with pytest.raises(flight_parsl.FlightParslError):
        flight_parsl.run({**TINY, "out": str(out), "train": {"mode": "local"}, "model": {"name": "logreg"},
                          "data": {"dataset": "mnist", "root": str(tmp_path / "no-data")}})
    failed = flight_parsl.load_run(out)
    assert failed.status == "failed" and failed.rounds.empty and failed.summary["error"]


def test_resume_continues_a_stopped_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flight_parsl.engine.sync as engine  # the test reaches inside to make round 2 fail

    real = engine.train_task

    def crashing(ref, round_idx, *rest):  # type: ignore[no-untyped-def]
        if round_idx == 1:
            raise RuntimeError("injected failure")
        return real(ref, round_idx, *rest)

    monkeypatch.setattr(engine, "train_task", crashing)
    out = tmp_path / "stop"
    with pytest.raises(flight_parsl.RoundError):  # every client of round 2 failed: the round cannot stand
        flight_parsl.run({**TINY, "out": str(out), "rounds": 3}, "round.retries=0")
    stopped = flight_parsl.load_run(out)
    assert stopped.status == "failed" and stopped.rounds["reported"].tolist() == [4, 0]  # round 2's row: 0 reported
    monkeypatch.setattr(engine, "train_task", real)
    done = flight_parsl.run(out, resume=True)
    assert done.status == "completed" and len(done.rounds) == 3
    assert done.rounds["participants"].tolist() == [4, 4, 4] and done.rounds["reported"].tolist() == [4, 4, 4]
    assert done.summary["resumes"] == 1


# --------------------------------------------------------------------------- Pool


def test_pool_is_shared_by_runs(tmp_path: Path) -> None:
    with flight_parsl.Pool(TINY, run_dir=tmp_path / "ex") as pool:
        assert pool.is_open and pool.slots == 2 and "thread pool with 2 slots" in pool.description
        a = flight_parsl.run({**TINY, "out": str(tmp_path / "a")}, pool=pool)
        b = pool.run({**TINY, "out": str(tmp_path / "b")}, "workers=8")
        assert pool.runs == 2
        with pytest.raises(flight_parsl.ConfigError, match="backend"):
            pool.run({**TINY, "backend": "process", "out": str(tmp_path / "c")})
    assert not pool.is_open
    assert a.summary["dfk_reused"] is False and b.summary["dfk_reused"] is True
    assert a.summary["slots"] == 2 and b.summary["slots"] == 2  # 8 clients packed onto the pool's 2 slots
    assert b.rounds["participants"].tolist() == [8, 8]
    with pytest.raises(flight_parsl.ConfigError, match="not open"):
        flight_parsl.run({**TINY, "out": str(tmp_path / "d")}, pool=pool)
    with flight_parsl.Pool(backend="thread", slots=3) as bare:
        assert bare.slots == 3


# --------------------------------------------------------------------------- sweep


def test_sweep_runs_the_grid_and_resumes(tmp_path: Path) -> None:
    table = flight_parsl.sweep({**TINY, "rounds": 1}, {"workers": [2, 4], "strategy.participation": [1.0, 0.5]},
                               "seed=0..1", out=tmp_path / "s")
    assert len(table) == 2 * 2 * 2 and set(table["status"]) == {"ok"}
    assert sorted(table["num_workers"].tolist()) == [2, 2, 2, 2, 4, 4, 4, 4]
    cells = set(table["cell"])
    assert cells == {f"strategy.participation={p} seed={s}" for p in ("1.0", "0.5") for s in (0, 1)}
    assert (tmp_path / "s" / "results.csv").is_file()
    half = table[(table["num_workers"] == 4) & table["cell"].str.startswith("strategy.participation=0.5")]
    for run_dir in half["run_dir"]:
        assert flight_parsl.load_run(run_dir).rounds["participants"].tolist() == [2]
    again = flight_parsl.sweep({**TINY, "rounds": 1}, {"workers": [2, 4], "strategy.participation": [1.0, 0.5]},
                               "seed=0..1", out=tmp_path / "s")
    assert len(again) == 8  # every cell done: nothing ran again
    with pytest.raises(flight_parsl.ConfigError, match="list of values"):
        flight_parsl.sweep(TINY, {"workers": 4}, out=tmp_path / "bad")  # type: ignore[dict-item]
    with pytest.raises(flight_parsl.ConfigError):
        flight_parsl.sweep(TINY, {"workers": [2, 0]}, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- the parsl backend


@pytest.mark.timeout(600)
def test_pool_on_parsl_reuses_one_dataflowkernel(tmp_path: Path) -> None:
    cfg = {**TINY, "backend": "parsl", "workers": 2, "rounds": 1, "transfer": {"kind": "file"}}
    with flight_parsl.Pool(cfg, run_dir=tmp_path / "executor") as pool:
        first = flight_parsl.run({**cfg, "out": str(tmp_path / "one")}, pool=pool)
        second = flight_parsl.run({**cfg, "out": str(tmp_path / "two")}, pool=pool)
    assert first.status == second.status == "completed"
    assert first.summary["dfk_reused"] is False and second.summary["dfk_reused"] is True
    assert second.summary["executor"] == first.summary["executor"]
    pids = {p for r in (first, second) for p in r.tasks[r.tasks["kind"] == "train"]["pid"]}
    assert len(pids) <= 2  # the same worker processes served both runs
    assert second.rounds["participants"].tolist() == [2]


# --------------------------------------------------------------------------- the worked notebook


def test_api_example_notebook_runs_headless(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = ROOT / "analysis" / "api_example.ipynb"
    committed = nbformat.read(notebook, as_version=4)
    assert all(c.outputs == [] for c in committed.cells if c.cell_type == "code")  # committed clean
    out = tmp_path / "figs" / "rounds.png"
    done = subprocess.run([sys.executable, "analysis/run_notebook.py", str(notebook), "--param", f"out={out}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    executed = nbformat.read(out.parent / "rounds.executed.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("status completed" in o.get("text", "") for o in outputs)
    run = flight_parsl.load_run(out.parent / "run")
    assert run.status == "completed" and len(run.rounds) == 2 and run.config.backend == "thread"
    assert run.rounds["test_acc"].iloc[-1] > 0.5


# --------------------------------------------------------------------------- --dry-run everywhere

DRY_RUNS = [
    ["artifacts/a1_scaling/run.py", "--workers", "2,8", "--models", "tiny", "--packed"],
    ["artifacts/a1_scaling/run.py", "--cluster", "configs/parsl/slurm-cluster.yaml", "--workers", "2,8,16", "--packed"],
    ["artifacts/a2_hierarchy/run.py", "--heights", "1,2", "--strategies", "fedavg"],
    ["artifacts/a3_async/run.py"],
    ["artifacts/a4_remote/run.py"],
    ["artifacts/chaos/run.py"],
    ["artifacts/compression/run.py", "--seeds", "1", "--rounds", "2", "--datasets", "digits"],
    ["artifacts/fault_tolerance/run.py", "--study", "kills"],
    ["artifacts/fedprox/run.py", "--seeds", "0..0", "--quick"],
    ["artifacts/fedprox/analyze.py", "{out}/results.csv"],
    ["artifacts/perf/run.py", "--quick"],
    ["artifacts/proxyfl/run.py", "--seeds", "1"],
    ["artifacts/proxyfloxy/run.py", "--blocks", "1,2", "--trials", "1"],
    ["artifacts/transfer_bench/run.py", "--workers", "8", "--models", "tiny"],
    ["-m", "analysis.scaling", "{out}/results.csv", "--out", "{out}/scaling.png"],
    ["analysis/run_notebook.py", "analysis/api_example.ipynb", "--param", "out={out}/rounds.png"],
]


@pytest.mark.parametrize("argv", DRY_RUNS, ids=[a[0] if a[0] != "-m" else a[1] for a in DRY_RUNS])
def test_every_script_takes_dry_run(argv: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [a.replace("{out}", str(out)) for a in argv]
    if args[0].startswith("artifacts/") and "--out" not in args and not args[0].endswith("analyze.py"):
        args += ["--out", str(out)]
    done = subprocess.run([sys.executable, *args, "--dry-run"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    last = (done.stdout.strip().splitlines() or [""])[-1]
    assert last.startswith("dry run:"), done.stdout
    assert not out.exists()  # nothing written, nothing started


def test_dry_run_still_checks_the_arguments(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv, needle in (
        (["artifacts/a2_hierarchy/run.py", "--heights", "3", "--leaves", "16"], "height"),
        (["artifacts/fault_tolerance/run.py", "--kills", "3"], "multiples of --per-slot"),
        (["artifacts/a3_async/run.py", "train.epochs=0"], "train.epochs"),
    ):
        done = subprocess.run([sys.executable, *argv, "--out", str(tmp_path / "o"), "--dry-run"], capture_output=True,
                              text=True, cwd=ROOT, timeout=120, env=env)
        assert done.returncode == 2 and needle in done.stderr, (argv, done.stderr)
