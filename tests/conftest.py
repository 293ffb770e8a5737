"""Shared test helpers."""

from __future__ import annotations

import csv
import importlib.util
import json
import signal
import sys
from types import ModuleType
from pathlib import Path
from typing import Any

import pytest

from flight_parsl.config.experiment import ExperimentConfig, build_config


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI time limit, ``kill``) stops the session like Ctrl-C: every fixture and every
    run on the way out is unwound, so no managed redis-server, executor or namespace is left."""
    from flight_parsl.core.errors import Terminated

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, stop)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def make_config(tmp_path):
    """Build a validated config writing into tmp_path/run, with overrides."""

    def make(*overrides: str, **values: Any) -> ExperimentConfig:
        base = {"out": str(tmp_path / "run"), "backend": "thread"}
        base.update(values)
        return build_config(values=[base], overrides=list(overrides))

    return make


def run_quietly(make_config, *overrides: str, **values: Any) -> Path:
    """Build a config with ``make_config`` and run it without progress output."""
    from flight_parsl.engine.progress import Progress
    from flight_parsl.engine.runner import run_experiment

    cfg = make_config(*overrides, **values)
    return run_experiment(cfg, Progress(cfg.rounds, enabled=False))


def perf_script() -> ModuleType:
    """artifacts/perf/run.py as a module, loaded once per test session (its tests share it)."""
    if "perf_run" not in sys.modules:
        script = Path(__file__).resolve().parents[1] / "artifacts" / "perf" / "run.py"
        spec = importlib.util.spec_from_file_location("perf_run", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["perf_run"] = module
        spec.loader.exec_module(module)
    return sys.modules["perf_run"]
