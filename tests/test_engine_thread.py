"""End to end on the thread pool: training, debug mode, run directory, failures."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import read_csv, read_summary
from flight_parsl.core.errors import RoundError
from flight_parsl.engine.progress import Progress
from flight_parsl.engine.runner import run_experiment
from redis_fixtures import managed_redis  # noqa: F401 (fixture)


def test_local_training_on_digits_learns_and_writes_the_run_directory(make_config) -> None:
    cfg = make_config(workers=4, rounds=3)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds = read_csv(out / "rounds.csv")
    tasks = read_csv(out / "tasks.csv")
    summary = read_summary(out)
    assert (out / "config.yaml").is_file()
    assert len(rounds) == 3 and len(tasks) == 12  # one row per client per round
    accs = [float(r["test_acc"]) for r in rounds]
    assert accs[-1] >= 0.85, accs
    assert float(rounds[-1]["test_loss"]) < float(rounds[0]["test_loss"]) * 1.5
    assert sorted({int(t["client"]) for t in tasks}) == [0, 1, 2, 3]
    # every client's samples sum to the digits training split (1,438 of 1,797, stratified)
    assert sum(int(t["samples"]) for t in tasks if t["round"] == "1") in range(1430, 1445)
    # four clients packed into two tasks (one per slot), each folded into one partial in the slot
    first = [t for t in tasks if t["round"] == "1"]
    assert summary["slots"] == 2 and len({t["task"] for t in first}) == 2
    assert all(t["task_clients"] == "2" and t["status"] == "ok" for t in tasks)
    for t in tasks:
        assert float(t["task_submitted"]) <= float(t["task_started"]) <= float(t["client_started"])
        assert float(t["client_started"]) <= float(t["client_finished"]) <= float(t["task_finished"]) <= float(t["task_received"])
    size = int(first[0]["task_bytes_out"])
    assert all(int(t["task_bytes_out"]) == size for t in tasks) and size >= summary["model_bytes"]
    per_task = {t["task"]: (int(t["task_bytes_in"]), int(t["task_bytes_out"])) for t in first}
    # the pool's one process reads the round's model once (file transfer); the other task finds it cached
    assert sorted(b for b, _ in per_task.values()) == [0, size]
    assert int(rounds[0]["bytes_moved"]) == sum(b + o for b, o in per_task.values()) == 3 * size
    assert [int(r["tasks"]) for r in rounds] == [2, 2, 2] and all(r["participants"] == "4" for r in rounds)
    assert summary["status"] == "completed"
    assert summary["start"] <= summary["dfk_start_done"] <= summary["priming_done"] <= summary["end"]
    assert summary["prime2end"] == pytest.approx(summary["end"] - summary["priming_done"])
    assert summary["start2end"] >= summary["prime2end"] > 0
    assert summary["final_test_acc"] == pytest.approx(accs[-1])


def test_debug_mode_returns_the_broadcast_weights(make_config) -> None:
    cfg = make_config("train.mode=none", "model.name=smallnet", workers=3, rounds=2)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    tasks = read_csv(out / "tasks.csv")
    summary = read_summary(out)
    assert len(tasks) == 6
    assert summary["num_parameters"] == 62006  # the reference SmallNet, not one sized to the dataset
    assert all(t["train_loss"] == "" and t["samples"] == "1" for t in tasks)
    assert read_csv(out / "rounds.csv")[0]["test_acc"] == ""


def test_fedsgd_runs_one_step_per_round(make_config) -> None:
    cfg = make_config("strategy.name=fedsgd", "train.lr=0.5", workers=2, rounds=2)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds = read_csv(out / "rounds.csv")
    assert len(rounds) == 2
    assert float(rounds[1]["test_loss"]) < float(rounds[0]["test_loss"])


def _crash(monkeypatch, when) -> None:
    """Make train tasks raise for the (round, client) pairs ``when`` accepts."""
    import flight_parsl.engine.sync as engine

    real = engine.train_task

    def crashing(ref, round_idx, node, clients, *rest):
        if any(when(round_idx, c) for c, _ in clients):
            raise RuntimeError("injected failure")
        return real(ref, round_idx, node, clients, *rest)

    monkeypatch.setattr(engine, "train_task", crashing)


def test_a_failing_task_is_an_outcome_the_round_survives(make_config, monkeypatch) -> None:
    _crash(monkeypatch, lambda r, c: r == 1 and c == 2)
    cfg = make_config("train.mode=none", "model.name=tiny", "round.retries=0", "plan.clients_per_task=1",
                      workers=4, rounds=3)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds, tasks = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert [(r["participants"], r["failed"]) for r in rounds] == [("4", "0"), ("3", "1"), ("4", "0")]
    failed = [t for t in tasks if t["status"] != "ok"]
    assert [(t["round"], t["client"], t["status"]) for t in failed] == [("2", "2", "error")]
    assert "RuntimeError: injected failure" in failed[0]["error"]
    assert read_summary(out)["status"] == "completed"


def test_failed_client_work_is_retried_within_the_round(make_config, monkeypatch) -> None:
    import flight_parsl.engine.sync as engine

    real, calls = engine.train_task, []

    def fails_once(ref, round_idx, node, clients, *rest):
        calls.append([c for c, _ in clients])
        if len(calls) == 1:
            raise RuntimeError("transient")
        return real(ref, round_idx, node, clients, *rest)

    monkeypatch.setattr(engine, "train_task", fails_once)
    cfg = make_config("train.mode=none", "model.name=tiny", "round.retries=1", workers=4, rounds=1)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds, tasks = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert rounds[0]["participants"] == "4" and rounds[0]["retries"] == "1"
    retried = calls[0]
    rows = [(t["client"], t["attempt"], t["status"]) for t in tasks if int(t["client"]) in retried]
    assert sorted(rows) == sorted([(str(c), "0", "error") for c in retried] + [(str(c), "1", "ok") for c in retried])


def test_a_round_below_the_quorum_stops_the_run_with_one_message(make_config, monkeypatch) -> None:
    _crash(monkeypatch, lambda r, c: r == 1 and c != 0)
    cfg = make_config("train.mode=none", "model.name=tiny", "round.retries=0", "round.min_fraction=0.75",
                      "plan.clients_per_task=1", workers=4, rounds=3)
    with pytest.raises(RoundError, match=r"round 2: 1/4 sampled clients reported \(0 late, 3 failed\), below the quorum of 3 "
                                          r"\(round.min_fraction=0.75\); failures: error"):
        run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    out = Path(cfg.out)
    assert [r["participants"] for r in read_csv(out / "rounds.csv")] == ["4", "1"]
    summary = read_summary(out)
    assert summary["status"] == "failed" and "below the quorum" in summary["error"]


def test_debug_mode_task_never_imports_torch() -> None:
    code = """
