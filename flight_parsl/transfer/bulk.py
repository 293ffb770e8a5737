"""Redis reads of large values, straight from the socket into one buffer.

redis-py reads a reply in small pieces through its parser's buffer and copies the
value out at the end: for a model-sized value that costs a few times the payload
in memory and most of a read's time in Python. And a plain ``GET`` makes the
server copy the whole value into a reply buffer of its own before writing it.

:class:`BulkReader` asks for the value's length (``STRLEN``), allocates one buffer
of that size, and fetches the value as ``GETRANGE`` slices of :data:`CHUNK` bytes,
:data:`WINDOW` of them in flight (the first ones in the same write as ``STRLEN``: one
round trip before the first byte, which counts across a link), each received with
``recv_into`` in place: one
copy on this side (the kernel's, into huge pages where the kernel gives them) and
only a chunk-sized reply buffer on the server's, whose single thread every slot
shares.

A streamed put (:func:`write_value`, :meth:`BulkReader.put`) goes the other way: one ``SET``
whose value, its length announced first, is sent in parts as they are made (a slot's partial,
folded and cast slice by slice), so the work that makes the value overlaps its transfer. Redis
runs a command only once it has all of it: no reader finds the key before the value is whole,
and a put that stops midway stores nothing.

It speaks the few lines of RESP these commands need and nothing else; every other
command stays with redis-py. Sockets are kept per reader (one per concurrent
caller) and carry the same timeout as the other Redis clients.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

T = TypeVar("T")

#: Bytes per ``GETRANGE`` request.
CHUNK = 4 << 20
#: ``GETRANGE`` requests in flight at once.
WINDOW = 2
#: The longest reply line read before a value (``$<length>``, ``:<int>`` or an error).
MAX_LINE = 1 << 12


class ProtocolError(ConnectionError):
    """The server's reply is not what the command returns."""


class ReplyError(RuntimeError):
    """The server answered with an error line (``-ERR ...``)."""


