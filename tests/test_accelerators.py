"""A site's ``available_accelerators`` pins one device per slot, and training uses the slot's device.

Parsl sets each HTEX worker's ``CUDA_VISIBLE_DEVICES`` (and ROCm's and oneAPI's variables) to one
id of the list; :func:`flight_parsl.worker.training.slot_device` trains on that GPU when torch sees
one, else on another ``torch.accelerator`` device, else on the CPU. This machine has no GPU: the
same code path runs, each slot records the id it was given, and training runs on the CPU.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_each_slot_sees_its_own_accelerator_and_trains_on_its_device(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({
        "label": "htex", "max_workers_per_node": 2, "address": "127.0.0.1", "encrypted": False,
        "available_accelerators": ["0", "1"], "provider": {"kind": "local", "launcher": {"kind": "single_node"}},
    }))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "flight_parsl.scale", "--workers", "2", "--rounds", "1", "--parsl-config", str(site),
         "--out", str(out), "-q"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in csv.DictReader((out / "tasks.csv").open()) if r["kind"] == "train"]
    assert rows and all(r["status"] == "ok" for r in rows)
    by_slot = {(r["host"], r["pid"]): {x["accelerator"] for x in rows if (x["host"], x["pid"]) == (r["host"], r["pid"])}
               for r in rows}
    assert sorted(a for ids in by_slot.values() for a in ids) == ["0", "1"]  # one id per slot, each its own
    import torch

    expected = "cuda:0" if torch.cuda.is_available() else "cpu"  # a pinned GPU is the slot's own cuda:0
    assert {r["task_device"] for r in rows} == {expected}


def test_the_slot_device_is_cuda_then_another_accelerator_then_the_cpu(monkeypatch) -> None:
    import torch

    from flight_parsl.worker import training

    def decide(cuda: bool, other: str | None) -> str:
        monkeypatch.setattr(training, "_DEVICE", None)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: other is not None)
        monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device(other or "cpu"))
        return training.device_name()

    assert decide(True, "cuda") == "cuda:0"  # the slot's pinned GPU
    assert decide(False, "mps") == "mps:0"  # e.g. Apple's GPU
    assert decide(False, None) == "cpu"
    monkeypatch.setattr(training, "_DEVICE", None)  # decided again, for real, by the next caller
