"""End to end on real Parsl HighThroughputExecutor workers (LocalProvider).

Each run loads and cleans up its own DataFlowKernel; the module keeps them few.
"""

import os
from pathlib import Path

import pytest

from conftest import read_csv, read_summary
from flight_parsl.core.errors import ExecutorError
from flight_parsl.engine.progress import Progress
from flight_parsl.transfer.redis_server import count_keys
from flight_parsl.engine.runner import run_experiment
from redis_fixtures import managed_redis  # noqa: F401 (fixture)
from test_startup import assert_startup_phases

pytestmark = pytest.mark.timeout(240)


def assert_each_process_reads_the_model_once(tasks: list[dict[str, str]]) -> None:
    """Every task returns one smallnet payload; per round, each worker process fetched the model
    once (a second task of the round on the same process finds it in its store's cache)."""
    size = int(tasks[0]["task_bytes_out"])
    assert size > 62006 * 4 and all(int(t["task_bytes_out"]) == size for t in tasks)
    for r in {t["round"] for t in tasks}:
        mine = {t["task"]: t for t in tasks if t["round"] == r}.values()  # one row per client: once per task
        assert sum(int(t["task_bytes_in"]) for t in mine) == size * len({t["pid"] for t in mine})


def test_debug_round_on_htex_workers(make_config) -> None:
    cfg = make_config("train.mode=none", "model.name=smallnet", workers=4, rounds=2, backend="parsl")
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    tasks = read_csv(out / "tasks.csv")
    summary = read_summary(out)
    assert len(tasks) == 8
    pids = {int(t["pid"]) for t in tasks}
    assert os.getpid() not in pids  # tasks ran in HTEX worker processes
    assert summary["status"] == "completed"
    assert summary["primed_slots"] == summary["slots"] == 2  # the warm-up reached every slot
    assert summary["start"] < summary["dfk_start_done"] < summary["priming_done"] < summary["end"]
    assert_startup_phases(summary)
    assert (out / "parsl").is_dir()
    assert_each_process_reads_the_model_once(tasks)


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_proxy_transfers_on_htex_workers(kind, make_config, managed_redis, tmp_path) -> None:
    import redis

    redis.Redis(managed_redis.address.host, managed_redis.address.port).set("sentinel", b"kept")
    cfg = make_config(
        "train.mode=none", "model.name=smallnet", f"transfer.kind={kind}",
        f"transfer.redis={managed_redis.address}", f"transfer.file_dir={tmp_path}",
        workers=4, rounds=2, backend="parsl",
    )
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    tasks = read_csv(out / "tasks.csv")
    assert len(tasks) == 8 and os.getpid() not in {int(t["pid"]) for t in tasks}
    assert_each_process_reads_the_model_once(tasks)
    assert count_keys(managed_redis.address) == 1  # only the sentinel
    assert list(tmp_path.glob("flight_parsl-*")) == []


def test_a_sigkilled_worker_process_costs_one_attempt_and_the_round_closes(make_config, tmp_path) -> None:
    # client 1's slot SIGKILLs itself in round 2: HTEX reports WorkerLost, the policy retries the
    # client on a live slot, and the round closes with all four clients
    cfg = make_config("train.mode=none", "model.name=tiny", "faults.kill=1@2", "plan.clients_per_task=1",
                      "round.retries=1", "transfer.kind=file", f"transfer.file_dir={tmp_path}",
                      workers=4, rounds=3, backend="parsl")
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds, tasks = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert [(r["participants"], r["failed"], r["retries"]) for r in rounds] == [("4", "0", "0"), ("4", "0", "1"), ("4", "0", "0")]
    lost = [t for t in tasks if t["status"] != "ok"]
    assert [(t["round"], t["client"], t["attempt"], t["status"]) for t in lost] == [("2", "1", "0", "lost")]
    assert "WorkerLost" in lost[0]["error"]
    retried = [t for t in tasks if t["round"] == "2" and t["client"] == "1" and t["status"] == "ok"]
    assert len(retried) == 1 and retried[0]["attempt"] == "1"
    assert read_summary(out)["status"] == "completed"
    assert list(tmp_path.glob("flight_parsl-*")) == []


def test_local_training_on_htex_workers(make_config) -> None:
    cfg = make_config("model.name=logreg", "train.epochs=3", workers=2, rounds=2, backend="parsl")
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds = read_csv(out / "rounds.csv")
    assert len(rounds) == 2 and len(read_csv(out / "tasks.csv")) == 4
    assert float(rounds[-1]["test_acc"]) > 0.8


def test_workers_that_never_start_give_a_clear_error(make_config, tmp_path) -> None:
    site = tmp_path / "broken.yaml"
    site.write_text(
        "address: 127.0.0.1\nencrypted: false\nstart_timeout: 15\n"
        "provider:\n  kind: local\n  worker_init: 'exit 3'\n"
    )
    cfg = make_config("train.mode=none", "model.name=tiny", workers=1, rounds=1, backend="parsl", parsl_config=str(site))
    with pytest.raises(ExecutorError, match="warm-up task failed .*EXIT CODE: 3"):
        run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    assert read_summary(tmp_path / "run")["status"] == "failed"


def test_sweep_reuses_one_dataflowkernel_per_worker_count(tmp_path) -> None:
    import subprocess
    import sys

    from flight_parsl.results.table import read_rows

    out = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "flight_parsl.scale", "--train", "none", "--rounds", "1", "--out", str(out),
        "--workers", "2", "--model", "tiny,smallnet", "--transfer", "parsl,file", f"transfer.file_dir={tmp_path}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out / "results.csv")
    assert [(r["model"], r["transfer"], r["status"]) for r in rows] == [
        ("tiny", "parsl", "ok"), ("tiny", "file", "ok"), ("smallnet", "parsl", "ok"), ("smallnet", "file", "ok")
    ]
    pids = [{t["pid"] for t in read_csv(Path(r["run_dir"]) / "tasks.csv")} for r in rows]
    all_pids = set.union(*pids)
    assert len(all_pids) <= 2  # the same two HTEX workers served every run
    assert [p.name for p in out.glob("executor-n*")] == ["executor-n2"]


def test_hierarchical_round_through_redis_on_htex(make_config, managed_redis) -> None:
    cfg = make_config(
        "train.mode=none", "model.name=smallnet", "topology=tree:3", "broadcast=tree", "plan.clients_per_task=1",
        "transfer.kind=redis", f"transfer.redis={managed_redis.address}", "transfer.cache_size=0",
        workers=8, rounds=2, backend="parsl",
    )
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds, tasks = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert all(int(r["edge_bytes"]) == int(r["modeled_hierarchical_bytes"]) for r in rounds)
    kinds = [t["kind"] for t in tasks]
    assert (kinds.count("train"), kinds.count("aggregate"), kinds.count("relay")) == (16, 12, 12)
    assert os.getpid() not in {int(t["pid"]) for t in tasks}
    assert count_keys(managed_redis.address) == 0
