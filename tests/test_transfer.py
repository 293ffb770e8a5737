"""Transfer channels: round trips, exact byte counts, eviction, and clear failures."""

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import redis

from conftest import read_csv, read_summary
from flight_parsl.core.errors import ConfigError, ExecutorError, RoundError, TransferError
from flight_parsl.engine.progress import Progress
from flight_parsl.transfer.redis_server import ManagedRedis, check_reachable, count_keys
from flight_parsl.engine.runner import run_experiment
from flight_parsl.transfer import open_transfer
from flight_parsl.core.weights import FlatWeights, Layout
from redis_fixtures import managed_redis, require_redis_server  # noqa: F401 (fixture)


def _weights(seed: int, n: int = 1000) -> FlatWeights:
    layout = Layout.from_shapes([("w", (n,), "float32")])
    return FlatWeights(np.random.default_rng(seed).normal(size=n).astype(np.float32), layout)


def _round_trip(transfer) -> int:
    """Publish, resolve as a worker would, reply, collect; returns the payload size."""
    w = _weights(0)
    ref = transfer.publish(w, 0)
    got, get_s, de_s, fetched = ref.resolve()
    assert np.array_equal(got.buffer, w.buffer) and got.layout == w.layout
    assert get_s >= 0 and de_s >= 0
    assert fetched == ref.nbytes  # the first read crosses
    # again in the same process: a store's cache already holds it; the task's bytes came with it
    assert ref.resolve().fetched == (ref.nbytes if transfer.kind == "parsl" else 0)
    back, ser_s, put_s = ref.reply(_weights(1))
    for _ in range(2):  # a read past the cache (an aggregator's child) crosses every time
        once = back.resolve(cache=False)
        assert once.fetched == back.nbytes and np.array_equal(once.weights.buffer, _weights(1).buffer)
    assert np.array_equal(transfer.collect(back).buffer, _weights(1).buffer)
    assert ref.nbytes == back.nbytes == len(w.to_bytes())
    return ref.nbytes


def test_parsl_round_trip() -> None:
    with open_transfer("parsl") as t:
        assert _round_trip(t) == len(_weights(0).to_bytes())


def test_file_round_trip_evicts_the_round_and_removes_its_directory(tmp_path) -> None:
    with open_transfer("file", file_dir=str(tmp_path)) as t:
        _round_trip(t)
        (store_dir,) = tmp_path.iterdir()
        objects = [p for p in store_dir.iterdir() if p.suffix != ".ready"]
        assert len(objects) == 2  # the global model and one result
        t.end_round(0)
        assert list(store_dir.iterdir()) == []
    assert list(tmp_path.iterdir()) == []


def test_redis_round_trip_leaves_no_key(managed_redis) -> None:
    addr = managed_redis.address
    with open_transfer("redis", redis=str(addr)) as t:
        _round_trip(t)
        assert count_keys(addr) == 2
        t.end_round(0)
        assert count_keys(addr) == 0
        t.publish(_weights(2), 1)  # a round left open is evicted on close
    assert count_keys(addr) == 0


def test_managed_redis_starts_and_stops() -> None:
    require_redis_server()
    with open_transfer("redis") as t:
        assert t.where.startswith("127.0.0.1:")
        _round_trip(t)
        where = t.where
    with pytest.raises(ExecutorError, match="unreachable"):
        from flight_parsl.transfer.redis_server import RedisAddress, check_reachable

        check_reachable(RedisAddress.parse(where), timeout=1)


def test_an_evicted_key_names_key_and_round(managed_redis) -> None:
    with open_transfer("redis", redis=str(managed_redis.address)) as t:
        ref = t.publish(_weights(0), 4)
        t.end_round(4)
        with pytest.raises(TransferError, match=rf"cannot resolve proxy key .*{ref.key.redis_key}.* of round 5"):
            ref.resolve()


