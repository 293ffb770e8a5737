"""The Flower baseline trains for real (``--train local``): flight_parsl's workload on Flower.

Skipped when flwr is not installed; CI (``.ci/run``) installs the ``flower`` extra, so they run there.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr not installed")

from flight_parsl.api import run  # noqa: E402
from flight_parsl.baselines.flower import FlowerInputError, run_flower  # noqa: E402
from flight_parsl.baselines.flower.workload import TrainJob, train_config  # noqa: E402
from flight_parsl.config.experiment import ExperimentConfig  # noqa: E402
from flight_parsl.core.errors import ConfigError  # noqa: E402

N, ROUNDS = 8, 2


@pytest.mark.timeout(240)
def test_flower_trains_like_flight_parsl(tmp_path: Path) -> None:
    """Same split, model, optimizer and seeds: Flower's FedAvg reaches flight_parsl's accuracy."""
    out = tmp_path / "flower"
    row = run_flower(N, "mlp", "simulation", out, rounds=ROUNDS, timeout=180, client_cpus="default",
                     train="local", save_params=True)
    assert row["status"] == "ok", row["status"]
    assert row["train"] == "local" and row["framework"] == "flower-simulation"
    summary = json.loads((out / "summary.json").read_text())

    # What was trained is flight_parsl's default workload, read from its config.
    defaults = ExperimentConfig()
    training = summary["training"]
    assert training["dataset"] == defaults.data.dataset == "digits"
    assert training["partition"]["kind"] == defaults.partition.kind and training["seed"] == defaults.seed
    for key in ("epochs", "batch_size", "lr", "momentum"):
        assert training[key] == getattr(defaults.train, key), key
    assert training["samples"] == 1438  # every training sample, split over the N clients

    with (out / "rounds.csv").open() as f:
        rounds = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rounds] == [1, 2]
    assert all(int(r["participants"]) == N for r in rounds)
    flower_acc = [float(r["test_acc"]) for r in rounds]
    assert summary["test_acc"] == pytest.approx(flower_acc[-1])
    assert summary["initial_test_acc"] < 0.2  # the untrained model: about chance (0.1)
    assert flower_acc[-1] > 0.6  # trained: far above chance
    assert summary["end"] >= float(rounds[-1]["end"]) and summary["prime2end"] > 0

    flight = run({"workers": N, "rounds": ROUNDS, "model": {"name": "mlp"}, "backend": "thread",
                  "out": str(tmp_path / "flight")})
    assert flight.status == "completed"
    flight_acc = list(flight.rounds["test_acc"])
    # The same clients train the same way from the same model; only the FedAvg sums differ in order
    # (float rounding): at most a test sample or two may flip (359 test samples).
    np.testing.assert_allclose(flower_acc, flight_acc, atol=0.006)
    np.testing.assert_allclose([float(r["test_loss"]) for r in rounds], list(flight.rounds["test_loss"]), rtol=1e-3)


def test_train_job_round_trip() -> None:
    """Flower's arrays and flight_parsl's flat weights convert both ways, dtypes kept."""
    from flight_parsl.core.weights import FlatWeights, Layout

    layout = Layout.from_shapes([("w", (2, 3), "float32"), ("n", (), "int64"), ("b", (3,), "float32")])
    job = TrainJob(workload=None, settings=None, layout=layout)
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, dtype=np.int64), np.ones(3, np.float32)]
    flat = job.to_flat(arrays)
    assert isinstance(flat, FlatWeights) and flat.buffer.tolist() == [0, 1, 2, 3, 4, 5, 7, 1, 1, 1]
    back = job.to_arrays(flat)
    assert [a.dtype for a in back] == [np.float32, np.int64, np.float32]
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)


def test_train_config_is_flight_parsls() -> None:
    cfg = train_config(64, 3, "mlp")
    assert cfg.train.mode == "local" and cfg.workers == 64 and cfg.rounds == 3
    assert cfg.train == ExperimentConfig().train and cfg.data == ExperimentConfig().data
    cfg = train_config(4, 1, "smallnet", dataset="digits", epochs=1, batch_size=8, lr=0.1)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.model.name) == (1, 8, 0.1, "smallnet")


def test_bad_training_flags(tmp_path: Path) -> None:
    """Each bad combination is one clear error, before anything starts."""
    out = tmp_path / "run"
    with pytest.raises(FlowerInputError, match="--epochs applies to --train local only"):
        run_flower(2, "mlp", "simulation", out, epochs=3)
    with pytest.raises(FlowerInputError, match="--dataset, --lr apply to --train local only"):
        run_flower(2, "mlp", "simulation", out, dataset="digits", lr=0.1)
    with pytest.raises(FlowerInputError, match="simulation mode only"):
        run_flower(2, "mlp", "grpc", out, train="local")
    with pytest.raises(FlowerInputError, match="train must be one of"):
        run_flower(2, "mlp", "simulation", out, train="yes")
    with pytest.raises(ConfigError, match="train.batch_size"):
        run_flower(2, "mlp", "simulation", out, train="local", batch_size=0)
    with pytest.raises(ConfigError, match="debug-only"):
        run_flower(2, "tiny", "simulation", out, train="local")
    assert not out.exists()

    proc = subprocess.run(
        [sys.executable, "-m", "flight_parsl.baselines.flower", "--workers", "2", "--model", "mlp",
         "--mode", "grpc", "--train", "local", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--train local runs in simulation mode only" in lines[0]
    assert not out.exists()
