"""The Flower baseline: simulation and gRPC debug runs, their rows, timestamps and clean-up.

Skipped when flwr is not installed; CI (``.ci/run``) installs the ``flower`` extra, so they run there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr not installed")

import psutil  # noqa: E402  (a dependency of the flower extra)

from flight_parsl.baselines.flower import run_flower  # noqa: E402
from flight_parsl.baselines.flower.workload import model_arrays  # noqa: E402
from flight_parsl.core.errors import ConfigError  # noqa: E402
from flight_parsl.results.table import read_rows  # noqa: E402

pytestmark = pytest.mark.timeout(120)

N = 3


def _gone(pids: list[int], wait_s: float = 10.0) -> list[int]:
    """The pids still running after up to ``wait_s`` seconds."""
    deadline = time.time() + wait_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


def _check_run(row: dict, out: Path, model: str, results: Path) -> dict:
    assert row["status"] == "ok", row["status"]
    summary = json.loads((out / "summary.json").read_text())
    arrays = model_arrays(model)
    model_bytes = sum(a.nbytes for a in arrays)

    # N messages each way: raw array bytes exactly, serialized payload within np.save headers.
    assert summary["array_bytes_moved"] == 2 * N * model_bytes
    assert 0 <= row["bytes_moved"] - 2 * N * model_bytes <= 2 * N * len(arrays) * 256
    assert row["num_workers"] == N and row["rounds"] == 1 and row["train"] == "none"

    assert row["prime2end"] > 0
    assert row["start"] <= row["dfk_start_done"] <= row["priming_done"] <= row["end"]
    assert row["start2end"] == pytest.approx(row["end"] - row["start"])
    assert row["round_makespan_s"] == pytest.approx(row["prime2end"])
    assert row["peak_rss_mb"] > 0 and row["peak_rss_workers_mb"] > 0

    # Debug mode: every client returned what it got, so FedAvg gives the initial weights back.
    with np.load(out / "final_parameters.npz") as final:
        assert len(final.files) == len(arrays)
        for i, initial in enumerate(arrays):
            got = final[f"arr_{i}"]
            assert got.dtype == initial.dtype and got.shape == initial.shape
            np.testing.assert_allclose(got, initial, rtol=1e-6, atol=1e-7)

    (table_row,) = read_rows(results)
    assert table_row["status"] == "ok"
    assert table_row["framework"] == row["framework"]
    assert float(table_row["prime2end"]) == pytest.approx(row["prime2end"])
    return summary


@pytest.mark.parametrize("model", ["tiny", "smallnet"])
def test_simulation(tmp_path: Path, model: str) -> None:
    out, results = tmp_path / "run", tmp_path / "results.csv"
    row = run_flower(N, model, "simulation", out, timeout=90, results=results, save_params=True)
    assert row["framework"] == "flower-simulation" and row["transfer"] == "ray"
    summary = _check_run(row, out, model, results)
    assert summary["backend_config"]["client_resources"]["num_cpus"] == 1
    assert summary["server_fit_threads"] == min(32, (os.cpu_count() or 1) + 4)  # Flower's default
    assert len(set(summary["actor_pids"])) == N
    assert _gone(summary["actor_pids"] + [summary["server_pid"]]) == []


def test_simulation_at_flowers_default_resources(tmp_path: Path) -> None:
    """client_cpus="default" passes no backend config: Flower's 2 CPUs per client on the machine's CPUs."""
    out, results = tmp_path / "run", tmp_path / "results.csv"
    row = run_flower(N, "tiny", "simulation", out, timeout=90, results=results, save_params=True,
                     client_cpus="default")
    summary = _check_run(row, out, "tiny", results)
    assert summary["client_cpus"] == "default" and summary["backend_config"] is None
    assert summary["client_resources"]["num_cpus"] == 2
    assert summary["num_actors"] == int(summary["ray_cpus"] // 2) >= 1
    assert len(set(summary["actor_pids"])) == summary["num_actors"]
    assert _gone(summary["actor_pids"] + [summary["server_pid"]]) == []


def test_client_cpus_settings(tmp_path: Path) -> None:
    from flight_parsl.baselines.flower.app import simulation_backend_config
    from flight_parsl.baselines.flower.runner import FlowerInputError, parse_client_cpus

    assert simulation_backend_config(5) == simulation_backend_config(5, "matched") == {
        "init_args": {"num_cpus": 5, "num_gpus": 0},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    assert simulation_backend_config(5, "default") is None
    assert simulation_backend_config(5, 0.5) == {"client_resources": {"num_cpus": 0.5, "num_gpus": 0.0}}
    assert parse_client_cpus("default") == "default" and parse_client_cpus("1") == 1.0
    assert parse_client_cpus(2) == 2.0
    for bad in ("0", "-1", "nan", "inf", "some", True, None):
        with pytest.raises(FlowerInputError, match="client_cpus"):
            parse_client_cpus(bad)
    with pytest.raises(FlowerInputError, match="simulation mode only"):
        run_flower(2, "tiny", "grpc", tmp_path / "run", client_cpus=1)
    assert not (tmp_path / "run").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "flight_parsl.baselines.flower", "--workers", "2", "--model", "tiny",
         "--mode", "simulation", "--client-cpus", "zero", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--client-cpus" in proc.stderr and not (tmp_path / "run").exists()


def test_grpc(tmp_path: Path) -> None:
    out, results = tmp_path / "run", tmp_path / "results.csv"
    row = run_flower(N, "smallnet", "grpc", out, timeout=90, results=results, save_params=True, server_threads=N)
    assert row["framework"] == "flower-grpc" and row["transfer"] == "grpc"
    summary = _check_run(row, out, "smallnet", results)
    assert summary["server_fit_threads"] == N
    assert len(summary["client_pids"]) == N
    assert summary["client_exit_status"] == [0] * N
    assert summary["clients_stopped"] == []
    assert summary["server_up"] <= row["start"]
    assert _gone(summary["client_pids"] + [summary["server_pid"]]) == []


def test_grpc_timeout_is_a_failed_row(tmp_path: Path) -> None:
    out, results = tmp_path / "run", tmp_path / "results.csv"
    row = run_flower(2, "tiny", "grpc", out, timeout=1, results=results)
    assert row["status"].startswith("failed: timeout")
    (table_row,) = read_rows(results)
    assert table_row["status"] == row["status"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == row["status"]
    assert _gone(summary.get("client_pids", []) + [summary["server_pid"]]) == []


def test_unknown_model(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flight_parsl.baselines.flower", "--workers", "2", "--model", "nope",
         "--mode", "grpc", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown model 'nope'" in lines[0] and "valid names:" in lines[0]
    assert "smallnet" in lines[0] and "resnet18" in lines[0]
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="valid names"):
        run_flower(2, "nope", "simulation", tmp_path / "run2")
