"""Redis passwords: a run's own server and a job's server refuse clients without it.

The password never appears on a command line; the coordinator's clients, the workers'
connector (rebuilt from its config), the bulk reader and the client state all AUTH with it.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from flight_parsl.core.errors import ConfigError, ExecutorError
from flight_parsl.transfer import open_transfer
from flight_parsl.transfer.bulk import BulkReader, ReplyError
from flight_parsl.transfer.proxy import TimedRedisConnector
from flight_parsl.transfer.redis_auth import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    new_password,
    redis_password,
    write_private,
)
from flight_parsl.transfer.redis_server import ManagedRedis, check_reachable, count_keys
from flight_parsl.transfer.state import open_state
from redis_fixtures import require_redis_server

PASSWORD = new_password()


@pytest.fixture(scope="module")
def locked() -> Iterator[ManagedRedis]:
    """One redis-server that requires PASSWORD, shared by the module."""
    with ManagedRedis(binary=require_redis_server(), password=PASSWORD) as server:
        yield server


def test_unauthenticated_clients_are_refused(locked: ManagedRedis) -> None:
    a = locked.address
    anonymous = redis.Redis(a.host, a.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    with socket.create_connection((a.host, a.port), timeout=2.0) as raw:  # what any client gets
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert raw.recv(100).startswith(b"-NOAUTH Authentication required")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(a.host, a.port, password="wrong").ping()
    anonymous.close()
    with pytest.raises(ExecutorError, match=f"Redis at {a} is unreachable: authentication failed.*{PASSWORD_ENV}"):
        check_reachable(a, 2.0)
    check_reachable(a, 2.0, PASSWORD)
    assert count_keys(a, password=PASSWORD) == 0
    with pytest.raises(ReplyError, match="NOAUTH"):
        BulkReader(a.host, a.port, 2.0).get("k")


def test_password_is_in_a_private_file_not_on_the_command_line(locked: ManagedRedis) -> None:
    assert locked.pid is not None and locked.directory is not None
    cmdline = " ".join(psutil.Process(locked.pid).cmdline())
    assert PASSWORD not in cmdline
    conf = locked.directory / "redis.conf"
    assert conf.read_text() == f"requirepass {PASSWORD}\n"
    assert conf.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in (locked.directory / "redis.log").read_text()


def test_coordinator_and_worker_side_use_the_password(locked: ManagedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    a = locked.address
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with open_transfer("redis", redis=str(a), redis_timeout=5.0) as transfer:
        connector = transfer.store.connector
        # the server's password made the run's own user; the workers get that user's, never the server's
        assert connector.username.startswith("flight_parsl-") and connector.password not in (None, PASSWORD)
        assert PASSWORD not in str(connector.config()) and connector.password not in repr(connector)
        # a worker rebuilds the connector from its config (it rides in the task, not in argv)
        worker_side = TimedRedisConnector.from_config(pickle.loads(pickle.dumps(connector.config())))
        key = connector.put(b"x" * 100_000)
        got = worker_side.get(key)
        assert got is not None and bytes(got) == b"x" * 100_000
        worker_side.close()
        connector.evict(key)
    with open_state(redis=(a.host, a.port), password=PASSWORD, timeout=5.0) as state:
        state.put(3, b"abc")
        assert state.get(3) == b"abc"
        assert PASSWORD not in repr(state)
    assert count_keys(a, password=PASSWORD) == 0


def test_a_run_of_its_own_gets_a_fresh_password() -> None:
    require_redis_server()
    with open_transfer("redis", redis_timeout=5.0) as transfer:
        connector = transfer.store.connector
        assert connector.password and connector.password != PASSWORD
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(connector.hostname, connector.port).ping()


def test_password_from_the_environment(tmp_path: Path) -> None:
    assert redis_password({}) is None
    assert redis_password({PASSWORD_ENV: "s3cret"}) == "s3cret"
    path = write_private(tmp_path / "pass", "from-file\n")
    assert path.stat().st_mode & 0o777 == 0o600
    assert redis_password({PASSWORD_FILE_ENV: str(path), PASSWORD_ENV: "other"}) == "from-file"
    with pytest.raises(FileExistsError):
        write_private(path, "again")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="mode 0644.*chmod 600"):
        redis_password({PASSWORD_FILE_ENV: str(path)})
    empty = write_private(tmp_path / "empty", "\n")
    with pytest.raises(ConfigError, match="empty"):
        redis_password({PASSWORD_FILE_ENV: str(empty)})
    with pytest.raises(ConfigError, match="cannot read"):
        redis_password({PASSWORD_FILE_ENV: str(tmp_path / "missing")})
