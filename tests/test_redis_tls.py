"""A run's Redis over TLS: a CA and certificate per run, refused plain text, and no secret left about.

A managed server listens on its TLS port only when other hosts reach it (a non-loopback
address) or ``transfer.redis_tls=true``; its certificates live in its private temporary
directory (0700, files 0600, never the run directory) and go with it. Clients check the
server against the run's CA (its PEM text rides in the connector's config). The run's
passwords and the server's key never appear in a command line, a log or the run directory.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import redis

import flight_parsl.transfer.redis_auth as redis_auth
import flight_parsl.transfer.redis_tls as redis_tls
from conftest import read_csv, read_summary, run_quietly
from flight_parsl.core.weights import FlatWeights, Layout
from flight_parsl.transfer import open_transfer
from flight_parsl.transfer.bulk import BulkReader, ReplyError
from flight_parsl.transfer.redis_auth import CA_FILE_ENV, PASSWORD_ENV, write_private
from flight_parsl.transfer.redis_server import ManagedRedis, RedisAddress, redis_client
from redis_fixtures import require_redis_server


def _model(n: int = 1000) -> FlatWeights:
    return FlatWeights(np.arange(n, dtype=np.float32), Layout.from_shapes([("w", (n,), "float32")]))


def _round_trip(transfer: Any) -> None:
    """Publish, resolve as a worker would (bulk reader), reply, collect."""
    ref = transfer.publish(_model(), 0)
    assert np.array_equal(ref.resolve(cache=False).weights.buffer, _model().buffer)
    back, _, _ = ref.reply(_model(7))
    assert np.array_equal(transfer.collect(back).buffer, _model(7).buffer)
    transfer.end_round(0)


def _raw(address: RedisAddress, context: ssl.SSLContext | None = None) -> bytes:
    """What a client that sends PING (plain text, or TLS with ``context``) reads back."""
    with socket.create_connection((address.host, address.port), timeout=5.0) as sock:
        conn = context.wrap_socket(sock, server_hostname=address.host) if context else sock
        try:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(100)
        except OSError as exc:  # a reset: what a plain client gets from a TLS port
            return f"{type(exc).__name__}".encode()


@pytest.fixture
def tls_run() -> Iterator[Any]:
    require_redis_server()
    with open_transfer("redis", redis_timeout=5.0, redis_tls=True) as transfer:
        yield transfer


def test_a_tls_server_refuses_plain_text_and_clients_without_the_runs_user(tls_run) -> None:
    connector, server = tls_run.store.connector, tls_run.server
    address = server.address
    assert connector.tls and server.tls and connector.ca == server.ca_pem
    assert connector.ca.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" not in connector.ca
    # plain text on the TLS port: no answer, the server drops it (and there is no plain port)
    assert not _raw(address).startswith((b"+PONG", b"-NOAUTH"))
    admin = server.admin(5.0)
    assert admin.config_get("port") == {"port": "0"} and admin.config_get("tls-port") == {"tls-port": str(address.port)}
    admin.close()
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(address.host, address.port, username=connector.username, password=connector.password,
                    socket_timeout=5.0).ping()
    # TLS without logging in: NOAUTH (raw, and from redis-py and the bulk reader)
    assert _raw(address, ssl.create_default_context(cadata=connector.ca)).startswith(b"-NOAUTH")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis_client(address, 5.0, tls=True, ca=connector.ca).ping()
    with pytest.raises(ReplyError, match="NOAUTH"):
        BulkReader(address.host, address.port, 5.0, tls=True, ca=connector.ca).get("k")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis_client(address, 5.0, "wrong", username=connector.username, tls=True, ca=connector.ca).ping()
    # another run's CA does not vouch for this server; neither does the system's
    with ManagedRedis(tls=True) as other:
        for ca in (other.ca_pem, None):
            with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                redis_client(address, 5.0, connector.password, username=connector.username, tls=True, ca=ca).ping()
    # the run's own user, over TLS, checked against the run's CA: a whole round trip works
    assert redis_client(address, 5.0, connector.password, username=connector.username, tls=True,
                        ca=connector.ca).ping()
    _round_trip(tls_run)


def test_the_certificates_are_private_and_go_with_the_server(tmp_path, monkeypatch) -> None:
    require_redis_server()
    monkeypatch.chdir(tmp_path)
    with open_transfer("redis", redis_timeout=5.0, redis_tls=True) as transfer:
        directory = transfer.server.directory
        assert directory is not None and not directory.is_relative_to(tmp_path)
        assert directory.stat().st_mode & 0o777 == 0o700
        tls_files = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir() if p.suffix in (".crt", ".key")}
        assert tls_files == {"ca.crt": 0o600, "server.crt": 0o600, "server.key": 0o600}  # no CA key kept
        transfer.server.kill()
        transfer.server.restart()  # faults.redis_stop: the same CA still vouches for it
        _round_trip(transfer)
    assert not directory.exists()
    assert list(tmp_path.iterdir()) == []


def test_openssl_makes_them_when_cryptography_is_missing(monkeypatch) -> None:
    require_redis_server()
    real = redis_tls.make_certificates
    monkeypatch.setattr(redis_tls, "make_certificates", lambda d, host, tool=None: real(d, host, "openssl"))
    with ManagedRedis(password="pw", tls=True) as server:
        assert server.directory is not None
        assert sorted(p.name for p in server.directory.glob("*.*") if p.suffix in (".crt", ".key")) == [
            "ca.crt", "server.crt", "server.key"]
        client = server.admin(5.0)
        assert client.ping()
        client.close()


def test_tls_by_default_where_other_hosts_reach_the_server() -> None:
    require_redis_server()
    with open_transfer("redis", redis_timeout=5.0) as transfer:  # loopback: plain TCP
        assert not transfer.store.connector.tls and transfer.server.ca_pem is None
    outside = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
               if a.family == socket.AF_INET and not a.address.startswith("127.")]
    if not outside:
        pytest.skip("no non-loopback IPv4 address on this host")
    with open_transfer("redis", redis_timeout=5.0, redis_host=outside[0]) as transfer:
        connector = transfer.store.connector
        assert connector.tls and connector.hostname == outside[0]
        assert not _raw(transfer.server.address).startswith((b"+PONG", b"-NOAUTH"))  # plain text is refused
        _round_trip(transfer)  # the certificate names that address: host names are checked
    with open_transfer("redis", redis_timeout=5.0, redis_host=outside[0], redis_tls=False) as transfer:
        assert not transfer.store.connector.tls  # transfer.redis_tls=false: the user's choice


def test_an_external_tls_server_with_its_ca(tmp_path, monkeypatch) -> None:
    require_redis_server()
    with ManagedRedis(password="admin-pw", tls=True) as server:
        assert server.ca_pem is not None
        ca_file = write_private(tmp_path / "ca.pem", server.ca_pem)
        monkeypatch.setenv(CA_FILE_ENV, str(ca_file))  # as a job script exports them for --redis
        monkeypatch.setenv(PASSWORD_ENV, "admin-pw")
        with open_transfer("redis", redis=str(server.address), redis_timeout=5.0) as t:
            assert t.store.connector.tls and t.store.connector.username.startswith("flight_parsl-")
            _round_trip(t)


# -- secrets: never in a command line, a log or the run directory --------------------------------


@pytest.fixture
def secrets(monkeypatch) -> Iterator[dict[str, Any]]:
    """Record every password a run makes, its server's key, and every command line while it runs."""
    found: dict[str, Any] = {"passwords": [], "keys": [], "cmdlines": [], "directories": []}
    real_password = redis_auth.new_password

    def new_password() -> str:
        found["passwords"].append(real_password())
        return found["passwords"][-1]

    real_add_user = ManagedRedis.add_user

    def add_user(self: ManagedRedis, rules: list[str]) -> None:
        real_add_user(self, rules)
        assert self.directory is not None
        found["directories"].append(self.directory)
        found["keys"].append((self.directory / "server.key").read_text())
        found["cmdlines"] += [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]

    from flight_parsl.execution.backends import Warmup

    real_wait = Warmup.wait

    def wait(self: Any, *args: Any, **kwargs: Any) -> Any:  # once the slots are up: the workers' command lines
        primed = real_wait(self, *args, **kwargs)
        found["primed_cmdlines"] = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
        found["cmdlines"] += found["primed_cmdlines"]
        return primed

    monkeypatch.setattr(redis_auth, "new_password", new_password)
    monkeypatch.setattr(ManagedRedis, "add_user", add_user)
    monkeypatch.setattr(Warmup, "wait", wait)
    yield found


