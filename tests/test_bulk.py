"""Redis reads straight into one buffer: exact values, missing keys, errors, one payload of memory."""

from __future__ import annotations

import os

import pytest
import redis

from flight_parsl.core.memory import peak_rss_mb, reset_peak_rss, rss_mb
from flight_parsl.transfer import bulk
from flight_parsl.transfer.bulk import BulkReader, ReplyError
from redis_fixtures import managed_redis  # noqa: F401 (fixture)


@pytest.fixture
def server(managed_redis):
    client = redis.Redis(managed_redis.address.host, managed_redis.address.port)
    reader = BulkReader(managed_redis.address.host, managed_redis.address.port, timeout=5.0)
    yield client, reader
    reader.close()
    client.close()


def test_values_of_every_size_come_back_exactly(server) -> None:
    client, reader = server
    for size in (1, 1000, bulk.CHUNK - 1, bulk.CHUNK, bulk.CHUNK + 1, 3 * bulk.CHUNK + 12345):
        value = os.urandom(size)
        client.set("k", value)
        got = reader.get("k")
        assert got is not None and len(got) == size and got == value, size
    client.set("empty", b"")
    assert reader.get("empty") == b""
    assert reader.get("missing") is None
    assert len(reader._idle) == 1  # one caller at a time: one socket, reused


def test_a_key_of_another_type_is_an_error_and_its_socket_is_dropped(server) -> None:
    client, reader = server
    client.rpush("list", b"x")
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        reader.get("list")
    assert reader._idle == []
    client.set("k", b"v")
    assert reader.get("k") == b"v"  # a fresh socket


def test_a_key_evicted_in_the_middle_of_a_read_reads_as_missing(server, monkeypatch) -> None:
    client, reader = server
    monkeypatch.setattr(bulk, "CHUNK", 1000)
    monkeypatch.setattr(bulk, "WINDOW", 1)
    client.set("k", os.urandom(10_000))
    real = bulk._bulk_into
    calls = []

    def evict_after_the_first_slice(sock, view):
        calls.append(len(view))
        if len(calls) == 2:
            client.delete("k")
        return real(sock, view)

    monkeypatch.setattr(bulk, "_bulk_into", evict_after_the_first_slice)
    assert reader.get("k") is None
    client.set("k2", b"after")
    assert reader.get("k2") == b"after"  # the socket read every reply: it stays usable


def test_a_model_sized_read_costs_one_payload_of_memory(server) -> None:
    client, reader = server
    size = 100 * 2**20
    client.set("big", os.urandom(size))
    assert reset_peak_rss()
    before = rss_mb()
    value = reader.get("big")
    growth = peak_rss_mb() - before
    assert value is not None and len(value) == size
    assert growth < 1.1 * size / 2**20, growth  # redis-py's parser: about three payloads


class _Recording:
    """A socket that notes each write and the first read after it."""

    def __init__(self, sock) -> None:
        self.sock, self.events = sock, []

    def sendall(self, data) -> None:
        self.events.append(("send", bytes(data)))
        self.sock.sendall(data)

    def recv(self, n):
        self.events.append(("recv", b""))
        return self.sock.recv(n)

    def recv_into(self, view, n=0):
        self.events.append(("recv", b""))
        return self.sock.recv_into(view, n)

    def close(self) -> None:
        self.sock.close()


def test_the_length_and_the_first_slices_leave_in_one_write(server, monkeypatch) -> None:
    """One round trip before the first byte: across a 10 ms link the read's second round trip was
    a STRLEN waited for alone."""
    client, reader = server
    value = os.urandom(3 * bulk.CHUNK + 5)
    client.set("k", value)
    real = reader._connect
    made = []
    monkeypatch.setattr(reader, "_connect", lambda: made.append(_Recording(real())) or made[-1])
    assert reader.get("k") == value
    events = made[0].events
    first_read = next(i for i, (what, _) in enumerate(events) if what == "recv")
    sends = [data for what, data in events[:first_read] if what == "send"]
    assert len(sends) == 1, sends
    assert sends[0].count(b"STRLEN") == 1 and sends[0].count(b"GETRANGE") == bulk.WINDOW
    total = b"".join(data for what, data in events if what == "send")
    assert total.count(b"GETRANGE") == 4  # one request a slice: nothing asked twice