@pytest.mark.parametrize("kind", ["parsl", "file", "redis"])
def test_thread_pool_run_counts_exact_payload_bytes(kind, make_config, tmp_path, managed_redis) -> None:
    extra = [f"transfer.file_dir={tmp_path}"] if kind == "file" else []
    extra += [f"transfer.redis={managed_redis.address}"] if kind == "redis" else []
    before = count_keys(managed_redis.address)
    cfg = make_config("train.mode=none", "model.name=smallnet", f"transfer.kind={kind}", *extra, workers=3, rounds=2)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    tasks, rounds = read_csv(out / "tasks.csv"), read_csv(out / "rounds.csv")
    payload = read_summary(out)["model_bytes"]
    assert len(tasks) == 6
    size = int(tasks[0]["task_bytes_out"])
    assert payload < size < payload + 4096 and all(int(t["task_bytes_out"]) == size for t in tasks)
    for r in rounds:  # three clients on two slots: two tasks, each returns one partial
        per_task = {t["task"]: (int(t["task_bytes_in"]), int(t["task_bytes_out"])) for t in tasks if t["round"] == r["round"]}
        assert len(per_task) == 2
        # parsl: each task carries the model; a store: the pool's one process fetches it once, then hits its cache
        bytes_in = sorted(b for b, _ in per_task.values())
        assert bytes_in == ([size, size] if kind == "parsl" else [0, size])
        assert int(r["bytes_to_workers"]) == sum(bytes_in) and int(r["bytes_from_workers"]) == 2 * size
        assert int(r["bytes_moved"]) == sum(b + o for b, o in per_task.values())
    assert count_keys(managed_redis.address) == before
    if kind == "file":
        assert list(Path(tmp_path).glob("flight_parsl-*")) == []


def test_training_through_redis_learns(make_config, managed_redis) -> None:
    cfg = make_config("transfer.kind=redis", f"transfer.redis={managed_redis.address}", "model.name=logreg", workers=2, rounds=2)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    assert float(read_csv(out / "rounds.csv")[-1]["test_acc"]) > 0.8
    assert count_keys(managed_redis.address) == 0


