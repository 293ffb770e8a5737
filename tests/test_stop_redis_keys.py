"""Asynchronous and decentralized runs stopped mid-way (SIGTERM) with an external Redis
(``--redis HOST:PORT``, a server the test owns) leave no key of the run there: models the
coordinator published, results of tasks still out (released when they end), per-client state
(momentum, decentralized models); and ``--resume`` then completes and leaves none either.
Thread backend, in this process (the command's own ``main`` and its signal handlers)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import read_summary
from redis_fixtures import managed_redis  # noqa: F401  (a fixture)

from flight_parsl.cli.scale import main

pytestmark = pytest.mark.timeout(240)

PEER = ["--mode", "decentralized", "--strategy", "proxyfl", "partition.kind=majority",
        "partition.samples_per_client=60", "peer.test_samples=20", "peer.batch_size=20"]
MODES = {
    "fedasync": ["--mode", "async", "--strategy", "fedasync", "train.keep_momentum=true"],
    "fedbuff": ["--mode", "async", "--strategy", "fedbuff", "strategy.buffer_size=3"],
    "proxyfl": PEER,
}
# (phase target, call at which SIGTERM is sent): a result just collected with others still out; a
# task in flight mid-hang; work out at the checkpoint write
MOMENTS = [
    ("flight_parsl.transfer.proxy:ProxyTransfer", "collect", 3),
    ("flight_parsl.engine.checkpoint", "save", 1),
    (None, "time", 2),  # a task of round 2 hangs 2 s: SIGTERM while it (and others) are out
]


def _target(where: str) -> object:
    module, _, attr = where.partition(":")
    obj = __import__(module, fromlist=["_"])
    return getattr(obj, attr) if attr else obj


@pytest.mark.parametrize("mode", list(MODES))
def test_a_stopped_run_leaves_no_key_in_an_external_redis(mode, tmp_path, monkeypatch, managed_redis) -> None:  # noqa: F811
    import redis

    client = redis.Redis(host=managed_redis.address.host, port=managed_redis.address.port)
    base = ["--backend", "thread", "--workers", "4", "--rounds", "4", "-q", "slots=2", "--transfer", "redis",
            "--redis", str(managed_redis.address), *MODES[mode]]
    stopped = 0
    for i, (where, attr, call) in enumerate(MOMENTS):
        run = tmp_path / f"m{i}"
        args = [*base, "--out", str(run)]
        timer = None
        with pytest.MonkeyPatch.context() as patch:
            if where is None:  # SIGTERM 1 s into a 2 s hang of client 0 (round 2 / window 2)
                args += ["faults.hang=0@2,1@2", "faults.hang_s=2"]
                from flight_parsl.worker import faults

                real = faults.inject

                def inject(f, round_idx, client_id, attempt, real=real):
                    nonlocal timer
                    if f and attempt == 0 and (round_idx, client_id) in f.hang and timer is None:
                        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
                        timer.start()
                    return real(f, round_idx, client_id, attempt)

                for module in ("flight_parsl.worker.tasks", "flight_parsl.worker.peer_tasks"):
                    patch.setattr(_target(module), "inject", inject)
            else:
                obj = _target(where)
                original = getattr(obj, attr)
                calls = [0]

                def wrapped(*a, original=original, calls=calls, call=call, **kw):
                    calls[0] += 1
                    if calls[0] == call:
                        os.kill(os.getpid(), signal.SIGTERM)
                    return original(*a, **kw)

                patch.setattr(obj, attr, wrapped)
            rc = main(args)
        if timer is not None:
            timer.join()
        deadline = time.monotonic() + 5.0  # results of tasks still out are released when they end
        while client.keys("*") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.keys("*") == [], f"{mode} {attr}#{call}: rc {rc}, keys left: {client.keys('*')[:5]}"
        if rc == 143:
            stopped += 1
            assert read_summary(run)["status"] == "interrupted"
            assert main(["--resume", str(run), "-q"]) == 0
            assert read_summary(run)["status"] == "completed"
            assert client.keys("*") == [], f"{mode}: keys left after the resume: {client.keys('*')[:5]}"
        else:
            assert rc == 0, f"{mode} {attr}#{call}: rc {rc}"
    assert stopped >= 2, f"{mode}: only {stopped} of {len(MOMENTS)} moments stopped a run"
