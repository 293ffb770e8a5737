"""Asynchronous FedAsync: the update budget, continuous dispatch, idle time, cleanup."""

import pytest

from conftest import read_csv, read_summary, run_quietly
from flight_parsl.core.errors import ConfigError
from flight_parsl.transfer.redis_server import count_keys
from redis_fixtures import managed_redis  # noqa: F401 (fixture)


run = run_quietly


def test_async_training_folds_rounds_times_window_updates(make_config) -> None:
    out = run(make_config, "mode=async", "strategy.name=fedasync", "strategy.alpha=0.5", "model.name=logreg",
              "slots=4", workers=4, rounds=3)
    tasks, rounds = read_csv(out / "tasks.csv"), read_csv(out / "rounds.csv")
    assert len(tasks) == 12 and len(rounds) == 3
    assert all(r["participants"] == "4" for r in rounds)
    per_client = {c: sum(t["client"] == str(c) for t in tasks) for c in range(4)}
    assert sum(per_client.values()) == 12 and min(per_client.values()) >= 1
    assert float(rounds[-1]["test_acc"]) > 0.8
    summary = read_summary(out)
    assert summary["status"] == "completed" and "idle_pct_mean" in summary
    # tasks.csv: the window in `round`, the global model version the client started from in `model_version`
    assert [t["round"] for t in tasks] == ["1"] * 4 + ["2"] * 4 + ["3"] * 4
    versions = [int(t["model_version"]) for t in tasks]
    assert sorted(versions)[:5] == [0, 0, 0, 0, 1] and max(versions) <= 11 and len(set(versions)) > 4
    # a slot's next task starts right after its update is folded in: idle is measured per task
    idles = [float(t["task_idle_s"]) for t in tasks if t["task_idle_s"] != ""]
    assert len(idles) == 12 - 4 and all(i >= -0.01 for i in idles)


def test_fedbuff_makes_one_model_per_buffer(make_config) -> None:
    out = run(make_config, "mode=async", "strategy.name=fedbuff", "strategy.buffer_size=3", "model.name=logreg",
              "slots=2", workers=6, rounds=2)
    tasks, rounds = read_csv(out / "tasks.csv"), read_csv(out / "rounds.csv")
    assert len(tasks) == 12 and len(rounds) == 2
    versions = [int(t["model_version"]) for t in tasks]
    assert sorted(versions)[:3] == [0, 0, 0] and 2 <= max(versions) <= 12 // 3  # a new model every 3 updates
    assert float(rounds[-1]["test_acc"]) > float(rounds[0]["test_acc"]) - 0.05 and float(rounds[-1]["test_acc"]) > 0.5


def test_async_keeps_workers_busy_where_sync_waits_for_stragglers(make_config, tmp_path) -> None:
    # Tasks long enough that the coordinator's own latency on a loaded machine is a small share of a
    # slot's time; the comparison is side by side in one run (the published: 0.06% against 14.9%).
    common = ("model.name=logreg", "train.epochs=8", "train.slowdown_max=6", "seed=1")
    sync = run(make_config, *common, "slots=4", workers=4, rounds=3, out=str(tmp_path / "sync"))
    asyn = run(make_config, *common, "slots=4", "mode=async", "strategy.name=fedasync", workers=4, rounds=3,
               out=str(tmp_path / "async"))
    idle_sync = read_summary(sync)["idle_pct_mean"]
    idle_async = read_summary(asyn)["idle_pct_mean"]
    assert idle_async < 10 and idle_async < 0.3 * idle_sync, (idle_async, idle_sync)


def test_async_through_redis_leaves_no_key(make_config, managed_redis) -> None:
    out = run(
        make_config, "mode=async", "strategy.name=fedasync", "train.mode=none", "model.name=smallnet",
        "transfer.kind=redis", f"transfer.redis={managed_redis.address}", workers=3, rounds=4,
    )
    assert len(read_csv(out / "tasks.csv")) == 12
    assert count_keys(managed_redis.address) == 0


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["mode=async"], "key 'mode' = 'async': strategy 'fedavg' runs in mode 'sync'"),
        (["strategy.name=fedasync"], "key 'mode' = 'sync': strategy 'fedasync' runs in mode 'async'"),
        (["mode=async", "strategy.name=fedasync", "topology=tree:2"], "mode 'async' runs on a flat topology"),
        (["strategy.alpha=0"], "key 'strategy.alpha' = 0: must be > 0"),
        (["train.slowdown_max=0.5"], "key 'train.slowdown_max' = 0.5: must be >= 1"),
    ],
)
def test_mode_errors(make_config, overrides, needle) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(*overrides)
    assert needle in str(err.value)