def test_unreachable_redis_fails_before_any_task(make_config, tmp_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_config("transfer.kind=redis", f"transfer.redis=127.0.0.1:{port}", workers=2, rounds=1, backend="parsl")
    with pytest.raises(ExecutorError, match=f"Redis at 127.0.0.1:{port} is unreachable"):
        run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "failed" and "dfk_start_done" not in summary
    assert read_csv(tmp_path / "run" / "tasks.csv") == []


def test_redis_dying_mid_run_stops_with_a_clear_error_and_keeps_round_one(make_config, managed_redis, monkeypatch) -> None:
    import flight_parsl.engine.sync as engine

    real = engine.train_task

    def kill_redis_in_round_two(ref, round_idx, node, clients, *rest):
        if round_idx == 1:
            managed_redis.stop()
        return real(ref, round_idx, node, clients, *rest)

    monkeypatch.setattr(engine, "train_task", kill_redis_in_round_two)
    cfg = make_config(
        "transfer.kind=redis", f"transfer.redis={managed_redis.address}", "train.mode=none", "model.name=tiny",
        workers=2, rounds=3,
    )
    with pytest.raises(RoundError, match=r"round 2: 0/2 sampled clients reported.*"
                                         r"TransferError: cannot resolve proxy key .* of round 2"):
        run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    out = Path(cfg.out)
    assert [r["participants"] for r in read_csv(out / "rounds.csv")] == ["2", "0"]  # round 1 kept; round 2 failed
    assert read_summary(out)["status"] == "failed"


def test_bad_transfer_config_is_named() -> None:
    from flight_parsl.config.experiment import build_config

    with pytest.raises(ConfigError, match="config: key 'transfer.kind' = 'ftp': unknown transfer; valid names: auto, file, parsl, redis"):
        build_config(overrides=["transfer.kind=ftp"])
    with pytest.raises(ConfigError, match="config: key 'transfer.redis' = 'nohost': invalid Redis address 'nohost'"):
        build_config(overrides=["transfer.redis=nohost"])


@contextmanager
def stopped(server: ManagedRedis):
    """SIGSTOP the server (it keeps its socket but answers nothing); always SIGCONT it again."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def _fails_in_time(call, error, timeout: float) -> str:
    """Run ``call``; it must raise ``error`` after about ``timeout`` s (not much sooner, not hanging)."""
    started = time.monotonic()
    with pytest.raises(error) as info:
        call()
    elapsed = time.monotonic() - started
    assert 0.8 * timeout <= elapsed < timeout + 4, elapsed
    return str(info.value)


def test_a_hung_redis_fails_within_the_timeout_naming_its_address(managed_redis) -> None:
    from flight_parsl.transfer.proxy import TimedRedisConnector

    addr = managed_redis.address
    with open_transfer("redis", redis=str(addr), redis_timeout=1.0) as t:
        # the workers rebuild the connector from the store's config: same class, same timeout
        rebuilt = t.store.config().connector.get_connector()
        assert type(rebuilt) is TimedRedisConnector and rebuilt.timeout == 1.0
        rebuilt.close()
        ref = t.publish(_weights(0), 0)
        back, _, _ = ref.reply(_weights(1))
        with stopped(managed_redis):
            message = _fails_in_time(lambda: check_reachable(addr, timeout=1.0), ExecutorError, 1.0)
            assert message == f"Redis at {addr} is unreachable: timed out"
            message = _fails_in_time(lambda: t.publish(_weights(2), 1), TransferError, 1.0)
            assert message.startswith(f"redis store at {addr} failed in round 2: TimeoutError")
            message = _fails_in_time(lambda: t.collect(back), TransferError, 1.0)
            assert message.startswith(f"redis store at {addr} failed reading key ") and "of round 1" in message
            message = _fails_in_time(ref.resolve, TransferError, 1.0)  # a worker's fetch
            assert f"of round 1 from Redis at {addr}: TimeoutError" in message
        assert t.collect(back).buffer.tolist() == _weights(1).buffer.tolist()  # answers again after SIGCONT
    # The round's keys are evicted on close. (The SET that timed out may still land once the
    # server resumes, under a key nobody was told about; the run has failed by then.)
    client = redis.Redis(addr.host, addr.port)
    assert client.exists(ref.key.redis_key, back.key.redis_key) == 0
    client.close()


def test_a_redis_that_hangs_mid_run_fails_the_run_naming_its_address(make_config, managed_redis, monkeypatch) -> None:
    import flight_parsl.engine.sync as engine

    real = engine.train_task
    addr = managed_redis.address
    assert managed_redis.pid is not None

    def stop_redis_in_round_two(ref, round_idx, node, clients, *rest):
        if round_idx == 1 and clients[0][0] == 0:
            os.kill(managed_redis.pid, signal.SIGSTOP)
        return real(ref, round_idx, node, clients, *rest)

    monkeypatch.setattr(engine, "train_task", stop_redis_in_round_two)
    cfg = make_config(
        "transfer.kind=redis", f"transfer.redis={addr}", "transfer.redis_timeout=1", "train.mode=none",
        "model.name=tiny", workers=2, rounds=3,
    )
    started = time.monotonic()
    try:
        with pytest.raises(RoundError, match=rf"round 2: 0/2 sampled clients .*TransferError: .*Redis at {addr}: TimeoutError"):
            run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    finally:
        os.kill(managed_redis.pid, signal.SIGCONT)
    assert time.monotonic() - started < 15
    out = Path(cfg.out)
    assert [r["participants"] for r in read_csv(out / "rounds.csv")] == ["2", "0"]
    summary = read_summary(out)
    assert summary["status"] == "failed" and f"Redis at {addr}" in summary["error"]


def test_redis_timeout_must_be_positive() -> None:
    from flight_parsl.config.experiment import build_config

    assert build_config().transfer.redis_timeout == 30.0
    assert build_config(overrides=["transfer.redis_timeout=2.5"]).transfer.redis_timeout == 2.5
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match=rf"config: key 'transfer.redis_timeout' = {bad}: must be > 0"):
            build_config(overrides=[f"transfer.redis_timeout={bad}"])


@pytest.mark.parametrize("kind", ["file", "parsl"])
def test_a_slot_that_holds_the_model_does_not_count_it_again(kind, make_config, tmp_path) -> None:
    # four one-client tasks a round on one slot: through a store the slot fetches the round's model
    # once and its cache serves the other three; inline, every task carries the model
    cfg = make_config("train.mode=none", "model.name=smallnet", f"transfer.kind={kind}", f"transfer.file_dir={tmp_path}",
                      "transfer.cache_size=1", "plan.clients_per_task=1", "slots=1", workers=4, rounds=3)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    tasks, rounds = read_csv(out / "tasks.csv"), read_csv(out / "rounds.csv")
    size, model_bytes = int(tasks[0]["task_bytes_out"]), read_summary(out)["model_bytes"]
    assert model_bytes < size < model_bytes + 4096  # the payload: the buffer and a small header
    reads = 1 if kind == "file" else 4
    for r in rounds:
        mine = sorted((t for t in tasks if t["round"] == r["round"]), key=lambda t: float(t["task_started"]))
        assert len(mine) == 4 and r["tasks"] == "4"
        assert [int(t["task_bytes_in"]) for t in mine] == [size] * reads + [0] * (4 - reads)
        assert int(r["bytes_to_workers"]) == reads * size and int(r["bytes_from_workers"]) == 4 * size
        assert int(r["bytes_moved"]) == (reads + 4) * size
        assert int(r["edge_bytes"]) == (reads + 4) * size  # flat: the reads and the four results
        assert int(r["modeled_two_tier_bytes"]) == 2 * 4 * size  # the model assumes a read per client
