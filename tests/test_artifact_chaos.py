"""artifacts/chaos: the faults drawn from a seed, and the tasks.csv accounting it checks (the soak
itself runs for tens of minutes: it is the artifact, not a test)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("chaos_run", ROOT / "artifacts" / "chaos" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_run"] = module
    spec.loader.exec_module(module)
    return module


def test_faults_are_drawn_from_the_seed_one_slot_kill_every_10_rounds() -> None:
    chaos = _load()
    args = chaos.parse_args(["--fault-seed", "5"])
    drawn = chaos.draw_faults(args, "sync")
    assert drawn == chaos.draw_faults(args, "sync")  # the seed decides
    assert drawn != chaos.draw_faults(chaos.parse_args(["--fault-seed", "6"]), "sync")
    assert [(r - 1) // 10 for r in drawn["kill_slots"]] == list(range(20))  # one in each block of 10 rounds
    assert 1 < drawn["redis_stop"] < drawn["coordinator_kill"] < 200
    resumed = chaos.fault_overrides(drawn, after=drawn["coordinator_kill"], redis_done=True)
    assert not any(o.startswith("faults.redis_stop") for o in resumed)
    kills = next(o for o in resumed if o.startswith("faults.kill_slots=")).split("=")[1].split(",")
    assert all(int(k.split("@")[1]) > drawn["coordinator_kill"] for k in kills)
    peer = chaos.draw_faults(chaos.parse_args(["--peer-rounds", "30"]), "peer")
    hangs = next(o for o in chaos.fault_overrides(peer, after=10) if o.startswith("faults.hang="))
    assert hangs == "faults.hang=" + ",".join(f"{peer['slow_client']}@{r}" for r in range(11, 31))


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_the_accounting_finds_an_attempt_that_was_never_answered(tmp_path) -> None:
    chaos = _load()
    (tmp_path / "summary.json").write_text(json.dumps({"segments": [{"first_round": 1}, {"first_round": 2}]}))
    _write(tmp_path / "rounds.csv", [{"round": 1, "reported": 2, "participants": 2, "sampled": 2, "tasks": 3},
                                     {"round": 2, "reported": 2, "participants": 2, "sampled": 2, "tasks": 2}])
    task = {"kind": "train", "segment": 0, "round": 1, "status": "ok", "attempt": 0}
    tasks = [{**task, "task": 0, "client": 0}, {**task, "task": 1, "client": 1, "status": "lost"},
             {**task, "task": 2, "client": 1, "attempt": 1},
             {**task, "round": 2, "task": 3, "client": 0}, {**task, "round": 2, "task": 4, "client": 1, "status": "lost"},
             {**task, "segment": 1, "round": 2, "task": 0, "client": 0},
             {**task, "segment": 1, "round": 2, "task": 1, "client": 1}]
    _write(tmp_path / "tasks.csv", tasks)
    book = chaos.account(tmp_path)
    assert book["problems"] == [] and book["client_attempts"] == 7 and book["failed_attempts"] == 2
    assert book["unanswered_in_stopped_rounds"] == 1  # round 2 of segment 0: the coordinator was killed there
    _write(tmp_path / "tasks.csv", tasks[:2] + tasks[3:])  # the retry of client 1 in round 1 is missing
    assert any("round 1" in p for p in chaos.account(tmp_path)["problems"])