def _leaks(found: dict[str, Any], texts: list[str]) -> list[str]:
    needles = list(found["passwords"])
    for key in found["keys"]:  # the key's base64 body, line by line
        needles += [line for line in key.splitlines() if line and not line.startswith("-----")]
    assert len(found["passwords"]) >= 2 and found["keys"]
    return [n[:6] + "..." for n in needles if any(n in t for t in texts)]


def _run_dir_texts(run: Path) -> list[str]:
    return [p.read_bytes().decode(errors="replace") for p in run.rglob("*") if p.is_file()]


def test_no_secret_in_a_command_line_a_log_or_the_run_directory(make_config, secrets, caplog) -> None:
    require_redis_server()
    with caplog.at_level(logging.DEBUG, logger="flight_parsl"):
        run = run_quietly(make_config, "transfer.kind=redis", "transfer.redis_tls=true", "model.name=logreg",
                          "train.keep_momentum=true", workers=2, rounds=2)
    assert read_summary(run)["status"] == "completed" and len(read_csv(run / "rounds.csv")) == 2
    assert secrets["cmdlines"] and any("redis-server" in c for c in secrets["cmdlines"])
    assert _leaks(secrets, secrets["cmdlines"] + [caplog.text] + _run_dir_texts(run)) == []
    assert [d.exists() for d in secrets["directories"]] == [False]  # the certificates went with the server


