"""Tests for flight_parsl.transfer.redis_server: addresses, reachability, ManagedRedis, key counts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import flight_parsl.transfer.redis_server as redis_server_module
from flight_parsl.core.errors import ConfigError, ExecutorError
from flight_parsl.transfer.redis_server import (
    ManagedRedis,
    RedisAddress,
    check_reachable,
    count_keys,
    redis_available,
)
from redis_fixtures import (  # noqa: F401  (fixtures are used by name)
    MISSING_REASON,
    managed_redis,
    redis_server,
    require_redis_server,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def client_for(server: ManagedRedis) -> redis.Redis:
    return redis.Redis(host=server.address.host, port=server.address.port, decode_responses=True)


def closed_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts connections (via the backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


# -- the skip / fail helper -----------------------------------------------------------


def test_require_redis_server_skips_when_missing(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING_REASON):
        require_redis_server("/nonexistent/redis-server")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=MISSING_REASON):
        require_redis_server("/nonexistent/redis-server")


def test_require_redis_server_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=MISSING_REASON):
        require_redis_server("/nonexistent/redis-server")


def test_require_redis_server_returns_path(redis_server):
    assert Path(redis_server).is_file()
    assert os.access(redis_server, os.X_OK)
    assert redis_available(redis_server)
    assert not redis_available("/nonexistent/redis-server")


# -- RedisAddress ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:6379", "127.0.0.1", 6379, "127.0.0.1:6379"),
        ("redis.example.org:1", "redis.example.org", 1, "redis.example.org:1"),
        ("localhost:65535", "localhost", 65535, "localhost:65535"),
        ("[::1]:7000", "::1", 7000, "[::1]:7000"),
        (" node01:6380 ", "node01", 6380, "node01:6380"),
    ],
)
def test_parse_good(text, host, port, shown):
    address = RedisAddress.parse(text)
    assert address == RedisAddress(host, port)
    assert str(address) == shown
    assert RedisAddress.parse(str(address)) == address


@pytest.mark.parametrize(
    "text",
    ["", "6379", "localhost", "localhost:", ":6379", "host:abc", "host:-1", "host:+5",
     "a b:5", "::1:6379", "[::1:6379", "[zz]:6379", "[]:6379", "host:6379:1"],
)
def test_parse_bad_names_text_and_form(text):
    with pytest.raises(ConfigError) as info:
        RedisAddress.parse(text)
    message = str(info.value)
    assert repr(text) in message
    assert "HOST:PORT" in message


@pytest.mark.parametrize("text", ["host:0", "host:65536", "127.0.0.1:99999"])
def test_parse_port_out_of_range(text):
    with pytest.raises(ConfigError, match="outside 1..65535"):
        RedisAddress.parse(text)


def test_address_is_frozen():
    address = RedisAddress("127.0.0.1", 6379)
    with pytest.raises(AttributeError):
        address.port = 1  # type: ignore[misc]
    assert hash(address) == hash(RedisAddress("127.0.0.1", 6379))


# -- check_reachable ------------------------------------------------------------------


def test_check_reachable_live(managed_redis):
    check_reachable(managed_redis.address)
    check_reachable(managed_redis.address, timeout=0.5)


def test_check_reachable_closed_port():
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(ExecutorError) as info:
        check_reachable(RedisAddress("127.0.0.1", port), timeout=1.0)
    # One attempt: redis-py's default retries with backoff would take seconds.
    assert time.monotonic() - started < 1.0
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "unreachable" in message
    assert message == f"Redis at 127.0.0.1:{port} is unreachable: connection refused"


def test_check_reachable_silent_server_times_out(silent_listener):
    with pytest.raises(ExecutorError) as info:
        check_reachable(RedisAddress("127.0.0.1", silent_listener), timeout=0.2)
    message = str(info.value)
    assert message == f"Redis at 127.0.0.1:{silent_listener} is unreachable: timed out"


def test_check_reachable_unknown_host_is_one_line():
    with pytest.raises(ExecutorError) as info:
        check_reachable(RedisAddress("no-such-host.invalid", 6379), timeout=1.0)
    message = str(info.value)
    assert message.startswith("Redis at no-such-host.invalid:6379 is unreachable: ")
    assert "\n" not in message


# -- ManagedRedis ---------------------------------------------------------------------


def test_managed_redis_serves_on_loopback(managed_redis):
    client = client_for(managed_redis)
    try:
        assert client.ping() is True
        assert managed_redis.address.host == "127.0.0.1"
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("dir")["dir"] == str(managed_redis.directory)
        assert client.set("greeting", "hello") is True
        assert client.get("greeting") == "hello"
        assert int(client.info("server")["process_id"]) == managed_redis.pid
    finally:
        client.close()


def test_managed_redis_runs_in_its_own_session(managed_redis):
    # Ctrl-C goes to the terminal's process group; the server must not be in ours.
    assert os.getsid(managed_redis.pid) == managed_redis.pid
    assert os.getsid(managed_redis.pid) != os.getsid(0)


def test_stop_refuses_connections_and_cleans_up(redis_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen: dict[str, list[str]] = {}
    real_rmtree = redis_server_module.shutil.rmtree

    def recording_rmtree(path, *args, **kwargs):
        seen[str(path)] = sorted(p.name for p in Path(path).iterdir())
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(redis_server_module.shutil, "rmtree", recording_rmtree)
    with ManagedRedis(binary=redis_server) as server:
        client = client_for(server)
        client.set("k", "v")
        client.close()
        address, pid, directory = server.address, server.pid, server.directory
        assert server.running
        assert directory is not None and directory.is_dir()
    assert not server.running
    assert process_gone(pid)
    with pytest.raises(ExecutorError, match="connection refused"):
        check_reachable(address, timeout=1.0)
    assert not directory.exists()
    # What the server left in its directory at shutdown: the logs only, no dump.rdb.
    assert seen[str(directory)] == ["redis.log", "stderr.log"]
    assert list(tmp_path.iterdir()) == []
    server.stop()  # idempotent
    server.stop()
    assert server.address == address


def test_two_servers_get_different_ports(redis_server):
    with ManagedRedis(binary=redis_server) as first, ManagedRedis(binary=redis_server) as second:
        assert first.address.port != second.address.port
        assert first.directory != second.directory
        a, b = client_for(first), client_for(second)
        a.set("owner", "first")
        b.set("owner", "second")
        assert a.get("owner") == "first"
        assert b.get("owner") == "second"
        a.close()
        b.close()
    assert not first.directory.exists() and not second.directory.exists()


def test_retries_when_the_port_is_taken(managed_redis, monkeypatch):
    # The first port handed out belongs to another redis-server, which answers PING;
    # the new server must notice that the answer is not its own and take another port.
    busy = managed_redis.address.port
    real_free_port = redis_server_module._free_port
    ports: list[int] = []

    def fake_free_port(host: str) -> int:
        port = busy if not ports else real_free_port(host)
        ports.append(port)
        return port

    monkeypatch.setattr(redis_server_module, "_free_port", fake_free_port)
    with ManagedRedis(binary=managed_redis.binary) as server:
        assert ports[0] == busy
        assert server.address.port == ports[-1] != busy
        client = client_for(server)
        assert int(client.info("server")["process_id"]) == server.pid
        client.close()
    assert len(ports) == 2


def test_missing_binary():
    server = ManagedRedis(binary="/nonexistent/redis-server")
    with pytest.raises(ExecutorError, match="not found") as info:
        with server:
            pass
    assert "--redis HOST:PORT" in str(info.value)
    assert server.pid is None
    with pytest.raises(ExecutorError, match="not been started"):
        server.address


def test_missing_binary_default_message(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ExecutorError) as info:
        ManagedRedis().start()
    assert str(info.value) == (
        "redis-server not found on PATH; install it (apt-get install redis-server) "
        "or pass --redis HOST:PORT of a running server"
    )


def test_early_exit_reports_log(redis_server):
    server = ManagedRedis(binary=redis_server, maxmemory="lots")
    with pytest.raises(ExecutorError) as info:
        server.start()
    message = str(info.value)
    assert "exited with status" in message
    assert "FATAL CONFIG" in message
    assert server.pid is None
    assert server.directory is not None and not server.directory.exists()


def test_maxmemory_is_passed(redis_server):
    with ManagedRedis(binary=redis_server, maxmemory="64mb") as server:
        client = client_for(server)
        assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
        client.close()


def test_never_answering_server_times_out(tmp_path):
    fake = tmp_path / "fake-redis-server"
    pid_file = tmp_path / "pid"
    fake.write_text(
        f"#!/bin/sh\necho $$ > {pid_file}\necho 'fake server warming up' >&2\n"
        f"exec {sys.executable} -c 'import time; time.sleep(60)'\n"
    )
    fake.chmod(0o755)
    server = ManagedRedis(binary=str(fake), start_timeout=0.5)
    with pytest.raises(ExecutorError) as info:
        server.start()
    message = str(info.value)
    assert "did not answer PING" in message
    assert "fake server warming up" in message
    assert process_gone(int(pid_file.read_text()))
    assert not server.directory.exists()


def test_atexit_stops_a_server_left_running(redis_server, tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from flight_parsl.transfer.redis_server import ManagedRedis
        server = ManagedRedis(binary=sys.argv[1])
        server.start()
        print(server.pid, server.directory, server.address.port, flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, redis_server],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pid_text, directory, port = done.stdout.split()
    assert process_gone(int(pid_text))
    assert not Path(directory).exists()
    with pytest.raises(ExecutorError, match="unreachable"):
        check_reachable(RedisAddress("127.0.0.1", int(port)), timeout=1.0)


# -- count_keys -----------------------------------------------------------------------


def test_count_keys(managed_redis):
    address = managed_redis.address
    assert count_keys(address) == 0
    client = client_for(managed_redis)
    pipe = client.pipeline()
    for i in range(2500):
        pipe.set(f"fp:run1:{i}", i)
    pipe.set("other:a", 1)
    pipe.set("other:b", 2)
    pipe.execute()
    client.close()
    assert count_keys(address, "fp:run1:*") == 2500
    assert count_keys(address, "other:*") == 2
    assert count_keys(address) == 2502
    assert count_keys(address, "nothing:*") == 0


def test_count_keys_unreachable():
    port = closed_port()
    with pytest.raises(ExecutorError, match=f"127.0.0.1:{port} is unreachable"):
        count_keys(RedisAddress("127.0.0.1", port))