import sys
from flight_parsl.data import PartitionSpec
from flight_parsl.core.model_spec import ModelSpec
from flight_parsl.core.types import LocalSettings, Workload
from flight_parsl.fl.strategies import FedAvg
from flight_parsl.worker.tasks import train_task
from flight_parsl.transfer import InlineRef
from flight_parsl.core.weights import FlatWeights, Layout
import numpy as np
w = FlatWeights(np.arange(4, dtype=np.float32), Layout.from_shapes([("a", (4,), "float32")]))
wl = Workload("none", ModelSpec("tiny", 1, 1, 1), "digits", None, PartitionSpec(), 2, 0)
res = train_task(InlineRef(w.to_bytes()), 0, "coordinator", [(0, LocalSettings(1, 1, 0.1)), (1, LocalSettings(1, 1, 0.1))], wl, FedAvg())
assert len(res.outputs) == 1 and res.weight == 2 and [c.client for c in res.clients] == [0, 1]
assert np.array_equal(res.outputs[0][0].resolve()[0].buffer, w.buffer)
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_same_seed_gives_the_same_model_and_another_seed_another(make_config, tmp_path) -> None:
    def losses(name: str, seed: int) -> list[float]:
        out = run_experiment(make_config(workers=2, rounds=1, seed=seed, out=str(tmp_path / name)), Progress(1, enabled=False))
        return [float(r["test_loss"]) for r in read_csv(out / "rounds.csv")]

    a, b, c = losses("a", 0), losses("b", 0), losses("c", 1)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert abs(a[0] - c[0]) > 1e-4


def test_process_pool_backend_runs_tasks_in_other_processes(make_config) -> None:
    import os

    cfg = make_config("train.mode=none", "model.name=tiny", workers=2, rounds=2, backend="process")
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    tasks = read_csv(out / "tasks.csv")
    assert len(tasks) == 4 and os.getpid() not in {int(t["pid"]) for t in tasks}


def test_work_still_out_at_the_deadline_fails_and_the_round_closes(make_config) -> None:
    import time

    cfg = make_config("train.mode=none", "model.name=tiny", "round.deadline_s=1.5", "round.retries=0",
                      "faults.hang=1@1", "faults.hang_s=4", "plan.clients_per_task=1", workers=2, rounds=2)
    t0 = time.monotonic()
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds, tasks = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert float(rounds[0]["makespan_s"]) == pytest.approx(1.5, abs=0.5)
    assert [(r["participants"], r["failed"]) for r in rounds] == [("1", "1"), ("2", "0")]
    late = [(t["round"], t["client"], t["status"]) for t in tasks if t["status"] != "ok"]
    assert late == [("1", "1", "deadline")]
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("path", ["error", "deadline", "quorum"])
def test_failed_and_late_work_leave_no_key_and_no_directory(path, make_config, monkeypatch, managed_redis, tmp_path) -> None:
    import redis as redis_py

    from flight_parsl.transfer.redis_server import count_keys

    redis_py.Redis(managed_redis.address.host, managed_redis.address.port).set("sentinel", b"kept")
    common = ["train.mode=none", "model.name=smallnet", "plan.clients_per_task=1", "round.retries=0",
              f"transfer.redis={managed_redis.address}"]
    if path == "deadline":
        common += ["round.deadline_s=1", "faults.hang=1@1", "faults.hang_s=2"]
    else:
        _crash(monkeypatch, (lambda r, c: c == 1) if path == "error" else (lambda r, c: r == 1))
    for kind in ("redis", "file"):
        cfg = make_config(*common, f"transfer.kind={kind}", f"transfer.file_dir={tmp_path}", workers=3, rounds=2,
                          out=str(tmp_path / f"run-{kind}"))
        if path == "quorum":
            with pytest.raises(RoundError):
                run_experiment(cfg, Progress(cfg.rounds, enabled=False))
        else:
            run_experiment(cfg, Progress(cfg.rounds, enabled=False))
        statuses = {t["status"] for t in read_csv(Path(cfg.out) / "tasks.csv")}
        assert statuses == {"ok", "error" if path == "quorum" else path}
        assert count_keys(managed_redis.address) == 1  # only the sentinel
        assert list(tmp_path.glob("flight_parsl-*")) == []