def test_an_htex_run_over_tls_keeps_its_state_and_leaves_no_secret(make_config, secrets, caplog) -> None:
    """Real HTEX workers: proxies and per-client state over TLS, as the run's user."""
    require_redis_server()
    with caplog.at_level(logging.DEBUG, logger="flight_parsl"):
        run = run_quietly(make_config, "transfer.kind=redis", "transfer.redis_tls=true", "slots=2",
                          "model.name=logreg", "train.keep_momentum=true", "partition.samples_per_client=60",
                          workers=2, rounds=2, backend="parsl")
    assert read_summary(run)["status"] == "completed"
    rows = read_csv(run / "tasks.csv")
    assert rows and all(r["status"] == "ok" for r in rows)
    assert any("process_worker_pool" in c for c in secrets["primed_cmdlines"])  # the workers' were read too
    assert _leaks(secrets, secrets["cmdlines"] + [caplog.text] + _run_dir_texts(run)) == []
    assert [d.exists() for d in secrets["directories"]] == [False]


def test_clients_on_the_servers_own_host_use_its_unix_socket_and_others_tls(monkeypatch) -> None:
    """A managed server over TLS also listens on a private Unix socket: a connector on the server's
    own host goes through it (no network, no TLS, still the run's user); one whose network
    namespace does not hold the server's address (a site across its link) speaks TLS."""
    require_redis_server()
    import os
    import stat

    import flight_parsl.transfer.redis_server as redis_server
    from flight_parsl.transfer.proxy import TimedRedisConnector

    assert redis_server.on_this_host("127.0.0.1") and not redis_server.on_this_host("192.0.2.1")  # TEST-NET-1
    with open_transfer("redis", redis_timeout=5.0, redis_tls=True) as transfer:
        server, connector = transfer.server, transfer.store.connector
        path = server.unix_socket
        assert path is not None and stat.S_ISSOCK(os.stat(path).st_mode)
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        assert os.path.dirname(path) != str(server.directory)  # outlives a restart's new directory
        assert redis_server.local_socket(server.host, server.address.port) == path
        assert connector.local and connector.unix_socket == path and connector.config()["unix_socket"] == path
        # the socket wants the run's user too
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis_client(server.address, 5.0, unix_socket=path).ping()
        with pytest.raises(ReplyError, match="NOAUTH"):
            BulkReader("unused", 0, 5.0, unix_socket=path).get("k")
        _round_trip(transfer)
        # a worker on another host rebuilds the connector from its config: TLS to the address
        monkeypatch.setattr(redis_server, "_ON_THIS_HOST", {server.host: False})
        remote = TimedRedisConnector(**connector.config())
        assert not remote.local and remote.tls and remote._reader._tls is not None
        key = remote.put(b"across the link")  # over TLS, as the run's user
        assert bytes(connector.get(key)) == b"across the link"  # read back through the socket
        floats = np.arange(5, dtype=np.float32)  # a view of another format: its length counted in bytes
        assert bytes(remote.get(connector.put(floats.data))) == floats.tobytes()
        remote.close()
        server.kill()
        server.restart()  # faults.redis_stop: the same socket path again
        assert server.unix_socket == path and os.path.exists(path)
        monkeypatch.setattr(redis_server, "_ON_THIS_HOST", {server.host: True})  # back on the server's host
        again = TimedRedisConnector(**connector.config())  # a new client finds it at the same path
        assert again.local and bytes(again.get(again.put(b"after the restart"))) == b"after the restart"
        again.close()
    assert not os.path.exists(os.path.dirname(path))
    assert redis_server.local_socket(server.host, server.address.port) is None
    with ManagedRedis(password="pw") as plain:  # without TLS: no socket, the connector speaks plain TCP
        assert plain.unix_socket is None
