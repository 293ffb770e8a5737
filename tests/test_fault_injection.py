"""Real faults on real HTEX worker processes: a quarter of the slots SIGKILLed mid-round by the
coordinator (by the pids the run recorded), the round closing by quorum, the run finishing.

One DataFlowKernel for the module (one run)."""

import os
import time

import pytest
from conftest import read_csv, read_summary

from flight_parsl.engine.progress import Progress
from flight_parsl.engine.runner import run_experiment

pytestmark = pytest.mark.timeout(300)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_quarter_of_the_slots_sigkilled_mid_round_and_the_run_finishes(make_config, tmp_path) -> None:
    # 8 clients on 4 HTEX slots; in rounds 2 and 3 every client sleeps 1.5 s (so every slot takes work),
    # and 0.5 s into round 2 the coordinator SIGKILLs one of the four worker processes
    cfg = make_config(
        "train.mode=none", "model.name=tiny", "slots=4", "plan.clients_per_task=1", "round.quorum=0.75",
        "round.min_fraction=0.75", "round.retries=2", "transfer.kind=file", f"transfer.file_dir={tmp_path}",
        "faults.kill_slots=0.25@2", "faults.hang=0@2,1@2,2@2,3@2,4@2,5@2,6@2,7@2,0@3,1@3,2@3,3@3,4@3,5@3,6@3,7@3", "faults.hang_s=1.5",
        workers=8, rounds=3, backend="parsl",
    )
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds, tasks, faults = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv"), read_csv(out / "faults.csv")
    assert read_summary(out)["status"] == "completed" and len(rounds) == 3
    assert all(int(r["reported"]) >= 6 for r in rounds)  # every round closed by its quorum of 6 of 8
    assert [r["killed_slots"] for r in rounds] == ["0", "1", "0"]
    assert [f["action"] for f in faults] == ["kill_slot"] and faults[0]["round"] == "2"
    killed = int(faults[0]["target"])
    primed = {int(slot.split(":")[1]) for slot in read_summary(out)["slot_pids"]}
    assert len(primed) == 4 and killed in primed and not alive(killed)  # a recorded worker process, really gone
    lost = [t for t in tasks if t["status"] == "lost"]
    assert len(lost) == 1 and lost[0]["round"] == "2" and "WorkerLost" in lost[0]["error"]
    assert int(lost[0]["pid"]) == killed and lost[0]["host"]  # the slot that was lost, from the census
    retried = [t for t in tasks if t["client"] == lost[0]["client"] and t["round"] == "2" and t["attempt"] == "1"]
    assert len(retried) == 1 and retried[0]["status"] in ("ok", "late")
    if retried[0]["status"] == "ok":
        assert int(retried[0]["pid"]) != killed  # the retry ran on another slot
    assert killed not in {int(t["pid"]) for t in tasks if t["round"] == "3" and t["pid"]}
    assert rounds[2]["live_slots"] == "4"  # Parsl restarted the dead worker process
    # the restarted worker process was never primed: its first task is marked cold, and the round says so
    ran = sorted((float(t["task_started"]), int(t["pid"]), t["task_cold"], t["round"]) for t in tasks
                 if t["status"] == "ok" and t["kind"] == "train")
    new_pids = {pid for _, pid, _, _ in ran} - primed
    assert len(new_pids) >= 1, "no task ran on the restarted worker process"
    firsts = {pid: next(cold for _, p, cold, _ in ran if p == pid) for pid in new_pids}
    assert all(cold == "1" for cold in firsts.values()), firsts
    assert sum(cold == "1" for _, _, cold, _ in ran) == len(new_pids)  # once per new slot, never on a primed one
    assert all(cold == "0" for _, pid, cold, _ in ran if pid in primed)
    assert sum(int(r["cold_slots"]) for r in rounds) == len(new_pids) and rounds[0]["cold_slots"] == "0"
    manager = int(faults[0]["detail"].split("parent ")[1].rstrip(")"))
    deadline = time.monotonic() + 30
    while alive(manager) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(manager)  # the run's worker pool is gone with its executor
    assert not (out / "leftovers.json").exists() and list(tmp_path.glob("flight_parsl-*")) == []