# A streamed put: one SET whose value is sent in parts as they are made -----------------------


def test_a_streamed_put_stores_its_parts_exactly(server) -> None:
    client, reader = server
    for sizes in ([1], [64, bulk.CHUNK, 3], [1000] * 7, [bulk.CHUNK + 5, 0, 17]):
        parts = [os.urandom(n) for n in sizes]
        reader.put("s", sum(sizes), iter(parts))
        assert client.get("s") == b"".join(parts), sizes
    assert len(reader._idle_puts) == 1 and not reader._idle  # one socket for every put, kept apart from reads'
    assert reader.get("s") == b"".join(parts)
    assert client.dbsize() == 1


def test_a_reader_never_sees_a_streamed_value_before_it_is_whole(server) -> None:
    client, reader = server
    client.set("v", b"old")
    parts = [os.urandom(10_000) for _ in range(5)]
    seen = []

    def slowly():
        for part in parts:
            seen.append((client.exists("w"), reader.get("w"), client.get("v")))  # between the parts sent
            yield part

    reader.put("w", 50_000, slowly())
    assert seen == [(0, None, b"old")] * 5
    assert reader.get("w") == b"".join(parts)
    reader.put("v", 50_000, iter(parts))  # over an old value: the old one until the new is whole
    assert client.get("v") == b"".join(parts)


def test_a_streamed_put_that_fails_midway_stores_nothing(server) -> None:
    client, reader = server

    def broken():
        yield os.urandom(5000)
        yield os.urandom(5000)
        raise RuntimeError("the fold failed")

    with pytest.raises(RuntimeError, match="the fold failed"):
        reader.put("f", 20_000, broken())
    assert reader._idle == []  # the socket held a command half sent: closed, never reused
    with pytest.raises(ValueError, match="got 5000 bytes of the 20000"):
        reader.put("f", 20_000, iter([os.urandom(5000)]))
    with pytest.raises(ValueError, match="more than the 10 bytes"):
        reader.put("f", 10, iter([os.urandom(11)]))
    client.set("g", b"kept")
    with pytest.raises(RuntimeError, match="the fold failed"):
        reader.put("g", 20_000, broken())
    assert client.exists("f") == 0 and client.get("g") == b"kept" and client.dbsize() == 1
    reader.put("f", 3, iter([b"abc"]))  # a fresh socket
    assert client.get("f") == b"abc"


def test_a_streamed_put_the_server_refuses_is_an_error(server, managed_redis) -> None:
    client, _ = server
    client.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+get", "+strlen", "+getrange")
    ro = BulkReader(managed_redis.address.host, managed_redis.address.port, timeout=5.0, password="pw",
                    username="reader")
    try:
        with pytest.raises(ReplyError, match="NOPERM"):
            ro.put("r", 4, iter([b"abcd"]))
        assert client.exists("r") == 0
    finally:
        ro.close()


def test_a_put_survives_a_restarted_server_and_a_read_fails_on_it_unless_reconnect(managed_redis) -> None:
    """Puts take a fresh socket where a restarted server closed theirs (as redis-py's puts did);
    reads do so only with ``reconnect`` (a site's own store), and never find that a put spent theirs."""
    address = managed_redis.address
    plain = bulk.BulkReader(address.host, address.port, timeout=5.0)
    again = bulk.BulkReader(address.host, address.port, timeout=5.0, reconnect=True)
    for reader in (plain, again):
        reader.put("k", 3, [b"abc"])
        assert reader.get("k") == b"abc"
    managed_redis.kill()
    managed_redis.restart()
    for reader in (plain, again):
        reader.put("k", 3, [b"xyz"])  # a fresh socket: the restart closed the old one
    assert again.get("k") == b"xyz"
    with pytest.raises(ConnectionError):
        plain.get("k")  # its idle read socket was closed by the restart
    assert plain.get("k") == b"xyz"  # a fresh one then
    plain.close()
    again.close()
