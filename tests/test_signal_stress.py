"""SIGTERM and SIGINT at any moment of a run: each stops it within 10 s with 143 (130), its
summary says ``interrupted`` (``completed`` if it had finished), nothing is left (no thread, process,
Redis key, file or directory), and ``--resume`` completes it.

Moments are drawn from a seed: most at the entry of one phase of the run, with or without a few
milliseconds more (start-up, the executor's start, warm-up, publish, collection, aggregation,
evaluation, the rounds.csv row, the checkpoint write, and the clean-up of a finished run), the
others at a random time from the start. Thread-backend runs run in this process (the command's
own ``main``, its signal handlers included), so that 30+ moments fit in CI time; a few moments
run ``python -m flight_parsl.scale`` on Parsl HTEX. The worst exit time seen is printed.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import read_csv, read_summary
from redis_fixtures import managed_redis  # noqa: F401  (a fixture)

from flight_parsl.cli.scale import main

pytestmark = pytest.mark.timeout(300)

SEED = 23
EXIT_S = 10.0  # Slurm gives 30 s between SIGTERM and SIGKILL
ROUNDS = 3
EXPECTED = {signal.SIGTERM: 143, signal.SIGINT: 130}
KEPT = {"config.yaml", "rounds.csv", "tasks.csv", "summary.json", "checkpoint.pkl"}

# phase -> (object, attribute) whose call starts it; the signal is sent at its n-th call
PHASES = {
    "start-up": ("flight_parsl.engine.runner", "open_transfer"),
    "executor": ("flight_parsl.engine.runner", "open_backend"),
    "warm-up": ("flight_parsl.execution.backends:Warmup", "wait"),
    "publish": ("flight_parsl.transfer.proxy:ProxyTransfer", "publish"),
    "collection": ("flight_parsl.transfer.proxy:ProxyTransfer", "collect"),
    "aggregation": ("flight_parsl.fl.strategies.fedavg:FedAvg", "aggregate"),
    "evaluation": ("flight_parsl.worker.training", "evaluate"),
    "round row": ("flight_parsl.engine.records:RunRecorder", "round_row"),
    "checkpoint": ("flight_parsl.engine.checkpoint", "save"),
    "checkpoint write": ("flight_parsl.engine.checkpoint:pickle", "dump"),
    "clean-up": ("flight_parsl.transfer.proxy:ProxyTransfer", "close"),
}
CALLS = {"publish": ROUNDS, "collection": 4 * ROUNDS, "aggregation": ROUNDS, "evaluation": ROUNDS,
         "round row": ROUNDS, "checkpoint": ROUNDS, "checkpoint write": ROUNDS}


@dataclass(frozen=True)
class Moment:
    signum: int
    phase: str  # a key of PHASES, or "time"
    call: int  # the phase's n-th call (from 1)
    delay: float  # seconds after the phase starts (or after the run starts)
    transfer: str  # redis (a server the test owns: its keys are counted) or file

    def __str__(self) -> str:
        return f"{signal.Signals(self.signum).name}@{self.phase}#{self.call}+{self.delay * 1000:.0f}ms/{self.transfer}"


def moments(count: int) -> list[Moment]:
    rng = np.random.default_rng(SEED)
    out = []
    phases = list(PHASES)
    for i in range(count):
        signum = (signal.SIGTERM, signal.SIGINT)[i % 2]
        transfer = ("redis", "file")[(i // 2) % 2]
        if i < 2 * len(phases):  # every phase under both signals
            phase = phases[i // 2]
            call = int(rng.integers(1, CALLS.get(phase, 1) + 1))
            delay = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 0.02))
        else:
            phase, call, delay = "time", 1, float(rng.uniform(0.0, 0.8))
        out.append(Moment(signum, phase, call, delay, transfer))
    return out


MOMENTS = moments(32)


def _target(where: str) -> object:
    module, _, attr = where.partition(":")
    obj = __import__(module, fromlist=["_"])
    return getattr(obj, attr) if attr else obj


class Sender:
    """Sends one signal to this process, from a timer thread, when told to (or at a time)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.sent_at: float | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.closed = False

    def _send(self) -> None:
        with self._lock:
            if self.sent_at is not None or self.closed:
                return
            self.sent_at = time.monotonic()
            os.kill(os.getpid(), self.signum)

    def fire(self, delay: float) -> None:
        if delay <= 0:
            self._send()  # from the calling thread: the handler runs before its next line
            return
        self._timer = threading.Timer(delay, self._send)
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        with self._lock:
            self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()


