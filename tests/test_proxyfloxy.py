"""The ProxyFloxy study's parts: the per-client sample cap and the CSV rows built from a run."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from flight_parsl.core.errors import ConfigError
from flight_parsl.data.partition import PartitionSpec, partition

REPO = Path(__file__).resolve().parents[1]


def _artifact():
    spec = importlib.util.spec_from_file_location("proxyfloxy_run", REPO / "artifacts" / "proxyfloxy" / "run.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_max_samples_caps_each_shard_with_a_seeded_subset() -> None:
    labels = np.arange(1000) % 10
    whole = partition(labels, 3, PartitionSpec(), 0)
    capped = partition(labels, 3, PartitionSpec(max_samples=100), 0)
    assert [len(s) for s in capped] == [100, 100, 100]
    assert all(set(c) <= set(w) for c, w in zip(capped, whole))  # a subset of the client's own shard
    assert [list(s) for s in capped] == [list(s) for s in partition(labels, 3, PartitionSpec(max_samples=100), 0)]
    assert [len(s) for s in partition(labels, 3, PartitionSpec(max_samples=500), 0)] == [334, 333, 333]
    with pytest.raises(ConfigError, match="key 'partition.max_samples' = -?[0-9]+: must be an integer >= 0"):
        PartitionSpec(max_samples=-1)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_rows_time_only_the_transfer_and_keep_train_and_test_loss_apart(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({
        "model_bytes": 4000, "num_parameters": 1000,
        "sites": {"local": {"virtual_host": None}, "remote-a": {"virtual_host": "host-a"}},
    }))
    _write_csv(run / "rounds.csv", [{"round": 1, "publish_s": 0.5, "test_acc": 0.25, "test_loss": 2.0}])
    task = {"round": 1, "kind": "train", "status": "ok", "task_bytes_in": 4000, "task_bytes_out": 4000}
    _write_csv(run / "tasks.csv", [
        {**task, "site": "local", "task_submitted": 100.0, "task_received": 104.0, "task_compute_s": 3.0,
         "task_collect_s": 0.25, "train_acc": 0.5, "train_loss": 1.5},
        {**task, "site": "remote-a", "task_submitted": 100.0, "task_received": 110.0, "task_compute_s": 8.0,
         "task_collect_s": "", "train_acc": 0.75, "train_loss": 1.25},
        {**task, "kind": "aggregate", "site": "local", "task_submitted": 0, "task_received": 0, "task_compute_s": 0,
         "task_collect_s": 0, "train_acc": "", "train_loss": ""},
    ])
    rows = _artifact().rows_of(run, 7, "redis", 2, 123)
    assert len(rows) == 2  # train tasks only: one row per endpoint per round
    local, remote = rows
    assert local["round"] == remote["round"] == 1  # rounds count from 1
    # publish 0.5 + round trip 4.0 - training 3.0 + collect 0.25; no sleep or training inside
    assert local["transfer_time"] == pytest.approx(1.75)
    assert remote["transfer_time"] == pytest.approx(0.5 + 10.0 - 8.0)
    assert (local["local"], remote["local"]) == (True, False)
    assert (local["train_loss"], remote["train_loss"]) == (1.5, 1.25)  # the endpoint's own, not the test loss
    assert local["test_loss"] == remote["test_loss"] == 2.0
    assert local["data_transfer_size"] == 8000 and local["model_param_size"] == 4000
    assert (local["num_hidden_blocks"], local["store"], local["trial"], local["model_arch_size"]) == (7, "redis", 2, 123)
    assert set(_artifact().COLUMNS[:13]) == {
        "round", "endpoint_name", "transfer_time", "data_transfer_size", "model_param_size", "model_arch_size",
        "local", "test_accuracy", "test_loss", "train_accuracy", "train_loss", "num_hidden_blocks", "store",
    }


@pytest.mark.parametrize("script", ["artifacts/proxyfloxy/run.py", "artifacts/a4_remote/run.py"])
def test_link_option_shapes_the_remote_sites_in_a_dry_run_and_refuses_a_bad_unit(script, tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / script), "--out", str(out), "--dry-run"]
    ok = subprocess.run(cmd + ["--link", "100mbit,20ms"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "'rate': '100mbit', 'delay': '20ms'" in ok.stdout
    bad = subprocess.run(cmd + ["--link", "100mbps,20ms"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "'100mbps'" in bad.stderr and "ambiguous" in bad.stderr
    shape = subprocess.run(cmd + ["--link", "100mbit,20ms,1%"], capture_output=True, text=True, timeout=120)
    assert shape.returncode == 2 and "expected unshaped, RATE or RATE,DELAY" in shape.stderr
    assert not out.exists()  # a dry run or a refused link writes nothing