def encode(*args: str | int) -> bytes:
    """One RESP request."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("Redis closed the connection in the middle of a reply")
        got += n


def _line(sock: socket.socket) -> bytes:
    """One reply line, without its CRLF; read byte by byte so nothing after it is consumed."""
    line = bytearray()
    while not line.endswith(b"\r\n"):
        if len(line) > MAX_LINE:
            raise ProtocolError("Redis sent a reply line longer than 4 KiB")
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("Redis closed the connection before replying")
        line += byte
    if line.startswith(b"-"):
        raise ReplyError(line[1:-2].decode(errors="replace"))
    return bytes(line[:-2])


def _integer(sock: socket.socket) -> int:
    line = _line(sock)
    if not line.startswith(b":"):
        raise ProtocolError(f"expected an integer reply, got {line[:40]!r}")
    return int(line[1:])


def _bulk_into(sock: socket.socket, view: memoryview) -> bool:
    """Read one bulk reply into ``view``; False (its bytes read past) when its length differs."""
    line = _line(sock)
    if not line.startswith(b"$"):
        raise ProtocolError(f"expected a bulk reply, got {line[:40]!r}")
    size = int(line[1:])
    if size < 0:
        return False
    if size == len(view):
        _recv_into(sock, view)
    else:
        _recv_into(sock, memoryview(bytearray(size)))
    _recv_into(sock, memoryview(bytearray(2)))  # its CRLF
    return size == len(view)


def receive_buffer(size: int) -> np.ndarray:
    """An uninitialized byte buffer; numpy asks for transparent huge pages on large ones, so
    filling it faults a few 2 MiB pages instead of thousands of 4 KiB ones (a third of the
    read's CPU time for a model-sized value)."""
    return np.empty(size, dtype=np.uint8)


def _slices(size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, CHUNK):
        yield start, min(size, start + CHUNK)


def _read(sock: socket.socket, key: str, into: Callable[[int, int, int], memoryview],
          sink: Callable[[int, memoryview], None] | None = None) -> tuple[int, bool]:
    """Fetch ``key`` as ``GETRANGE`` slices: each is received into ``into(size, start, stop)``
    and, once whole, handed to ``sink(start, view)``. Returns the value's size (0 for a missing
    key) and whether every slice came whole (False: the key changed or vanished mid-read).

    ``STRLEN`` and the first :data:`WINDOW` ``GETRANGE`` requests leave in one write, before the
    length is known (each asks for a whole :data:`CHUNK`; Redis cuts a range at the value's end
    and answers an empty string past it): the read waits for one round trip before its first
    byte, not two (a 10 ms round trip less a read across a 1 Gbit/s, 5 ms link).
    """
    first = [(k * CHUNK, (k + 1) * CHUNK) for k in range(WINDOW)]
    sock.sendall(encode("STRLEN", key) + b"".join(encode("GETRANGE", key, s, e - 1) for s, e in first))
    size = _integer(sock)
    slices = list(_slices(size))
    whole = True
    for i in range(max(len(slices), WINDOW)):
        if i >= 1 and i + WINDOW - 1 < len(slices):  # keep WINDOW requests in flight
            s, e = slices[i + WINDOW - 1]
            sock.sendall(encode("GETRANGE", key, s, e - 1))
        if i < len(slices):
            start, stop = slices[i]
            view = into(size, start, stop)
            ok = _bulk_into(sock, view)
            if ok and whole and sink is not None:
                sink(start, view)
            whole = ok and whole
        else:  # a first request past the value's end: an empty reply
            whole = _bulk_into(sock, memoryview(b"")) and whole
    return size, whole


def _exists(sock: socket.socket, key: str) -> bool:
    sock.sendall(encode("EXISTS", key))
    return bool(_integer(sock))


def read_value(sock: socket.socket, key: str) -> memoryview | None:
    """The value of ``key`` (one buffer), or None when the key is missing or vanishes mid-read."""
    buffer: list[memoryview] = []

    def into(size: int, start: int, stop: int) -> memoryview:
        if not buffer:
            buffer.append(receive_buffer(size).data)  # a memoryview of the buffer
        return buffer[0][start:stop]

    size, whole = _read(sock, key, into)
    if size == 0:  # a missing key, or an empty value
        return memoryview(b"") if _exists(sock, key) and whole else None
    return buffer[0] if whole else None


def read_slices(sock: socket.socket, key: str, sink: Callable[[int, memoryview], None],
                scratch: memoryview) -> int | None:
    """Hand the value of ``key`` to ``sink(offset, view)`` a slice at a time, each received into
    ``scratch`` (at least :data:`CHUNK` bytes; ``view`` is overwritten by the next slice): no
    buffer of the value's size. Returns the value's size, or None when the key is missing or
    vanishes mid-read (``sink`` may have seen its first slices then)."""
    size, whole = _read(sock, key, lambda size, start, stop: scratch[: stop - start], sink)
    if size == 0:
        return 0 if _exists(sock, key) and whole else None
    return size if whole else None


def write_value(sock: socket.socket, key: str, size: int, parts: Iterable[bytes | memoryview]) -> None:
    """``SET key`` to ``size`` bytes, sent part by part as ``parts`` yields them.

    The command's head announces the value's length; each part goes to the socket as soon as it
    is yielded, while the next is made; the reply is read at the end. Redis executes a command
    only once all of it has arrived (and reads a large value straight into the value's own
    buffer, as for any ``SET``), so a reader never sees ``key`` part-written, and a put that
    stops midway (its connection closed with the command unfinished) stores nothing.
    Raises when the parts do not add up to ``size`` (before the command is complete) or the
    server answers an error.
    """
    raw = key.encode()
    sock.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n" % (len(raw), raw, size))
    sent = 0
    for part in parts:
        view = memoryview(part).cast("B")
        if sent + view.nbytes > size:
            raise ValueError(f"a streamed put got more than the {size} bytes it announced")
        if view.nbytes:
            sock.sendall(view)
        sent += view.nbytes
    if sent != size:
        raise ValueError(f"a streamed put got {sent} bytes of the {size} it announced")
    sock.sendall(b"\r\n")
    reply = _line(sock)
    if reply != b"+OK":
        raise ProtocolError(f"expected +OK to SET, got {reply[:40]!r}")


def _readable(sock: socket.socket) -> bool:
    """Whether an idle socket has something to read: between requests only its end (the server
    closed it, e.g. a restarted server after ``faults.redis_stop``) or garbage, never a reply;
    redis-py checks its pooled connections the same way before using one again."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


class BulkReader:
    """Reads of one Redis server over a few raw sockets, each value into one buffer.

    Args:
        host: the server's host name or address.
        port: its port.
        timeout: seconds to connect and for each read (``socket.timeout`` is a
            ``TimeoutError``, as with the other Redis clients).
        password: sent with ``AUTH`` on every new socket when set.
        username: the ACL user ``AUTH`` logs in as (None: the default user).
        tls: speak TLS, checking the server's certificate and host name against ``ca``
            (the CA's PEM text; None: the system's trusted CAs).
        unix_socket: connect to the server's Unix socket at this path instead (its own
            host: ``host``, ``port`` and ``tls`` unused).
        reconnect: before reusing an idle socket, check that the server has not closed it
            (one ``select``), and take a fresh one if it has: a site's own store, restarted by
            ``faults.redis_stop``, serves its next rounds. Off (the default), a read on a socket
            a restarted server closed fails, and the run with it, as it always did with one store.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        password: str | None = None,
        username: str | None = None,
        tls: bool = False,
        ca: str | None = None,
        unix_socket: str | None = None,
        reconnect: bool = False,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.unix_socket = unix_socket
        self.reconnect = reconnect
        self._password = password
        self._username = username
        self._tls: ssl.SSLContext | None = None
        if tls and unix_socket is None:
            self._tls = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
        self._idle: list[socket.socket] = []
        self._idle_puts: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> socket.socket:
        if self.unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.unix_socket)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        if self._password is not None:
            auth = ("AUTH", self._password) if self._username is None else ("AUTH", self._username, self._password)
            try:
                sock.sendall(encode(*auth))
                reply = _line(sock)
                if reply != b"+OK":
                    raise ProtocolError(f"expected +OK to AUTH, got {reply[:40]!r}")
            except BaseException:
                sock.close()
                raise
        return sock

    def _use(self, pool: list[socket.socket], check: bool, act: Callable[[socket.socket], T]) -> T:
        """``act`` on an idle socket of ``pool`` (with ``check``: one the server has not closed) or a
        new one; the socket goes back to ``pool`` after, or is closed when ``act`` raised (it may
        hold part of a reply or an unfinished command: never reused)."""
        with self._lock:
            sock = pool.pop() if pool else None
        if sock is not None and check and _readable(sock):  # the server closed it (restarted): a fresh one
            sock.close()
            sock = None
        if sock is None:
            sock = self._connect()
        try:
            out = act(sock)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            keep = not self._closed
            if keep:
                pool.append(sock)
        if not keep:
            sock.close()
        return out

    def get(self, key: str) -> memoryview | None:
        """The value of ``key``, or None when it is missing."""
        return self._use(self._idle, self.reconnect, lambda sock: read_value(sock, key))

    def get_slices(self, key: str, sink: Callable[[int, memoryview], None]) -> int | None:
        """Hand the value of ``key`` to ``sink`` a slice at a time (:func:`read_slices`, through a
        scratch of :data:`CHUNK` bytes); its size, or None when it is missing."""
        scratch = receive_buffer(CHUNK).data
        return self._use(self._idle, self.reconnect, lambda sock: read_slices(sock, key, sink, scratch))

    def put(self, key: str, size: int, parts: Iterable[bytes | memoryview]) -> None:
        """Store ``size`` bytes under ``key`` as ``parts`` yields them (:func:`write_value`).

        On a failure midway (the server, the link, or ``parts`` itself raising) the socket, which
        holds an unfinished command, is closed: the server drops the command, and ``key`` is
        left as it was (a new key: missing). Puts keep sockets of their own and always take a
        fresh one where the server closed theirs (a restarted server): a put survives a restart,
        as redis-py's did, and never spends a socket a read would have found closed (reads fail
        on one unless ``reconnect``, as they always did with one store)."""
        self._use(self._idle_puts, True, lambda sock: write_value(sock, key, size, parts))

    def close(self) -> None:
        """Close the idle sockets; one still in use closes when its read returns."""
        with self._lock:
            idle, self._idle, self._closed = self._idle + self._idle_puts, [], True
            self._idle_puts = []
        for sock in idle:
            sock.close()