def _arm(monkeypatch: pytest.MonkeyPatch, moment: Moment, sender: Sender) -> None:
    if moment.phase == "time":
        sender.fire(moment.delay)
        return
    where, attr = PHASES[moment.phase]
    obj = _target(where)
    original = getattr(obj, attr)
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == moment.call:
            if attr == "dump":  # inside the checkpoint write: after the data, before the rename
                result = original(*args, **kwargs)
                sender.fire(moment.delay)
                return result
            sender.fire(moment.delay)
        return original(*args, **kwargs)

    if moment.phase == "checkpoint write":  # the module's own name for pickle, not the global one
        module = _target("flight_parsl.engine.checkpoint")
        shim = types.SimpleNamespace(dump=wrapped, load=pickle.load, HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL)
        monkeypatch.setattr(module, "pickle", shim)
        return
    monkeypatch.setattr(obj, attr, wrapped)


def _leftover_threads(before: set[threading.Thread]) -> list[str]:
    deadline = time.monotonic() + 2.0
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            return [t.name for t in left]
        time.sleep(0.02)


def _check_stopped(run: Path, shm: Path, rc: int, moment: Moment, sent: bool, redis_client) -> str:
    """Everything the issue asks after a stop; returns the summary's status ('' when no run directory)."""
    if not sent:  # the run ended before the moment came: it must have completed
        assert rc == 0, f"{moment}: no signal was sent, yet status {rc}"
    else:  # never lost, wherever it landed (a weakref callback drops the exception a handler raises)
        assert rc == EXPECTED[moment.signum], f"{moment}: exit status {rc}"
    status = ""
    if (run / "summary.json").exists():
        summary = read_summary(run)
        status = summary["status"]
        assert status == ("completed" if rc == 0 else "interrupted"), f"{moment}: {summary}"
        rounds = read_csv(run / "rounds.csv")
        assert [int(r["round"]) for r in rounds] == list(range(1, len(rounds) + 1)), moment
        assert summary["rounds_completed"] == len(rounds), moment
        if rc:
            name = "SIGTERM" if moment.signum == signal.SIGTERM else ""
            assert name in summary.get("error", ""), summary
        left = sorted(p.name for p in run.iterdir() if p.name not in KEPT)
        assert left == [], f"{moment}: files left in the run directory: {left}"
    else:  # stopped before the run directory was made: nothing of it may exist
        assert not run.exists() or not any(run.iterdir()), f"{moment}: {list(run.iterdir())}"
    assert sorted(p.name for p in shm.iterdir()) == [], f"{moment}: left in the channel directory"
    if moment.transfer == "redis":
        keys = redis_client.keys("*")
        assert keys == [], f"{moment}: Redis keys left: {keys[:5]}"
    return status


def test_sigterm_and_sigint_at_32_moments_of_a_thread_run(tmp_path, monkeypatch, managed_redis) -> None:  # noqa: F811
    import redis

    client = redis.Redis(host=managed_redis.address.host, port=managed_redis.address.port)
    shm = tmp_path / "shm"
    shm.mkdir()
    # the warm-up's barrier directories go where the test looks for leftovers
    import tempfile

    from flight_parsl.execution import backends

    monkeypatch.setattr(backends, "_barrier_dir", lambda: tempfile.mkdtemp(prefix="flight_parsl-prime-", dir=shm))
    # stops this process would get after a run returned: recorded, never raised into the test
    late: list[int] = []
    previous = {signum: signal.signal(signum, lambda s, f: late.append(s)) for signum in EXPECTED}
    try:
        _moments(tmp_path, shm, managed_redis, client, late)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _moments(tmp_path: Path, shm: Path, managed_redis, client, late: list[int]) -> None:  # noqa: F811
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    warm = ["--backend", "thread", "--workers", "4", "--rounds", str(ROUNDS), "-q", "slots=2",
            f"transfer.file_dir={shm}"]
    assert main([*warm, "--out", str(tmp_path / "warm")]) == 0  # torch and the data, imported once
    worst, seen = 0.0, []
    try:
        for i, moment in enumerate(MOMENTS):
            run = tmp_path / f"m{i}"
            args = [*warm, "--out", str(run)]
            if moment.transfer == "redis":
                args += ["--transfer", "redis", "--redis", str(managed_redis.address)]
            before = set(threading.enumerate())
            sender = Sender(moment.signum)
            with pytest.MonkeyPatch.context() as patch:
                _arm(patch, moment, sender)
                rc = main(args)
                ended = time.monotonic()
                sender.close()
            sent = sender.sent_at is not None
            if sent and not late:
                worst = max(worst, ended - sender.sent_at)
                assert ended - sender.sent_at < EXIT_S, f"{moment}: took {ended - sender.sent_at:.1f} s to stop"
            if late:  # the timer fired after the run had returned: a moment after the end
                assert rc == 0, moment
                late.clear()
                sent = False
            threads = _leftover_threads(before)
            assert threads == [], f"{moment}: threads left: {threads}"
            grace = time.monotonic() + 2.0  # a helper a library ran (ldconfig ...) may take a moment to end
            while (new := [p for p in psutil.Process().children(recursive=True)
                           if p.pid not in children and _exists(p)]) and time.monotonic() < grace:
                time.sleep(0.05)
            assert new == [], f"{moment}: processes left: {[' '.join(p.cmdline()) for p in new]}"
            status = _check_stopped(run, shm, rc, moment, sent, client)
            seen.append((str(moment), rc, status))
            if status == "interrupted":
                assert main(["--resume", str(run), "-q"]) == 0, moment
                assert read_summary(run)["status"] == "completed"
                assert [r["round"] for r in read_csv(run / "rounds.csv")] == [str(r) for r in range(1, ROUNDS + 1)]
                _check_stopped(run, shm, 0, moment, False, client)
    finally:
        print(f"\nworst exit time after the signal: {worst:.2f} s over {len(seen)} moments")
        for line in seen:
            print("  ", *line)
    assert len(seen) == len(MOMENTS) >= 30
    assert sum(status == "interrupted" for _, _, status in seen) >= 20  # most moments really interrupted a run


