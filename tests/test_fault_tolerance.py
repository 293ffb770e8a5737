"""Fault tolerance on the thread pool: the round section, quorum close, late work, retry backoff,
membership, AIMD epochs, checkpoint and resume (one run SIGKILLed in a subprocess), and a real
redis-server killed mid-round and the run resumed."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_csv, read_summary

from flight_parsl.config.experiment import build_config
from flight_parsl.core.errors import ConfigError, RoundError
from flight_parsl.engine.checkpoint import load
from flight_parsl.engine.progress import Progress
from flight_parsl.engine.runner import run_experiment
from flight_parsl.fl.aimd import AIMDEpochs
from flight_parsl.fl.membership import Membership
from flight_parsl.fl.policy import RoundPolicy

pytestmark = pytest.mark.timeout(180)

QUICK = ("train.mode=none", "model.name=tiny", "plan.clients_per_task=1", "slots=4")


def run(cfg, resume: bool = False) -> Path:
    return run_experiment(cfg, Progress(cfg.rounds, enabled=False), resume=resume)


# config ---------------------------------------------------------------------------------


def test_policy_is_a_deprecated_alias_of_the_round_section(tmp_path) -> None:
    with pytest.warns(FutureWarning, match="'policy' is deprecated: write 'round'"):
        cfg = build_config(overrides=["policy.retries=3", "round.quorum=0.75", "policy.min_fraction=0.75"])
    assert (cfg.round.retries, cfg.round.quorum, cfg.round.min_fraction) == (3, 0.75, 0.75)
    assert isinstance(cfg.round, RoundPolicy) and "policy" not in cfg.to_dict()
    old = tmp_path / "old.yaml"
    old.write_text("policy:\n  retries: 5\n  deadline_s: 9\n")
    assert (build_config(old).round.retries, build_config(old).round.deadline_s) == (5, 9.0)
    both = tmp_path / "both.yaml"
    both.write_text("policy:\n  retries: 5\nround:\n  retries: 2\n")
    with pytest.raises(ConfigError, match="'policy.retries' and 'round.retries' are the same key"):
        build_config(both)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["round.quorum=0.5", "round.min_fraction=0.75"], r"key 'round.quorum' = 0.5: must be >= round.min_fraction \(0.75\)"),
        (["round.quorum=1.5"], r"key 'round.quorum' = 1.5: must be <= 1"),
        (["round.late=keep"], r"key 'round.late' = 'keep': must be one of 'discard' or 'stale'"),
        (["faults.kill_slots=2@0"], r"key 'faults.kill_slots\[0\]' = '2@0': '2@0' is not K@ROUND or K@Ts"),
        (["faults.kill_slots=1.5@2"], r"key 'faults.kill_slots\[0\]' = '1.5@2'"),
        (["faults.kill_slots=0.25@2", "backend=thread"], "killing worker processes needs backend parsl"),
        (["faults.redis_stop=2", "transfer.kind=file"], "key 'faults.redis_stop' = \\[2\\]: stopping Redis needs transfer.kind=redis"),
        (["faults.slow=9", "workers=4"], r"key 'faults.slow' = \[9\]: client 9 is not a client id in 0..3"),
        (["strategy.aimd=true", "strategy.aimd_start=0"], r"key 'strategy.aimd_start' = 0: must be > 0"),
    ],
)
def test_bad_fault_tolerance_keys_name_the_key_and_what_is_allowed(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


def test_kill_slots_take_counts_fractions_rounds_and_times() -> None:
    from flight_parsl.config.experiment import SlotKill

    cfg = build_config(overrides=["faults.kill_slots=0.25@2, 3@1,2@30s"])
    assert cfg.faults.kill_slots == [SlotKill(0.25, "round", 2.0), SlotKill(3.0, "round", 1.0), SlotKill(2.0, "time", 30.0)]
    assert cfg.to_dict()["faults"]["kill_slots"] == ["0.25@2", "3@1", "2@30s"]  # config.yaml: the text given
    from flight_parsl.cli.scale import build_parser

    args = build_parser().parse_args(["--inject", "kill_slots=0.25@2", "--inject", "faults.redis_stop=3"])
    assert args.inject == ["kill_slots=0.25@2", "faults.redis_stop=3"]


# parts ----------------------------------------------------------------------------------


def test_policy_quorum_and_backoff() -> None:
    p = RoundPolicy(min_fraction=0.75, quorum=0.75, backoff_s=0.5)
    assert [p.closes_at(n) for n in (1, 4, 44)] == [1, 3, 33] and p.must_report(44) == 33
    assert [p.backoff(a) for a in (0, 1, 2)] == [0.5, 1.0, 2.0]
    assert RoundPolicy().closes_at(44) == 44


def test_membership_removes_after_max_missed_and_readmits_when_slots_are_back() -> None:
    m = Membership(4, max_missed=2, readmit_after=1)
    assert m.update(0, [0, 2, 3], [1]) == [] and m.update(1, [0, 2, 3], [1]) == []
    assert m.update(2, [0, 2], [1, 3]) == [1]  # client 1 missed 3 > 2 rounds; client 3 only one
    assert m.members() == [0, 2, 3]
    assert m.readmit(3, lambda: True) == []  # out for readmit_after rounds first
    assert m.readmit(4, lambda: False) == []  # a slot is still dead
    assert m.readmit(4, lambda: True) == [1] and m.members() == [0, 1, 2, 3]
    m.update(5, [0, 1, 2, 3], [])
    assert m.state() == {"missed": {}, "removed": {}}


def test_members_are_computed_not_listed() -> None:
    import random
    import tracemalloc

    from flight_parsl.fl.membership import Members

    rng = random.Random(3)
    for _ in range(200):  # against the plain list, with any clients removed
        n = rng.randint(1, 40)
        removed = set(rng.sample(range(n), rng.randint(0, n)))
        want = [c for c in range(n) if c not in removed]
        got = Members(n, removed)
        assert len(got) == len(want) and [got[i] for i in range(len(got))] == want and got == want
        assert list(got) == want and got[-2:] == want[-2:]
    with pytest.raises(IndexError):
        Members(3, [1])[2]
    tracemalloc.start()  # a population of 10^6: no per-client memory
    m = Membership(1_000_000)
    m.update(0, [], [5, 7])
    m.update(1, [], [5, 7])
    m.update(2, [], [5, 7])  # 5 and 7 missed 3 rounds in a row: removed
    members = m.members()
    assert len(members) == 999_998 and members[5] == 6 and members[6] == 8 and members[-1] == 999_999
    assert tracemalloc.get_traced_memory()[1] < 1_000_000
    tracemalloc.stop()


def test_aimd_adds_one_on_time_and_halves_when_late() -> None:
    a = AIMDEpochs(start=4)
    a.update(on_time=[0], late=[1])
    a.update(on_time=[0], late=[1])
    a.update(on_time=[0], late=[1])
    assert (a.epochs(0), a.epochs(1), a.epochs(2)) == (7, 1, 4)
    capped = AIMDEpochs(start=4, cap=5)
    for _ in range(3):
        capped.update([0], [])
    assert capped.epochs(0) == 5


# rounds ---------------------------------------------------------------------------------


def test_a_round_closes_at_its_quorum_and_late_work_is_discarded(make_config) -> None:
    cfg = make_config(*QUICK, "round.quorum=0.75", "faults.hang=1@2", "faults.hang_s=2", workers=4, rounds=3)
    out = run(cfg)
    rounds, tasks = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert [(r["sampled"], r["reported"]) for r in rounds] == [("4", "3")] * 3  # 3 of 4 close a round
    second = [t for t in tasks if t["round"] == "2"]
    assert [(t["client"], t["status"]) for t in second if t["status"] != "ok"] == [("1", "late")]
    assert float(rounds[1]["makespan_s"]) < 1.0 and rounds[1]["late"] == "1" and rounds[1]["failed"] == "1"
    assert all(float(t["task_rtt_s"]) >= 0 for t in tasks)
    assert read_summary(out)["status"] == "completed"


def test_late_results_are_folded_stale_into_the_next_round(make_config) -> None:
    # round 1: client 1 sleeps 0.3 s and is late; round 2 waits ~0.8 s for its third report, so
    # round 1's late result has arrived and is folded with half its weight
    cfg = make_config(*QUICK, "round.quorum=0.75", "round.late=stale", "faults.hang=1@1,0@2,2@2",
                      "faults.hang_s=0.8", workers=4, rounds=3)
    out = run(cfg)
    rounds = read_csv(out / "rounds.csv")
    assert [r["stale_folded"] for r in rounds][:2] == ["0", "1"]
    assert int(rounds[1]["late"]) >= 1


def test_a_retry_waits_out_its_backoff(make_config, monkeypatch) -> None:
    import flight_parsl.engine.sync as engine

    real, calls = engine.train_task, []

    def fails_once(ref, round_idx, node, clients, *rest):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return real(ref, round_idx, node, clients, *rest)

    monkeypatch.setattr(engine, "train_task", fails_once)
    out = run(make_config(*QUICK, "round.retries=5", "round.backoff_s=0.4", workers=2, rounds=1))
    rows = sorted(read_csv(out / "tasks.csv"), key=lambda t: float(t["task_submitted"]))
    failed = [t for t in rows if t["status"] == "error"]
    retry = [t for t in rows if t["attempt"] == "1"]
    assert len(failed) == 1 and len(retry) == 1 and retry[0]["status"] == "ok"
    assert float(retry[0]["task_submitted"]) - float(failed[0]["task_received"]) >= 0.4
    assert read_csv(out / "rounds.csv")[0]["retries"] == "1"


def test_slow_clients_train_with_the_slowdown_every_round(make_config, monkeypatch) -> None:
    import flight_parsl.engine.sync as engine

    real, seen = engine.train_task, []

    def capture(ref, round_idx, node, clients, *rest):
        seen.extend((round_idx, c, s.slowdown) for c, s in clients)
        return real(ref, round_idx, node, clients, *rest)

    monkeypatch.setattr(engine, "train_task", capture)
    out = run(make_config("model.name=logreg", "train.epochs=1", "faults.slow=1", "faults.slow_factor=3",
                          workers=3, rounds=2))
    assert sorted(seen) == [(r, c, 3.0 if c == 1 else 1.0) for r in range(2) for c in range(3)]
    rows = {(t["round"], t["client"]): float(t["client_s"]) for t in read_csv(out / "tasks.csv")}
    assert all(rows[r, "1"] > 0 for r in ("1", "2"))


def test_a_client_that_keeps_missing_leaves_the_sample_and_comes_back(make_config) -> None:
    cfg = make_config(*QUICK, "round.quorum=0.75", "round.max_missed=2", "faults.hang=3@1,3@2,3@3",
                      "faults.hang_s=0.6", workers=4, rounds=6)
    rounds = read_csv(run(cfg) / "rounds.csv")
    assert [r["members"] for r in rounds] == ["4", "4", "4", "3", "4", "4"]
    assert [r["removed"] for r in rounds] == ["", "", "3", "", "", ""]
    assert [r["readmitted"] for r in rounds] == ["", "", "", "", "3", ""]


def test_aimd_epochs_follow_each_clients_reports(make_config) -> None:
    # round.max_missed=null: a slow machine can make client 2 late a third time (its slot still
    # sleeping through round 2's hang); membership would then drop it, which is not what this tests
    cfg = make_config(*QUICK, "strategy.aimd=true", "round.quorum=0.75", "faults.hang=2@1,2@2",
                      "faults.hang_s=0.5", "round.max_missed=null", workers=4, rounds=4)
    tasks = read_csv(run(cfg) / "tasks.csv")
    budget = {c: 4 for c in range(4)}
    for r in range(4):
        rows = {int(t["client"]): t for t in tasks if t["round"] == str(r + 1) and t["attempt"] == "0"}
        assert {c: int(t["epochs"]) for c, t in rows.items()} == budget, r
        for c, t in rows.items():
            budget[c] = budget[c] + 1 if t["status"] == "ok" else max(1, budget[c] // 2)
    assert budget[2] < 4 < max(budget.values())


# checkpoint and resume --------------------------------------------------------------------


def test_a_run_below_quorum_resumes_from_its_checkpoint(make_config, monkeypatch) -> None:
    import flight_parsl.engine.sync as engine

    real = engine.train_task

    def crashing(ref, round_idx, node, clients, *rest):
        if round_idx == 2:
            raise RuntimeError("injected failure")
        return real(ref, round_idx, node, clients, *rest)

    monkeypatch.setattr(engine, "train_task", crashing)
    cfg = make_config(*QUICK, "round.retries=0", workers=4, rounds=4)
    with pytest.raises(RoundError, match=r"round 3: 0/4 sampled clients reported \(0 late, 4 failed\)"):
        run(cfg)
    assert load(cfg.out).next_round == 2 and len(read_csv(Path(cfg.out) / "rounds.csv")) == 3
    monkeypatch.setattr(engine, "train_task", real)
    out = run(cfg, resume=True)
    rounds, tasks = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert [r["round"] for r in rounds] == ["1", "2", "3", "4"] and rounds[2]["reported"] == "4"
    assert {(t["round"], t["segment"]) for t in tasks if t["status"] == "error"} == {("3", "0")}
    assert {t["segment"] for t in tasks if t["round"] == "4"} == {"1"}
    summary = read_summary(out)
    assert summary["status"] == "completed" and summary["resumes"] == 1 and summary["rounds_completed"] == 4
    assert summary["resumed_from_round"] == 3  # rounds 1 and 2 stood; round 3 ran again
    # each segment's own times; start2end spans both, the time between them included, and says so
    first, second = summary["segments"]
    assert (first["segment"], first["first_round"], second["segment"], second["first_round"]) == (0, 1, 1, 3)
    for seg in (first, second):
        assert seg["start"] <= seg["priming_done"] <= seg["end"]
        assert seg["start2end"] == pytest.approx(seg["end"] - seg["start"])
        assert seg["prime2end"] == pytest.approx(seg["end"] - seg["priming_done"])
    assert first["end"] <= second["start"]
    assert (summary["start"], summary["priming_done"], summary["end"]) == (
        first["start"], first["priming_done"], second["end"])
    assert summary["start2end"] == pytest.approx(second["end"] - first["start"])
    assert summary["start2end"] >= first["start2end"] + second["start2end"]
    assert "all 2 segments" in summary["start2end_spans"]
    assert not (out / "leftovers.json").exists()


def test_a_sigkilled_coordinator_resumes_to_the_same_final_model(make_config, tmp_path) -> None:
    common = ["--backend", "thread", "--workers", "3", "--rounds", "5", "--model", "logreg", "-q", "slots=1",
              "round.quorum=0.67", "strategy.aimd=true", f"transfer.file_dir={tmp_path}"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "flight_parsl.scale", *common, "--out", str(killed)], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            point = killed / "checkpoint.pkl"
            if point.exists() and pickle.loads(point.read_bytes()).next_round >= 1:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert (killed / "leftovers.json").exists() and list(tmp_path.glob("flight_parsl-*"))  # what SIGKILL left
    from flight_parsl.cli.scale import main

    assert main(["--resume", str(killed), "-q"]) == 0
    assert list(tmp_path.glob("flight_parsl-*")) == []  # the resumed run removed it
    whole = make_config("model.name=logreg", "slots=1", "round.quorum=0.67", "strategy.aimd=true",
                        f"transfer.file_dir={tmp_path}", workers=3, rounds=5)
    run(whole)
    a, b = load(whole.out).weights, load(killed).weights
    assert np.array_equal(a.buffer, b.buffer)
    assert [r["round"] for r in read_csv(killed / "rounds.csv")] == ["1", "2", "3", "4", "5"]
    assert read_summary(killed)["status"] == "completed"


def test_redis_killed_mid_round_then_resume_finishes_the_run(make_config, tmp_path) -> None:
    from flight_parsl.cli.scale import main

    out = tmp_path / "run"
    args = ["--backend", "thread", "--workers", "4", "--rounds", "3", "--train", "none", "--model", "smallnet",
            "--transfer", "redis", "--out", str(out), "-q", "round.retries=1", "plan.clients_per_task=1",
            "--inject", "redis_stop=2", "--inject", "kill_after_s=0", "--inject", "hang=0@2,1@2,2@2,3@2",
            "--inject", "hang_s=0.5", "--inject", "redis_down_s=0"]
    assert main(args) == 2  # Redis lost the round's keys: the run stops with one message
    faults = read_csv(out / "faults.csv")
    assert [f["action"] for f in faults] == ["redis_kill", "redis_restart"]
    summary = read_summary(out)
    assert summary["status"] == "failed" and load(out).next_round == 1
    for f in faults:
        with pytest.raises(ProcessLookupError):
            os.kill(int(f["target"]), 0)  # neither the killed nor the restarted server is left
    assert main(["--resume", str(out), "-q"]) == 0
    assert [r["round"] for r in read_csv(out / "rounds.csv")] == ["1", "2", "3"]
    assert read_summary(out)["status"] == "completed"
