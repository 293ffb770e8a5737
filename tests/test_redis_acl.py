"""A run's Redis keys are its own: one key prefix per run and an ACL user that may touch only it.

Two runs share one server here (as two jobs share a cluster's Redis): the second run's
credentials, in every client a worker builds (redis-py, the bulk reader, the connector
rebuilt from its config, the client state), get NOPERM on the first run's keys.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator

import pytest
import redis

from conftest import read_csv, run_quietly
from flight_parsl.transfer import open_transfer
from flight_parsl.transfer.bulk import BulkReader, ReplyError
from flight_parsl.transfer.proxy import TimedRedisConnector
from flight_parsl.transfer.redis_auth import PASSWORD_ENV, USER_ENV, new_password
from flight_parsl.transfer.redis_server import ManagedRedis, RedisAddress, count_keys, redis_client
from flight_parsl.transfer.state import open_state
from redis_fixtures import managed_redis, require_redis_server  # noqa: F401 (fixture)


def _login(connector: TimedRedisConnector) -> redis.Redis:
    """A worker's client, logged in with what a task carries (the connector's config)."""
    c = connector.config()
    return redis_client(RedisAddress(c["hostname"], c["port"]), 5.0, c["password"], username=c["username"],
                        tls=c["tls"], ca=c["ca"])


def _users(server: ManagedRedis) -> list[str]:
    admin = server.admin(5.0)
    try:
        return sorted(u.decode() if isinstance(u, bytes) else u for u in admin.acl_users())
    finally:
        admin.close()


@pytest.fixture
def two_runs(managed_redis: ManagedRedis) -> Iterator[tuple[TimedRedisConnector, TimedRedisConnector]]:
    """Two runs open on one shared server (whose default user may make users)."""
    where = str(managed_redis.address)
    with open_transfer("redis", redis=where, redis_timeout=5.0) as first, \
            open_transfer("redis", redis=where, redis_timeout=5.0) as second:
        yield first.store.connector, second.store.connector


def test_a_second_runs_credentials_get_noperm_on_the_first_runs_keys(two_runs, managed_redis) -> None:
    first, second = two_runs
    assert first.prefix != second.prefix and first.username != second.username
    assert first.prefix.startswith("flight_parsl:") and first.username.startswith("flight_parsl-")
    key = first.put(b"first run's model")
    assert key.redis_key.startswith(first.prefix)  # never a bare uuid
    admin = managed_redis.admin(5.0)
    assert {key.redis_key for key in first.put_batch([b"a", b"b"])} <= {
        k.decode() for k in admin.scan_iter(match=f"{first.prefix}*")}
    admin.close()
    intruder = _login(second)
    for attempt in (lambda: intruder.get(key.redis_key), lambda: intruder.set(key.redis_key, b"forged"),
                    lambda: intruder.delete(key.redis_key), lambda: intruder.strlen(key.redis_key),
                    lambda: intruder.getrange(key.redis_key, 0, 3)):
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to access one of the keys"):
            attempt()
    with pytest.raises(ReplyError, match="NOPERM"):  # the workers' bulk reader
        BulkReader(second.hostname, second.port, 5.0, second.password, second.username).get(key.redis_key)
    worker = TimedRedisConnector.from_config(pickle.loads(pickle.dumps(second.config())))
    with pytest.raises(ReplyError, match="NOPERM"):
        worker.get(key)
    worker.close()
    with open_state(redis=(second.hostname, second.port), password=second.password, username=second.username,
                    prefix=first.prefix, timeout=5.0) as stolen:  # the first run's state keys, with the second's user
        with pytest.raises(Exception, match="NoPermissionError"):
            stolen.put(0, b"x")
    # the first run's own clients read it, and the value is untouched
    got = TimedRedisConnector.from_config(first.config()).get(key)
    assert got is not None and bytes(got) == b"first run's model"
    # its own keys, the second run's user may use
    mine = second.put(b"second")
    assert bytes(_login(second).get(mine.redis_key)) == b"second"
    intruder.close()


def test_the_run_user_cannot_act_on_the_whole_server(two_runs) -> None:
    first, _ = two_runs
    client = _login(first)
    for command in (("FLUSHALL",), ("FLUSHDB",), ("KEYS", "*"), ("SCAN", "0"), ("SCAN", "0", "MATCH", "*"),
                    ("SCAN", "0", "MATCH", f"{first.prefix}*"), ("RANDOMKEY",), ("CONFIG", "GET", "*"), ("ACL", "LIST"),
                    ("ACL", "SETUSER", "me", "on", "+@all", "~*"), ("FUNCTION", "FLUSH"), ("EVAL", "return 1", "0"),
                    ("SHUTDOWN",), ("CLIENT", "LIST"), ("MONITOR",)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    assert client.ping()
    client.close()


def test_the_run_user_cannot_list_other_runs_key_names(two_runs, managed_redis) -> None:
    """A key pattern does not filter what SCAN and KEYS return: the run's user gets NOPERM on
    every command that lists key names, and still reads and writes its own keys by name."""
    first, second = two_runs
    theirs = second.put(b"second run's model")
    mine = first.put(b"first run's model")
    client = _login(first)
    with pytest.raises(redis.exceptions.NoPermissionError, match="scan"):
        list(client.scan_iter(match="*"))
    with pytest.raises(redis.exceptions.NoPermissionError, match="keys"):
        client.keys("*")
    with pytest.raises(redis.exceptions.NoPermissionError, match="randomkey"):
        client.randomkey()
    assert bytes(client.get(mine.redis_key)) == b"first run's model"
    client.close()
    admin = managed_redis.admin(5.0)  # what the admin sees: both runs' keys (so there was a name to leak)
    assert {mine.redis_key, theirs.redis_key} <= {k.decode() for k in admin.scan_iter(match="flight_parsl:*")}
    admin.close()


def test_each_run_user_is_removed_at_the_end_with_its_keys(managed_redis) -> None:
    where = str(managed_redis.address)
    with open_transfer("redis", redis=where, redis_timeout=5.0) as transfer:
        connector = transfer.store.connector
        ref = transfer.publish(_model(), 0)
        assert ref.key.redis_key.startswith(connector.prefix)
        assert connector.username in _users(managed_redis)
    assert _users(managed_redis) == ["default"]
    assert count_keys(managed_redis.address) == 0
    with pytest.raises(redis.exceptions.AuthenticationError):  # the user is gone, and its password with it
        _login(connector).ping()


def test_a_managed_server_is_locked_and_its_run_user_comes_back_after_a_restart() -> None:
    require_redis_server()
    with open_transfer("redis", redis_timeout=5.0) as transfer:
        connector, server = transfer.store.connector, transfer.server
        assert server.password not in (None, connector.password)  # the default user's: the coordinator's only
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(connector.hostname, connector.port).ping()
        assert _users(server) == ["default", connector.username]
        server.kill()
        server.restart()  # faults.redis_stop: an empty server, and the run's user again
        key = connector.put(b"after the restart")
        assert bytes(_login(connector).get(key.redis_key)) == b"after the restart"


def test_credentials_that_cannot_make_users_are_used_as_given(managed_redis, monkeypatch, caplog) -> None:
    admin = redis.Redis(managed_redis.address.host, managed_redis.address.port)
    job_password = new_password()
    admin.acl_setuser("job", enabled=True, passwords=[f"+{job_password}"], keys=["flight_parsl:*"],
                      commands=["+@read", "+@write", "+@connection", "-@dangerous"])
    monkeypatch.setenv(USER_ENV, "job")
    monkeypatch.setenv(PASSWORD_ENV, job_password)
    with caplog.at_level(logging.INFO, logger="flight_parsl.transfer"):
        with open_transfer("redis", redis=str(managed_redis.address), redis_timeout=5.0) as transfer:
            connector = transfer.store.connector
            assert (connector.username, connector.password) == ("job", job_password)
            ref = transfer.publish(_model(), 0)
            assert ref.key.redis_key.startswith(connector.prefix)
            assert ref.resolve().weights.buffer.size == 10
    assert "cannot make the run's ACL user" in caplog.text and "acl|setuser" in caplog.text
    assert job_password not in caplog.text
    assert sorted(u if isinstance(u, str) else u.decode() for u in admin.acl_users()) == ["default", "job"]
    admin.close()


def test_a_run_keeps_its_client_state_under_its_prefix(make_config, managed_redis, monkeypatch) -> None:
    """A real run (thread backend) with per-client state: every key it writes is under its prefix,
    written as its user, and nothing is left."""
    seen: list[str] = []
    real, real_stream = TimedRedisConnector.put, TimedRedisConnector.put_stream

    def put(self, obj):
        key = real(self, obj)
        seen.append(f"{self.username} {self.prefix} {key.redis_key}")
        return key

    def put_stream(self, size, parts):  # models and results: streamed from their buffers
        key = real_stream(self, size, parts)
        seen.append(f"{self.username} {self.prefix} {key.redis_key}")
        return key

    from flight_parsl.transfer.state import RedisState

    real_state_put = RedisState.put

    def state_put(self, client, data, version=None):
        seen.append(f"{self.username} {self.prefix.removesuffix('client:')} {self.prefix}{client}")
        return real_state_put(self, client, data, version)

    monkeypatch.setattr(TimedRedisConnector, "put", put)
    monkeypatch.setattr(TimedRedisConnector, "put_stream", put_stream)
    monkeypatch.setattr(RedisState, "put", state_put)
    out = run_quietly(make_config, "transfer.kind=redis", f"transfer.redis={managed_redis.address}",
                      "model.name=logreg", "train.keep_momentum=true", workers=2, rounds=2)
    assert len(read_csv(out / "rounds.csv")) == 2
    assert any(":client:" in s for s in seen) and any(":client:" not in s for s in seen)
    assert all(k.startswith(p) and u.startswith("flight_parsl-") for u, p, k in map(str.split, seen))
    assert len({p for _, p, _ in map(str.split, seen)}) == 1  # one prefix for the run's every key
    assert count_keys(managed_redis.address) == 0 and _users(managed_redis) == ["default"]


def _model():
    import numpy as np

    from flight_parsl.core.weights import FlatWeights, Layout

    return FlatWeights(np.arange(10, dtype=np.float32), Layout.from_shapes([("w", (10,), "float32")]))


def test_credentials_given_by_the_caller_are_not_mixed_with_the_environments(monkeypatch, tmp_path) -> None:
    """The sites' own server (its password given by the caller) ignores FLIGHT_PARSL_REDIS_USER and
    FLIGHT_PARSL_REDIS_CA_FILE, which belong to a --redis server."""
    from flight_parsl.transfer.redis_auth import CA_FILE_ENV

    require_redis_server()
    monkeypatch.setenv(USER_ENV, "someone")
    monkeypatch.setenv(PASSWORD_ENV, "not-this-one")
    monkeypatch.setenv(CA_FILE_ENV, str(tmp_path / "missing.pem"))
    with ManagedRedis(password="sites-pw") as server:
        with open_transfer("redis", redis=str(server.address), redis_password="sites-pw", redis_timeout=5.0) as t:
            connector = t.store.connector
            assert connector.username.startswith("flight_parsl-") and not connector.tls
            assert t.publish(_model(), 0).resolve().weights.buffer.size == 10