# HTEX: a few moments in a real command ----------------------------------------------------------


def _run_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.pid != os.getpid() and proc.info["status"] != psutil.STATUS_ZOMBIE and \
                    any(marker in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.parametrize(("signum", "after"), [(signal.SIGTERM, "start-up"), (signal.SIGINT, "round")])
def test_a_signal_stops_an_htex_run_within_10_s_and_leaves_nothing(signum, after, tmp_path) -> None:
    from redis_fixtures import require_redis_server

    require_redis_server()
    run = tmp_path / "run"
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "flight_parsl.scale", "--workers", "4", "--rounds", "40", "--train", "none",
           "--model", "tiny", "--transfer", "redis", "--out", str(run), "-q", "slots=2", f"transfer.file_dir={shm}"]
    with (tmp_path / "log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    rng = np.random.default_rng([SEED, signum])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if after == "start-up" and (run / "leftovers.json").exists():  # its Redis is up, Parsl starting
                break
            if after == "round" and (run / "rounds.csv").exists() and len(read_csv(run / "rounds.csv")) >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, (tmp_path / "log").read_text()
        time.sleep(float(rng.uniform(0.0, 0.3)))
        processes = _run_processes(str(run))
        proc.send_signal(signum)
        sent = time.monotonic()
        rc = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"\n{signal.Signals(signum).name} after {after} on HTEX: exit {rc} in {took:.2f} s")
    assert rc == EXPECTED[signum] and took < EXIT_S, (rc, took, (tmp_path / "log").read_text())
    summary = read_summary(run)
    assert summary["status"] == "interrupted"
    deadline = time.monotonic() + 5
    while _run_processes(str(run)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _run_processes(str(run)) == []
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes if _exists(p))
    assert sorted(p.name for p in run.iterdir() if p.name not in KEPT | {"parsl"}) == []
    assert list(shm.iterdir()) == []
    if after != "round":  # one HTEX resume is enough for CI time (the thread moments resume every time)
        return
    resumed = subprocess.run([sys.executable, "-m", "flight_parsl.scale", "--resume", str(run), "-q"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run)["status"] == "completed" and len(read_csv(run / "rounds.csv")) == 40
    assert _run_processes(str(run)) == [] and list(shm.iterdir()) == []


def _exists(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_stop_signal_while_late_work_is_released_is_not_swallowed() -> None:
    # release_late runs in the main thread for a future already done (add_done_callback); the
    # exception of a stop signal that lands there must reach the run, or the run goes on, its
    # summary "running", and every later SIGTERM is ignored as a repeat
    from flight_parsl.core.errors import Terminated
    from flight_parsl.engine.outcomes import release_late

    class Stopped:
        def result(self):
            raise Terminated(signal.SIGTERM)

    with pytest.raises(Terminated):
        release_late(None, Stopped())


def test_a_stop_during_an_injected_hang_on_the_thread_pool_does_not_wait_it_out(tmp_path) -> None:
    # a thread cannot be stopped, and the pool's shutdown waits for it: a 60 s hang would hold
    # the stop for 60 s (past Slurm's 30 s KillWait) unless the hang ends with the pool
    shm = tmp_path / "shm"
    shm.mkdir()
    args = ["--backend", "thread", "--workers", "2", "--rounds", "2", "--train", "none", "--model", "tiny", "-q",
            "--out", str(tmp_path / "run"), f"transfer.file_dir={shm}", "faults.hang=0@1,1@1", "faults.hang_s=60"]
    sender = Sender(signal.SIGTERM)
    try:
        with pytest.MonkeyPatch.context() as patch:  # 0.5 s after round 1's model is published: mid-hang
            _arm(patch, Moment(signal.SIGTERM, "publish", 1, 0.5, "file"), sender)
            rc = main(args)
        took = time.monotonic() - (sender.sent_at or 0.0)
    finally:
        sender.close()
    assert sender.sent_at is not None and rc == 143 and took < EXIT_S, (rc, took)
    assert read_summary(tmp_path / "run")["status"] == "interrupted" and list(shm.iterdir()) == []
